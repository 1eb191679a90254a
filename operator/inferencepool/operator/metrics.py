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
        self.forget_status(namespace, pool)
        self.record_slo(namespace, pool, None)
        self.record_mode(namespace, pool, None)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

    # ---------------------------------------------------------------- what the chart's alerts and dashboard read

    def _status_gauges(self) -> dict:
        """Created on first use, so the gauges above keep their place (and their tests) unchanged."""
        if not hasattr(self, "_status"):
            r = self.registry
            self._status = {
                "condition": Gauge("inferencepool_condition", "A pool's condition: 1 True, 0 False; the reason as a label.",
                                   (*POOL, "type", "reason"), registry=r),
                "target": Gauge("inferencepool_slo_target_seconds", "The pool's SLO target (queue wait or TTFT).", POOL,
                                registry=r),
                "observed": Gauge("inferencepool_observed_slo_seconds", "Observed queue wait or TTFT (the SLO's metric) at "
                                  "the SLO percentile over the rate window; absent when unknown.", POOL, registry=r),
                "forecast": Gauge("inferencepool_forecast_rate", "The forecast's upper quantile of the arrival rate over "
                                  "the horizon, requests per second; absent with prediction off.", POOL, registry=r),
                "cost": Gauge("inferencepool_cost_per_hour", "Cost per hour of the desired replicas, in the pool's "
                              "currency (spec.cost).", POOL, registry=r),
            }
            self._reasons: dict[tuple, str] = {}
        return self._status

    def record_status(self, namespace: str, pool: str, spec, decision, conditions, status) -> None:
        """Conditions, SLO target, observed SLO statistic, forecast and cost per hour of one decision."""
        g, labels = self._status_gauges(), (namespace, pool)
        for c in conditions:
            key = (*labels, c["type"])
            old = self._reasons.get(key)
            if old is not None and old != c["reason"]:
                g["condition"].remove(*key, old)
            self._reasons[key] = c["reason"]
            g["condition"].labels(*key, c["reason"]).set(1 if c["status"] == "True" else 0)
        g["target"].labels(*labels).set(spec.slo_target_seconds)
        observed = status.get("observedTTFTSeconds" if spec.slo_metric == "ttft" else "observedWaitSeconds")
        for name, value in (("observed", observed), ("forecast", decision.forecast_rate)):
            if value is None:
                try:
                    g[name].remove(*labels)
                except KeyError:
                    pass
            else:
                g[name].labels(*labels).set(value)
        g["cost"].labels(*labels).set(decision.cost_per_hour(spec))

    def forget_status(self, namespace: str, pool: str) -> None:
        g = self._status_gauges()
        for key in [k for k in self._reasons if k[:2] == (namespace, pool)]:
            g["condition"].remove(*key, self._reasons.pop(key))
        for name in ("target", "observed", "forecast", "cost"):
            try:
                g[name].remove(namespace, pool)
            except KeyError:
                pass

    # ---------------------------------------------------------------- SLO attainment (status.slo)

    def _slo_gauges(self) -> dict:
        if not hasattr(self, "_slo"):
            r = self.registry
            self._slo = {
                "attainment": Gauge("inferencepool_slo_attainment", "Share of SLO windows over spec.slo.period that "
                                    "met the percentile (measured); absent without spec.slo.objective or data.",
                                    POOL, registry=r),
                "errorBudgetRemaining": Gauge("inferencepool_error_budget_remaining", "Error budget left, a fraction: "
                                              "1 - (1 - attainment) / (1 - objective), at least 0.", POOL, registry=r),
            }
        return self._slo

    def record_slo(self, namespace: str, pool: str, slo: dict | None) -> None:
        """Attainment and budget from status.slo; a value not known now (or None: forget) drops the series."""
        for key, gauge in self._slo_gauges().items():
            value = (slo or {}).get(key)
            if value is None:
                try:
                    gauge.remove(namespace, pool)
                except KeyError:
                    pass
            else:
                gauge.labels(namespace, pool).set(value)

    # ---------------------------------------------------------------- spec.mode (operator/modes.py)

    def record_mode(self, namespace: str, pool: str, mode: str | None, deployment_replicas: int = 0) -> None:
        """inferencepool_advisory (1 Advisory, 0 Active) and the Deployment's replicas, so a dashboard sets an
        advisory pool's inferencepool_desired_replicas (what it would set) beside what runs; None forgets."""
        if not hasattr(self, "_mode"):
            self._mode = (
                Gauge("inferencepool_advisory", "1: spec.mode Advisory (decides, never scales); 0: Active.", POOL,
                      registry=self.registry),
                Gauge("inferencepool_deployment_replicas", "The Deployment's spec.replicas at the last decision.", POOL,
                      registry=self.registry),
            )
        for gauge, value in zip(self._mode, (mode == "Advisory", deployment_replicas)):
            if mode is None:
                try:
                    gauge.remove(namespace, pool)
                except KeyError:
                    pass
            else:
                gauge.labels(namespace, pool).set(float(value))
