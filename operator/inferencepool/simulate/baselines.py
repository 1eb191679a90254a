"""The policies compared by the simulator, all behind one small interface (see fleet.Policy).

Ours (`ErlangC`) calls policy.decide() exactly as the operator does. The others are what people run today,
each implemented from its own documentation and code (cited per class; parameters at their defaults unless
a sweep sets the knob): a constant fleet, the Kubernetes HPA on utilisation, KEDA on vLLM's queue length,
Knative's KPA, llm-d's variant autoscaler, Dynamo's SLA planner; and a clairvoyant lower bound.
A policy may set `tick_seconds` (its own control period) and `needs_metrics = False` (it reads its own
metric path through FleetView, as Knative's queue-proxies do).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import replace

import numpy as np

from inferencepool.core.policy import History, Observations, PoolSpec, decide
from inferencepool.core.queueing import bisect_boundary
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


class _Hpa:
    """The Kubernetes HPA controller around a per-metric proposal (`_desired`), as kube-controller-manager runs it.

    Source: https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/ and
    kubernetes/kubernetes pkg/controller/podautoscaler/horizontal.go (normalisation), defaults from
    pkg/controller/podautoscaler/config/v1alpha1/defaults.go and pkg/apis/autoscaling/v2/defaults.go:
    sync every 15 s, tolerance 0.1, scale-down stabilisation 300 s (the proposal is the highest raw
    recommendation of the last 300 s, never above the current count).
    Scale-up limit: with `behavior` set (API defaults: policies 4 Pods and 100 Percent per 15 s, selectPolicy
    Max, no up-stabilisation) at most max(N + 4, 2N) per sync; with `behavior` nil (the legacy path, also the
    HPA that KEDA creates when `advanced.horizontalPodAutoscalerConfig.behavior` is absent) at most
    max(2N, 4). Scale-down: 100% per 15 s, i.e. no rate limit. Then clamped to [min, max].
    """

    tick_seconds = 15.0

    def __init__(self, name: str, min_replicas: int, max_replicas: int, window: float = 300.0, tolerance: float = 0.1,
                 behavior: bool = True):
        self.name, self.min, self.max, self.window, self.tolerance = name, min_replicas, max_replicas, window, tolerance
        self.behavior = behavior
        self.recommendations: deque[tuple[float, int]] = deque()

    def initial_replicas(self, default: int) -> int:
        return min(max(default, self.min), self.max)

    def _desired(self, obs: Observations) -> int | None:
        raise NotImplementedError

    def scale_up_limit(self, current: int) -> int:
        return max(current + 4, 2 * current) if self.behavior else max(2 * current, 4)

    def reconcile(self, obs: Observations, fleet: FleetView) -> int:
        current = obs.current_replicas
        raw = self._desired(obs)
        raw = current if raw is None else raw  # a metric that cannot be read: the HPA keeps the count
        self.recommendations.append((obs.time, raw))
        while self.recommendations[0][0] <= obs.time - self.window:
            self.recommendations.popleft()
        if raw > current:
            wanted = min(raw, self.scale_up_limit(current))
        else:
            wanted = min(current, max(r for _, r in self.recommendations))
        return min(max(wanted, self.min), self.max)


class Hpa(_Hpa):
    """HPA on a per-pod utilisation metric (busy slots / slots, e.g. vllm:num_requests_running / max_num_seqs
    exported as a Pods metric), `behavior` at its API defaults.

    Proposal (replica_calculator.go): usage ratio r = mean over pods with a sample / target; inside the 0.1
    tolerance keep N; no missing pods: ceil(r * ready). Starting pods have no sample ("missing"): scaling up
    they count as 0, scaling down as exactly the target; if that second pass falls inside the tolerance or
    flips the direction, keep N, else ceil(r' * all pods).
    """

    def __init__(self, slots: int, min_replicas: int, max_replicas: int, target: float = 0.8, name: str | None = None):
        super().__init__(name or f"hpa-util-{target:g}", min_replicas, max_replicas)
        self.slots, self.target = slots, target

    def _desired(self, obs: Observations) -> int | None:
        ready = obs.ready_replicas
        if obs.running is None or ready == 0:
            return None
        used = obs.running / self.slots  # sum of per-pod utilisation, in replicas
        r = used / ready / self.target
        if abs(r - 1) <= self.tolerance:
            return obs.current_replicas
        missing = max(obs.current_replicas - ready, 0)
        if missing == 0:
            return math.ceil(r * ready)
        pods = ready + missing
        r2 = used / (self.target * pods) if r > 1 else (used + missing * self.target) / (self.target * pods)
        if abs(r2 - 1) <= self.tolerance or (r > 1) != (r2 > 1):
            return obs.current_replicas
        return math.ceil(r2 * pods)


class QueueDepth(_Hpa):
    """KEDA on vllm:num_requests_waiting as vLLM's production-stack ships it.

    Source: vllm-project/production-stack tutorials/20-keda-autoscaling.md, tutorials/assets/values-20-keda.yaml
    and helm/templates/scaledobject-vllm.yaml: a Prometheus trigger on `vllm:num_requests_waiting`, threshold 5,
    metricType AverageValue (KEDA's default), no `behavior`. KEDA (keda.sh/docs/2.17, controllers/keda/hpa.go)
    turns it into an HPA External metric: desired = ceil(total waiting / threshold) unless
    |1 - total / (threshold * N)| <= 0.1. The HPA pulls it every 15 s sync; KEDA's pollingInterval (30 s
    default, 15 s in the tutorial) only governs activation 0 <-> 1, which a floor >= 1 never uses, and
    `useCachedMetrics` is off. Assumed: the query sums over pods (as shipped it has no sum(), and KEDA's
    Prometheus scaler errors when two pods return two series).
    """

    def __init__(self, min_replicas: int, max_replicas: int, waiting_per_replica: float = 5.0, name: str | None = None):
        super().__init__(name or f"keda-queue-{waiting_per_replica:g}", min_replicas, max_replicas, behavior=False)
        self.per_replica = waiting_per_replica

    def _desired(self, obs: Observations) -> int | None:
        if obs.waiting is None:
            return None
        n = obs.current_replicas
        if n and abs(obs.waiting / (self.per_replica * n) - 1) <= self.tolerance:
            return n
        return math.ceil(obs.waiting / self.per_replica)


class Kpa:
    """Knative's KPA on request concurrency (knative/serving pkg/autoscaler/scaling/autoscaler.go, defaults from
    pkg/autoscaler/config/config.go; https://knative.dev/docs/serving/autoscaling/).

    Every 2 s: stable = mean concurrency over 60 s, panic = over 6 s (10%), both time-weighted as the
    queue-proxies report them (1 s buckets; averaged over the buckets seen so far while the window fills).
    With R Ready pods (Rr = max(R, 1)): dspc = ceil(stable / target), dppc = ceil(panic / target), each
    clamped to [floor(Rr / 2), ceil(1000 Rr)] (max scale-down rate 2, max scale-up rate 1000). Panic when
    dppc / Rr >= 2 (200%); it lasts until 60 s after the last such tick, and while panicking the output
    never falls (max of the panic peak, dspc and dppc). `target` is the per-pod concurrency target
    (container-concurrency-target-default x target-utilisation 0.7 in Knative's terms). The concurrency is
    the pool's requests in flight (queued + running): Knative reads it from its own queue-proxy sidecars,
    not from Prometheus, so it is current, not 15 s late.
    """

    tick_seconds = 2.0
    needs_metrics = False

    def __init__(self, min_replicas: int, max_replicas: int, target: float = 1.0, stable: float = 60.0,
                 panic: float = 6.0, name: str | None = None):
        self.name = name or f"kpa-conc-{target:g}"
        self.min, self.max, self.target, self.stable, self.panic = min_replicas, max_replicas, target, stable, panic
        self.samples: deque[tuple[float, float]] = deque()  # (time, request-seconds so far)
        self.panic_time: float | None = None
        self.panic_pods = 0

    def initial_replicas(self, default: int) -> int:
        return min(max(default, self.min), self.max)

    def _mean(self, now: float, area: float, window: float) -> float:
        for t, a in self.samples:  # the oldest sample inside the window (the deque keeps only `stable` s)
            if t >= now - window:
                return (area - a) / (now - t) if now > t else 0.0
        return 0.0

    def reconcile(self, obs: Observations, fleet: FleetView) -> int:
        now, area = obs.time, fleet.in_system_integral()
        if not self.samples:
            self.samples.append((now - self.tick_seconds, area))  # nothing known before the first tick
        stable, panic = self._mean(now, area, self.stable), self._mean(now, area, self.panic)
        self.samples.append((now, area))
        while self.samples[0][0] < now - self.stable:
            self.samples.popleft()
        ready = max(obs.ready_replicas, 1)
        low, high = ready // 2, math.ceil(1000 * ready)
        dspc, dppc = math.ceil(stable / self.target), math.ceil(panic / self.target)
        desired_stable, desired_panic = min(max(dspc, low), high), min(max(dppc, low), high)
        if dppc / ready >= 2.0:
            self.panic_time = now
        elif self.panic_time is not None and self.panic_time + self.stable < now:
            self.panic_time, self.panic_pods = None, 0
        if self.panic_time is not None:
            self.panic_pods = max(self.panic_pods, desired_stable, desired_panic)
            wanted = self.panic_pods
        else:
            wanted = desired_stable
        return min(max(wanted, self.min), self.max)


class Wva:
    """llm-d's workload-variant-autoscaler, V1 saturation analyser, one variant
    (llm-d/llm-d-workload-variant-autoscaler docs/saturation-analyzer.md, internal/saturation/analyzer.go).

    Every 30 s (the saturation engine's hard-coded period) from per-pod max_over_time(...[1m]) of
    vllm:kv_cache_usage_perc and vllm:num_requests_waiting. A replica is saturated if kv >= kv_threshold (0.8)
    or queue >= queue_threshold (5); over the non-saturated ones, spare = threshold - usage on average;
    scale up (+1 on Ready replicas) if spare kv < 0.1 or spare queue < 3, unless replicas are still starting;
    scale down (-1) if, with the load of one fewer replica spread over the rest, both spares stay above
    their triggers and >= 2 replicas are unsaturated. The target is then applied by the HPA the chart
    ships (reading wva_desired_replicas, AverageValue 1): stabilisation 240 s both ways, at most 10 pods per
    150 s. The simulated pool has no per-pod view: each pod is taken at the pool's mean, KV usage as the
    share of its slots in use (a slot is one sequence's KV budget).
    """

    tick_seconds = 15.0  # sees every scrape, acts every `period`

    def __init__(self, slots: int, min_replicas: int, max_replicas: int, kv_threshold: float = 0.8,
                 queue_threshold: float = 5.0, kv_spare: float = 0.1, queue_spare: float = 3.0,
                 period: float = 30.0, hpa_window: float = 240.0, name: str | None = None):
        self.name = name or f"wva-kv-{kv_threshold:g}"
        self.slots, self.min, self.max = slots, min_replicas, max_replicas
        self.kv_t, self.q_t, self.kv_spare, self.q_spare = kv_threshold, queue_threshold, kv_spare, queue_spare
        self.period, self.hpa_window = period, hpa_window
        self.gauges: deque[tuple[float, float, float]] = deque()  # (time, waiting, running), last minute
        self.targets: deque[tuple[float, int]] = deque()  # WVA's desired replicas, for the HPA's windows
        self.next_action: float | None = None

    def initial_replicas(self, default: int) -> int:
        return min(max(default, self.min), self.max)

    def target(self, current: int, ready: int, kv: float, queue: float) -> int:
        """The saturation analyser's one-step target from per-pod peak KV usage and queue length."""
        if current > ready:
            return current  # replicas pending: no further scale-up, nothing to remove safely
        if kv >= self.kv_t or queue >= self.q_t:
            return ready + 1  # every (identical) replica saturated
        if self.kv_t - kv < self.kv_spare or self.q_t - queue < self.q_spare:
            return ready + 1
        if ready >= 2:
            spread = ready / (ready - 1)
            if self.kv_t - kv * spread >= self.kv_spare and self.q_t - queue * spread >= self.q_spare:
                return ready - 1
        return ready

    def reconcile(self, obs: Observations, fleet: FleetView) -> int:
        current, now = obs.current_replicas, obs.time
        if obs.waiting is not None and obs.running is not None:
            self.gauges.append((now, obs.waiting, obs.running))
        while self.gauges and self.gauges[0][0] <= now - 60.0:
            self.gauges.popleft()
        if self.next_action is None:
            self.next_action = now
            self.targets.append((now, current))  # the HPA has been holding the current count (a warm start)
        if now >= self.next_action and self.gauges and obs.ready_replicas > 0:
            self.next_action = now + self.period
            ready = obs.ready_replicas
            kv = max(r for _, _, r in self.gauges) / (ready * self.slots)
            queue = max(w for _, w, _ in self.gauges) / ready
            self.targets.append((now, self.target(current, ready, min(kv, 1.0), queue)))
        while self.targets and self.targets[0][0] <= now - self.hpa_window:
            self.targets.popleft()
        if not self.targets:
            return min(max(current, self.min), self.max)
        up, down = min(t for _, t in self.targets), max(t for _, t in self.targets)
        wanted = min(max(current, up), down)  # HPA stabilisation: clamp(N, min over window, max over window)
        wanted = min(wanted, current + 10)  # 10 pods per 150 s (one scaling step per window in practice)
        return min(max(wanted, self.min), self.max)


class DynamoPlanner:
    """NVIDIA Dynamo's SLA planner, throughput-based (ai-dynamo/dynamo components/planner/src/dynamo/planner,
    utils/planner_core.py and defaults.py; docs.nvidia.com/dynamo planner-design), aggregated serving.

    Every adjustment interval (180 s) it reads the last interval's request count and duration from
    Prometheus, feeds the count to a load predictor and sets replicas = max(ceil(predicted rps / rps one
    engine sustains at the SLA), min_endpoint); no stabilisation or rate limit beyond the cadence. The
    per-engine rate comes from pre-deployment profiling; here it is `utilisation` x slots / mean service
    time (the knob a profile would set). Predictor: Dynamo's Kalman option (local linear trend, F = [[1,1],[0,1]],
    q_level 1.0, q_trend 0.1, r 10.0, P0 = 1000 I, used from 5 points on; before that, the last value);
    its default ARIMA (pmdarima auto_arima) is not reproduced. Correction factors are off, as the current
    design doc says.
    """

    tick_seconds = 15.0

    def __init__(self, slots: int, min_replicas: int, max_replicas: int, utilisation: float = 0.8,
                 interval: float = 180.0, name: str | None = None):
        self.name = name or f"dynamo-util-{utilisation:g}"
        self.slots, self.min, self.max, self.utilisation, self.interval = slots, min_replicas, max_replicas, utilisation, interval
        self.rates: list[float] = []
        self.service: list[float] = []
        self.next_action: float | None = None
        self.x = np.zeros(2)
        self.p = np.eye(2) * 1000.0
        self.points = 0
        self.replicas: int | None = None

    def initial_replicas(self, default: int) -> int:
        return min(max(default, self.min), self.max)

    def predict(self, count: float) -> float:
        """Fold one interval's request count into the Kalman filter and return the next interval's forecast."""
        f = np.array([[1.0, 1.0], [0.0, 1.0]])
        q, r = np.diag([1.0, 0.1]), 10.0
        if self.points == 0:
            self.x = np.array([count, 0.0])
        else:
            self.x, self.p = f @ self.x, f @ self.p @ f.T + q  # predict to this interval, then correct
            gain = self.p[:, 0] / (self.p[0, 0] + r)
            self.x = self.x + gain * (count - self.x[0])
            self.p = self.p - np.outer(gain, self.p[0, :])
        self.points += 1
        if self.points < 5:
            return count
        return max(float(self.x[0] + self.x[1]), 0.0)

    def reconcile(self, obs: Observations, fleet: FleetView) -> int:
        current, now = obs.current_replicas, obs.time
        if obs.arrival_rate is not None:
            self.rates.append(obs.arrival_rate)
        if obs.service_time:
            self.service.append(obs.service_time)
        if self.next_action is None:
            self.next_action = now + self.interval
        if now >= self.next_action:
            self.next_action = now + self.interval
            if self.rates and self.service:
                count = float(np.mean(self.rates)) * self.interval  # increase(requests[180s])
                engine_rps = self.utilisation * self.slots / float(np.mean(self.service))
                demand = self.predict(count) / self.interval
                self.replicas = math.ceil(demand / engine_rps) if demand > 0 else 0
            self.rates, self.service = [], []
        wanted = current if self.replicas is None else self.replicas
        return min(max(wanted, self.min), self.max)


class Static:
    """A fixed fleet, warm from the start: provisioned for the peak, or any count (tuned in hindsight by a sweep)."""

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
        return default  # the same warm fleet as every adaptive policy (see compare.starting_replicas)

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
    return bisect_boundary(meets, low, high)[1]


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
