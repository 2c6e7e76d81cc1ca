"""Runs sampling jobs: leases their prompts, feeds them to the engine and writes results to the store.

Several replicas can drive one job (PostgreSQL store). Each replica's driver for a job leases up to
`job_concurrency` prompts at a time (`Store.lease_prompts`), so vLLM's continuous batching stays
full, and leases more as prompts finish. A watcher task beats the replica's heartbeat (which keeps
its leases alive), starts drivers for jobs other replicas created, and stops drivers for jobs that
another replica cancelled. When a replica dies its leases expire and the other drivers, which keep
polling until the job is final, lease those prompts again. The write of the last prompt completes
the job (see `store.py`), so it is completed exactly once, by whichever replica wrote it.

With SQLite there is one replica, and a restart resumes every queued or running job: only prompts
not yet marked done are sampled again (see `store.py` for why that loses nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from common.protocol import ACTIVE_JOB_STATUSES, JOB_CANCELLED, JOB_COMPLETED, JOB_FAILED
from sampler_service.adapters import AdapterRegistry
from sampler_service.engine import Engine
from sampler_service.errors import NotFound
from sampler_service.metrics import Metrics
from sampler_service.store import PromptResult, Store

log = logging.getLogger("sampler_service.jobs")

MAX_POLL_S = 1.0   # how often an idle driver and the watcher look at the store


class JobRunner:
    def __init__(self, store: Store, engine: Engine, adapters: AdapterRegistry, metrics: Metrics,
                 concurrency: int, replica_id: str, lease_s: float):
        self.store = store
        self.engine = engine
        self.adapters = adapters
        self.metrics = metrics
        self.concurrency = concurrency
        self.replica_id = replica_id
        self.lease_s = lease_s
        # Beat well inside the lease, so one late beat never loses it.
        self.poll_s = min(MAX_POLL_S, lease_s / 3)
        self._drivers: dict[str, asyncio.Task] = {}
        self._watcher: asyncio.Task | None = None

    def resume_all(self) -> None:
        """Drive every active job, and from now on watch the store for jobs and cancels that
        other replicas make."""
        self._watcher = asyncio.create_task(self._watch(), name="job-watcher")

    def start(self, job_id: str) -> None:
        if job_id not in self._drivers:
            self._drivers[job_id] = asyncio.create_task(self._drive(job_id), name=f"job-{job_id}")

    async def _watch(self) -> None:
        # Leases under this id from an earlier life (a crash, then a restart with the same
        # --replica-id) would be kept alive by our heartbeat with nobody working on them.
        await asyncio.to_thread(self.store.release_leases, self.replica_id)
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be away for a moment; the next round retries
                log.exception("job watcher: could not reach the store")
            await asyncio.sleep(self.poll_s)

    async def _watch_once(self) -> None:
        await asyncio.to_thread(self.store.heartbeat, self.replica_id, self.lease_s)
        active = await asyncio.to_thread(self.store.active_job_ids)
        for job_id in active:
            if job_id not in self._drivers:
                log.info("driving job %s", job_id)
                self.start(job_id)
        for job_id in set(self._drivers) - set(active):
            job = await asyncio.to_thread(self.store.get_job, job_id)
            if job is None or job["status"] not in ACTIVE_JOB_STATUSES:
                await self._stop_driver(job_id)  # finished or cancelled by another replica

    async def _stop_driver(self, job_id: str) -> None:
        driver = self._drivers.pop(job_id, None)
        if driver is not None:
            driver.cancel()  # cancels the in-flight prompts, which aborts them in the engine
            await asyncio.gather(driver, return_exceptions=True)

    async def cancel(self, job_id: str) -> dict | None:
        job = await asyncio.to_thread(self.store.get_job, job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id!r}", param="id")
        await asyncio.to_thread(self.store.finish_job, job_id, JOB_CANCELLED)
        await self._stop_driver(job_id)
        return await asyncio.to_thread(self.store.get_job, job_id)

    async def shutdown(self) -> None:
        """Stop driving jobs without changing their status, and hand this replica's leases back,
        so another replica (or the next start) takes the prompts over at once."""
        tasks = [t for t in (self._watcher, *self._drivers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._drivers.clear()
        try:
            await asyncio.to_thread(self.store.remove_replica, self.replica_id)
        except Exception:
            log.exception("could not release this replica's leases; they expire in %.0f s", self.lease_s)

    # -- driving one job ---------------------------------------------------------------------
    async def _drive(self, job_id: str) -> None:
        try:
            job = await asyncio.to_thread(self.store.get_job, job_id)
            if job is None or job["status"] not in ACTIVE_JOB_STATUSES:
                return
            await asyncio.to_thread(self.store.mark_running, job_id)
            await self._work(job, self.engine.sampling_params(job["params"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s failed", job_id)
            self.metrics.errors.labels(type="job_failed").inc()
            await asyncio.to_thread(self.store.finish_job, job_id, JOB_FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            if self._drivers.get(job_id) is asyncio.current_task():
                self._drivers.pop(job_id, None)

    async def _work(self, job: dict, sampling_params: Any) -> None:
        """Lease, sample, write, until the job is final. Runs beside other replicas' drivers."""
        clock = {"last": time.monotonic()}
        in_flight: set[asyncio.Task] = set()
        try:
            while True:
                free = self.concurrency - len(in_flight)
                if free > 0:
                    leased = await asyncio.to_thread(self.store.lease_prompts, job["id"], self.replica_id, free,
                                                     self.lease_s)
                    for idx, prompt_id, value in leased:
                        in_flight.add(asyncio.create_task(
                            self._sample_prompt(job, idx, prompt_id, value, sampling_params, clock)))
                if in_flight:
                    done, in_flight = await asyncio.wait(in_flight, timeout=self.poll_s,
                                                         return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # a failed prompt fails the job
                elif await self._job_settled(job["id"]):
                    return
                else:
                    await asyncio.sleep(self.poll_s)  # other replicas hold the rest; one may die
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _job_settled(self, job_id: str) -> bool:
        """True once the job is final. A job with no prompt left to write (one with no prompts at
        all, whose completion no prompt write triggers) is completed here."""
        job = await asyncio.to_thread(self.store.get_job, job_id)
        if job is None or job["status"] not in ACTIVE_JOB_STATUSES:
            return True
        if await asyncio.to_thread(self.store.unfinished_prompts, job_id) == 0:
            await asyncio.to_thread(self.store.finish_job, job_id, JOB_COMPLETED)
            return True
        return False

    async def _sample_prompt(self, job: dict, idx: int, prompt_id: str, value: Any,
                             sampling_params: Any, clock: dict) -> None:
        text, prompt_ids = self.engine.render(value)
        # A prompt too long for the context can't be sampled; record it as done with no samples
        # rather than failing the whole job.
        fit = self.engine.fit(prompt_ids, job["params"].get("max_tokens"))
        if fit.too_long:
            log.warning("job %s prompt %s is longer than the context; skipped", job["id"], prompt_id)
            result = PromptResult(idx, prompt_id, text, prompt_ids, [], None, too_long=True)
            await asyncio.to_thread(self.store.record_prompt_result, job["id"], result, job["filters"], 0.0)
            return
        # A max_tokens larger than the room is lowered to it, and counted on the job
        # (prompts_clamped), shown by `ssd jobs show` and the report.
        sampling_params = self.engine.with_max_tokens(sampling_params, fit.max_tokens)
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
        result = PromptResult(idx, prompt_id, text, prompt_ids, generated.completions, ref, clamped=fit.clamped)
        await asyncio.to_thread(self.store.record_prompt_result, job["id"], result, job["filters"], elapsed)
        self.metrics.record_tokens(sum(len(c.token_ids) for c in generated.completions))
