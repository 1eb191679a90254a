"""Run several policies on the same trace, fleet and seed: the pure core behind `inferencepool simulate`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from inferencepool.core.policy import PoolSpec
from inferencepool.simulate import baselines
from inferencepool.simulate.fleet import ColdStarts, FleetConfig, Run, ServiceModel, simulate
from inferencepool.simulate.trace import Trace

POLICIES = ("static", "hpa", "queue-depth", "reactive", "predictive", "oracle")
ORACLE_BUCKET_SECONDS = 60.0
STATIC_PEAK_WINDOW_SECONDS = 60.0  # static provisioning sizes for the busiest minute of the trace


@dataclass(frozen=True)
class Scenario:
    trace: Trace
    spec: PoolSpec = PoolSpec(max_replicas=100)  # SLO, floor, caps, price; `prediction` is set per policy
    fleet: FleetConfig = FleetConfig()
    service_model: ServiceModel = ServiceModel()
    seed: int = 0

    @property
    def service(self) -> np.ndarray:
        return self.service_model.service_seconds(self.trace.prompt_tokens, self.trace.output_tokens)

    @property
    def prefill(self) -> np.ndarray:
        return self.service_model.prefill_seconds(self.trace.prompt_tokens)


def make_policy(name: str, scenario: Scenario, service: np.ndarray, prefill: np.ndarray):
    """One policy by name, built from what it is allowed to know."""
    spec, fleet, trace = scenario.spec, scenario.fleet, scenario.trace
    low, high = spec.min_replicas, spec.replica_cap
    if name == "reactive":
        return baselines.ErlangC("erlang-c-reactive", replace(spec, prediction=False))
    if name == "predictive":
        return baselines.ErlangC("erlang-c-predictive", replace(spec, prediction=True))
    if name == "hpa":
        return baselines.Hpa(fleet.slots_per_replica, low, high)
    if name == "queue-depth":
        return baselines.QueueDepth(low, high)
    if name == "static":
        peak = baselines.peak_rate(trace.arrivals, STATIC_PEAK_WINDOW_SECONDS, fleet.reconcile_seconds)
        cv = float(np.std(service) / np.mean(service)) if len(service) else 1.0
        needed = baselines.size(spec, peak, float(np.mean(service)), cv, float(np.mean(prefill)))
        return baselines.Static(min(max(needed, low), high))
    if name == "oracle":
        need = baselines.bucket_needs(trace.arrivals, service, prefill, spec, ORACLE_BUCKET_SECONDS, trace.span)
        return baselines.Oracle(np.clip(need, low, high), ORACLE_BUCKET_SECONDS, fleet.reconcile_seconds,
                                fleet.cold_start_seconds, spec.slo_target_seconds)
    raise ValueError(f"unknown policy {name!r}; expected some of {', '.join(POLICIES)}")


def starting_replicas(scenario: Scenario, service: np.ndarray, prefill: np.ndarray) -> int:
    """Adaptive policies start warm, sized for the peak rate of the trace's first cold start, as if they had
    been running before it; then none is punished for a trace that begins mid-day."""
    fleet = scenario.fleet
    first = scenario.trace.arrivals < fleet.cold_start_seconds
    if not first.any():
        return scenario.spec.min_replicas
    rate = baselines.peak_rate(scenario.trace.arrivals[first], fleet.rate_window_seconds, fleet.reconcile_seconds)
    cv = float(service[first].std() / service[first].mean())
    return baselines.size(scenario.spec, rate, float(service[first].mean()), cv, float(prefill[first].mean()))


def run_policies(scenario: Scenario, names=POLICIES, progress: Callable[[str, float], None] | None = None) -> list[Run]:
    """Each named policy on the same trace with the same cold-start draws."""
    service, prefill = scenario.service, scenario.prefill
    initial = starting_replicas(scenario, service, prefill)
    runs = []
    for name in names:
        policy = make_policy(name, scenario, service, prefill)
        report = (lambda fraction, who=policy.name: progress(who, fraction)) if progress else None
        runs.append(simulate(scenario.trace.arrivals, service, prefill, policy, scenario.fleet,
                             policy.initial_replicas(initial), ColdStarts(scenario.fleet, scenario.seed), report))
    return runs
