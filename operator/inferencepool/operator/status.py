"""A pool's status from one decision (pure): the numbers behind it, conditions, and which ones changed.

Values that are not known this tick are written as None, which a merge patch deletes, so the status
never shows a stale number as if it were current.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone

from inferencepool.core.signals import histogram_quantile
from inferencepool.operator.observe import PoolMetrics, resolution_note
from inferencepool.core.policy import Decision, Observations
from inferencepool.operator.spec import PoolConfig

CONDITION_TYPES = ("Ready", "MetricsAvailable", "Saturated", "ScalingLimited", "MeasurementLimited")


def timestamp(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rounded(value: float | None, digits: int = 4) -> float | None:
    """`digits` significant digits, so status and `kubectl get` stay readable; None for unknown/inf."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def condition(kind: str, ok: bool, reason: str, message: str, now: float, generation: int | None) -> dict:
    made = {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now),
    }
    if generation is not None:
        made["observedGeneration"] = generation
    return made


def merge_conditions(previous: list | None, current: list[dict]) -> list[dict]:
    """The new conditions, keeping each one's lastTransitionTime while its status has not changed."""
    before = {c.get("type"): c for c in previous or ()}
    merged = []
    for c in current:
        old = before.get(c["type"])
        if old and old.get("status") == c["status"] and old.get("lastTransitionTime"):
            c = {**c, "lastTransitionTime": old["lastTransitionTime"]}
        merged.append(c)
    kept = [c for t, c in before.items() if t not in {m["type"] for m in merged}]
    return kept + merged


def changed(previous: list | None, current: list[dict]) -> list[dict]:
    """Conditions whose status (or reason) differs from before: each deserves one Event, not one per tick."""
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in previous or ()}
    return [c for c in current if before.get(c["type"]) != (c["status"], c["reason"])]


def invalid_spec_status(error: str, now: float, generation: int | None, previous: list | None) -> dict:
    ready = condition("Ready", False, "InvalidSpec", error, now, generation)
    return {"observedGeneration": generation, "conditions": merge_conditions(previous, [ready])}


def predicted_text(config: PoolConfig, obs: Observations, decision: Decision) -> str | None:
    """e.g. 'p99 wait 2.31s' at the desired replicas; TTFT adds the measured prefill time."""
    if decision.predicted_wait is None:
        return None
    p = f"p{config.policy.slo_percentile * 100:g}"
    if not math.isfinite(decision.predicted_wait):
        return f"{p} unbounded"
    if config.policy.slo_metric == "ttft":
        return f"{p} ttft {decision.predicted_wait + (obs.prefill_time or 0.0):.3g}s"
    return f"{p} wait {decision.predicted_wait:.3g}s"


def conditions(
    config: PoolConfig,
    obs: Observations,
    decision: Decision,
    prometheus_error: str | None,
    stuck_message: str | None,
    now: float,
    generation: int | None,
    missing_message: str | None = None,
    arrival_problem: str | None = None,
    metrics_read: PoolMetrics | None = None,
    window_note: str | None = None,
    slo_note: str | None = None,
) -> list[dict]:
    """The conditions; `missing_message` (observe.missing_series_message) is set when the pool has no
    vLLM series at all, which gets its own reason (NoVllmSeries) and says what to check."""

    def make(kind, ok, reason, message):
        return condition(kind, ok, reason, message, now, generation)

    if obs.ready_replicas > 0:
        ready = make("Ready", True, "Serving", f"{obs.ready_replicas} of {decision.replicas} replicas Ready")
    elif decision.replicas == 0 and obs.current_replicas == 0:  # scale from zero (spec.minReplicas 0)
        cold = obs.cold_start_seconds or config.policy.default_cold_start_seconds
        ready = make("Ready", True, "ScaledToZero", "0 replicas: the next request seen by spec.metrics.arrivalRateQuery "
                     f"wakes the pool and waits a cold start (about {cold:.0f}s) before it is served")
    else:
        ready = make("Ready", False, "NoReadyReplicas", f"0 of {decision.replicas} replicas Ready yet (model loading or no GPU)")

    if decision.metrics_available:
        metrics = make("MetricsAvailable", True, "MetricsFresh", f"newest sample {obs.metrics_age_seconds:.0f}s old")
    elif prometheus_error:
        metrics = make("MetricsAvailable", False, "PrometheusUnavailable", f"{prometheus_error}; {decision.reason}")
    elif missing_message:
        metrics = make("MetricsAvailable", False, "NoVllmSeries", f"{missing_message}; {decision.reason}")
    elif metrics_read is not None and metrics_read.invalid_signals:
        signals = ", ".join(metrics_read.invalid_signals)
        metrics = make("MetricsAvailable", False, "InvalidMetrics",
                       f"Prometheus returned impossible values (negative, infinite or above 1e12) for {signals}: "
                       f"dropped as unknown; {decision.reason}")
    elif decision.constraint == "metrics_invalid":
        metrics = make("MetricsAvailable", False, "InvalidMetrics", decision.reason)
    elif obs.metrics_age_seconds > config.policy.max_metrics_age_seconds:
        metrics = make("MetricsAvailable", False, "MetricsStale", decision.reason)
    else:
        what = arrival_problem or "no fresh vLLM samples for this pool"
        metrics = make("MetricsAvailable", False, "MetricsMissing", f"{what}; {decision.reason}")

    if decision.saturated:
        saturated = make("Saturated", True, "DemandExceedsCapacity", decision.reason)
    else:
        saturated = make("Saturated", False, "WithinCapacity", "the capped fleet can carry the demand")

    cap_bound = decision.constraint in ("max_replicas", "gpu_budget", "shared_budget")
    if obs.unschedulable_replicas > 0:
        message = f"{obs.unschedulable_replicas} pod(s) Pending, not schedulable: {stuck_message or 'no node fits'}"
        limited = make("ScalingLimited", True, "InsufficientGPUs", message + "; no further scale-up until they schedule")
    elif cap_bound:
        reason = {"gpu_budget": "GPUBudget", "shared_budget": "BudgetLimited"}.get(decision.constraint, "MaxReplicas")
        limited = make("ScalingLimited", True, reason, decision.reason)
    else:
        limited = make("ScalingLimited", False, "NotLimited", "the desired replicas are within the limits")
    return [ready, metrics, saturated, limited, measurement_condition(config, metrics_read, window_note, make, slo_note)]


def measurement_condition(config: PoolConfig, metrics: PoolMetrics | None, window_note: str | None, make,
                          slo_note: str | None = None) -> dict:
    """MeasurementLimited: what the operator could not measure as asked, and what it did instead."""
    limits = []
    if metrics is not None and metrics.gauges_frozen:
        limits.append(("GaugesFrozen", "vllm:num_requests_waiting/running have not moved over the rate window while "
                       "no request finished and no token was generated: read as stale, not as load "
                       "(vLLM issues #22545, #29928)"))
    note = resolution_note(metrics, config.policy.slo_metric, config.policy.slo_target_seconds)
    if note:
        limits.append(("BelowHistogramResolution", note))
    if window_note:
        limits.append(("WindowTooShort", window_note))
    if slo_note:
        limits.append(("SloWindowTooShort", slo_note))
    if not limits:
        return make("MeasurementLimited", False, "Resolved", "the windows and histograms resolve what the SLO needs")
    return make("MeasurementLimited", True, limits[0][0], "; ".join(message for _, message in limits))


def decision_status(
    config: PoolConfig,
    obs: Observations,
    decision: Decision,
    metrics: PoolMetrics | None,
    conditions_now: list[dict],
    previous_conditions: list | None,
    now: float,
    generation: int | None,
    scrape_interval: float | None = None,
    rate_window: str | None = None,
    slo: dict | None = None,
) -> dict:
    """The whole status patch for one decision (None deletes a key that is unknown now)."""
    policy = config.policy
    wait_buckets = list(metrics.queue_buckets) if metrics else []
    ttft_buckets = list(metrics.ttft_buckets) if metrics else []
    status = {
        "observedGeneration": generation,
        "desiredReplicas": decision.replicas,
        "currentReplicas": obs.current_replicas,
        "readyReplicas": obs.ready_replicas,
        "unschedulableReplicas": obs.unschedulable_replicas,
        "requiredReplicas": decision.required_replicas,
        "arrivalRate": rounded(obs.arrival_rate),
        "arrivalRateSource": (("spec.metrics.arrivalRateQuery" if metrics.arrival_source == "query" else "vLLM")
                              if metrics and obs.arrival_rate is not None else None),
        "rejectionRate": rounded(metrics.rejection_rate) if metrics and decision.metrics_available else None,
        "arrivalCV": rounded(decision.arrival_cv or obs.arrival_cv, 3) if decision.metrics_available else None,
        # the count dispersion per window, and the time scale decide() read it at (policy.dispersion_timescale)
        "arrivalDispersion": [{"windowSeconds": rounded(w), "index": rounded(i, 3)} for w, i in obs.arrival_dispersion
                              if i is not None] or None if decision.metrics_available else None,
        "dispersionTimescaleSeconds": rounded(decision.dispersion_timescale, 3),
        # the model's tail x this, fitted to vLLM's histogram (policy.fit_correction); its sums are in history
        "waitCorrection": rounded(decision.wait_correction, 3) if decision.metrics_available else None,
        "observedWaitExceedsTarget": rounded(obs.wait_exceed_share, 3),
        "serviceTimeSeconds": rounded(obs.service_time),
        "serviceCV": rounded(obs.service_cv, 3) if decision.metrics_available else None,
        "prefillSeconds": rounded(obs.prefill_time),
        "utilization": rounded(decision.utilization, 3),
        # A list, not a map: a merge patch replaces lists whole, so counts from earlier ticks do not linger.
        "waitExceedsTarget": [{"replicas": n, "probability": rounded(p, 3)} for n, p in sorted(decision.p_wait_exceeds.items())]
        or None,
        "predictedWait": predicted_text(config, obs, decision),
        "predictedWaitSeconds": rounded(decision.predicted_wait),
        "observedWaitSeconds": rounded(histogram_quantile(policy.slo_percentile, wait_buckets)) if wait_buckets else None,
        "observedTTFTSeconds": rounded(histogram_quantile(policy.slo_percentile, ttft_buckets)) if ttft_buckets else None,
        "planningRate": rounded(decision.planning_rate),
        "forecastRate": rounded(decision.forecast_rate),
        "rampRate": rounded(decision.ramp_rate),
        "horizonSeconds": rounded(decision.horizon_seconds),
        "coldStartSeconds": rounded(obs.cold_start_seconds),
        "metricsAgeSeconds": rounded(obs.metrics_age_seconds, 3) if decision.metrics_available else None,
        "scrapeIntervalSeconds": rounded(scrape_interval, 3),
        "rateWindow": rate_window,
        "serviceCVResolved": (metrics.service_cv_resolved if metrics and metrics.service_time is not None else None),
        "constraint": decision.constraint,
        "reason": decision.reason,
        "costPerHour": f"{decision.cost_per_hour(policy):.2f} {config.currency}",
        "history": json.dumps(decision.history.to_dict(), separators=(",", ":")),
        "conditions": merge_conditions(previous_conditions, conditions_now),
        "slo": slo,  # status.slo with spec.slo.objective (operator/slo.py); None deletes it
    }
    if decision.action != "hold":
        status["lastScaleTime"] = timestamp(now)
        status["lastScaleReason"] = decision.reason
    return status


def history_from_status(status: Mapping | None) -> dict | None:
    """The History dict stored by decision_status, or None if absent or unreadable."""
    raw = (status or {}).get("history")
    if not raw:
        return None
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# Figures that move with every read: written at most every few intervals (handlers.STATUS_REFRESH_INTERVALS)
# when nothing else changed. The decision History is among them: the operator keeps the newest in memory,
# and a restarted one resumes from one a few intervals old.
LIVE_FIELDS = frozenset({
    "arrivalRate", "rejectionRate", "arrivalCV", "serviceTimeSeconds", "serviceCV", "prefillSeconds", "utilization",
    "waitExceedsTarget", "predictedWait", "predictedWaitSeconds", "observedWaitSeconds", "observedTTFTSeconds",
    "planningRate", "forecastRate", "rampRate", "horizonSeconds", "coldStartSeconds", "metricsAgeSeconds", "scrapeIntervalSeconds",
    "requiredReplicas", "reason", "history", "slo",
})


def _significant(status: Mapping, keys) -> dict:
    """What a user or the policy acts on: every field but the live ones; conditions without their times
    and the numbers in their messages (live figures too); None and absent alike."""
    kept = {k: status.get(k) for k in keys if k not in LIVE_FIELDS and k != "conditions" and status.get(k) is not None}
    kept["conditions"] = sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("observedGeneration"),
                                 re.sub(r"[-+]?[\d.]+(e[-+]?\d+)?", "#", c.get("message") or ""))
                                for c in status.get("conditions") or ())
    return kept


def needs_write(previous: Mapping | None, new: Mapping) -> bool:
    """Whether the status patch `new` changes anything but live figures of the status `previous` (the
    pool's status as the API has it: every other field is written as soon as it changes)."""
    return _significant(previous or {}, new) != _significant(new, new)
