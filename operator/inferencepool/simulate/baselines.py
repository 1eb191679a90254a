"""The policies compared by the simulator, all behind one small interface (see fleet.Policy).

Ours (`ErlangC`) calls policy.decide() exactly as the operator does. The others are what people run today
(static peak provisioning, an HPA utilisation target, KEDA queue depth) and a clairvoyant lower bound.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import replace

import numpy as np

from inferencepool.core.policy import History, Observations, PoolSpec, decide
from inferencepool.simulate.fleet import FleetView


class ErlangC:
    """policy.decide() with its History carried from call to call, as the operator keeps it in status."""

    def __init__(self, name: str, spec: PoolSpec):
        self.name, self.spec, self.history = name, spec, History()
        self.last = None  # the last Decision, for inspection

    def initial_replicas(self, default: int) -> int:
        return min(max(default, self.spec.min_replicas), self.spec.replica_cap)

    def reconcile(self, obs: Observations, fleet: FleetView) -> int:
        self.last = decide(self.spec, obs, self.history)
        self.history = self.last.history
        return self.last.replicas


class _HpaBehaviour:
    """Kubernetes HPA arithmetic around a desired count: tolerance, scale-up rate limit, scale-down window."""

    def __init__(self, name: str, min_replicas: int, max_replicas: int, window: float = 300.0, tolerance: float = 0.1):
        self.name, self.min, self.max, self.window, self.tolerance = name, min_replicas, max_replicas, window, tolerance
        self.recommendations: deque[tuple[float, int]] = deque()

    def initial_replicas(self, default: int) -> int:
        return min(max(default, self.min), self.max)

    def _desired(self, obs: Observations) -> int | None:
        raise NotImplementedError

    def reconcile(self, obs: Observations, fleet: FleetView) -> int:
        current = obs.current_replicas
        desired = self._desired(obs)
        desired = current if desired is None else min(max(desired, self.min), self.max)
        self.recommendations.append((obs.time, desired))
        while self.recommendations[0][0] <= obs.time - self.window:
            self.recommendations.popleft()
        if desired > current:  # default scale-up policy: +100% or +4 pods per 15 s, whichever is more
            return min(desired, max(2 * current, current + 4))
        return min(current, max(r for _, r in self.recommendations))  # scale down to the window's highest


class Hpa(_HpaBehaviour):
    """HPA on utilisation: busy slots / Ready slots, target 0.8."""

    def __init__(self, slots: int, min_replicas: int, max_replicas: int, target: float = 0.8, name: str = "hpa-util-0.8"):
        super().__init__(name, min_replicas, max_replicas)
        self.slots, self.target = slots, target

    def _desired(self, obs: Observations) -> int | None:
        if obs.running is None or obs.ready_replicas == 0:
            return None
        ratio = obs.running / (obs.ready_replicas * self.slots) / self.target
        if abs(ratio - 1) <= self.tolerance:
            return obs.current_replicas
        return math.ceil(obs.running / (self.slots * self.target))


class QueueDepth(_HpaBehaviour):
    """KEDA / vLLM production-stack style: an average of 5 waiting requests per replica."""

    def __init__(self, min_replicas: int, max_replicas: int, waiting_per_replica: float = 5.0, name: str = "keda-queue-5"):
        super().__init__(name, min_replicas, max_replicas)
        self.per_replica = waiting_per_replica

    def _desired(self, obs: Observations) -> int | None:
        if obs.waiting is None:
            return None
        if obs.current_replicas and abs(obs.waiting / obs.current_replicas / self.per_replica - 1) <= self.tolerance:
            return obs.current_replicas
        return math.ceil(obs.waiting / self.per_replica)


class Static:
    """A fixed fleet provisioned for the trace's peak, warm from the start."""

    def __init__(self, replicas: int, name: str = "static-peak"):
        self.name, self.replicas = name, replicas

    def initial_replicas(self, default: int) -> int:
        return self.replicas

    def reconcile(self, obs: Observations, fleet: FleetView) -> int:
        return self.replicas


class Oracle:
    """Clairvoyant lower bound: knows every future arrival and cold start.

    `need` holds, per bucket of time, the fewest replicas that meet the SLO for that bucket's actual requests
    (see bucket_needs).
    The j-th extra replica is ordered at the last reconcile before it is needed minus its own cold start (the
    j-th upcoming draw); a replica is released once its bucket's backlog has had `drain_seconds` and its
    replacement could be back in time for any later need (but never while replicas are starting).
    """

    def __init__(self, need: np.ndarray, bucket_seconds: float, reconcile_seconds: float, cold_start_mean: float,
                 drain_seconds: float, name: str = "oracle"):
        self.name, self.need, self.bucket, self.step = name, need, bucket_seconds, reconcile_seconds
        self.cold_start_mean = cold_start_mean
        self.drain = drain_seconds  # a bucket's capacity is kept this long after it ends, for its backlog

    def _need_within(self, start: float, stop: float) -> int:
        lo, hi = int(start // self.bucket), int(stop // self.bucket) + 1
        chunk = self.need[max(lo, 0) : max(hi, 0)]
        return int(chunk.max()) if len(chunk) else int(self.need[-1])

    def initial_replicas(self, default: int) -> int:
        return self._need_within(0.0, self.step + 1.5 * self.cold_start_mean)  # as if it had run before t=0

    def reconcile(self, obs: Observations, fleet: FleetView) -> int:
        t, current = obs.time, obs.current_replicas
        grow, keep = current, self._need_within(t - self.drain, t + self.step)
        for j, cold in enumerate(fleet.next_cold_starts(int(self.need.max())).tolist(), start=1):
            needed = self._need_within(t, t + self.step + cold)  # the j-th new replica would be ready too late for this
            if needed >= current + j:
                grow = current + j
            keep = max(keep, needed - j + 1)
        if grow > current:
            return grow
        if obs.ready_replicas < current:  # Kubernetes would cancel the starting pods, ordered for a later need
            return current
        return min(keep, current)


def size(spec: PoolSpec, rate: float, service: float, service_cv: float = 1.0, prefill: float = 0.0) -> int:
    """Replicas the SLO needs at a known rate and service time: the same rule as decide(), without the floor."""
    if rate <= 0:
        return 0
    obs = Observations(time=0.0, current_replicas=0, arrival_rate=rate, service_time=service, service_cv=service_cv,
                       prefill_time=prefill)
    return decide(replace(spec, prediction=False, min_replicas=0), obs).replicas


def replay_waits(arrivals: list[float], service: list[float], free: list[float]) -> list[float]:
    """Queue waits of requests served FIFO by fixed slots (the G/G/c recursion).

    `free` is a heap of the times each slot next becomes free; it is updated in place.
    """
    waits = []
    for a, s in zip(arrivals, service):
        start = free[0]
        if start < a:
            start = a
        heapq.heapreplace(free, start + s)
        waits.append(start - a)
    return waits


def _resized(free: list[float], slots: int, at: float) -> list[float]:
    """A copy of the slot heap with `slots` slots: new ones free at `at`, removed ones the soonest free (idle first)."""
    free = sorted(free)
    if len(free) > slots:
        return free[len(free) - slots :]
    return sorted(free + [at] * (slots - len(free)))


def _smallest(meets, guess: int, cap: int) -> int:
    """Smallest r in [1, cap] with meets(r) (monotone in r), or cap if none: gallop from a guess, then bisect."""
    r, step = min(max(guess, 1), cap), 1
    if meets(r):
        high, low = r, r - 1
        while low >= 1 and meets(low):
            high, step = low, step * 2
            low = high - step
        low = max(low, 0)
    else:
        low, high = r, r + 1
        while True:
            if high >= cap:
                if not meets(cap):
                    return cap
                high = cap
                break
            if meets(high):
                break
            low, step = high, step * 2
            high = low + step
    while high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle
    return high


def bucket_needs(arrivals: np.ndarray, service: np.ndarray, prefill: np.ndarray, spec: PoolSpec, bucket: float,
                 end: float) -> np.ndarray:
    """The fewest replicas meeting the SLO in each bucket of time, by replaying the actual requests.

    Buckets are sized in order: each is replayed FIFO from the slots' real state left by the previous one
    (so a backlog carries over), at the smallest replica count whose own requests meet the SLO. The search
    starts at the previous bucket's answer, or at Erlang-C on the bucket's true rate and service time.
    """
    buckets = int(end // bucket) + 1
    bounds = np.searchsorted(arrivals, np.arange(buckets + 1) * bucket)
    bounds[-1] = len(arrivals)
    ttft = spec.slo_metric == "ttft"
    slots, cap = spec.slots_per_replica, spec.replica_cap
    need = np.zeros(buckets, dtype=int)
    free: list[float] = []
    for k in range(buckets):
        lo, hi = bounds[k], bounds[k + 1]
        if hi == lo:
            continue
        arr, svc = arrivals[lo:hi].tolist(), service[lo:hi].tolist()
        extra = prefill[lo:hi].tolist() if ttft else None
        rank = math.ceil(spec.slo_percentile * (hi - lo)) - 1 if spec.slo_percentile is not None else None
        tried: dict[int, list[float]] = {}

        def meets(replicas: int) -> bool:
            tried[replicas] = heap = _resized(free, replicas * slots, k * bucket)
            values = replay_waits(arr, svc, heap)
            if extra is not None:
                values = [w + p for w, p in zip(values, extra)]
            if rank is None:
                return sum(values) / len(values) <= spec.slo_target_seconds
            return sorted(values)[rank] <= spec.slo_target_seconds  # nearest-rank percentile, as the report

        if k and need[k - 1]:
            guess = int(need[k - 1])  # neighbouring minutes need similar fleets: the cheapest start
        else:
            mean = float(service[lo:hi].mean())
            cv = float(service[lo:hi].std()) / mean if mean > 0 else 1.0
            guess = size(spec, (hi - lo) / bucket, mean, cv, float(prefill[lo:hi].mean()))
        need[k] = _smallest(meets, guess, cap)
        free = tried[need[k]]
    return need


def peak_rate(arrivals: np.ndarray, window: float, step: float) -> float:
    """The highest rate over sliding windows, as a capacity planner reading rate(...[window]) would see it."""
    if len(arrivals) == 0:
        return 0.0
    ends = np.arange(step, arrivals[-1] + step, step)
    counts = np.searchsorted(arrivals, ends, side="right") - np.searchsorted(arrivals, ends - window, side="right")
    return float(counts.max()) / window
