"""Advisory mode (spec.mode: Advisory): the pool is decided as usual, and what it would do is reported, never done.

A team can run the operator beside its HPA or KEDA and compare: status.advisory holds what the operator
would set against what the Deployment has, an Event (WouldScaleUp / WouldScaleDown) marks each new
recommendation, and /metrics has both counts. Nothing here patches the Deployment's replicas or the pods'
deletion costs (handlers.py skips both). The decision History is the same in either mode, so switching to
Active resumes from it; only `last_scale_time` is left as it was, since no scale happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from inferencepool.core.policy import Decision, History
from inferencepool.operator.observe import PoolMetrics

ACTIVE, ADVISORY = "Active", "Advisory"
WOULD = {"scale_up": "WouldScaleUp", "scale_down": "WouldScaleDown"}


def advisory_decision(decision: Decision, before: History) -> Decision:
    """The decision as kept in an advisory pool's history: no scale happened, so no last_scale_time moves."""
    return replace(decision, history=replace(decision.history, last_scale_time=before.last_scale_time))


def would_event(decision: Decision, previous: Mapping | None) -> tuple[str, str] | None:
    """(reason, message) of the Event for a recommendation that differs from the Deployment and from the last
    one reported; None otherwise (one Event per new recommendation, not one per tick)."""
    if decision.action == "hold":
        return None
    before = previous or {}
    if (before.get("recommendedReplicas"), before.get("deploymentReplicas")) == (decision.replicas, decision.previous_replicas):
        return None
    return WOULD[decision.action], f"advisory: would {decision.reason}"


def status_patch(mode: str, patch: Mapping, decision: Decision, deployment_replicas: int, previous: Mapping | None,
                 timestamp: str) -> dict:
    """status.decision_status's patch with this module's keys (None deletes a key): the mode, and the warm
    floor now with the schedule window that set it. Advisory leaves
    lastScaleTime/lastScaleReason as they were: the operator scaled nothing."""
    patch = {**patch, "floorReplicas": decision.floor, "scheduleWindow": decision.floor_window}  # spec.schedule
    if mode != ADVISORY:
        return {**patch, "mode": ACTIVE, "advisory": None}
    before = previous or {}
    same = before.get("recommendedReplicas") == decision.replicas
    kept = {k: v for k, v in patch.items() if k not in ("lastScaleTime", "lastScaleReason")}
    return {
        **kept,
        "mode": ADVISORY,
        "advisory": {
            "recommendedReplicas": decision.replicas,
            "deploymentReplicas": deployment_replicas,
            "action": decision.action,
            "reason": f"would {decision.reason}" if decision.action != "hold" else decision.reason,
            "since": before.get("since") if same and before.get("since") else timestamp,
        },
    }


def upstream_metrics(reader, config, now: float) -> tuple[PoolMetrics | None, str | None]:
    """Scale from zero: a pool at 0 replicas has no vLLM series, so its arrival rate comes from
    spec.metrics.arrivalRateQuery alone (a gateway's counter). No value: None and why, so decide() holds
    at zero (missing data never scales a pool up from zero, nor down), and status says so."""
    rate, problem = reader.value(config.prometheus_url, config.arrival_query)
    if rate is None:
        return None, f"spec.metrics.arrivalRateQuery {problem or 'returned no value'} (the pool is at zero replicas)"
    return PoolMetrics(newest_sample_time=now, arrival_rate=rate, arrival_source="query"), None
