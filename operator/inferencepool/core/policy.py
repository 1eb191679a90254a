"""The one scaling decision, shared by the operator and the simulator.

`decide(spec, observations, history)` is pure: no clock, no I/O. The operator feeds it what Prometheus and
the Deployment show and writes the Decision to the cluster; the simulator feeds it what its fleet shows.
So what the simulator measures is what the cluster gets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from inferencepool.core import forecast as fc
from inferencepool.core.capacity import Capacity, KvState, TokenTimeCurve, effective_capacity
from inferencepool.core.queueing import Queue, TargetUnreachable
from inferencepool.core.sanitize import clean
from inferencepool.core.schedule import Schedule, floor as scheduled_floor
from inferencepool.core.signals import dispersion_at


@dataclass(frozen=True)
class PoolSpec:
    """What a pool asks for: the SLO, the floor, the limits and the scaling behaviour."""

    slo_metric: str = "wait"  # "wait" (queue wait) or "ttft" (queue wait + prefill)
    slo_percentile: float | None = 0.99  # None: the SLO is on the mean
    slo_target_seconds: float = 10.0
    min_replicas: int = 1  # warm floor: never scaled below
    max_replicas: int = 16
    max_gpus: int | None = None  # GPU budget, over all replicas
    gpus_per_replica: int = 1
    slots_per_replica: int = 1  # requests one replica serves at once within its SLO
    scale_down_window_seconds: float = 300.0
    scale_down_max_step: int = 1  # replicas removed per decision at most
    prediction: bool = True
    prediction_horizon_seconds: float | None = None  # None: the measured cold start
    default_cold_start_seconds: float = 180.0  # horizon while no cold start has been measured
    forecast_quantile: float = 0.9  # size for this upper quantile of the forecast
    ramp_detection: bool = True  # with prediction: a rise between rate windows beyond their noise is extrapolated
    max_metrics_age_seconds: float = 120.0  # older observations are stale: hold
    gpu_hour_price: float = 0.0
    max_token_time_seconds: float | None = None  # inter-token latency target: caps concurrency (with a curve)
    # Error-budget feedback (off while None): the share of SLO windows that must meet the SLO. Each measured
    # window moves a headroom factor on the planning rate: up by FEEDBACK_STEP when it missed, down by
    # FEEDBACK_STEP x (1 - objective) / objective when it met, so it settles where 1 - objective of the
    # windows miss: it spends a healthy budget and adds headroom while it burns, whatever the model's error.
    slo_objective: float | None = None
    # Transient sizing (off while None): Erlang-C is steady state; a backlog of `waiting` requests also needs
    # the capacity to drain it within this many seconds, added on top (vllm:num_requests_waiting).
    backlog_drain_seconds: float | None = None
    # Scheduled warm floors (core/schedule.py): while a window is active its minReplicas replaces min_replicas.
    # Read at obs.time as unix seconds (the simulator passes its trace's wall-clock time).
    schedule: Schedule | None = None
    # Fitted wait correction (see fit_correction): scale the model's tail by a factor learnt from vLLM's
    # queue-time (or TTFT) histogram, in [1, MAX_WAIT_CORRECTION]; only when observations carry the tail.
    wait_correction: bool = True
    # Burst memory (off while None): size for the burstiest arrival CV measured over this trailing span, not
    # the last window's. Burstiness comes in spells (hours of clumped arrivals on ServeGen), and a 2-minute
    # dispersion estimate flickers inside one; the trailing max keeps the headroom through the spell.
    burst_memory_seconds: float | None = None
    # Size with the arrival dispersion at the time scale the SLO feels (15/60/300 s windows), not the burst
    # window's CV. Off by default: over a 300 s window's 40-minute span a rate shift reads as burstiness
    # (a backfilled 2 -> 4 -> 2 req/s history sized 7 replicas where 3 serve, and rose on the way down).
    dispersion_windows: bool = False
    # Hindsight floor (off while None): a warm floor at this upper quantile of the pool's own per-minute need
    # over the trailing `hindsight_seconds`, each minute sized by Erlang-C on its measured arrival rate
    # (Observations.minute_rate) and service time, not on the forecast's upper bound: what a constant fleet
    # tuned in hindsight on the recent past does, but moving with the load (see hindsight_floor).
    hindsight_quantile: float | None = None
    hindsight_seconds: float = 3600.0
    # The error-budget headroom (slo_objective) scales the hindsight floor too (off by default): the learnt
    # floor is Erlang-C's per-minute answer, which errs by the workload's and the cold start's own amount
    # (it over-asks ~10% on a smooth trace; a long cold start leaves its top minutes uncovered), so the
    # measured attainment calibrates it as it does the sized need (see hindsight_floor).
    hindsight_feedback: bool = False

    @property
    def replica_cap(self) -> int:
        """The most replicas the limits allow: max replicas and the GPU budget."""
        cap = self.max_replicas
        if self.max_gpus is not None:
            cap = min(cap, self.max_gpus // self.gpus_per_replica)
        return max(cap, 0)


@dataclass(frozen=True)
class Observations:
    """What the pool looks like now, as Prometheus and the Deployment show it.

    None means "not known": a missing or NaN metric. Rates are per second, times in seconds.
    """

    time: float  # seconds on any monotonic clock (unix time in the operator, sim time in the simulator)
    current_replicas: int  # the Deployment's spec.replicas
    ready_replicas: int = 0
    arrival_rate: float | None = None  # requests / s over the rate window
    service_time: float | None = None  # mean seconds a slot is busy with one request
    service_samples: float | None = None  # requests completed in service_time's window; None: trust it as is
    arrival_cv: float = 1.0  # coefficient of variation of inter-arrival times
    # (window seconds, index of dispersion of counts or None) at a few windows (observe.py, simulate/fleet.py);
    # when set, decide() takes the CV at the time scale the SLO feels (dispersion_timescale), not arrival_cv
    arrival_dispersion: tuple[tuple[float, float | None], ...] = ()
    service_cv: float = 1.0  # coefficient of variation of service times
    prefill_time: float | None = None  # mean prefill seconds, for a TTFT SLO
    waiting: float | None = None  # requests queued now
    running: float | None = None  # requests being served now
    unschedulable_replicas: int = 0  # pods Pending for lack of GPUs
    cold_start_seconds: float | None = None  # measured pod creation -> Ready
    metrics_age_seconds: float = 0.0  # how old the freshest sample is
    # Load-dependent service (core/capacity.py); without a curve the service time is a constant (as before).
    token_time_curve: TokenTimeCurve | None = None  # per-token time against running requests per replica
    service_concurrency: float | None = None  # running per replica while service_time was measured; None: running now
    kv_cache_usage: float | None = None  # mean vllm:kv_cache_usage_perc over replicas (0-1)
    preemptions: float | None = None  # vllm:num_preemptions_total increase over the window
    kv_sequences: float | None = None  # requests of the mean size a replica's KV cache holds (cache_config_info)
    # The last complete SLO window (spec.slo.window, one minute by default): when it ended (unix s in the
    # operator), and the share of its requests within the SLO target. The operator reads it from vLLM's
    # queue-time (or TTFT) histogram, increase(bucket{le=target}[w]) / increase(count[w]) (operator/slo.py,
    # interpolated between bounds); the simulator counts it exactly.
    slo_window_end: float | None = None
    slo_window_good: float | None = None  # None: no request in the window
    # The tail the model is checked against (fit_correction): the share of the last `wait_window_seconds`'
    # requests whose queue wait (TTFT for a TTFT SLO) exceeded the target, and how many requests that was.
    # The operator reads it from vLLM's histogram over the rate window (observe.wait_tail); the simulator counts.
    wait_exceed_share: float | None = None
    wait_exceed_requests: float | None = None
    wait_window_seconds: float | None = None
    # Arrivals per second over the last minute (the hindsight floor's per-minute need): observe.py counts them
    # by conservation, completions + the change of waiting + running over its 60 s dispersion window.
    minute_rate: float | None = None
    rate_window_seconds: float | None = None  # the window arrival_rate is averaged over (the ramp test's unit)


@dataclass(frozen=True)
class History:
    """What decide() carries from one call to the next; the operator keeps it in status."""

    forecaster: fc.HoltState | None = None
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, replicas) inside the scale-down window
    last_service_time: float | None = None
    last_scale_time: float | None = None
    headroom: float = 1.0  # error-budget feedback: factor on the planning rate
    feedback_window: float | None = None  # end of the last SLO window folded into `headroom`
    # Fitted wait correction: requests over the target, observed and as the model predicted, decayed sums
    tail_observed: float = 0.0
    tail_predicted: float = 0.0
    tail_time: float | None = None  # when the last window was folded in
    cv_peaks: tuple[tuple[float, float], ...] = ()  # burst memory: (minute start, highest arrival CV in it)
    minute_needs: tuple[tuple[float, int], ...] = ()  # hindsight floor: (minute start, replicas its rate needed)
    sized_cv: float | None = None  # the arrival CV the last decision sized with (before burst memory)

    def to_dict(self) -> dict:
        """JSON-ready, for the pool's status: a restarted operator resumes from it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> History:
        """Read what to_dict wrote; anything unreadable starts afresh rather than failing the pool."""
        if not data:
            return cls()
        try:
            forecaster = data.get("forecaster")
            return cls(
                forecaster=fc.HoltState(**forecaster) if forecaster else None,
                recommendations=tuple((float(t), int(r)) for t, r in data.get("recommendations", ())),
                last_service_time=data.get("last_service_time"),
                last_scale_time=data.get("last_scale_time"),
                headroom=float(data.get("headroom", 1.0)),
                feedback_window=data.get("feedback_window"),
                tail_observed=float(data.get("tail_observed", 0.0)),
                tail_predicted=float(data.get("tail_predicted", 0.0)),
                tail_time=data.get("tail_time"),
                cv_peaks=tuple((float(t), float(c)) for t, c in data.get("cv_peaks", ())),
                minute_needs=tuple((float(t), int(r)) for t, r in data.get("minute_needs", ())),
                sized_cv=data.get("sized_cv"),
            )
        except (TypeError, ValueError):
            return cls()


def window_maxima(kept, start: float, new: tuple[float, int]) -> tuple[tuple[float, int], ...]:
    """The recommendations after `start`, and `new`, that can still be the window's highest: a later one at
    least as high outlasts an earlier one, so a falling run is all that is kept. The highest is the same as
    over every recommendation, and the History holds at most one entry per replica count, whatever the window."""
    run: list[tuple[float, int]] = []
    for t, r in (*(k for k in kept if k[0] > start), new):
        while run and run[-1][1] <= r:
            run.pop()
        run.append((t, r))
    return tuple(run)


@dataclass(frozen=True)
class Decision:
    """A decision and everything needed to explain it in status, Events, logs and reports."""

    replicas: int
    previous_replicas: int
    constraint: str  # what bound the answer: slo, warm_floor, max_replicas, gpu_budget, ...
    reason: str  # the same words in status, the Event and the log line
    history: History
    required_replicas: int | None = None  # what the SLO alone needs, before floor and caps
    planning_rate: float | None = None  # the arrival rate sized for (forecast upper quantile or observed)
    horizon_seconds: float | None = None
    forecast_rate: float | None = None  # the forecast's upper quantile over the horizon (or the ramp's, if higher)
    ramp_rate: float | None = None  # the ramp's extrapolation to the horizon, while demand is on one (forecast.ramp)
    utilization: float | None = None  # at `replicas`, with the observed rate
    p_wait_exceeds: dict[int, float] = field(default_factory=dict)  # P(wait > target) at N-1, N, N+1
    predicted_wait: float | None = None  # the SLO statistic of the wait at `replicas`
    metrics_available: bool = True
    saturated: bool = False
    scaling_limited: bool = False
    capacity: Capacity | None = None  # effective slots and service time per replica, when load-dependent
    floor: int | None = None  # the warm floor at this moment (spec.minReplicas or the active schedule window's)
    floor_window: str | None = None  # the schedule window that set it; None: spec.minReplicas
    arrival_cv: float | None = None  # the arrival CV sized with (from arrival_dispersion at dispersion_timescale)
    held_cv: float | None = None  # the measured CV when a falling rate held the sized one lower (hold_cv_while_falling)
    dispersion_timescale: float | None = None  # seconds; None: obs.arrival_cv was used as it is
    wait_correction: float = 1.0  # the fitted factor on the model's tail (fit_correction)
    hindsight_floor: int | None = None  # the learnt floor (PoolSpec.hindsight_quantile), when on and known

    @property
    def action(self) -> str:
        if self.replicas > self.previous_replicas:
            return "scale_up"
        if self.replicas < self.previous_replicas:
            return "scale_down"
        return "hold"

    def cost_per_hour(self, spec: PoolSpec) -> float:
        return self.replicas * spec.gpus_per_replica * spec.gpu_hour_price


MIN_SERVICE_SAMPLES = 20  # completions below which a window's mean service time is blended with the last trusted
FEEDBACK_STEP = 0.1  # log-headroom added per missed SLO window
HEADROOM_RANGE = (0.6, 3.0)  # the feedback factor stays within this


def feedback(spec: PoolSpec, obs: Observations, history: History) -> History:
    """Fold a newly completed SLO window into the headroom factor (error-budget feedback; see PoolSpec)."""
    objective = spec.slo_objective
    end, good = obs.slo_window_end, obs.slo_window_good
    if objective is None or spec.slo_percentile is None or end is None or good is None:
        return history
    if history.feedback_window is not None and end <= history.feedback_window:
        return history
    met = good >= spec.slo_percentile
    step = -FEEDBACK_STEP * (1 - objective) / objective if met else FEEDBACK_STEP
    low, high = HEADROOM_RANGE
    headroom = min(max(history.headroom * math.exp(step), low), high)
    return replace(history, headroom=headroom, feedback_window=end)


MAX_WAIT_CORRECTION = 3.0  # the fitted factor stays within [1, this]
CORRECTION_PRIOR = 5.0  # pseudo-requests over the target on both sides: few exceedances leave the factor near 1
CORRECTION_MEMORY_SECONDS = 6 * 3600.0  # the sums decay with this time constant: slow, as the error is the workload's


def correction_factor(history: History) -> float:
    """(observed + prior) / (predicted + prior) requests over the target, clamped to [1, MAX_WAIT_CORRECTION].

    Never below 1: a model that over-states the tail sizes on the safe side, and the only evidence that it
    does comes from windows with almost nobody over the target, where the histogram says least.
    """
    ratio = (history.tail_observed + CORRECTION_PRIOR) / (history.tail_predicted + CORRECTION_PRIOR)
    return min(max(ratio, 1.0), MAX_WAIT_CORRECTION)


def fit_correction(spec: PoolSpec, obs: Observations, history: History, predicted_share: float | None) -> History:
    """Fold the newest window's observed and predicted requests over the target into the decayed sums.

    The model's prediction is P(wait > target) at the Ready slots and the observed rate (the window's own
    state). Windows after a scale or during a cold start count too: the stationary model ignores the
    backlog they hold, so they can only raise the factor (bounded at MAX_WAIT_CORRECTION), and leaving them
    out dropped just the windows where a mis-modelled fleet's misses showed (tried on the simulated fleet of
    tests/test_wait_correction.py). Consecutive windows overlap (a 2 m rate window read every 15 s), so
    each read adds the share of its window that is new.
    """
    share, requests, window = obs.wait_exceed_share, obs.wait_exceed_requests, obs.wait_window_seconds
    if not spec.wait_correction or predicted_share is None or share is None or not requests or not window:
        return history
    elapsed = window if history.tail_time is None else min(max(obs.time - history.tail_time, 0.0), window)
    if elapsed <= 0:
        return history
    decay, new = math.exp(-elapsed / CORRECTION_MEMORY_SECONDS), requests * elapsed / window
    return replace(history, tail_observed=history.tail_observed * decay + min(max(share, 0.0), 1.0) * new,
                   tail_predicted=history.tail_predicted * decay + predicted_share * new, tail_time=obs.time)


def hold_cv_while_falling(history: History, below_level: bool, cv: float) -> tuple[float, History]:
    """The arrival CV to size for while demand falls (the rate below Holt's smoothed level): no higher
    than the last decision's. Why: the dispersion windows then hold counts from before and after the fall,
    so their spread is the level change, not burstiness; after a burst ended, the reactive e2e pool read
    CV 4 at 2.3/s and ordered a replica 47 s after the load was back at its baseline. A rising or level
    rate takes the measured CV as it is, so burstier traffic is still followed, a tick or two later."""
    if history.sized_cv is not None and below_level:
        cv = min(cv, history.sized_cv)
    return cv, replace(history, sized_cv=cv)


def remember_burstiness(spec: PoolSpec, obs: Observations, history: History, cv: float) -> tuple[float, History]:
    """The arrival CV to size for: the highest per-minute peak of `cv` (this tick's CV) over the trailing
    burst memory (see PoolSpec)."""
    if not spec.burst_memory_seconds:
        return cv, history
    minute = math.floor(obs.time / 60.0) * 60.0
    kept = [(t, c) for t, c in history.cv_peaks if t > obs.time - spec.burst_memory_seconds and t != minute]
    now = max([c for t, c in history.cv_peaks if t == minute] + [cv])
    peaks = tuple(kept) + ((minute, now),)
    return max(c for _, c in peaks), replace(history, cv_peaks=peaks)


HINDSIGHT_MIN_MINUTES = 10  # minutes of per-minute needs before the hindsight floor acts


def hindsight_floor(spec: PoolSpec, obs: Observations, history: History, need: Callable[[float], int | None]
                    ) -> tuple[int | None, History]:
    """The learnt floor: the upper `hindsight_quantile` (nearest rank) of the per-minute needs over the
    trailing `hindsight_seconds`, and the History with this minute's need recorded (the newest read of a
    minute replaces the older ones, so each minute counts once). None while off or under
    HINDSIGHT_MIN_MINUTES minutes are known.

    Why a need per minute on its own measured rate: the SLO is scored per minute, so a constant fleet
    tuned in hindsight is the upper quantile of these needs; the earlier floor on decide()'s own sized
    need carried the forecast's upper bound and the 2-minute rate's noise and sat too high (SIMULATE.md).
    """
    q = spec.hindsight_quantile
    if q is None:
        return None, history
    minute = math.floor(obs.time / 60.0) * 60.0
    kept = [(t, r) for t, r in history.minute_needs if obs.time - spec.hindsight_seconds < t < minute]
    now = need(obs.minute_rate) if _usable(obs.minute_rate) else None
    if now is not None:
        kept.append((minute, now))
    else:
        kept += [(t, r) for t, r in history.minute_needs if t == minute]
    history = replace(history, minute_needs=tuple(kept))
    if len(kept) < HINDSIGHT_MIN_MINUTES:
        return None, history
    needs = sorted(r for _, r in kept)
    return needs[min(math.ceil(q * len(needs)) - 1, len(needs) - 1) if q > 0 else 0], history


def _usable(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and value >= 0


def wait_target(spec: PoolSpec, obs: Observations) -> float:
    """The queue-wait budget: the SLO itself, or for TTFT what is left after prefill."""
    if spec.slo_metric == "ttft":
        return spec.slo_target_seconds - (obs.prefill_time or 0.0)
    return spec.slo_target_seconds


def _corrected_percentile(spec: PoolSpec, factor: float) -> float:
    """The percentile the model must meet when its tail is `factor` times too light: P(W > t) x f <= 1 - p."""
    return 1.0 - (1.0 - spec.slo_percentile) / factor


def _servers_needed(spec: PoolSpec, queue: Queue, target: float, max_servers: int, factor: float = 1.0) -> int:
    if target <= 0:
        raise TargetUnreachable(f"prefill alone takes longer than the {spec.slo_target_seconds:g}s TTFT target")
    if spec.slo_percentile is None:
        return queue.servers_for_mean_wait(target / factor, max_servers=max_servers)
    return queue.servers_for_wait_quantile(target, _corrected_percentile(spec, factor), max_servers=max_servers)


def _slo_statistic(spec: PoolSpec, queue: Queue, servers: int, factor: float = 1.0) -> float:
    if spec.slo_percentile is None:
        return queue.mean_wait(servers) * factor
    return queue.wait_quantile(servers, _corrected_percentile(spec, factor))


def load_dependent_capacity(spec: PoolSpec, obs: Observations, service_time: float) -> Capacity | None:
    """Slots and service time at full concurrency from the observed per-token-time curve; None without one.

    The measured service time belongs to the concurrency it was measured at (obs.service_concurrency, else
    running per ready replica now); with neither known it is not rescaled, and only KV and ITL caps apply.
    """
    if obs.token_time_curve is None:
        return None
    running = obs.running / obs.ready_replicas if _usable(obs.running) and obs.ready_replicas > 0 else None
    measured = obs.service_concurrency if _usable(obs.service_concurrency) else running
    kv = KvState(usage=obs.kv_cache_usage, preemptions=obs.preemptions, running_per_replica=running,
                 sequences=obs.kv_sequences if _usable(obs.kv_sequences) and obs.kv_sequences > 0 else None)
    capacity = effective_capacity(
        spec.slots_per_replica, service_time, measured if measured is not None else spec.slots_per_replica,
        obs.token_time_curve, kv, spec.max_token_time_seconds,
    )
    return capacity


def dispersion_timescale(service_time: float, target: float) -> float:
    """The burst length whose count dispersion sizes the queue: service time + wait target.

    Why: a request waits when the slots are all held by requests that arrived within about one service
    time before it (for deterministic service the busy count is exactly the arrivals of the last S, so its
    peakedness is I(S)), and its wait exceeds the target when such crowding lasts the target longer.
    Slower swings are changes of rate (the rate window and the forecast follow them); faster ones average
    out within S. Checked against an independent FCFS simulation with bursts of 30-120 s
    (tests/test_dispersion.py): sizing with I(S + target) meets the p99 where I(15 s) misses it and
    I(300 s) over-provisions. Not enough: a burst that overloads even the sized fleet for longer than
    S + target (the queue grows through it) needs more; the fitted wait correction covers that.
    """
    return service_time + max(target, 0.0)


def horizon(spec: PoolSpec, obs: Observations) -> float:
    """How far ahead to look: a pod ordered now serves only after a cold start."""
    if spec.prediction_horizon_seconds is not None:
        return spec.prediction_horizon_seconds
    if obs.cold_start_seconds is not None and obs.cold_start_seconds > 0:
        return obs.cold_start_seconds
    return spec.default_cold_start_seconds


def decide(spec: PoolSpec, obs: Observations, history: History = History()) -> Decision:
    """The replica count for this pool now, and why.

    Order of rules: metrics must be usable (else hold, never down); the SLO sizes the fleet for the
    forecast's upper quantile over the cold-start horizon (while demand falls the forecast may hold
    capacity but adds none); the warm floor and the caps clamp it; pods that
    cannot be scheduled stop further scale-up; scale-down waits out the stabilisation window and moves at
    most `scale_down_max_step` at a time.
    """
    obs, history, invalid = clean(obs, history)  # impossible values (inf, negative, absurd) hold the pool
    floor, window = scheduled_floor(spec.min_replicas, spec.schedule, obs.time)
    floors = {"floor": floor, "floor_window": window.name if window else None}
    if invalid:
        return replace(_hold_for_metrics(replace(spec, min_replicas=floor), obs, history, False, True, invalid), **floors)
    current = obs.current_replicas
    cap = spec.replica_cap
    service_time = obs.service_time if _usable(obs.service_time) and obs.service_time > 0 else None
    trusted = service_time
    few = obs.service_samples is not None and obs.service_samples < MIN_SERVICE_SAMPLES
    if service_time is not None and few and history.last_service_time is not None:
        # a window with a handful of completions (one long request) must not size the fleet on its own
        weight = max(obs.service_samples, 0.0) / MIN_SERVICE_SAMPLES
        service_time = weight * service_time + (1 - weight) * history.last_service_time
        trusted = history.last_service_time
    if service_time is None and history.last_service_time is not None:
        service_time = trusted = history.last_service_time  # no request finished this window: keep the last known
    stale = obs.metrics_age_seconds > spec.max_metrics_age_seconds
    rate_known = _usable(obs.arrival_rate)
    if current == 0 and not stale and rate_known and obs.arrival_rate > 0 and service_time is None:
        return replace(_wake(spec, obs, history, floor), **floors)
    if stale or not rate_known or (service_time is None and obs.arrival_rate > 0):
        return replace(_hold_for_metrics(replace(spec, min_replicas=floor), obs, history, stale, rate_known), **floors)

    forecaster = fc.update(history.forecaster, obs.time, obs.arrival_rate, rate_window=obs.rate_window_seconds)
    below_level = obs.arrival_rate < fc.point(forecaster, 0.0)  # demand falling: under its smoothed level
    history = feedback(spec, obs, replace(history, forecaster=forecaster, last_service_time=trusted))
    planning_rate, forecast_rate, horizon_s, ramp_rate = obs.arrival_rate, None, None, None
    if spec.prediction:
        horizon_s = horizon(spec, obs)
        forecast_rate = fc.upper_peak(forecaster, horizon_s, spec.forecast_quantile)
        if spec.ramp_detection and obs.rate_window_seconds:
            # the noise of a count: Poisson x the index of dispersion at the shortest (burst) window, where a
            # trend inflates it least (read at the rate window, a ramp's own rise passed for noise on the bed;
            # a steep ramp still inflates it, and the test then waits: a detrended dispersion would not)
            ramp_rate = fc.ramp(forecaster, horizon_s, obs.rate_window_seconds, obs.arrival_cv**2)
            forecast_rate = max(forecast_rate, ramp_rate or 0.0)
        planning_rate = max(obs.arrival_rate, forecast_rate)
    observed_rate = obs.arrival_rate
    if spec.slo_objective is not None:
        planning_rate *= history.headroom
        observed_rate *= history.headroom

    slots = spec.slots_per_replica
    capacity = load_dependent_capacity(spec, obs, service_time) if service_time is not None else None
    if capacity is not None:
        slots, service_time = capacity.slots, capacity.service_time
    target = wait_target(spec, obs)
    arrival_cv, timescale = obs.arrival_cv, None
    if spec.dispersion_windows and obs.arrival_dispersion:
        timescale = dispersion_timescale(service_time, target)
        at = dispersion_at(obs.arrival_dispersion, timescale)
        arrival_cv = math.sqrt(at) if at is not None else arrival_cv
    measured_cv = arrival_cv
    arrival_cv, history = hold_cv_while_falling(history, below_level, arrival_cv)
    held_cv = measured_cv if arrival_cv < measured_cv else None
    arrival_cv, history = remember_burstiness(spec, obs, history, arrival_cv)
    predicted = None  # the model's P(wait > target) now, at the Ready slots: what the histogram is checked against
    if service_time is not None and obs.ready_replicas > 0:
        now_queue = Queue(obs.arrival_rate, service_time, arrival_cv, obs.service_cv)
        if obs.ready_replicas * slots > now_queue.load:
            predicted = now_queue.prob_wait_exceeds(obs.ready_replicas * slots, max(target, 0.0))
    history = fit_correction(spec, obs, history, predicted)
    factor = correction_factor(history) if spec.wait_correction else 1.0

    def replicas_for(rate: float) -> tuple[int, bool]:
        """Fewest replicas meeting the SLO at this rate, and whether even the cap falls short."""
        if rate == 0:
            return 0, False
        try:
            servers = _servers_needed(spec, Queue(rate, service_time, arrival_cv, obs.service_cv), target, cap * slots, factor)
        except TargetUnreachable:
            return cap, True
        return math.ceil(servers / slots), False

    required, saturated = replicas_for(planning_rate)
    if spec.backlog_drain_seconds and _usable(obs.waiting) and obs.waiting > 0:
        required += math.ceil(obs.waiting * service_time / (spec.slots_per_replica * spec.backlog_drain_seconds))
    falling = planning_rate > observed_rate and required > current and below_level
    if falling:
        # Demand is below the smoothed level, i.e. falling: the forecast may hold capacity, not add it
        # (its lagging level and bound would otherwise order replicas just as a burst ends).
        reactive, saturated = replicas_for(observed_rate)
        required = max(reactive, current)

    wanted, constraint = required, "falling_demand" if falling and required == current else "slo"
    if wanted < floor:
        wanted, constraint = floor, "warm_floor"

    def minute_need(rate: float) -> int | None:
        """One past minute's need: Erlang-C on its own rate, at the measured arrival CV (no burst memory)."""
        if rate == 0:
            return 0
        if service_time is None:
            return None
        try:
            servers = _servers_needed(spec, Queue(rate, service_time, obs.arrival_cv, obs.service_cv), target, cap * slots, factor)
        except TargetUnreachable:
            return cap
        return math.ceil(servers / slots)

    learnt, history = hindsight_floor(spec, obs, history, minute_need)
    if learnt is not None and spec.hindsight_feedback and spec.slo_objective is not None:
        learnt = math.ceil(learnt * history.headroom - 1e-9)  # replicas ~ rate at these loads: scaled as the rate is
    if learnt is not None and wanted < min(learnt, cap):
        wanted, constraint = min(learnt, cap), "hindsight_floor"
    if wanted > cap:
        wanted, constraint = cap, "gpu_budget" if cap < spec.max_replicas else "max_replicas"
    if saturated and constraint in ("slo", "falling_demand"):
        constraint = "gpu_budget" if cap < spec.max_replicas else "max_replicas"

    recommendations = window_maxima(history.recommendations, obs.time - spec.scale_down_window_seconds, (obs.time, wanted))
    history = replace(history, recommendations=recommendations)

    replicas, limited = wanted, False
    if wanted > current and obs.unschedulable_replicas > 0:
        replicas, constraint, limited = max(current, floor), "unschedulable", True
    elif wanted < current:
        stabilised = max(r for _, r in recommendations)
        if stabilised > wanted:
            replicas, constraint = min(stabilised, current), "stabilization"
        if replicas < current - spec.scale_down_max_step:
            replicas, constraint = current - spec.scale_down_max_step, "max_step"
        replicas = max(replicas, floor, min(learnt or 0, cap))

    observed = Queue(obs.arrival_rate, service_time or 1.0, arrival_cv, obs.service_cv)
    saturated = saturated or observed.load >= cap * slots > 0
    if replicas != current:
        history = replace(history, last_scale_time=obs.time)
    decision = Decision(
        replicas=replicas,
        previous_replicas=current,
        constraint=constraint,
        reason="",
        history=history,
        required_replicas=required,
        planning_rate=planning_rate,
        horizon_seconds=horizon_s,
        forecast_rate=forecast_rate,
        ramp_rate=ramp_rate,
        utilization=observed.load / (replicas * slots) if replicas else None,
        p_wait_exceeds={
            n: min(1.0, factor * observed.prob_wait_exceeds(n * slots, max(target, 0.0)))
            for n in (replicas - 1, replicas, replicas + 1) if n > 0
        },
        predicted_wait=_slo_statistic(spec, observed, replicas * slots, factor) if replicas else None,
        saturated=saturated,
        scaling_limited=limited,
        capacity=capacity,
        **floors,
        arrival_cv=arrival_cv,
        held_cv=held_cv,
        dispersion_timescale=timescale,
        wait_correction=factor,
        hindsight_floor=learnt,
    )
    return replace(decision, reason=explain(spec, obs, decision))


def _wake(spec: PoolSpec, obs: Observations, history: History, floor: int) -> Decision:
    """Scale from zero: requests arrive (an upstream counter sees them) and no service time was ever
    measured, so Erlang-C cannot size the pool yet: start max(floor, 1) replicas; the next decisions size
    it from the metrics that replica exports. The first requests wait a cold start."""
    replicas = min(max(floor, 1), spec.replica_cap)
    cold = horizon(replace(spec, prediction_horizon_seconds=None), obs)
    return Decision(
        replicas=replicas,
        previous_replicas=0,
        constraint="wake_from_zero",
        reason=(f"scale up 0 -> {replicas}: arrival {obs.arrival_rate:.3g}/s at zero replicas wakes the pool; "
                f"the first requests wait a cold start (about {cold:.0f}s)"),
        history=replace(history, last_scale_time=obs.time),
        planning_rate=obs.arrival_rate,
    )


def _hold_for_metrics(
    spec: PoolSpec, obs: Observations, history: History, stale: bool, rate_known: bool, invalid: str | None = None
) -> Decision:
    """Without usable metrics the pool holds; it may only rise to its warm floor."""
    if invalid:
        why = f"invalid metrics: {invalid}"
    elif stale:
        why = f"metrics are {obs.metrics_age_seconds:.0f}s old (limit {spec.max_metrics_age_seconds:.0f}s)"
    elif not rate_known:
        why = "the arrival rate is missing or NaN"
    else:
        why = "the service time is missing and no earlier value is known"
    replicas = max(obs.current_replicas, spec.min_replicas)
    if replicas > obs.current_replicas:
        move = f"scale up {obs.current_replicas} -> {replicas} to the warm floor"
    else:
        move = f"holding at {replicas} replicas"
    decision = Decision(
        replicas=replicas,
        previous_replicas=obs.current_replicas,
        constraint="metrics_invalid" if invalid else "metrics_missing",
        reason=f"{move}: {why}; never scaling down without {'valid ' if invalid else ''}metrics",
        history=history if replicas == obs.current_replicas else replace(history, last_scale_time=obs.time),
        metrics_available=False,
    )
    return decision


def explain(spec: PoolSpec, obs: Observations, d: Decision) -> str:
    """One sentence that says what was decided and which rule bound it."""
    slo = f"{'mean' if spec.slo_percentile is None else f'p{spec.slo_percentile * 100:g}'} {spec.slo_metric} <= {spec.slo_target_seconds:g}s"
    demand = f"arrival {obs.arrival_rate:.3g}/s"
    if d.forecast_rate is not None:
        demand += f", forecast q{spec.forecast_quantile:g} peak {d.forecast_rate:.3g}/s over {d.horizon_seconds:.0f}s"
        if d.ramp_rate is not None:
            demand += f" (on a ramp: {d.ramp_rate:.3g}/s by then)"
    if d.dispersion_timescale is not None and d.arrival_cv is not None and d.arrival_cv > 1.0:
        demand += f", arrival CV {d.arrival_cv:.2f} over {d.dispersion_timescale:.0f}s bursts"
    if d.held_cv is not None:
        demand += f", arrival CV held at {d.history.sized_cv:.2f} while demand falls (measured {d.held_cv:.2f})"
    if spec.backlog_drain_seconds and obs.waiting:
        demand += f", {obs.waiting:.0f} waiting to drain within {spec.backlog_drain_seconds:g}s"
    if spec.burst_memory_seconds and d.history.cv_peaks:
        demand += f", arrival CV {max(c for _, c in d.history.cv_peaks):.2g} (peak over {spec.burst_memory_seconds:.0f}s)"
    if spec.slo_objective is not None and d.history.headroom != 1.0:
        demand += f", headroom x{d.history.headroom:.2f} from the error budget"
    head = {"scale_up": "scale up", "scale_down": "scale down", "hold": "hold"}[d.action]
    move = f"{head} {d.previous_replicas} -> {d.replicas}" if d.action != "hold" else f"hold at {d.replicas}"
    why = {
        "slo": f"{d.required_replicas} replicas meet {slo}",
        "warm_floor": f"the SLO needs {d.required_replicas}, the warm floor is "
                      f"{spec.min_replicas if d.floor is None else d.floor}"
                      + (f" (schedule window {d.floor_window})" if d.floor_window else ""),
        "hindsight_floor": f"the SLO needs {d.required_replicas}, the learnt floor is {d.hindsight_floor} (the "
                           f"q{spec.hindsight_quantile or 0:g} of the per-minute needs over {spec.hindsight_seconds:.0f}s"
                           + (", x the error-budget headroom" if spec.hindsight_feedback and spec.slo_objective else "") + ")",
        "falling_demand": f"demand is falling: the forecast holds {d.required_replicas} replicas but adds none",
        "max_replicas": f"the SLO needs more than the {spec.max_replicas} max replicas",
        "gpu_budget": f"the GPU budget of {spec.max_gpus} allows {spec.replica_cap} replicas",
        "unschedulable": f"the SLO wants {d.required_replicas} but {obs.unschedulable_replicas} pods are Pending for lack of GPUs",
        "stabilization": f"the SLO needs {d.required_replicas}, the {spec.scale_down_window_seconds:.0f}s window still recommends more",
        "max_step": f"scale-down is limited to {spec.scale_down_max_step} replica(s) per step",
    }[d.constraint]
    extra = " (saturated: demand exceeds the capped fleet)" if d.saturated else ""
    if d.wait_correction > 1.005:
        extra += f"; model tail x{d.wait_correction:.2f}, fitted to vLLM's {spec.slo_metric} histogram"
    if d.capacity is not None:
        extra += (
            f"; {d.capacity.slots} effective slots per replica ({d.capacity.limited_by}),"
            f" service {d.capacity.service_time:.3g}s at that concurrency (x{d.capacity.slowdown:.2f})"
        )
    return f"{move}: {why}; {demand}{extra}"
