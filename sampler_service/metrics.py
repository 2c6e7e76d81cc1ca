"""Prometheus metrics, on a registry of our own so that several apps in one process (tests) and
vLLM's own metrics never collide."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

TOKENS_PER_S_WINDOW_S = 30.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("ssd_queue_depth", "engine requests in flight", registry=self.registry)
        self.requests = Counter("ssd_requests_total", "HTTP requests", ["endpoint", "status"],
                                registry=self.registry)
        self.tokens = Counter("ssd_generated_tokens_total", "completion tokens generated", registry=self.registry)
        self.tokens_per_s = Gauge("ssd_tokens_per_second", f"generated tokens/s over the last "
                                  f"{TOKENS_PER_S_WINDOW_S:.0f} s", registry=self.registry)
        self.errors = Counter("ssd_errors_total", "errors by type", ["type"], registry=self.registry)
        self._recent: deque[tuple[float, int]] = deque()

    def record_tokens(self, count: int) -> None:
        self.tokens.inc(count)
        self._recent.append((time.monotonic(), count))

    def render(self, queue_depth: int) -> bytes:
        self.queue_depth.set(queue_depth)
        cutoff = time.monotonic() - TOKENS_PER_S_WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        self.tokens_per_s.set(sum(c for _, c in self._recent) / TOKENS_PER_S_WINDOW_S)
        return generate_latest(self.registry)
