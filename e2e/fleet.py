"""A vLLM fleet simulator for the closed loop: requests arrive, wait in a FIFO queue and are served by
the pool's *Ready* pods as the operator scales them on the test bed.

- Capacity: every `poll` seconds the pool's pods are listed from the apiserver by the pool's label selector
  (inferencepool.operator.workload.selector) and those with condition Ready=True counted; capacity = ready x slots.
  Nothing connects to a pod IP (they point nowhere).
- Load: Poisson arrivals (seeded) at a programmed rate profile `rate(t)` (t = seconds since start), each
  with an exponential service time; FIFO queue; a request starts when a slot is free.
- Metrics: vLLM's series (vllm:request_success_total, num_requests_running/waiting, the inference / queue /
  prefill / e2e / time-to-first-token histograms) with `pool` and `namespace` labels on 127.0.0.1, in the
  format vLLM's prometheus_client negotiates (a Prometheus 2.x scrape stores them escaped, vllm_*).
- Records: every request's (arrival time, queue wait); `timeline` of (t, rate, ready, running, waiting).
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from inferencepool.operator import workload
from vllm_exporter import VllmSeries, serve


def piecewise(*segments: tuple[float, float, float]) -> Callable[[float], float]:
    """rate(t) from (duration, rate_from, rate_to) segments, linear within each; the last rate holds after."""
    def rate(t: float) -> float:
        for duration, start, end in segments:
            if t < duration:
                return start + (end - start) * t / duration
            t -= duration
        return segments[-1][2]
    return rate


@dataclass
class Request:
    arrival: float      # seconds since the fleet started
    service: float
    wait: float | None = None  # queue wait, once it started


class Fleet:
    def __init__(self, api_client, namespace: str, pool: str, slots: int, rate: Callable[[float], float],
                 service_time: float, seed: int = 1, prefill_time: float = 0.05, poll: float = 0.5, tick: float = 0.05):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace, self.pool, self.slots, self.rate = namespace, pool, slots, rate
        self.service_time, self.prefill_time, self.poll, self.tick = service_time, prefill_time, poll, tick
        self.rng = random.Random(seed)
        self.ready = 0
        self.requests: list[Request] = []
        self.timeline: list[tuple[float, float, int, int, int]] = []
        self._queue: deque[Request] = deque()
        self._running: list[tuple[float, int, Request]] = []  # heap of (finish time, seq, request)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._server = None
        self.port = 0
        self.t0 = time.monotonic()

        self.registry = CollectorRegistry()
        self.series = VllmSeries(self.registry, {"model_name": pool, "engine": "0", "pool": pool, "namespace": namespace})

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ---------------------------------------------------------------- capacity from the apiserver

    def count_ready(self) -> int:
        selector = ",".join(f"{k}={v}" for k, v in workload.selector(self.pool).items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return sum(1 for p in pods if p.metadata.deletion_timestamp is None and any(
            c.type == "Ready" and c.status == "True" for c in (p.status.conditions or [])))

    def _watch_pods(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self.count_ready()
                with self._lock:
                    self.ready = ready
            except Exception:  # noqa: BLE001 - an apiserver hiccup keeps the last count
                pass
            self._stop.wait(self.poll)

    # ---------------------------------------------------------------- the queue

    def _step(self, t: float, dt: float) -> None:
        lam = self.rate(t) * dt
        # Poisson(lam) arrivals, uniform within the tick (Knuth's method; lam is small per tick)
        n, p, limit = 0, self.rng.random(), pow(2.718281828459045, -lam)
        while p > limit:
            n, p = n + 1, p * self.rng.random()
        for arrival in sorted(t - dt + self.rng.random() * dt for _ in range(n)):
            req = Request(arrival, self.rng.expovariate(1 / self.service_time))
            self.requests.append(req)
            self._queue.append(req)
        while self._running and self._running[0][0] <= t:
            _, _, req = heapq.heappop(self._running)
            self.series.finished(req.wait, req.service, self.prefill_time)
        capacity = self.ready * self.slots
        while self._queue and len(self._running) < capacity:
            req = self._queue.popleft()
            req.wait = max(t - req.arrival, 0.0)
            heapq.heappush(self._running, (t + req.service, id(req), req))
        self.series.running.set(len(self._running))
        self.series.waiting.set(len(self._queue))

    def _serve_loop(self) -> None:
        last, next_sample = self.now(), 0.0
        while not self._stop.wait(self.tick):
            t = self.now()
            with self._lock:
                self._step(t, t - last)
                if t >= next_sample:
                    self.timeline.append((round(t, 1), self.rate(t), self.ready, len(self._running), len(self._queue)))
                    next_sample = t + 1.0
            last = t

    # ---------------------------------------------------------------- results

    def waits(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """Queue waits of requests that arrived in [start, end); those still queued count what they waited so far."""
        t = self.now()
        with self._lock:
            return [r.wait if r.wait is not None else t - r.arrival for r in self.requests if start <= r.arrival < end]

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Fleet:
        self._server = serve(self.registry, "127.0.0.1", 0)
        self.port = self._server.server_port
        self.ready = self.count_ready()
        self.t0 = time.monotonic()
        for target in (self._watch_pods, self._serve_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
