"""A discrete-event model of a GPU fleet serving a request trace, driven by one scaling policy.

Replicas have `slots` concurrent requests each; requests wait in one FIFO queue across the pool. A replica
ordered at t serves from t + its cold start. Every reconcile interval the policy sees only what Prometheus
and the Deployment would show (windowed rates, service-time statistics of completed requests, delayed
gauges, replica counts, measured cold starts) and returns the replica count it wants.

Lean on purpose: arrivals are a sorted array walked by index, the heap holds only completions and replicas
becoming Ready, and per-request state is two floats.

Load-dependent service (FleetConfig.token_time_curve, off by default): vLLM batches every running sequence
into each decode step, so a token takes longer the more requests a replica runs (core/capacity.py). The
approximation here: a request's decode time (its service time minus prefill, as ServiceModel gives it at
one running request) is multiplied once, when it starts, by t(n) / t(1), n = busy slots per serving replica
at that moment (the pool's slots are shared, so n is the pool mean, not one replica's); it is not re-stretched
as n changes later. An optional KV cap (FleetConfig.kv_max_sequences) holds a replica to that many sequences
whatever `slots_per_replica` says, as a KV cache of that many requests' tokens would.
"""

from __future__ import annotations

import heapq
import math
import time as wallclock
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import numpy as np

from inferencepool.core import signals
from inferencepool.core.capacity import TokenTimeCurve
from inferencepool.core.policy import Observations


@dataclass(frozen=True)
class ServiceModel:
    """Seconds a slot is busy with a request: prefill at a token throughput, then one decode step per token.

    Defaults are for a 14-32B model on one H100 serving one request per slot.
    """

    prefill_tokens_per_second: float = 8000.0
    decode_seconds_per_token: float = 0.025

    def prefill_seconds(self, prompt_tokens: np.ndarray) -> np.ndarray:
        return np.asarray(prompt_tokens, dtype=float) / self.prefill_tokens_per_second

    def service_seconds(self, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        return self.prefill_seconds(prompt_tokens) + np.asarray(output_tokens, dtype=float) * self.decode_seconds_per_token


@dataclass(frozen=True)
class FleetConfig:
    slots_per_replica: int = 1
    gpus_per_replica: int = 1
    cold_start_seconds: float = 180.0  # mean, pod created -> Ready (node, image, weights, warm-up)
    cold_start_distribution: str = "lognormal"  # lognormal | uniform | fixed
    cold_start_spread: float = 0.25  # lognormal sigma, or uniform half-width as a fraction of the mean
    reconcile_seconds: float = 15.0
    # As the operator reads Prometheus (observe.py): every rate over [2m]; the arrival dispersion of completions
    # per 15 s within it, and per 60 s and 300 s over 8 such windows; cold start = the longest of the 5 newest
    # Ready pods.
    rate_window_seconds: float = 120.0
    service_window_seconds: float = 120.0
    burst_window_seconds: float = 15.0
    scrape_delay_seconds: float = 15.0  # how old the metrics are when the policy reads them
    # The SLO window the queue-time histogram is read over (Observations.slo_window_*), and the SLO's wait
    # target (a vLLM histogram bucket bound); None: not measured.
    slo_window_seconds: float = 60.0
    slo_target_seconds: float | None = None
    # Load-dependent service (see the module docstring); None: a request's service time does not depend on load.
    token_time_curve: TokenTimeCurve | None = None  # seconds per output token against running requests per replica
    # KV cap: the most sequences a replica's KV cache holds (below slots_per_replica it binds); None: no cap.
    # Observations then carry kv_cache_usage = running per replica / this (sequences of equal size) and 0 preemptions
    # (the fleet admits no more than fit, so it never preempts).
    kv_max_sequences: int | None = None
    curve_points: int = 240  # (running per replica, token time) pairs kept for the observed curve, newest
    # The wait tail decide() fits its correction to (Observations.wait_exceed_*): the share of the requests that
    # started within the rate window whose queue wait exceeded this many seconds; None: not reported (the
    # default, so the frontier benchmarks are as measured before it).
    wait_tail_target_seconds: float | None = None


class ColdStarts:
    """The k-th replica ever ordered gets the k-th draw, so a seed gives every policy the same cold starts."""

    def __init__(self, config: FleetConfig, seed: int):
        self._config = config
        self._rng = np.random.default_rng([seed, 1])
        self._draws = np.empty(0)

    def _draw(self, n: int) -> np.ndarray:
        c = self._config
        mean = c.cold_start_seconds
        if c.cold_start_distribution == "fixed" or c.cold_start_spread == 0:
            return np.full(n, mean)
        if c.cold_start_distribution == "uniform":
            return mean * (1 + c.cold_start_spread * self._rng.uniform(-1, 1, n))
        if c.cold_start_distribution == "lognormal":
            sigma = c.cold_start_spread
            return self._rng.lognormal(math.log(mean) - sigma * sigma / 2, sigma, n)
        raise ValueError(f"cold start distribution {c.cold_start_distribution!r}: expected lognormal, uniform or fixed")

    def upcoming(self, first: int, n: int) -> np.ndarray:
        """Draws first .. first+n-1."""
        while len(self._draws) < first + n:
            self._draws = np.concatenate([self._draws, self._draw(max(1024, first + n - len(self._draws)))])
        return self._draws[first : first + n]


class FleetView:
    """What a policy may know beyond Observations: only the oracle uses it (future cold starts)."""

    def __init__(self, cold_starts: ColdStarts):
        self.cold_starts = cold_starts
        self.replicas_ordered_ever = 0
        self.in_system_area = 0.0  # integral over time of requests in the pool (queued + running), to now
        self.now = 0.0

    def in_system_integral(self) -> float:
        """Request-seconds in the pool since t=0: what Knative's queue-proxies average concurrency from."""
        return self.in_system_area

    def next_cold_starts(self, n: int) -> np.ndarray:
        return self.cold_starts.upcoming(self.replicas_ordered_ever, n)


class Policy(Protocol):
    """A scaling policy. It may set `tick_seconds` to reconcile on its own period (default: the fleet's)."""

    name: str

    def initial_replicas(self, default: int) -> int: ...

    def reconcile(self, obs: Observations, fleet: FleetView) -> int: ...


@dataclass
class Run:
    """One policy on one trace: per-request waits and the replica timeline."""

    policy: str
    arrivals: np.ndarray
    waits: np.ndarray  # seconds queued before a slot started the request (inf: never served)
    prefill: np.ndarray  # seconds of prefill, for TTFT
    change_times: np.ndarray  # replica counts change at these times (the first is 0)
    ordered: np.ndarray  # Deployment replicas from each change time on
    ready: np.ndarray  # Ready replicas from each change time on
    end: float  # billing stops here
    scale_events: int
    wall_seconds: float
    gpus_per_replica: int = 1
    draining: np.ndarray | None = None  # removed replicas still finishing in-flight requests (billed)
    score_from: float = 0.0  # GPU-hours and SLO are counted from here on (a warm-up before it is not scored)

    @property
    def billed(self) -> np.ndarray:
        """Replicas paid for: the Deployment's, plus removed ones until their last request finishes."""
        return self.ordered if self.draining is None else self.ordered + self.draining

    @property
    def gpu_hours(self) -> float:
        starts = np.maximum(self.change_times, self.score_from)
        durations = np.maximum(np.diff(np.append(starts, max(self.end, self.score_from))), 0.0)
        return float(np.sum(self.billed * durations)) * self.gpus_per_replica / 3600.0


_DONE, _READY = 0, 1


def simulate(
    arrivals: np.ndarray,
    service: np.ndarray,
    prefill: np.ndarray,
    policy: Policy,
    config: FleetConfig,
    initial_replicas: int,
    cold_starts: ColdStarts,
    progress: Callable[[float], None] | None = None,
    score_from: float = 0.0,
) -> Run:
    """Play the trace through the fleet under `policy`; the fleet starts with `initial_replicas` warm.

    A removed Ready replica takes no new request and is billed until its in-flight requests finish
    (Kubernetes sends SIGTERM, vLLM drains): with one slot per replica that is exact; with more, a pool of
    shared slots cannot say which replica a completion belonged to, so ceil(busy retiring slots / slots)
    replicas are billed, the fewest that could still hold them.
    """
    started = wallclock.perf_counter()
    arr = arrivals.tolist()
    svc = service.tolist()
    pre = prefill.tolist()
    n = len(arr)
    end = arr[-1] if n else 0.0
    slots = min(config.slots_per_replica, config.kv_max_sequences or config.slots_per_replica)
    curve = config.token_time_curve
    slowdown = _slowdown_table(curve, slots) if curve is not None else None
    dur = list(svc)  # seconds each request really took (svc stretched by load when the curve is on)
    tick = float(getattr(policy, "tick_seconds", None) or config.reconcile_seconds)
    delay = config.scrape_delay_seconds
    windows = (config.rate_window_seconds, config.service_window_seconds, config.burst_window_seconds)
    fleet = FleetView(cold_starts)

    waits = [math.inf] * n
    heap: list = []
    queue: deque = deque()
    ordered = ready = initial_replicas
    free, busy, retiring = ordered * slots, 0, 0  # retiring: busy slots of removed replicas, gone when done
    pending: dict[int, tuple[float, float]] = {}  # replica id -> (ordered at, ready at)
    next_id = 0
    measured_cold: list[float] = []
    done_t: list[float] = []  # completion log: times, and running sums for windowed statistics
    sum_s, sum_s2, sum_p = [0.0], [0.0], [0.0]
    sum_db, sum_da = [0.0], [0.0]  # decode seconds of completions: at one running request, and as served
    gauge_npr: list[float] = []  # running per serving replica at each tick
    gauge_kv: list[float | None] = []  # KV usage (running per replica / kv_max_sequences) at each tick
    points: deque = deque(maxlen=config.curve_points)  # (running per replica, token time) the policy has seen
    gauge_t: list[float] = []
    gauge_wait: list[int] = []
    gauge_run: list[int] = []
    changes = [(0.0, ordered, ready, 0)]
    last_t = 0.0  # for the integral of requests in the pool (KPA's concurrency)
    scale_events = 0
    i = 0
    # The first decision waits until the metric windows are full: a fleet that has just started has no
    # representative service times yet (short requests finish first), so acting earlier would be an artefact.
    warm = max(config.rate_window_seconds, config.service_window_seconds) + delay
    next_tick = tick * math.ceil(warm / tick)
    next_report = 0.1

    started_t: list[float] = []  # when each request left the queue, and whether its wait met the SLO target
    started_good: list[int] = [0]  # running count
    target = config.slo_target_seconds
    window = config.slo_window_seconds
    tail_target = config.wait_tail_target_seconds
    tail_t: list[float] = []  # when each request left the queue, and how many so far waited over tail_target
    tail_over: list[int] = [0]

    def start(j: int, now: float) -> None:
        waits[j] = now - arr[j]
        s = svc[j]
        if slowdown is not None:  # busy already counts j; the pool's slots are shared, so n is the mean
            serving = ready + -(-retiring // slots)
            x = (busy / serving if serving else 1.0) * _GRID
            k = min(int(x), len(slowdown) - 2)
            s = pre[j] + (s - pre[j]) * (slowdown[k] + (slowdown[k + 1] - slowdown[k]) * (x - k))
            dur[j] = s
        heapq.heappush(heap, (now + s, _DONE, j))
        if target is not None:
            started_t.append(now)
            started_good.append(started_good[-1] + (waits[j] <= target))
        if tail_target is not None:
            tail_t.append(now)
            tail_over.append(tail_over[-1] + (waits[j] > tail_target))

    inf = math.inf
    while True:
        t_arrival = arr[i] if i < n else inf
        t_event = heap[0][0] if heap else inf
        t_tick = next_tick if next_tick <= end else inf
        t_next = min(t_arrival, t_event, t_tick)
        if t_next < inf:
            fleet.in_system_area += (t_next - last_t) * (busy + len(queue))
            last_t = t_next
        if t_event <= t_arrival and t_event <= t_tick:
            if t_event == inf:
                break
            now, kind, j = heapq.heappop(heap)
            if kind == _DONE:
                busy -= 1
                done_t.append(now)
                s = dur[j]
                sum_db.append(sum_db[-1] + svc[j] - pre[j])
                sum_da.append(sum_da[-1] + s - pre[j])
                sum_s.append(sum_s[-1] + s)
                sum_s2.append(sum_s2[-1] + s * s)
                sum_p.append(sum_p[-1] + pre[j])
                if retiring:
                    retiring -= 1
                    draining = -(-retiring // slots)
                    if draining != changes[-1][3] and now <= end:
                        changes.append((now, ordered, ready, draining))
                elif queue:
                    busy += 1
                    start(queue.popleft(), now)
                else:
                    free += 1
            else:  # a replica became Ready
                if j not in pending:
                    continue  # cancelled while starting
                measured_cold.append(now - pending.pop(j)[0])
                ready += 1
                changes.append((now, ordered, ready, -(-retiring // slots)))
                for _ in range(slots):
                    if queue:
                        busy += 1
                        start(queue.popleft(), now)
                    else:
                        free += 1
        elif t_arrival <= t_tick:
            if free:
                free -= 1
                busy += 1
                start(i, t_arrival)
            else:
                queue.append(i)
            i += 1
        else:
            now = next_tick
            next_tick += tick
            fleet.now = now
            gauge_t.append(now)
            gauge_wait.append(len(queue))
            gauge_run.append(busy)
            serving = ready + -(-retiring // slots)
            gauge_npr.append(busy / serving if serving else 0.0)
            gauge_kv.append(gauge_npr[-1] / config.kv_max_sequences if config.kv_max_sequences and serving else None)
            if getattr(policy, "needs_metrics", True):
                obs = _observe(now, delay, windows, arr, done_t, sum_s, sum_s2, sum_p, gauge_t, gauge_wait,
                               gauge_run, ordered, ready, measured_cold)
                if target is not None and now - delay >= window:
                    w_end = math.floor((now - delay) / window) * window
                    hi, lo = bisect_left(started_t, w_end), bisect_left(started_t, w_end - window)
                    good = (started_good[hi] - started_good[lo]) / (hi - lo) if hi > lo else None
                    obs = replace(obs, slo_window_end=w_end, slo_window_good=good)
                if tail_target is not None:
                    span = config.rate_window_seconds
                    hi, lo = bisect_right(tail_t, now - delay), bisect_right(tail_t, now - delay - span)
                    if hi > lo:
                        obs = replace(obs, wait_exceed_share=(tail_over[hi] - tail_over[lo]) / (hi - lo),
                                      wait_exceed_requests=float(hi - lo), wait_window_seconds=span)
                if curve is not None or config.kv_max_sequences:
                    obs = _observe_capacity(obs, now - delay, config, curve, done_t, sum_db, sum_da, gauge_t,
                                            gauge_npr, gauge_kv, points)
            else:  # a policy with its own metric path (Knative's queue-proxies) needs only the replica counts
                obs = Observations(time=now, current_replicas=ordered, ready_replicas=ready)
            wanted = max(int(policy.reconcile(obs, fleet)), 0)
            if wanted != ordered:
                scale_events += 1
            if wanted > ordered:
                colds = fleet.next_cold_starts(wanted - ordered)
                fleet.replicas_ordered_ever += wanted - ordered
                for cold in colds.tolist():
                    pending[next_id] = (now, now + cold)
                    heapq.heappush(heap, (now + cold, _READY, next_id))
                    next_id += 1
                ordered = wanted
            while ordered > wanted:  # Kubernetes removes not-Ready pods first, the newest first
                ordered -= 1
                if pending:
                    del pending[max(pending)]
                    continue
                ready -= 1
                idle = min(free, slots)
                free -= idle
                retiring += slots - idle  # in-flight requests finish; their slots then disappear
            state = (ordered, ready, -(-retiring // slots))
            if changes[-1][1:] != state:
                changes.append((now, *state))
            if progress is not None and end > 0 and now >= next_report * end:
                progress(now / end)
                next_report += 0.1

    changes = [c for c in changes if c[0] <= end] or changes[:1]  # billing stops at the last arrival
    times, counts, readies, drains = (np.array(x) for x in zip(*changes))
    return Run(
        policy=policy.name,
        arrivals=arrivals,
        waits=np.array(waits),
        prefill=prefill,
        change_times=times,
        ordered=counts,
        ready=readies,
        end=end,
        scale_events=scale_events,
        wall_seconds=wallclock.perf_counter() - started,
        gpus_per_replica=config.gpus_per_replica,
        draining=drains,
        score_from=score_from,
    )


_GRID = 16  # slowdown table points per running request


def _slowdown_table(curve: TokenTimeCurve, slots: int) -> list[float]:
    """t(n) / t(1) at n = 0, 1/_GRID, ..., slots + 1/_GRID: looked up per request start (a curve call is slow)."""
    return [curve.slowdown(k / _GRID, 1.0) for k in range(slots * _GRID + 2)]


def _observe_capacity(obs, seen, config, curve, done_t, sum_db, sum_da, gauge_t, gauge_npr, gauge_kv,
                      points) -> Observations:
    """The capacity fields the operator reads (observe.py): mean running per replica over the service window,
    the token-weighted mean per-token time of the window's completions (what rate(inter_token_latency_seconds
    _sum) / rate(_count) gives), the curve fitted to the newest `config.curve_points` such pairs, KV usage."""
    window = config.service_window_seconds
    gl, gh = bisect_right(gauge_t, seen - window), bisect_right(gauge_t, seen)
    running = sum(gauge_npr[gl:gh]) / (gh - gl) if gh > gl else None
    fields: dict = {}
    if curve is not None:
        hi, lo = bisect_right(done_t, seen), bisect_right(done_t, seen - window)
        base = sum_db[hi] - sum_db[lo]
        if running and running > 0 and base > 0:
            points.append((running, curve(1.0) * (sum_da[hi] - sum_da[lo]) / base))
        if points:
            fields.update(token_time_curve=TokenTimeCurve.fit(points), service_concurrency=running or None)
    if config.kv_max_sequences and gh > 0 and gauge_kv[gh - 1] is not None:
        fields.update(kv_cache_usage=gauge_kv[gh - 1], preemptions=0.0)
    return replace(obs, **fields)


def _observe(now, delay, windows, arr, done_t, sum_s, sum_s2, sum_p, gauge_t, gauge_wait, gauge_run,
             ordered, ready, measured_cold) -> Observations:
    """What Prometheus shows at `now`, as observe.py reads it: rates and histograms over windows ending `delay`
    ago, the arrival CV from the dispersion of completions per burst window, delayed gauges."""
    seen = now - delay
    rate = service = prefill = samples = minute_rate = span = None
    service_cv = arrival_cv = 1.0
    dispersions = []
    if seen > 0:
        span = min(windows[0], seen)
        rate = (bisect_right(arr, seen) - bisect_right(arr, seen - span)) / span
        hi, lo = bisect_right(done_t, seen), bisect_right(done_t, seen - windows[1])
        samples = hi - lo
        if hi > lo:
            k = hi - lo
            service = (sum_s[hi] - sum_s[lo]) / k
            prefill = (sum_p[hi] - sum_p[lo]) / k
            variance = max((sum_s2[hi] - sum_s2[lo]) / k - service * service, 0.0)
            service_cv = math.sqrt(variance) / service if service > 0 else 1.0
        step = windows[2]
        reach = max(windows[0], signals.DISPERSION_SAMPLES * step * signals.DISPERSION_SCALES[-1])
        steps = range(int(min(reach, seen) // step) + 1)
        done_edges = [bisect_right(done_t, seen - j * step) for j in steps]
        arrival_edges = [bisect_right(arr, seen - j * step) for j in steps]
        for k in signals.DISPERSION_SCALES:  # as observe.dispersion_queries: windows of k bursts, stepping one;
            # completions in the burst window, arrivals (= completions + growth of the queue) in the longer ones
            edges = done_edges if k == 1 else arrival_edges
            length = step * k
            last = int(min(max(windows[0], signals.DISPERSION_SAMPLES * length), seen) // step) - k
            rates = [(edges[j] - edges[j + k]) / length for j in range(last + 1)]
            index = None
            if len(rates) > 1:
                mean = sum(rates) / len(rates)
                index = signals.dispersion(sum((r - mean) ** 2 for r in rates) / len(rates), mean, length)
            dispersions.append((length, index))
        arrival_cv = math.sqrt(dispersions[0][1]) if dispersions[0][1] is not None else 1.0
        minute = min(60.0, seen)
        minute_rate = (bisect_right(arr, seen) - bisect_right(arr, seen - minute)) / minute
    g = bisect_right(gauge_t, seen) - 1
    return Observations(
        time=now,
        current_replicas=ordered,
        ready_replicas=ready,
        arrival_rate=rate,
        service_time=service,
        service_samples=samples,
        arrival_cv=arrival_cv,
        arrival_dispersion=tuple(dispersions),
        service_cv=service_cv,
        prefill_time=prefill,
        waiting=float(gauge_wait[g]) if g >= 0 else None,
        running=float(gauge_run[g]) if g >= 0 else None,
        cold_start_seconds=max(measured_cold[-5:]) if measured_cold else None,
        metrics_age_seconds=delay,
        minute_rate=minute_rate,
        rate_window_seconds=span,
    )
