"""Sampling throughput: (a) vLLM's offline LLM.generate in-process, (b) the service over HTTP (one
job, and concurrent /v1/samples calls), (b') the service's OpenAI-compatible endpoint (concurrent
/v1/chat/completions calls from the `openai` client), (c) Hugging Face `generate`, batched.

One workload for all (T 1.6, top_k 20, top_p 0.8, ignore_eos so every sequence has the same
length), run one after another in this process so the figures share the machine's state. It
prints output tokens/s and the ratios b/a (target >= 0.9), b'/b (target >= 0.95) and b/c (target >= 1.5).

    .venv/bin/python bench/sampling.py                       # 32 prompts x n=4 x 64 tokens
    .venv/bin/python bench/sampling.py --prompts 64 --max-tokens 128   # the issue's full workload
    .venv/bin/python bench/sampling.py --service-only                  # (b) against (b') only
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.models import resolve_model  # noqa: E402
from sampler_service.engine import configure_cpu_threads  # noqa: E402

SAMPLING = {"temperature": 1.6, "top_k": 20, "top_p": 0.8}
MAX_MODEL_LEN = 1024


def workload(count: int) -> list[list[dict]]:
    tasks = ["reverses a string", "sums a list", "counts words", "finds the maximum", "merges two dicts",
             "checks for anagrams", "flattens a list", "removes duplicates"]
    return [[{"role": "user", "content": f"Write a Python function that {tasks[i % len(tasks)]} (variant {i})."}]
            for i in range(count)]


def bench_offline(model: str, convs: list, n: int, max_tokens: int, lora: bool) -> float:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=MAX_MODEL_LEN, enable_lora=lora,
              max_lora_rank=64 if lora else 16, disable_log_stats=True)
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    params = SamplingParams(n=n, max_tokens=max_tokens, ignore_eos=True, **SAMPLING)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4))  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    del llm
    return tokens / elapsed


def bench_service(model: str, convs: list, n: int, max_tokens: int, lora: bool) -> tuple[float, float, float]:
    from client.api import AsyncSamplerClient, SamplerClient
    from client.local_server import LocalServer

    params = dict(n=n, max_tokens=max_tokens, ignore_eos=True, **SAMPLING)
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalServer(model, Path(tmp) / "data", Path(tmp) / "server.log", extra_args=[
            "--max-model-len", str(MAX_MODEL_LEN), "--enable-lora", str(lora).lower(), "--log-level", "warning"])
        with server, SamplerClient(server.url) as sampler:
            sampler.sample(messages=convs[:2], max_tokens=4)  # warm-up
            start = time.perf_counter()
            job = sampler.create_job(prompts=[{"id": str(i), "messages": c} for i, c in enumerate(convs)],
                                     filters={"drop_empty": False}, **params)
            job = sampler.wait_for_job(job["id"], poll_s=0.2)
            job_rate = job["output_tokens"] / (time.perf_counter() - start)

            async def concurrent() -> float:
                async with AsyncSamplerClient(server.url) as client:
                    start = time.perf_counter()
                    results = await asyncio.gather(*(client.sample(messages=[c], **params) for c in convs))
                    tokens = sum(r["usage"]["completion_tokens"] for r in results)
                    return tokens / (time.perf_counter() - start)

            calls_rate = asyncio.run(concurrent())
            openai_rate = asyncio.run(bench_openai(server.url, convs, n, max_tokens))
    return job_rate, calls_rate, openai_rate


async def bench_openai(url: str, convs: list, n: int, max_tokens: int) -> float:
    """(b'): one chat completion per conversation, all at once, as an OpenAI harness would send them."""
    from openai import AsyncOpenAI

    # The bench server binds loopback with no keys, so any key is accepted.
    async with AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=3600) as client:
        model = (await client.models.list()).data[0].id
        extra = {"top_k": SAMPLING["top_k"], "ignore_eos": True}
        start = time.perf_counter()
        results = await asyncio.gather(*(client.chat.completions.create(
            model=model, messages=c, n=n, max_tokens=max_tokens, temperature=SAMPLING["temperature"],
            top_p=SAMPLING["top_p"], extra_body=extra) for c in convs))
        elapsed = time.perf_counter() - start
    return sum(r.usage.completion_tokens for r in results) / elapsed


def bench_hf(model: str, convs: list, n: int, max_tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(**batch, do_sample=True, num_return_sequences=n, max_new_tokens=max_tokens,
                          min_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id, **SAMPLING)
    elapsed = time.perf_counter() - start
    return (out.shape[0] * (out.shape[1] - batch["input_ids"].shape[1])) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("-n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--lora", action="store_true", help="enable LoRA in both engines (the service default)")
    parser.add_argument("--service-only", action="store_true",
                        help="run (b) and (b') only: the native job path against the OpenAI endpoint")
    args = parser.parse_args()
    model = resolve_model(args.model)
    configure_cpu_threads("auto")  # (a) gets the same, best, thread binding as the service
    convs = workload(args.prompts)
    print(f"workload: {args.prompts} prompts x n={args.n} x {args.max_tokens} tokens, {SAMPLING}, "
          f"LoRA {'on' if args.lora else 'off'}")
    if not args.service_only:
        a = bench_offline(model, convs, args.n, args.max_tokens, args.lora)
        print(f"(a) vLLM LLM.generate      {a:8.1f} tok/s")
    b_job, b_calls, b_openai = bench_service(model, convs, args.n, args.max_tokens, args.lora)
    print(f"(b) service, one job        {b_job:8.1f} tok/s")
    print(f"(b) service, concurrent calls {b_calls:6.1f} tok/s")
    print(f"(b') OpenAI chat completions {b_openai:7.1f} tok/s")
    print(f"b'/b (OpenAI / native job): {b_openai / b_job:.2f}   (target >= 0.95)")
    if args.service_only:
        return
    c = bench_hf(model, convs, args.n, args.max_tokens)
    print(f"(c) HF generate, batched    {c:8.1f} tok/s")
    print(f"b/a: job {b_job / a:.2f}, calls {b_calls / a:.2f}   (target >= 0.9)")
    print(f"a/c: {a / c:.2f}")
    print(f"b/c: job {b_job / c:.2f}, calls {b_calls / c:.2f}   (target >= 1.5)")


if __name__ == "__main__":
    main()
