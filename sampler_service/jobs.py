"""Runs sampling jobs: feeds their pending prompts to the engine and writes results to the store.

Each active job has one driver task that keeps up to `job_concurrency` prompts in flight, so vLLM's
continuous batching stays full. A restart picks up every queued or running job from the store and
submits only the prompts not yet marked done (see `store.py` for why that loses nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from common.protocol import JOB_CANCELLED, JOB_COMPLETED, JOB_FAILED, JOB_RUNNING
from sampler_service.adapters import AdapterRegistry
from sampler_service.engine import Engine
from sampler_service.errors import NotFound
from sampler_service.metrics import Metrics
from sampler_service.store import PromptResult, Store

log = logging.getLogger("sampler_service.jobs")


class JobRunner:
    def __init__(self, store: Store, engine: Engine, adapters: AdapterRegistry, metrics: Metrics,
                 concurrency: int):
        self.store = store
        self.engine = engine
        self.adapters = adapters
        self.metrics = metrics
        self.concurrency = concurrency
        self._drivers: dict[str, asyncio.Task] = {}

    def resume_all(self) -> None:
        for job_id in self.store.active_job_ids():
            log.info("resuming job %s", job_id)
            self.start(job_id)

    def start(self, job_id: str) -> None:
        self._drivers[job_id] = asyncio.create_task(self._drive(job_id), name=f"job-{job_id}")

    async def cancel(self, job_id: str) -> dict:
        job = await asyncio.to_thread(self.store.get_job, job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id!r}", param="id")
        await asyncio.to_thread(self.store.finish_job, job_id, JOB_CANCELLED)
        driver = self._drivers.pop(job_id, None)
        if driver is not None:
            driver.cancel()  # cancels the in-flight prompts, which aborts them in the engine
            await asyncio.gather(driver, return_exceptions=True)
        return await asyncio.to_thread(self.store.get_job, job_id)

    async def shutdown(self) -> None:
        """Stop driving jobs without changing their status, so the next start resumes them."""
        drivers = list(self._drivers.values())
        for task in drivers:
            task.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        self._drivers.clear()

    # -- driving one job ---------------------------------------------------------------------
    async def _drive(self, job_id: str) -> None:
        try:
            job = await asyncio.to_thread(self.store.get_job, job_id)
            await asyncio.to_thread(self.store.set_status, job_id, JOB_RUNNING)
            pending = await asyncio.to_thread(self.store.pending_prompts, job_id)
            await self._run_prompts(job, pending)
            await asyncio.to_thread(self.store.finish_job, job_id, JOB_COMPLETED)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s failed", job_id)
            self.metrics.errors.labels(type="job_failed").inc()
            await asyncio.to_thread(self.store.finish_job, job_id, JOB_FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            self._drivers.pop(job_id, None)

    async def _run_prompts(self, job: dict, pending: list[tuple[int, str, Any]]) -> None:
        params = job["params"]
        sampling_params = self.engine.sampling_params(params)
        clock = {"last": time.monotonic()}
        queue: asyncio.Queue = asyncio.Queue()
        for item in pending:
            queue.put_nowait(item)
        workers = [asyncio.create_task(self._worker(job, queue, sampling_params, clock))
                   for _ in range(min(self.concurrency, len(pending)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, job: dict, queue: asyncio.Queue, sampling_params: Any, clock: dict) -> None:
        while not queue.empty():
            idx, prompt_id, value = queue.get_nowait()
            await self._sample_prompt(job, idx, prompt_id, value, sampling_params, clock)

    async def _sample_prompt(self, job: dict, idx: int, prompt_id: str, value: Any,
                             sampling_params: Any, clock: dict) -> None:
        text, prompt_ids = self.engine.render(value)
        # A prompt too long for the context can't be sampled; record it as done with no samples
        # rather than failing the whole job.
        max_new = min(job["params"]["max_tokens"], self.engine.max_model_len - len(prompt_ids))
        if max_new < 1:
            log.warning("job %s prompt %s is longer than the context; skipped", job["id"], prompt_id)
            result = PromptResult(idx, prompt_id, text, prompt_ids, [], None)
            await asyncio.to_thread(self.store.record_prompt_result, job["id"], result, job["filters"], 0.0)
            return
        if max_new < sampling_params.max_tokens:
            sampling_params = sampling_params.clone()
            sampling_params.max_tokens = max_new
        await self.engine.admission.enter()
        try:
            async with self.adapters.lease(job["params"].get("adapter")) as adapter:
                lora = adapter.lora_request() if adapter else None
                generated = await self.engine.generate(prompt_ids, sampling_params, lora)
                ref = adapter.ref if adapter else None
        finally:
            await self.engine.admission.leave()
        now = time.monotonic()
        elapsed, clock["last"] = now - clock["last"], now
        result = PromptResult(idx, prompt_id, text, prompt_ids, generated.completions, ref)
        await asyncio.to_thread(self.store.record_prompt_result, job["id"], result, job["filters"], elapsed)
        self.metrics.record_tokens(sum(len(c.token_ids) for c in generated.completions))
