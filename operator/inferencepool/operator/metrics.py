"""The operator's own /metrics: what it decided and how its reads went (prometheus-client)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

POOL = ("namespace", "pool")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        self.desired_replicas = Gauge(
            "inferencepool_desired_replicas", "Replicas the last decision asked for.", POOL, registry=registry
        )
        self.ready_replicas = Gauge("inferencepool_ready_replicas", "Ready replicas at the last decision.", POOL, registry=registry)
        self.arrival_rate = Gauge(
            "inferencepool_arrival_rate", "Observed arrival rate, requests per second.", POOL, registry=registry
        )
        self.decisions = Counter(
            "inferencepool_decisions_total", "Decisions made, by action.", (*POOL, "action", "constraint"), registry=registry
        )
        self.wait_exceeds = Gauge(
            "inferencepool_predicted_wait_exceeds_target_probability",
            "Predicted P(wait > target) at the desired replicas + offset (-1, 0, +1).",
            (*POOL, "offset"),
            registry=registry,
        )
        self.predicted_wait = Gauge(
            "inferencepool_predicted_wait_seconds",
            "Predicted queue wait at the SLO percentile with the desired replicas.",
            POOL,
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "inferencepool_reconcile_duration_seconds", "Time for one pool's reconcile tick.", registry=registry
        )
        self.prometheus_errors = Counter(
            "inferencepool_prometheus_errors_total", "Failed Prometheus queries, by signal.", ("signal",), registry=registry
        )

    def record(self, namespace: str, pool: str, decision, arrival_rate: float | None, ready: int) -> None:
        labels = (namespace, pool)
        self.desired_replicas.labels(*labels).set(decision.replicas)
        self.ready_replicas.labels(*labels).set(ready)
        self.arrival_rate.labels(*labels).set(float("nan") if arrival_rate is None else arrival_rate)
        self.decisions.labels(*labels, decision.action, decision.constraint).inc()
        for n, p in decision.p_wait_exceeds.items():
            self.wait_exceeds.labels(*labels, f"{n - decision.replicas:+d}" if n != decision.replicas else "0").set(p)
        if decision.predicted_wait is not None:
            self.predicted_wait.labels(*labels).set(decision.predicted_wait)

    def forget(self, namespace: str, pool: str) -> None:
        """Drop a deleted pool's series."""
        for gauge in (self.desired_replicas, self.ready_replicas, self.arrival_rate, self.predicted_wait):
            try:
                gauge.remove(namespace, pool)
            except KeyError:
                pass
        for metric in (self.decisions, self.wait_exceeds):
            for labels in [k for k in list(metric._metrics) if k[:2] == (namespace, pool)]:  # noqa: SLF001
                metric.remove(*labels)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)
