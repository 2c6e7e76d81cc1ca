"""Hot-reloading LoRA adapters into the running service (issue 3 §2-§3)."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.server_harness import TEST_MAX_LORA_RANK, auth_headers

pytestmark = pytest.mark.engine

PROMPT = "def is_prime(n):"
GREEDY_TOKENS = 12


def make_adapter(base_path: str, out_dir: Path, *, rank: int = 8, seed: int = 0,
                 targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"), scale: float = 0.3) -> Path:
    """A random LoRA adapter for the demo model, big enough to change greedy output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                                  init_lora_weights=False))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, scale)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory, demo_model_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(demo_model_path, root / "a", seed=1),
        "b": make_adapter(demo_model_path, root / "b", seed=2),
        "too_big": make_adapter(demo_model_path, root / "too_big", rank=TEST_MAX_LORA_RANK * 2, seed=3),
    }


@pytest.fixture(scope="module")
def http(sampler_url: str):
    with httpx.Client(base_url=sampler_url, timeout=300, headers=auth_headers()) as client:
        yield client


def upload(http: httpx.Client, name: str, folder: Path) -> httpx.Response:
    files = {f: (f, (folder / f).read_bytes()) for f in ("adapter_config.json", "adapter_model.safetensors")}
    return http.post("/v1/adapters", data={"name": name}, files=files)


def greedy(http: httpx.Client, adapter: str | None = None, logprobs: int | None = None) -> dict:
    body = {"prompts": [PROMPT], "temperature": 0, "max_tokens": GREEDY_TOKENS, "adapter": adapter,
            "logprobs": logprobs, "ignore_eos": True}
    response = http.post("/v1/samples", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 200, response.text
    return response.json()


def test_upload_versions_alias_and_delete(http, adapters_dir):
    base = greedy(http)["results"][0]["completions"][0]["token_ids"]
    first = upload(http, "unit", adapters_dir["a"])
    assert first.status_code == 201, first.text
    assert first.json()["alias"] == "unit@v1"
    served = greedy(http, "unit")
    assert served["adapter"] == {"name": "unit", "version": 1}
    assert served["results"][0]["completions"][0]["token_ids"] != base  # the adapter changes the output

    second = upload(http, "unit", adapters_dir["b"]).json()
    assert second["version"] == 2
    listed = {a["name"]: a for a in http.get("/v1/adapters").json()["adapters"]}
    assert listed["unit"]["current_version"] == 2 and listed["unit"]["alias"] == "unit@v2"
    assert greedy(http, "unit")["adapter"]["version"] == 2
    assert greedy(http, "unit@v2")["adapter"]["version"] == 2
    assert greedy(http)["results"][0]["completions"][0]["token_ids"] == base  # base untouched

    assert http.delete("/v1/adapters/unit").status_code == 200
    assert http.post("/v1/samples", json={"prompts": [PROMPT], "adapter": "unit"}).status_code == 404


def test_upload_by_server_readable_path(http, adapters_dir):
    response = http.post("/v1/adapters", json={"name": "bypath", "path": str(adapters_dir["a"])})
    assert response.status_code == 201, response.text
    missing = http.post("/v1/adapters", json={"name": "bypath", "path": "/nonexistent/dir"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "path"
    http.delete("/v1/adapters/bypath")


def test_paths_outside_the_adapter_dirs_get_400_and_load_nothing(http, adapters_dir, tmp_path):
    """The session server allows only pytest's temporary folder (`--adapter-dir`). A valid adapter
    outside it is refused however it is reached: directly, through `..`, or through a symlink
    (whole folder, or one file) inside the allowed folder."""
    outside = Path(tempfile.mkdtemp(prefix="ssd-outside-"))
    try:
        shutil.copytree(adapters_dir["a"], outside / "a")
        (tmp_path / "link").symlink_to(outside / "a")
        one_file = tmp_path / "one_file"
        one_file.mkdir()
        shutil.copy(adapters_dir["a"] / "adapter_config.json", one_file)
        (one_file / "adapter_model.safetensors").symlink_to(outside / "a" / "adapter_model.safetensors")
        dotdot = str(tmp_path) + "/.." * len(tmp_path.parts) + str(outside / "a")
        for path in (str(outside / "a"), dotdot, str(tmp_path / "link"), str(one_file), "relative/dir"):
            response = http.post("/v1/adapters", json={"name": "escape", "path": path})
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"]["param"] == "path"
        assert "escape" not in [a["name"] for a in http.get("/v1/adapters").json()["adapters"]]
    finally:
        shutil.rmtree(outside)


def _corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return dst


def _wrong_base_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen3-4B-Instruct-2507"
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


def _missing_module_copy(src: Path, dst: Path) -> Path:
    """Rename every q_proj tensor to a module the base model does not have (a wrong prefix).
    The new name has the same length, so the header keeps its size and stays valid."""
    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + length].replace(b"q_proj", b"x_proj")
    weights.write_bytes(raw[:8] + header + raw[8 + length:])
    return dst


@pytest.mark.parametrize("breaker, expected", [
    (_corrupt_copy, "safetensors"),
    (_wrong_base_copy, "trained on"),
    (_missing_module_copy, "does not exist"),
    ("too_big", "max_lora_rank"),
])
def test_bad_adapter_gets_400_and_previous_version_keeps_serving(http, adapters_dir, tmp_path, breaker, expected):
    assert upload(http, "keep", adapters_dir["a"]).status_code == 201
    before = greedy(http, "keep")
    bad = adapters_dir["too_big"] if breaker == "too_big" else breaker(adapters_dir["a"], tmp_path / "bad")
    response = upload(http, "keep", bad)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]["message"]
    after = greedy(http, "keep")
    assert after["adapter"] == before["adapter"]
    assert after["results"][0]["completions"][0]["token_ids"] == before["results"][0]["completions"][0]["token_ids"]
    http.delete("/v1/adapters/keep")


def test_greedy_output_and_logprobs_match_hf_peft(http, adapters_dir, demo_model_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert upload(http, "parity", adapters_dir["a"]).status_code == 201
    served = greedy(http, "parity", logprobs=1)["results"][0]
    http.delete("/v1/adapters/parity")
    completion = served["completions"][0]

    base = AutoModelForCausalLM.from_pretrained(demo_model_path, dtype=torch.float32)
    ids = torch.tensor([served["prompt_token_ids"] + completion["token_ids"]])
    with torch.no_grad():
        base_logprobs = torch.log_softmax(base(ids).logits[0].float(), dim=-1)
        model = PeftModel.from_pretrained(base, adapters_dir["a"]).eval()
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    # The adapter must matter, or matching logprobs would prove nothing.
    assert (logprobs - base_logprobs).abs().max() > 0.5
    start = len(served["prompt_token_ids"]) - 1
    for offset, (token_id, position) in enumerate(zip(completion["token_ids"], completion["logprobs"])):
        row = logprobs[start + offset]
        assert int(row.argmax()) == token_id, f"greedy token {offset} differs from HF peft"
        assert position["logprob"] == pytest.approx(float(row[token_id]), abs=2e-3)


def test_base_and_two_adapters_in_one_batch_each_get_their_own_output(http, sampler_url, adapters_dir):
    """The CPU LoRA wrapper groups a batch's tokens by adapter; requests sent together share the
    engine's steps, and each must come out as it does alone."""
    assert upload(http, "left", adapters_dir["a"]).status_code == 201
    assert upload(http, "right", adapters_dir["b"]).status_code == 201
    names = [None, "left", "right"]
    alone = {name: greedy(http, name)["results"][0]["completions"][0]["token_ids"] for name in names}
    assert len({tuple(ids) for ids in alone.values()}) == 3, "the adapters must change the output"
    together: dict[str | None, list[int]] = {}
    start = threading.Barrier(len(names))

    def send(name: str | None) -> None:
        with httpx.Client(base_url=sampler_url, timeout=300, headers=auth_headers()) as client:
            start.wait()
            together[name] = greedy(client, name)["results"][0]["completions"][0]["token_ids"]

    threads = [threading.Thread(target=send, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    http.delete("/v1/adapters/left")
    http.delete("/v1/adapters/right")
    assert together == alone


def test_swap_under_load_fails_no_request(http, sampler_url, adapters_dir):
    assert upload(http, "hot", adapters_dir["a"]).status_code == 201
    failures: list[str] = []
    versions: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=sampler_url, timeout=300, headers=auth_headers()) as client:
            while not stop.is_set():
                response = client.post("/v1/samples", json={"prompts": [PROMPT], "adapter": "hot",
                                                            "max_tokens": 8, "temperature": 1.0})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    versions.append(response.json()["adapter"]["version"])

    def wait_for_more_requests(count: int) -> None:
        target = len(versions) + count
        deadline = time.monotonic() + 120
        while len(versions) < target and time.monotonic() < deadline and not failures:
            time.sleep(0.05)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for folder in (adapters_dir["b"], adapters_dir["a"], adapters_dir["b"]):
            wait_for_more_requests(4)  # requests in flight on the old version while we swap
            assert upload(http, "hot", folder).status_code == 201
        wait_for_more_requests(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    http.delete("/v1/adapters/hot")
    assert failures == []
    assert set(versions) == {1, 2, 3, 4}  # requests really ran on every version
