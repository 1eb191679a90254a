"""The per-pool gauges the chart's alerts and dashboard read: conditions (0/1 with the reason), SLO target,
observed SLO statistic and cost per hour, recorded by a real handler tick (fake Kubernetes and Prometheus)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from inferencepool.operator import handlers
from inferencepool.operator.metrics import OperatorMetrics
from test_handlers import SPEC, FakeKube, FakeReader, Pool, metrics  # noqa: F401 (the same world as the handler tests)

import pytest


@pytest.fixture
def world(monkeypatch):
    import kopf

    monkeypatch.setattr(kopf, "info", lambda *a, **k: None)
    monkeypatch.setattr(kopf, "warn", lambda *a, **k: None)
    registry = CollectorRegistry()
    kube, reader = FakeKube(), FakeReader()
    operator = handlers.Operator(handlers.OperatorConfig(interval=3), reader, kube, OperatorMetrics(registry))
    return operator, reader, registry


def samples(registry, name) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for m in registry.collect() for s in m.samples if s.name == name}


def condition(registry, kind, pool="llama") -> dict:
    return {dict(k)["reason"]: v for k, v in samples(registry, "inferencepool_condition").items()
            if dict(k)["type"] == kind and dict(k)["pool"] == pool}


def test_conditions_target_observed_and_cost_are_exported(world):
    operator, reader, registry = world
    wait = ((0.5, 5.0), (1.0, 9.0), (2.5, 9.95), (float("inf"), 10.0))  # cumulative bucket rates
    reader.pools = metrics(rate=100.0, service=1.0, queue_buckets=wait)  # 100 Erlangs > 10 replicas x 4 slots
    pool = Pool()
    status = pool.tick(operator)
    assert condition(registry, "Saturated") == {"DemandExceedsCapacity": 1.0}
    assert condition(registry, "ScalingLimited") == {"MaxReplicas": 1.0}
    assert condition(registry, "MetricsAvailable") == {"MetricsFresh": 1.0}
    assert condition(registry, "Ready") == {"NoReadyReplicas": 0.0}
    labels = (("namespace", "serving"), ("pool", "llama"))
    assert samples(registry, "inferencepool_cost_per_hour") == {labels: 10 * 1.5}
    assert samples(registry, "inferencepool_slo_target_seconds") == {labels: 2.0}
    assert samples(registry, "inferencepool_observed_slo_seconds") == {labels: status["observedWaitSeconds"]}
    assert 1.0 < status["observedWaitSeconds"] <= 2.5
    assert samples(registry, "inferencepool_forecast_rate") == {}  # prediction off in SPEC

    ahead = Pool({**SPEC, "prediction": {"enabled": True, "horizon": 60}})
    ahead.raw["metadata"]["name"] = "ahead"
    reader.pools = {("serving", "ahead"): metrics(rate=5.0, service=1.0)[("serving", "llama")]}
    ahead_status = ahead.tick(operator)
    assert samples(registry, "inferencepool_forecast_rate") == {
        (("namespace", "serving"), ("pool", "ahead")): pytest.approx(ahead_status["forecastRate"], rel=1e-3)}
    reader.pools = metrics(rate=100.0, service=1.0, queue_buckets=wait)

    reader.pools = {}  # metrics gone: the reason changes, the old reason's series goes
    pool.tick(operator)
    assert condition(registry, "MetricsAvailable") == {"NoVllmSeries": 0.0}  # no series at all for the pool
    assert samples(registry, "inferencepool_observed_slo_seconds") == {}

    for name in ("llama", "ahead"):
        operator.forget(body=type("B", (), {"metadata": type("M", (), {"namespace": "serving", "name": name})})())
    assert samples(registry, "inferencepool_condition") == {} and samples(registry, "inferencepool_cost_per_hour") == {}
