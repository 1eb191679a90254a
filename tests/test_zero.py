"""Scale from zero (spec.minReplicas 0 with spec.metrics.arrivalRateQuery): decide() and the handlers."""

from __future__ import annotations

import pytest

from inferencepool.core.policy import History, Observations, PoolSpec, decide
from inferencepool.operator.spec import SpecError, parse
from test_handlers import SPEC, Pool, condition, events, metrics, world  # noqa: F401 - fixtures

QUERY = 'sum(rate(gateway_requests_total{route="llama"}[1m]))'
ZERO = {**SPEC, "minReplicas": 0, "metrics": {"arrivalRateQuery": QUERY},
        "scaleDown": {"stabilizationWindowSeconds": 0, "maxStep": 10}}
SPEC0 = PoolSpec(min_replicas=0, max_replicas=8, slots_per_replica=4, prediction=False, scale_down_window_seconds=0,
                 scale_down_max_step=8, default_cold_start_seconds=120)


def test_zero_needs_the_upstream_query():
    assert parse(ZERO).policy.min_replicas == 0
    with pytest.raises(SpecError, match=r"^spec.minReplicas: 0 needs spec.metrics.arrivalRateQuery: .*use minReplicas >= 1"):
        parse({**SPEC, "minReplicas": 0})


def test_the_first_arrival_wakes_a_pool_at_zero():
    d = decide(SPEC0, Observations(time=100.0, current_replicas=0, arrival_rate=0.02))
    assert (d.replicas, d.constraint, d.action) == (1, "wake_from_zero", "scale_up")
    assert d.reason == "scale up 0 -> 1: arrival 0.02/s at zero replicas wakes the pool; the first requests wait a cold start (about 120s)"
    # a service time known from before sizes the wake by Erlang-C instead
    d = decide(SPEC0, Observations(time=100.0, current_replicas=0, arrival_rate=12.0), History(last_service_time=1.5))
    assert d.replicas > 1 and d.constraint == "slo"


@pytest.mark.parametrize("obs", [
    Observations(time=100.0, current_replicas=0),  # the query returned nothing
    Observations(time=100.0, current_replicas=0, arrival_rate=float("nan")),
    Observations(time=100.0, current_replicas=0, arrival_rate=5.0, metrics_age_seconds=600),  # stale
    Observations(time=100.0, current_replicas=0, arrival_rate=0.0),  # no demand
])
def test_missing_data_or_no_demand_keeps_a_pool_at_zero(obs):
    assert decide(SPEC0, obs).replicas == 0


def test_no_demand_scales_to_zero_but_missing_metrics_never_do():
    running = Observations(time=100.0, current_replicas=2, arrival_rate=0.0, service_time=1.0)
    assert decide(SPEC0, running).replicas == 0
    assert decide(SPEC0, Observations(time=100.0, current_replicas=2)).replicas == 2


def test_the_operator_wakes_a_pool_at_zero_from_the_upstream_counter(world, events):
    operator, kube, reader = world
    reader.pools = {}  # no vLLM pod, no vLLM series
    reader.values[QUERY] = (0.0, None)
    pool = Pool(ZERO)
    status = pool.tick(operator)
    assert kube.deployments[("serving", "llama")]["spec"]["replicas"] == 0 and kube.scaled == []
    assert status["desiredReplicas"] == 0 and status["arrivalRateSource"] == "spec.metrics.arrivalRateQuery"
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero") and "waits a cold start (about 180s)" in ready["message"]
    assert condition(status, "MetricsAvailable")["status"] == "True"

    reader.values[QUERY] = (None, "returned no series")  # the gateway's counter is gone: stay at zero, say why
    status = pool.tick(operator)
    assert kube.scaled == [] and status["desiredReplicas"] == 0
    missing = condition(status, "MetricsAvailable")
    assert missing["reason"] == "MetricsMissing"
    assert missing["message"].startswith("spec.metrics.arrivalRateQuery returned no series (the pool is at zero replicas); holding at 0")

    reader.values[QUERY] = (0.05, None)  # the first request
    status = pool.tick(operator)
    assert kube.scaled == [1] and status["constraint"] == "wake_from_zero"
    assert ("Normal", "ScaledUp", status["reason"]) in events

    # Once running, vLLM's metrics come back; idle again, the pool goes back to zero.
    reader.pools = metrics(rate=0.0, service=1.5)
    reader.values[QUERY] = (0.0, None)
    status = pool.tick(operator)
    assert kube.scaled == [1, 0] and status["desiredReplicas"] == 0
