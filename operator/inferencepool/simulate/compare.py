"""Run several policies on the same trace, fleet and seed: the pure core behind `inferencepool simulate`.

Fairness: every adaptive policy and the oracle start from the same warm fleet (`starting_replicas`: the
scenario's `initial_replicas`, else the oracle's own hindsight need over the first cold start), a constant
fleet starts at its count; every policy gets the same cold-start draws; a removed replica is billed until
its in-flight requests finish (fleet.simulate); and a scenario may leave a warm-up unscored (`score_from`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from inferencepool.core.policy import PoolSpec
from inferencepool.simulate import baselines
from inferencepool.simulate.fleet import ColdStarts, FleetConfig, Run, ServiceModel, simulate
from inferencepool.simulate.trace import Trace

POLICIES = ("static", "hpa", "queue-depth", "kpa", "wva", "dynamo", "reactive", "predictive", "oracle")
ORACLE_BUCKET_SECONDS = 60.0
STATIC_PEAK_WINDOW_SECONDS = 60.0  # static provisioning sizes for the busiest minute of the trace


@dataclass(frozen=True)
class Scenario:
    trace: Trace
    spec: PoolSpec = PoolSpec(max_replicas=100)  # SLO, floor, caps, price; `prediction` is set per policy
    fleet: FleetConfig = FleetConfig()
    service_model: ServiceModel = ServiceModel()
    seed: int = 0
    initial_replicas: int | None = None  # every policy's warm start; None: the oracle's need over the first cold start
    score_from: float = 0.0  # seconds: GPU-hours and SLO are counted from here (e.g. after a learning hour)

    @property
    def service(self) -> np.ndarray:
        return self.service_model.service_seconds(self.trace.prompt_tokens, self.trace.output_tokens)

    @property
    def prefill(self) -> np.ndarray:
        return self.service_model.prefill_seconds(self.trace.prompt_tokens)


_NEEDS: dict = {}


def oracle_need(scenario: Scenario) -> np.ndarray:
    """Per minute, the fewest replicas meeting the SLO for that minute's requests (cached per trace and spec)."""
    key = (id(scenario.trace.arrivals), len(scenario.trace), replace(scenario.spec, min_replicas=1), scenario.service_model)
    if key not in _NEEDS:
        if len(_NEEDS) > 8:
            _NEEDS.clear()
        _NEEDS[key] = (scenario.trace.arrivals, baselines.bucket_needs(
            scenario.trace.arrivals, scenario.service, scenario.prefill, replace(scenario.spec, min_replicas=1),
            ORACLE_BUCKET_SECONDS, scenario.trace.span))
    return _NEEDS[key][1]


def make_policy(name: str, scenario: Scenario, service: np.ndarray, prefill: np.ndarray, knob: float | None = None):
    """One policy by name, built from what it is allowed to know; `knob` is the family's own setting
    (None: its documented default). The warm floor is scenario.spec.min_replicas for every family."""
    spec, fleet, trace = scenario.spec, scenario.fleet, scenario.trace
    low, high, slots = spec.min_replicas, spec.replica_cap, fleet.slots_per_replica
    pick = lambda default: default if knob is None else knob
    if name == "reactive":
        return baselines.ErlangC("erlang-c-reactive", replace(spec, prediction=False))
    if name == "predictive":
        q = pick(spec.forecast_quantile)
        return baselines.ErlangC("erlang-c-predictive" if knob is None else f"ours-q{q:g}",
                                 replace(spec, prediction=True, forecast_quantile=q))
    if name == "hpa":
        return baselines.Hpa(slots, low, high, target=pick(0.8))
    if name == "queue-depth":
        return baselines.QueueDepth(low, high, waiting_per_replica=pick(5.0))
    if name == "kpa":
        return baselines.Kpa(low, high, target=pick(0.7 * slots))
    if name == "wva":
        return baselines.Wva(slots, low, high, kv_threshold=pick(0.8))
    if name == "dynamo":
        return baselines.DynamoPlanner(slots, low, high, utilisation=pick(0.8))
    if name == "static":
        if knob is not None:
            return baselines.Static(int(knob), name=f"static-{int(knob)}")
        peak = baselines.peak_rate(trace.arrivals, STATIC_PEAK_WINDOW_SECONDS, fleet.reconcile_seconds)
        cv = float(np.std(service) / np.mean(service)) if len(service) else 1.0
        needed = baselines.size(spec, peak, float(np.mean(service)), cv, float(np.mean(prefill)))
        return baselines.Static(min(max(needed, low), high))
    if name == "oracle":
        need = oracle_need(scenario)
        return baselines.Oracle(np.clip(need, low, high), ORACLE_BUCKET_SECONDS, fleet.reconcile_seconds,
                                fleet.cold_start_seconds, spec.slo_target_seconds)
    raise ValueError(f"unknown policy {name!r}; expected some of {', '.join(POLICIES)}")


def starting_replicas(scenario: Scenario) -> int:
    """The warm fleet every policy starts from: the scenario's, else the oracle's hindsight need over the first
    cold start and reconcile (as if the pool had been running before t=0)."""
    if scenario.initial_replicas is not None:
        return scenario.initial_replicas
    need = oracle_need(scenario)
    first = int((scenario.fleet.cold_start_seconds + scenario.fleet.reconcile_seconds) // ORACLE_BUCKET_SECONDS) + 1
    return max(int(need[:first].max()) if len(need) else 1, 1)


def run_policy(scenario: Scenario, policy, progress: Callable[[float], None] | None = None) -> Run:
    """One policy on the scenario, from the shared warm start, with the scenario's cold-start draws."""
    service, prefill = scenario.service, scenario.prefill
    fleet = scenario.fleet
    if scenario.spec.slo_metric == "wait" and fleet.slo_target_seconds is None:  # what vLLM's histogram shows
        fleet = replace(fleet, slo_target_seconds=scenario.spec.slo_target_seconds)
    return simulate(scenario.trace.arrivals, service, prefill, policy, fleet,
                    policy.initial_replicas(starting_replicas(scenario)), ColdStarts(scenario.fleet, scenario.seed),
                    progress, score_from=scenario.score_from)


def run_policies(scenario: Scenario, names=POLICIES, progress: Callable[[str, float], None] | None = None) -> list[Run]:
    """Each named policy on the same trace with the same cold-start draws and the same warm start."""
    service, prefill = scenario.service, scenario.prefill
    runs = []
    for name in names:
        policy = make_policy(name, scenario, service, prefill)
        report = (lambda fraction, who=policy.name: progress(who, fraction)) if progress else None
        runs.append(run_policy(scenario, policy, report))
    return runs
