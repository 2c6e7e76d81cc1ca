"""Adapter hot-swap under load: latency from upload to the first request served by the new version,
and failed requests during 10 swaps while concurrent clients keep sampling.

The baseline, measured in the same run, is the latency of one ordinary /v1/samples request on the
adapter: a swap that costs a few requests' time is invisible to users, one that costs many is not.

    .venv/bin/python bench/adapters.py              # 10 swaps, 4 concurrent clients, demo model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from client.local_server import LocalServer  # noqa: E402
from common.models import resolve_model  # noqa: E402

PROMPT = "def merge_sorted(a, b):"
REQUEST = {"prompts": [PROMPT], "max_tokens": 16, "temperature": 1.0, "adapter": "bench"}


def make_adapters(base: str, out: Path, count: int, rank: int = 16) -> list[Path]:
    """`count` random rank-`rank` adapters on all seven projections, one seed each."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"]))
        folder = out / f"adapter{seed}"
        peft_model.save_pretrained(folder)
        folders.append(folder)
    return folders


def upload(http: httpx.Client, folder: Path) -> int:
    files = {f: (f, (folder / f).read_bytes()) for f in ("adapter_config.json", "adapter_model.safetensors")}
    response = http.post("/v1/adapters", data={"name": "bench"}, files=files)
    response.raise_for_status()
    return response.json()["version"]


class Load:
    """Concurrent clients sampling with the alias; records (time, version) of every answer."""

    def __init__(self, url: str, clients: int):
        self.url = url
        self.served: list[tuple[float, int]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as http:
            while not self.stop.is_set():
                response = http.post("/v1/samples", json=REQUEST)
                if response.status_code == 200:
                    self.served.append((time.perf_counter(), response.json()["adapter"]["version"]))
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")

    def first_served(self, version: int, after: float, timeout_s: float = 120) -> float:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            hits = [t for t, v in self.served if v == version and t >= after]
            if hits:
                return min(hits)
            time.sleep(0.01)
        raise TimeoutError(f"version {version} never served")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(resolve_model("demo"), Path(tmp), 2)
        with LocalServer("demo", Path(tmp) / "data", Path(tmp) / "server.log",
                         extra_args=["--log-level", "warning"]) as server, \
                httpx.Client(base_url=server.url, timeout=300) as http:
            upload(http, folders[0])
            request_s = []
            for _ in range(5):
                start = time.perf_counter()
                http.post("/v1/samples", json=REQUEST).raise_for_status()
                request_s.append(time.perf_counter() - start)
            load = Load(server.url, args.clients)
            for thread in load.threads:
                thread.start()
            upload_s, swap_s = [], []
            for swap in range(args.swaps):
                time.sleep(0.5)
                start = time.perf_counter()
                version = upload(http, folders[(swap + 1) % 2])
                upload_s.append(time.perf_counter() - start)
                swap_s.append(load.first_served(version, start) - start)
            load.stop.set()
            for thread in load.threads:
                thread.join()
    baseline = statistics.median(request_s)
    print(f"{args.swaps} swaps under {args.clients} concurrent clients, {len(load.served)} requests served")
    print(f"baseline: one /v1/samples request on the adapter  median {baseline * 1000:7.0f} ms")
    print(f"upload (validate + copy + load + alias move)      median {statistics.median(upload_s) * 1000:7.0f} ms"
          f"   = {statistics.median(upload_s) / baseline:.2f}x a request")
    print(f"upload -> first request served by the new version median {statistics.median(swap_s) * 1000:7.0f} ms"
          f"   = {statistics.median(swap_s) / baseline:.2f}x a request  (max {max(swap_s) * 1000:.0f} ms)")
    print(f"failed requests during the swaps: {len(load.failures)}   (target 0)")
    for failure in load.failures[:5]:
        print("  ", failure)


if __name__ == "__main__":
    main()
