"""Several pools against one GPU budget: the shared allocator (decide() per pool, then core.budget.allocate)
against a static per-pool split of the same GPUs, by exact FIFO replay of each pool's requests.

Model (simpler than fleet.py, on purpose, so that pools run in lockstep): every `interval` seconds each pool
is observed over the last `window` seconds (arrival rate, mean service time and its CV, as Prometheus would
show them), decide() sizes it alone, the allocator splits the budget, and the granted replica counts serve
the next interval. A replica added serves from the start of the interval (no cold start), a replica removed
finishes what it runs. Waits are replayed FIFO per pool across its slots (baselines.replay_waits), the
backlog carried from one interval to the next; attainment is the share of requests whose queue wait is
within the pool's target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from inferencepool.core import budget as core_budget
from inferencepool.core.policy import History, Observations, PoolSpec, decide
from inferencepool.core.queueing import Queue
from inferencepool.simulate.baselines import _resized, replay_waits, size


@dataclass(frozen=True)
class SharedPool:
    name: str
    arrivals: np.ndarray  # seconds, sorted
    service: np.ndarray  # seconds a slot is busy with each request
    spec: PoolSpec
    priority: int = 0
    weight: float = 1.0


@dataclass(frozen=True)
class PoolResult:
    name: str
    requests: int
    attainment: float  # share of requests with wait <= target
    p99_wait: float
    gpu_hours: float
    mean_replicas: float
    limited_share: float  # share of intervals it got fewer replicas than decide() wanted (shared only)


def _window_obs(pool: SharedPool, now: float, window: float, current: int, waiting: int = 0) -> Observations:
    lo, hi = np.searchsorted(pool.arrivals, [now - window, now])
    span = min(window, now) or window
    service = pool.service[lo:hi]
    mean = float(service.mean()) if hi > lo else None
    cv = float(service.std() / mean) if mean else 1.0
    return Observations(time=now, current_replicas=current, ready_replicas=current, arrival_rate=(hi - lo) / span,
                        service_time=mean, service_samples=float(hi - lo), service_cv=max(cv, 0.05), waiting=float(waiting))


def static_split(pools: list[SharedPool], gpus: int, window: float = 60.0) -> dict[str, int]:
    """Replicas per pool, fixed: the budget split in proportion to each pool's need at its peak `window` rate
    (largest remainder), never below its floor: what a platform team would set by hand from last week's peaks."""
    needs = {}
    for p in pools:
        if len(p.arrivals) == 0:
            needs[p.name] = p.spec.min_replicas
            continue
        counts = np.searchsorted(p.arrivals, p.arrivals + window) - np.arange(len(p.arrivals))
        needs[p.name] = max(size(p.spec, float(counts.max()) / window, float(p.service.mean()),
                                 float(p.service.std() / p.service.mean())), p.spec.min_replicas)
    total = sum(needs[p.name] * p.spec.gpus_per_replica for p in pools)
    if total <= gpus:
        return needs
    shares = {p.name: max(needs[p.name] * gpus / total / p.spec.gpus_per_replica, p.spec.min_replicas) for p in pools}
    split = {n: math.floor(s) for n, s in shares.items()}
    left = gpus - sum(split[p.name] * p.spec.gpus_per_replica for p in pools)
    for p in sorted(pools, key=lambda p: (-(shares[p.name] - split[p.name]), p.name)):
        if left >= p.spec.gpus_per_replica:
            split[p.name] += 1
            left -= p.spec.gpus_per_replica
    return split


@dataclass(frozen=True)
class Outcome:
    pools: dict[str, PoolResult]
    peak_gpus: int  # the most GPUs the pools held together in any interval


def run(pools: list[SharedPool], gpus: int, mode: str, interval: float = 30.0, window: float = 120.0) -> Outcome:
    """Replay the pools against `gpus` GPUs; mode "shared" (the allocator) or "static" (static_split)."""
    if mode not in ("shared", "static"):
        raise ValueError(f"mode must be shared or static, got {mode!r}")
    end = max(float(p.arrivals[-1]) for p in pools if len(p.arrivals)) + interval
    split = static_split(pools, gpus)
    fixed = split if mode == "static" else None
    replicas = dict(split)  # both start from the same warm fleet; the shared one then moves
    history = {p.name: History() for p in pools}
    free = {p.name: [] for p in pools}
    waits = {p.name: [] for p in pools}
    starts = {p.name: np.zeros(0) for p in pools}  # when the last interval's requests start service (backlog)
    replica_seconds = {p.name: 0.0 for p in pools}
    limited = {p.name: 0 for p in pools}
    steps, peak = 0, 0
    t = 0.0
    while t < end:
        if fixed is None and t > 0:
            claims = []
            for p in pools:
                obs = _window_obs(p, t, window, replicas[p.name], int((starts[p.name] > t).sum()))
                d = decide(p.spec, obs, history[p.name])
                history[p.name] = d.history
                queue = Queue(d.planning_rate, obs.service_time, obs.arrival_cv, obs.service_cv) \
                    if d.metrics_available and d.planning_rate is not None and obs.service_time else None
                claims.append(core_budget.Claim(p.name, want=d.replicas, floor=p.spec.min_replicas, current=replicas[p.name],
                                                priority=p.priority, weight=p.weight, gpus_per_replica=p.spec.gpus_per_replica,
                                                queue=queue, slots=p.spec.slots_per_replica, target=p.spec.slo_target_seconds))
            allocation = core_budget.allocate(claims, gpus)
            for c in claims:
                replicas[c.name] = allocation.grants[c.name].replicas
                limited[c.name] += allocation.grants[c.name].limited
        for p in pools:
            lo, hi = np.searchsorted(p.arrivals, [t, t + interval])
            heap = _resized(free[p.name], replicas[p.name] * p.spec.slots_per_replica, t)
            if hi > lo:
                w = replay_waits(p.arrivals[lo:hi].tolist(), p.service[lo:hi].tolist(), heap)
                waits[p.name] += w
                starts[p.name] = np.concatenate([starts[p.name][starts[p.name] > t], p.arrivals[lo:hi] + np.asarray(w)])
            free[p.name] = heap
            replica_seconds[p.name] += replicas[p.name] * interval
        peak = max(peak, sum(replicas[p.name] * p.spec.gpus_per_replica for p in pools))
        steps += 1
        t += interval
    out = {}
    for p in pools:
        w = np.asarray(waits[p.name])
        out[p.name] = PoolResult(
            name=p.name, requests=len(w),
            attainment=float((w <= p.spec.slo_target_seconds).mean()) if len(w) else 1.0,
            p99_wait=float(np.quantile(w, 0.99)) if len(w) else 0.0,
            gpu_hours=replica_seconds[p.name] * p.spec.gpus_per_replica / 3600,
            mean_replicas=replica_seconds[p.name] / (steps * interval),
            limited_share=limited[p.name] / steps,
        )
    return Outcome(out, peak)


def with_spec(pools: list[SharedPool], **changes) -> list[SharedPool]:
    return [replace(p, spec=replace(p.spec, **changes)) for p in pools]
