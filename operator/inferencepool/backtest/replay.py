"""Replay a pool's history (one Observations per step, as the operator would have read them) through
decide() and baselines, and score every policy with the same queue model. Pure: no I/O.

Counterfactual, and what that assumes: the demand (arrival rate, service time, CVs) is what was measured,
whatever ran; a policy's replicas serve from the step it orders them (no cold start), so the GPU-hours are
a lower bound for a policy that scales often; the share of requests within the target at N replicas is the
Erlang-C model's (core/queueing.py), the same model for every policy and for what actually ran. What
actually ran is also scored by its own queue-time histogram, where the history has one (`measured`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from inferencepool.core.policy import History, Observations, PoolSpec, decide, wait_target
from inferencepool.core.queueing import Queue
from inferencepool.simulate import baselines


@dataclass(frozen=True)
class Step:
    time: float  # unix seconds
    obs: Observations | None  # None: Prometheus had nothing for the pool then
    actual_replicas: int | None = None  # kube_deployment_spec_replicas, else the pods scraped
    queue_buckets: tuple[tuple[float, float], ...] = ()  # cumulative rates by le: what the requests waited


@dataclass
class Score:
    policy: str
    gpu_hours: float = 0.0
    requests: float = 0.0
    good: float = 0.0  # requests within the target (modelled)
    steps: int = 0
    steps_met: int = 0  # steps whose modelled percentile met the SLO
    replicas: list[int] = field(default_factory=list)
    measured: float | None = None  # share within the target by the pool's own queue-time histogram (actual only)

    @property
    def attainment(self) -> float | None:
        return self.good / self.requests if self.requests else None

    @property
    def steps_met_share(self) -> float | None:
        return self.steps_met / self.steps if self.steps else None


def good_share(spec: PoolSpec, obs: Observations, replicas: int) -> float | None:
    """Modelled share of requests whose wait is within the target at `replicas`; None without demand data."""
    if obs.arrival_rate is None or not obs.service_time:
        return None
    if obs.arrival_rate == 0:
        return 1.0
    queue = Queue(obs.arrival_rate, obs.service_time, obs.arrival_cv, obs.service_cv)
    return 1.0 - queue.prob_wait_exceeds(replicas * spec.slots_per_replica, max(wait_target(spec, obs), 0.0))


def share_below(buckets: tuple[tuple[float, float], ...], target: float) -> tuple[float, float] | None:
    """(requests within target, all requests) from cumulative bucket rates, linear between bounds."""
    if not buckets or not math.isinf(buckets[-1][0]) or buckets[-1][1] <= 0:
        return None
    low_le, low_count = 0.0, 0.0
    for le, count in buckets:
        if le >= target:
            if math.isinf(le):
                return low_count, buckets[-1][1]
            within = low_count + (count - low_count) * (target - low_le) / (le - low_le) if le > low_le else count
            return within, buckets[-1][1]
        low_le, low_count = le, count
    return buckets[-1][1], buckets[-1][1]


def _counterfactual(obs: Observations, replicas: int, spec: PoolSpec) -> Observations:
    """What the pool would have shown at `replicas`: the same demand, running capped by its slots."""
    load = (obs.arrival_rate or 0.0) * (obs.service_time or 0.0)
    return replace(obs, current_replicas=replicas, ready_replicas=replicas, unschedulable_replicas=0,
                   running=min(load, replicas * spec.slots_per_replica), waiting=None, token_time_curve=None)


def replay(steps: list[Step], spec: PoolSpec, step_seconds: float, policies: tuple[str, ...] = ("ours", "hpa", "static-peak")) -> list[Score]:
    """Score every policy and what actually ran over the steps."""
    scores = {"actual": Score("actual"), **{p: Score(p) for p in policies}}
    measured = [0.0, 0.0]
    usable = [s for s in steps if s.obs is not None and s.obs.arrival_rate is not None and s.obs.service_time]
    peak = max((s.obs.arrival_rate for s in usable), default=0.0)
    mean_service = sum(s.obs.service_time for s in usable) / len(usable) if usable else 1.0
    static = max(baselines.size(spec, peak, mean_service), spec.min_replicas) if usable else spec.min_replicas
    hpa = baselines.Hpa(spec.slots_per_replica, spec.min_replicas, spec.max_replicas)
    history = History()
    first = next((s.actual_replicas for s in steps if s.actual_replicas is not None), spec.min_replicas)
    current = {p: first for p in policies}
    for s in steps:
        chosen: dict[str, int | None] = {"actual": s.actual_replicas}
        if s.obs is not None:
            if "ours" in policies:
                d = decide(spec, _counterfactual(s.obs, current["ours"], spec), history)
                history, chosen["ours"] = d.history, d.replicas
            if "hpa" in policies:
                chosen["hpa"] = hpa.reconcile(_counterfactual(s.obs, current["hpa"], spec), None)
        if "static-peak" in policies:
            chosen["static-peak"] = static
        for name, n in chosen.items():
            if name != "actual":
                n = current[name] if n is None else n
                current[name] = n
            if n is None:
                continue
            score = scores[name]
            score.replicas.append(n)
            score.gpu_hours += n * spec.gpus_per_replica * step_seconds / 3600
            share = good_share(spec, s.obs, n) if s.obs is not None else None
            if share is not None:
                weight = s.obs.arrival_rate * step_seconds
                score.requests += weight
                score.good += share * weight
                score.steps += 1
                score.steps_met += share >= (spec.slo_percentile or 0.5)
        within = share_below(s.queue_buckets, spec.slo_target_seconds) if s.queue_buckets else None
        if within is not None:
            measured[0] += within[0] * step_seconds
            measured[1] += within[1] * step_seconds
    scores["actual"].measured = measured[0] / measured[1] if measured[1] else None
    return list(scores.values())


def table(scores: list[Score]) -> list[str]:
    """The report, as Markdown rows."""
    lines = ["| policy | GPU-hours | mean replicas | requests within target (model) | steps meeting the percentile | measured |",
             "|---|---|---|---|---|---|"]
    for s in scores:
        mean = sum(s.replicas) / len(s.replicas) if s.replicas else float("nan")
        att = f"{s.attainment:.4f}" if s.attainment is not None else "-"
        met = f"{s.steps_met_share:.1%}" if s.steps_met_share is not None else "-"
        lines.append(f"| {s.policy} | {s.gpu_hours:.2f} | {mean:.2f} | {att} | {met} | "
                     f"{f'{s.measured:.4f}' if s.measured is not None else '-'} |")
    return lines
