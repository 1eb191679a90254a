"""Capacity plans: how many replicas/GPUs a workload needs, what that costs, and
how it compares with the naive "keep utilisation <= 80%" rule and with a token API.

Pure functions returning dataclasses; cli.py does the argument parsing and printing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from inferencepool.core.queueing import Queue, bisect_boundary
from inferencepool.core.units import Slo

HOURS_PER_MONTH = 24 * 30
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
# An assumption, not a quote: roughly an on-demand data-centre GPU-hour in 2024-25 USD.
DEFAULT_GPU_HOUR_PRICE = 2.50
# The rule of thumb we compare against: add replicas until utilisation <= 80%.
NAIVE_MAX_UTILIZATION = 0.8
# Percentile of wait reported when the SLO does not name one.
DEFAULT_REPORT_PERCENTILE = 0.99
# Break-even search gives up beyond this many replicas (treated as "never").
_BREAK_EVEN_MAX_REPLICAS = 10**8
# Inputs beyond these are a unit mistake, not a fleet: refused at once rather than searched for (a load of
# 1e12 Erlangs took 6.5 s, and a utilisation of 1e-300 asked numpy for an array of 1e151 terms).
MAX_OFFERED_LOAD = 1e9  # Erlangs: a billion busy slots
MAX_SERVERS = 10**10


@dataclass(frozen=True)
class Requirements:
    """What the fleet must carry and promise, and what a replica is."""

    arrival_rate: float  # requests / s
    service_time: float  # seconds a slot is busy with one request
    slo: Slo | None = None
    max_utilization: float | None = None
    slots_per_replica: int = 1  # concurrent requests one replica serves (batch slots)
    gpus_per_replica: int = 1
    gpu_hour_price: float = DEFAULT_GPU_HOUR_PRICE
    arrival_cv: float = 1.0
    service_cv: float = 1.0
    min_replicas: int | None = None
    max_replicas: int | None = None
    prefill_time: float = 0.0  # seconds; only for a ttft SLO (ttft = wait + prefill)

    def __post_init__(self) -> None:
        for name in ("arrival_rate", "service_time"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.slo is None and self.max_utilization is None:
            raise ValueError("give an SLO or a max utilization (or both)")
        if self.max_utilization is not None and not 0 < self.max_utilization <= 1:
            raise ValueError(f"max_utilization must be in (0, 1], got {self.max_utilization!r}")
        for name in ("slots_per_replica", "gpus_per_replica"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        if not (math.isfinite(self.gpu_hour_price) and self.gpu_hour_price >= 0):
            raise ValueError(f"gpu_hour_price must be a finite number >= 0, got {self.gpu_hour_price!r}")
        if not (math.isfinite(self.prefill_time) and self.prefill_time >= 0):
            raise ValueError(f"prefill_time must be a finite number >= 0, got {self.prefill_time!r}")
        if self.prefill_time and (self.slo is None or self.slo.metric != "ttft"):
            raise ValueError("prefill_time only applies to a ttft SLO")
        if self.slo is not None and self.wait_target <= 0:
            raise ValueError(
                f"SLO '{self.slo}' after prefill {self.prefill_time:g}s leaves a wait target of "
                f"{self.wait_target:g}s; it must be > 0"
            )
        self.queue  # validates the cvs
        if self.arrival_rate * self.service_time > MAX_OFFERED_LOAD:
            raise ValueError(
                f"arrival_rate x service_time = {self.arrival_rate * self.service_time:.3g} Erlangs is above "
                f"{MAX_OFFERED_LOAD:g}: check their units"
            )

    @property
    def queue(self) -> Queue:
        return Queue(self.arrival_rate, self.service_time, self.arrival_cv, self.service_cv)

    @property
    def wait_target(self) -> float | None:
        """Seconds a request may queue: the SLO target, less prefill for a ttft SLO."""
        if self.slo is None:
            return None
        if self.slo.metric == "ttft":
            return self.slo.target_seconds - self.prefill_time
        return self.slo.target_seconds

    def at_rate(self, arrival_rate: float) -> Requirements:
        return dataclasses.replace(self, arrival_rate=arrival_rate)


def servers_needed(req: Requirements) -> int:
    """Fewest servers (slots) meeting the SLO and the utilisation cap, ignoring replica limits."""
    queue = req.queue
    needed = 0
    if req.slo is not None:
        if req.slo.percentile is None:
            needed = queue.servers_for_mean_wait(req.wait_target)
        else:
            needed = queue.servers_for_wait_quantile(req.wait_target, req.slo.percentile)
    if req.max_utilization is not None:
        needed = max(needed, queue.servers_for_utilization(req.max_utilization))
    if needed > MAX_SERVERS:
        raise ValueError(f"the target needs {needed:.3g} slots, above {MAX_SERVERS:g}: check max_utilization (--max-utilization) and the SLO (--slo)")
    return needed


def meets(req: Requirements, servers: int) -> bool:
    """Whether `servers` slots meet every requirement (SLO and utilisation cap)."""
    queue = req.queue
    if not queue.is_stable(servers):
        return False
    if req.max_utilization is not None and queue.load / servers > req.max_utilization:
        return False
    if req.slo is None:
        return True
    if req.slo.percentile is None:
        return queue.mean_wait(servers) <= req.wait_target
    return queue.prob_wait_exceeds(servers, req.wait_target) <= 1 - req.slo.percentile


def replicas_for(req: Requirements, servers: int) -> int:
    """Replicas carrying `servers` slots, within min/max replicas."""
    replicas = math.ceil(servers / req.slots_per_replica)
    if req.min_replicas is not None:
        replicas = max(replicas, req.min_replicas)
    if req.max_replicas is not None:
        replicas = min(replicas, req.max_replicas)
    return replicas


def monthly_cost(req: Requirements, replicas: int) -> float:
    return replicas * req.gpus_per_replica * req.gpu_hour_price * HOURS_PER_MONTH


@dataclass(frozen=True)
class Sizing:
    """One fleet size and how it performs."""

    rule: str
    servers_needed: int  # slots the rule asks for, before whole replicas and min/max
    replicas: int
    servers: int  # slots actually provided: replicas x slots per replica
    gpus: int
    utilization: float
    wait_threshold: float  # seconds; the SLO's wait target, or 0 with no SLO
    prob_wait_exceeds: float  # P(wait > wait_threshold)
    mean_wait: float  # seconds, inf if unstable
    percentile: float  # which percentile percentile_wait is
    percentile_wait: float  # seconds, inf if unstable
    cost_per_hour: float
    cost_per_month: float
    meets_requirements: bool  # SLO and utilisation cap both met
    stable: bool
    capped: bool  # max_replicas cut it below what the rule asked for


def size(req: Requirements, rule: str, needed: int) -> Sizing:
    """Describe the fleet that provides `needed` servers in whole replicas."""
    replicas = replicas_for(req, needed)
    servers = replicas * req.slots_per_replica
    queue = req.queue
    threshold = req.wait_target if req.wait_target is not None else 0.0
    percentile = req.slo.percentile if req.slo and req.slo.percentile else DEFAULT_REPORT_PERCENTILE
    return Sizing(
        rule=rule,
        servers_needed=needed,
        replicas=replicas,
        servers=servers,
        gpus=replicas * req.gpus_per_replica,
        utilization=queue.load / servers if servers else math.inf,
        wait_threshold=threshold,
        prob_wait_exceeds=queue.prob_wait_exceeds(servers, threshold),
        mean_wait=queue.mean_wait(servers),
        percentile=percentile,
        percentile_wait=queue.wait_quantile(servers, percentile),
        cost_per_hour=replicas * req.gpus_per_replica * req.gpu_hour_price,
        cost_per_month=monthly_cost(req, replicas),
        meets_requirements=meets(req, servers),
        stable=queue.is_stable(servers),
        capped=servers < needed,
    )


@dataclass(frozen=True)
class ApiPricing:
    """A token-priced API: USD per 1M tokens and tokens per request."""

    input_price_per_million: float
    output_price_per_million: float
    input_tokens: float
    output_tokens: float

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{field.name} must be a finite number >= 0, got {value!r}")
        if self.cost_per_request <= 0:
            raise ValueError("the API must cost something per request (prices and token counts are all zero)")

    @property
    def cost_per_request(self) -> float:
        input_cost = self.input_tokens * self.input_price_per_million
        return (input_cost + self.output_tokens * self.output_price_per_million) / 1e6

    def monthly_cost(self, arrival_rate: float) -> float:
        return arrival_rate * SECONDS_PER_MONTH * self.cost_per_request


@dataclass(frozen=True)
class BuildVsBuy:
    api_cost_per_request: float
    api_cost_per_month: float  # at the planned volume
    self_hosted_cost_per_month: float  # the Erlang-C plan at the planned volume
    break_even_rate: float | None  # req/s above which self-hosting is always cheaper; None = never
    break_even_replicas: int | None  # replicas the plan needs at the break-even volume


def capacity(req: Requirements, replicas: int) -> float:
    """Largest arrival rate (req/s) that `replicas` replicas serve within the requirements."""
    servers = replicas * req.slots_per_replica
    if servers == 0:
        return 0.0
    low, high = 0.0, servers / req.service_time  # high is unstable, so fails
    while high - low > 1e-12 * high:
        middle = (low + high) / 2
        if meets(req.at_rate(middle), servers):
            low = middle
        else:
            high = middle
    return low


def break_even(req: Requirements, api: ApiPricing) -> tuple[float | None, int | None]:
    """Smallest volume (req/s) above which self-hosting is always cheaper than the API.

    Self-hosted cost is a step function of volume (whole replicas) and the API bill is
    linear, so they can cross more than once.  In the band of volumes that exactly n
    replicas serve, (capacity(n-1), capacity(n)], the API is cheaper up to
    even(n) = cost(n) / API cost per req/s.  The break-even is even(n) for the largest n
    whose band starts below even(n).  Pooled queues carry more per server as they grow,
    so that condition fails for every n past some point; we find it by exponential
    search then bisection.  Returns (rate, replicas), or (None, None) if self-hosting
    is never cheaper (the API costs less per request than a GPU at full tilt).
    """
    api_per_rate = api.monthly_cost(1.0)  # USD/month per req/s

    def even(n: int) -> float:
        return monthly_cost(req, n) / api_per_rate

    # At best a slot is busy all the time (or up to max_utilization of it).
    best_utilization = req.max_utilization or 1.0
    cost_per_slot_second = req.gpus_per_replica * req.gpu_hour_price / 3600 / req.slots_per_replica
    if cost_per_slot_second * req.service_time / best_utilization >= api.cost_per_request:
        return None, None

    first = max(1, req.min_replicas or 0)

    def api_cheaper_somewhere(n: int) -> bool:
        band_start = 0.0 if n == first else capacity(req, n - 1)
        return even(n) > band_start

    cheaper, dearer = first, first + 1  # api_cheaper_somewhere(first) always holds
    while api_cheaper_somewhere(dearer):
        cheaper, dearer = dearer, dearer + 2 * (dearer - first)
        if dearer > _BREAK_EVEN_MAX_REPLICAS:
            return None, None
    cheaper, _ = bisect_boundary(lambda n: not api_cheaper_somewhere(n), cheaper, dearer)
    return even(cheaper), cheaper


@dataclass(frozen=True)
class Plan:
    requirements: Requirements
    erlang: Sizing
    naive: Sizing
    build_vs_buy: BuildVsBuy | None = None

    @property
    def gpus_saved(self) -> int:
        """GPUs the Erlang-C plan saves against the naive rule (negative: it adds)."""
        return self.naive.gpus - self.erlang.gpus

    @property
    def monthly_saving(self) -> float:
        return self.naive.cost_per_month - self.erlang.cost_per_month


def make_plan(req: Requirements, api: ApiPricing | None = None) -> Plan:
    """Size the fleet by Erlang C and by the naive utilisation rule, and price both."""
    erlang = size(req, "erlang-c", servers_needed(req))
    naive_servers = req.queue.servers_for_utilization(NAIVE_MAX_UTILIZATION)
    naive = size(req, f"utilization <= {NAIVE_MAX_UTILIZATION:g}", naive_servers)
    build_vs_buy = None
    if api is not None:
        rate, replicas = break_even(req, api)
        build_vs_buy = BuildVsBuy(
            api_cost_per_request=api.cost_per_request,
            api_cost_per_month=api.monthly_cost(req.arrival_rate),
            self_hosted_cost_per_month=erlang.cost_per_month,
            break_even_rate=rate,
            break_even_replicas=replicas,
        )
    return Plan(req, erlang, naive, build_vs_buy)


def _finite_or_none(value):
    """JSON has no infinity: unstable waits become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sizing_dict(sizing: Sizing) -> dict:
    return {
        "rule": sizing.rule,
        "servers_needed": sizing.servers_needed,
        "replicas": sizing.replicas,
        "servers": sizing.servers,
        "gpus": sizing.gpus,
        "utilization": _finite_or_none(sizing.utilization),
        "wait_threshold_s": sizing.wait_threshold,
        "prob_wait_exceeds_threshold": sizing.prob_wait_exceeds,
        "mean_wait_s": _finite_or_none(sizing.mean_wait),
        "percentile": sizing.percentile,
        "percentile_wait_s": _finite_or_none(sizing.percentile_wait),
        "cost_per_hour_usd": sizing.cost_per_hour,
        "cost_per_month_usd": sizing.cost_per_month,
        "meets_requirements": sizing.meets_requirements,
        "stable": sizing.stable,
        "capped": sizing.capped,
    }


def plan_to_dict(plan: Plan) -> dict:
    """JSON-ready plan with stable keys; infinite waits (unstable fleets) are null."""
    req = plan.requirements
    bvb = plan.build_vs_buy
    return {
        "inputs": {
            "arrival_rate_per_s": req.arrival_rate,
            "arrival_rate_per_min": req.arrival_rate * 60,
            "service_time_s": req.service_time,
            "offered_load_erlangs": req.queue.load,
            "slo": str(req.slo) if req.slo else None,
            "slo_metric": req.slo.metric if req.slo else None,
            "slo_percentile": req.slo.percentile if req.slo else None,
            "slo_target_s": req.slo.target_seconds if req.slo else None,
            "wait_target_s": req.wait_target,
            "prefill_time_s": req.prefill_time,
            "max_utilization": req.max_utilization,
            "slots_per_replica": req.slots_per_replica,
            "gpus_per_replica": req.gpus_per_replica,
            "gpu_hour_price_usd": req.gpu_hour_price,
            "arrival_cv": req.arrival_cv,
            "service_cv": req.service_cv,
            "min_replicas": req.min_replicas,
            "max_replicas": req.max_replicas,
            "hours_per_month": HOURS_PER_MONTH,
        },
        "erlang_c": _sizing_dict(plan.erlang),
        "naive": _sizing_dict(plan.naive),
        "comparison": {
            "gpus_saved": plan.gpus_saved,
            "monthly_saving_usd": plan.monthly_saving,
            "naive_meets_requirements": plan.naive.meets_requirements,
        },
        "build_vs_buy": None
        if bvb is None
        else {
            "api_cost_per_request_usd": bvb.api_cost_per_request,
            "api_cost_per_month_usd": bvb.api_cost_per_month,
            "self_hosted_cost_per_month_usd": bvb.self_hosted_cost_per_month,
            "cheaper": "self-hosted" if bvb.self_hosted_cost_per_month < bvb.api_cost_per_month else "api",
            "break_even_rate_per_s": bvb.break_even_rate,
            "break_even_rate_per_min": None if bvb.break_even_rate is None else bvb.break_even_rate * 60,
            "break_even_replicas": bvb.break_even_replicas,
        },
    }
