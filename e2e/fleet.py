"""A vLLM fleet simulator for the closed loop: requests arrive, wait in a FIFO queue and are served by
the pool's *Ready* pods as the operator scales them on the test bed.

- Capacity: every `poll` seconds the pool's pods are listed from the apiserver by the pool's label selector
  (inferencepool.operator.workload.selector); each pod with condition Ready=True and no deletionTimestamp
  takes requests, up to `slots` at once. Nothing connects to a pod IP (they point nowhere).
- Load: Poisson arrivals (seeded) at a programmed rate profile `rate(t)` (t = seconds since start), each
  with an exponential service time; FIFO queue (a router's); a request starts on the least loaded pod with
  a free slot. `submit(pod, service)` puts a request on one pod directly.
- Termination, as a kubelet and vLLM would do it: a pod being deleted takes no new request and finishes
  the ones it runs; those still running at its deletionTimestamp (now + its grace period, set by the API
  server) are aborted. KWOK removes a deleted pod after a second, so a pod that vanished before it was
  seen terminating drains until then + its terminationGracePeriodSeconds.
- Metrics: vLLM's series (vllm:request_success_total by finished_reason, num_requests_waiting,
  num_requests_running per pod with a `pod` label, the inference / queue / prefill / e2e /
  time-to-first-token histograms) with `pool` and `namespace` labels on 127.0.0.1, in the format vLLM's
  prometheus_client negotiates (a Prometheus 2.x scrape stores them escaped, vllm_*).
- Load-dependent service and KV pressure (optional): with `token_time` (seconds per output token against the
  pod's running requests, t(n)) a request's service time is stretched by t(n) / t(1) at the n it starts
  with, and its tokens are observed in vllm:inter_token_latency_seconds at t(n), as vLLM batches every running
  sequence into each decode step. With `kv_sequences` a pod's KV cache holds that many requests of
  `prompt_tokens + output_tokens` tokens: the scheduler admits no more (vLLM admits a waiting request only if
  its KV blocks can be allocated), vllm:kv_cache_usage_perc = running / kv_sequences per pod, and
  vllm:cache_config_info carries num_gpu_blocks for that many requests' tokens (block_size 16).
- Records: every request's (arrival time, queue wait, pod, outcome); `timeline` of (t, rate, ready, running,
  waiting); `aborted`.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from inferencepool.operator import workload
from exposition import stop_server
from vllm_exporter import BLOCK_SIZE, VllmSeries, serve


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
    pod: str | None = None
    outcome: str | None = None  # "stop" (finished) or "abort" (cut off by its pod's termination)
    finished: float | None = None
    token_time: float | None = None  # seconds per output token while it ran (load-dependent service)


@dataclass
class Pod:
    name: str
    grace: float  # terminationGracePeriodSeconds
    ready: bool = False  # takes new requests
    terminating_since: float | None = None  # fleet time the deletion was seen
    deadline: float | None = None  # fleet time by which a terminating pod is killed
    gone: bool = False  # no longer in the API
    running: set = field(default_factory=set)  # ids of its running requests


class Fleet:
    def __init__(self, api_client, namespace: str, pool: str, slots: int, rate: Callable[[float], float],
                 service_time: float, seed: int = 1, prefill_time: float = 0.05, poll: float = 0.5, tick: float = 0.05,
                 token_time: Callable[[int], float] | None = None, kv_sequences: int | None = None,
                 prompt_tokens: int = 1000, output_tokens: int = 100):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace, self.pool, self.slots, self.rate = namespace, pool, slots, rate
        self.service_time, self.prefill_time, self.poll, self.tick = service_time, prefill_time, poll, tick
        self.rng = random.Random(seed)
        self.token_time, self.kv_sequences = token_time, kv_sequences
        self.prompt_tokens, self.output_tokens = prompt_tokens, output_tokens
        self.capacity = min(slots, kv_sequences or slots)  # requests one pod runs at once
        self.ready = 0
        self.pods: dict[str, Pod] = {}
        self.aborted = 0
        self.max_tick_gap = 0.0
        self.requests: list[Request] = []
        self.timeline: list[tuple[float, float, int, int, int]] = []
        self._queue: deque[Request] = deque()
        self._running: list[tuple[float, int, Request]] = []  # heap of (finish time, seq, request)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._server = None
        self.port = 0
        self.t0, self.t0_wall = time.monotonic(), time.time()

        self.registry = CollectorRegistry()
        self.series = VllmSeries(self.registry, {"model_name": pool, "engine": "0", "pool": pool, "namespace": namespace},
                                 per_pod=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ---------------------------------------------------------------- capacity from the apiserver

    def count_ready(self) -> int:
        """Sync the pods from the apiserver; the number that take requests."""
        selector = ",".join(f"{k}={v}" for k, v in workload.selector(self.pool).items())
        items = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        with self._lock:
            self._sync_pods(items)
            return self.ready

    def _sync_pods(self, items) -> None:
        t, seen = self.now(), set()
        for p in items:
            name = p.metadata.name
            seen.add(name)
            pod = self.pods.setdefault(name, Pod(name, float(p.spec.termination_grace_period_seconds or 30)))
            deleting = p.metadata.deletion_timestamp
            if deleting is not None and pod.deadline is None:
                pod.terminating_since, pod.deadline = t, deleting.timestamp() - self.t0_wall
            pod.ready = deleting is None and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        for pod in self.pods.values():
            if pod.name not in seen and not pod.gone:
                pod.gone, pod.ready = True, False
                if pod.deadline is None:
                    pod.terminating_since, pod.deadline = t, t + pod.grace
        self.ready = sum(p.ready for p in self.pods.values())

    def _watch_pods(self) -> None:
        while not self._stop.is_set():
            try:
                self.count_ready()
            except Exception:  # noqa: BLE001 - an apiserver hiccup keeps the last view
                pass
            self._stop.wait(self.poll)

    def submit(self, pod: str, service: float) -> Request:
        """A request straight onto one pod (what a sticky client or prefix-affinity router does)."""
        with self._lock:
            t = self.now()
            req = Request(t, service, wait=0.0)
            self.requests.append(req)
            self._start(req, self.pods[pod], t)
            return req

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
            self._end(req, t, "stop")
        for pod in self.pods.values():  # the kubelet kills what is still running at the deadline
            if pod.deadline is not None and pod.deadline <= t and pod.running:
                cut = [entry for entry in self._running if id(entry[2]) in pod.running]
                self._running = [entry for entry in self._running if id(entry[2]) not in pod.running]
                heapq.heapify(self._running)
                for _, _, req in cut:
                    self._end(req, t, "abort")
        while self._queue:
            free = [p for p in self.pods.values() if p.ready and len(p.running) < self.capacity]
            if not free:
                break
            self._start(self._queue.popleft(), min(free, key=lambda p: (len(p.running), p.name)), t)
        for pod in self.pods.values():  # a pod's vLLM exports while it serves or drains
            serving = pod.ready or pod.running
            self.series.pod_running(pod.name, len(pod.running) if serving else None)
            if self.kv_sequences:
                blocks = -(-self.kv_sequences * (self.prompt_tokens + self.output_tokens) // BLOCK_SIZE)
                self.series.kv(len(pod.running) / self.kv_sequences if serving else None, blocks, pod.name)
        self.series.waiting.set(len(self._queue))

    def _start(self, req: Request, pod: Pod, t: float) -> None:
        req.wait, req.pod = max(t - req.arrival, 0.0), pod.name
        pod.running.add(id(req))
        if self.token_time is not None:  # decode steps shared by the n running: each token takes t(n)
            req.token_time = self.token_time(len(pod.running))
            req.service *= req.token_time / self.token_time(1)
        heapq.heappush(self._running, (t + req.service, id(req), req))

    def _end(self, req: Request, t: float, outcome: str) -> None:
        req.outcome, req.finished = outcome, t
        self.pods[req.pod].running.discard(id(req))
        if outcome == "stop":
            self.series.finished(req.wait, req.service, self.prefill_time, tokens=self.output_tokens,
                                 token_time=req.token_time, prompt_tokens=self.prompt_tokens)
        else:
            self.aborted += 1
            self.series.aborted.inc()

    def _serve_loop(self) -> None:
        last, next_sample = self.now(), 0.0
        while not self._stop.wait(self.tick):
            t = self.now()
            self.max_tick_gap = max(self.max_tick_gap, t - last)  # a starved loop makes waits up to this long
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

    def open(self) -> Fleet:
        """Export /metrics and follow the pods, with no arrivals yet (so that Prometheus and the operator
        can be set up, and the warm floor be Ready, before the load's clock starts)."""
        if self._server is None:
            self._server = serve(self.registry, "127.0.0.1", 0)
            self.port = self._server.server_port
            self.count_ready()
            self._spawn(self._watch_pods)
        return self

    def start(self) -> Fleet:
        """The load's clock starts now: arrivals follow `rate` from t = 0."""
        self.open()
        self.t0, self.t0_wall = time.monotonic(), time.time()
        self._spawn(self._serve_loop)
        return self

    def _spawn(self, target) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        if self._server:
            stop_server(self._server)
            self._server = None
