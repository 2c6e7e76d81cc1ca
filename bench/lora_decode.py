"""What serving a LoRA adapter costs on the CPU engine: the time to generate one batch with an
adapter, as a ratio to the same batch without one, in the same engine.

Each wrapper runs in its own process (vLLM picks the LoRA wrapper when it loads the model), and
each process measures its own baseline, so the ratios are comparable across a noisy machine:

- `grouped`: this project's wrapper (`sampler_service/vllm_cpu_lora.py`), what the service runs;
- `kernels-only`: vLLM's own CPU wrapper calling this project's grouped kernels, as before the
  wrapper existed.

    .venv/bin/python bench/lora_decode.py                          # 64 prompts x 128 tokens, rank 16
    .venv/bin/python bench/lora_decode.py --prompts 16 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.adapters import make_adapters  # noqa: E402
from common.models import resolve_model  # noqa: E402
from sampler_service.engine import configure_cpu_threads  # noqa: E402

WRAPPERS = ("grouped", "kernels-only")


def use_vllms_wrapper() -> None:
    """Load the plugins now, then put vLLM's own wrapper back (the grouped kernels stay)."""
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    if getattr(punica_cpu.PunicaWrapperCPU, "groups_tokens_once", False):
        punica_cpu.PunicaWrapperCPU = punica_cpu.PunicaWrapperCPU.__mro__[1]


def measure(args: argparse.Namespace) -> dict:
    """Runs in the child: one engine, the batch without and with the adapter, best of `repeats`."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"   # the engine in this process, so the swap holds
    configure_cpu_threads("auto")
    if args.wrapper == "kernels-only":
        use_vllms_wrapper()
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=args.model, dtype="float32", enforce_eager=True, max_model_len=1024,
              max_num_seqs=args.prompts, enable_lora=True, max_loras=2, max_lora_rank=args.rank)
    adapter = LoRARequest("bench", 1, args.adapter)
    prompts = [f'def helper_{i}(items):\n    """Return the {i}th largest of items."""\n' for i in range(args.prompts)]
    params = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=2), lora_request=adapter, use_tqdm=False)

    def seconds(request: LoRARequest | None) -> float:
        start = time.perf_counter()
        llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        return time.perf_counter() - start

    base, tuned = [], []
    for _ in range(args.repeats):
        base.append(seconds(None))
        tuned.append(seconds(adapter))
    return {"base_s": min(base), "adapter_s": min(tuned)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--wrapper", choices=WRAPPERS, help=argparse.SUPPRESS)   # set for the child
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = resolve_model(args.model)
    if args.wrapper:
        print(json.dumps(measure(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapters(args.model, Path(tmp), 1, rank=args.rank)[0]
        print(f"{args.prompts} prompts x {args.max_tokens} tokens, rank {args.rank}, best of {args.repeats}")
        print(f"{'wrapper':<14}{'base s':>9}{'adapter s':>11}{'adapter/base':>14}")
        for wrapper in WRAPPERS:
            child = [sys.executable, __file__, "--wrapper", wrapper, "--adapter", str(adapter),
                     "--model", args.model, "--prompts", str(args.prompts), "--max-tokens", str(args.max_tokens),
                     "--rank", str(args.rank), "--repeats", str(args.repeats)]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(f"{wrapper:<14}{row['base_s']:>9.1f}{row['adapter_s']:>11.1f}"
                  f"{row['adapter_s'] / row['base_s']:>14.2f}")


if __name__ == "__main__":
    main()
