"""The operator's own /metrics: what it decided and how its reads went (prometheus-client).

The per-pool series are plain values in one dict, exposed by a custom collector (prometheus-client's
documented way to export values kept elsewhere), not labelled Gauge children: a child holds a lock and a
value object each, 17 a pool, about 12 MiB at 1,000 pools (issue 14's memory census).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

POOL = ("namespace", "pool")

# name -> help, for the gauges with one value per pool (PoolSeries' fields of the same key)
GAUGES = {
    "desired_replicas": "Replicas the last decision asked for.",
    "ready_replicas": "Ready replicas at the last decision.",
    "arrival_rate": "Observed arrival rate, requests per second.",
    "predicted_wait_seconds": "Predicted queue wait at the SLO percentile with the desired replicas.",
    "slo_target_seconds": "The pool's SLO target (queue wait or TTFT).",
    "observed_slo_seconds": "Observed queue wait or TTFT (the SLO's metric) at the SLO percentile over the rate "
                            "window; absent when unknown.",
    "forecast_rate": "The forecast's upper quantile of the arrival rate over the horizon, requests per second; "
                     "absent with prediction off.",
    "cost_per_hour": "Cost per hour of the desired replicas, in the pool's currency (spec.cost).",
    "slo_attainment": "Share of SLO windows over spec.slo.period that met the percentile (measured); absent "
                      "without spec.slo.objective or data.",
    "error_budget_remaining": "Error budget left, a fraction: 1 - (1 - attainment) / (1 - objective), at least 0.",
    "advisory": "1: spec.mode Advisory (decides, never scales); 0: Active.",
    "deployment_replicas": "The Deployment's spec.replicas at the last decision.",
}
SLO_FIELDS = {"attainment": "slo_attainment", "errorBudgetRemaining": "error_budget_remaining"}


@dataclass(slots=True)
class PoolSeries:
    """One pool's values; a gauge absent from `values` is not exported."""

    values: dict[str, float] = field(default_factory=dict)
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)  # (action, constraint) -> count
    wait_exceeds: dict[str, float] = field(default_factory=dict)  # offset ("-1", "0", "+1") -> probability
    conditions: dict[str, tuple[str, float]] = field(default_factory=dict)  # type -> (reason, 1 or 0)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        self._pools: dict[tuple[str, str], PoolSeries] = {}
        self._lock = threading.Lock()  # decisions record from the round's threads; /metrics reads from its own
        self.reconcile_seconds = Histogram(
            "inferencepool_reconcile_duration_seconds", "Time for one pool's reconcile tick.", registry=registry
        )
        self.prometheus_errors = Counter(
            "inferencepool_prometheus_errors_total", "Failed Prometheus queries, by signal.", ("signal",), registry=registry
        )
        registry.register(self)

    def _set(self, namespace: str, pool: str, **values: float | None) -> PoolSeries:
        """Set (a number) or drop (None) gauges of one pool; the caller holds the lock."""
        series = self._pools.setdefault((namespace, pool), PoolSeries())
        for name, value in values.items():
            if value is None:
                series.values.pop(name, None)
            else:
                series.values[name] = float(value)
        return series

    def record(self, namespace: str, pool: str, decision, arrival_rate: float | None, ready: int) -> None:
        with self._lock:
            series = self._set(namespace, pool, desired_replicas=decision.replicas, ready_replicas=ready,
                               arrival_rate=math.nan if arrival_rate is None else arrival_rate)
            if decision.predicted_wait is not None:
                series.values["predicted_wait_seconds"] = float(decision.predicted_wait)
            key = (str(decision.action), str(decision.constraint))
            series.decisions[key] = series.decisions.get(key, 0) + 1
            for n, p in decision.p_wait_exceeds.items():
                series.wait_exceeds[f"{n - decision.replicas:+d}" if n != decision.replicas else "0"] = float(p)

    def record_status(self, namespace: str, pool: str, spec, decision, conditions, status) -> None:
        """Conditions, SLO target, observed SLO statistic, forecast and cost per hour of one decision."""
        observed = status.get("observedTTFTSeconds" if spec.slo_metric == "ttft" else "observedWaitSeconds")
        with self._lock:
            series = self._set(namespace, pool, slo_target_seconds=spec.slo_target_seconds, observed_slo_seconds=observed,
                               forecast_rate=decision.forecast_rate, cost_per_hour=decision.cost_per_hour(spec))
            for c in conditions:  # one series per type: a new reason replaces the old one's
                series.conditions[c["type"]] = (c["reason"], 1.0 if c["status"] == "True" else 0.0)

    def record_slo(self, namespace: str, pool: str, slo: dict | None) -> None:
        """Attainment and budget from status.slo; a value not known now (or None: forget) drops the series."""
        with self._lock:
            self._set(namespace, pool, **{name: (slo or {}).get(key) for key, name in SLO_FIELDS.items()})

    def record_mode(self, namespace: str, pool: str, mode: str | None, deployment_replicas: int = 0) -> None:
        """inferencepool_advisory (1 Advisory, 0 Active) and the Deployment's replicas, so a dashboard sets an
        advisory pool's inferencepool_desired_replicas (what it would set) beside what runs; None forgets."""
        with self._lock:
            if mode is None:
                self._set(namespace, pool, advisory=None, deployment_replicas=None)
            else:
                self._set(namespace, pool, advisory=mode == "Advisory", deployment_replicas=deployment_replicas)

    def forget(self, namespace: str, pool: str) -> None:
        """Drop a deleted pool's series."""
        with self._lock:
            self._pools.pop((namespace, pool), None)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

    def collect(self):
        """The per-pool families, from a copy taken under the lock (a scrape never holds a decision)."""
        with self._lock:
            pools = [(key, PoolSeries(dict(s.values), dict(s.decisions), dict(s.wait_exceeds), dict(s.conditions)))
                     for key, s in self._pools.items()]
        gauges = {name: GaugeMetricFamily(f"inferencepool_{name}", doc, labels=POOL) for name, doc in GAUGES.items()}
        decisions = CounterMetricFamily("inferencepool_decisions", "Decisions made, by action.",
                                        labels=(*POOL, "action", "constraint"))
        exceeds = GaugeMetricFamily("inferencepool_predicted_wait_exceeds_target_probability",
                                    "Predicted P(wait > target) at the desired replicas + offset (-1, 0, +1).",
                                    labels=(*POOL, "offset"))
        conditions = GaugeMetricFamily("inferencepool_condition",
                                       "A pool's condition: 1 True, 0 False; the reason as a label.",
                                       labels=(*POOL, "type", "reason"))
        for labels, series in pools:
            for name, value in series.values.items():
                gauges[name].add_metric(labels, value)
            for (action, constraint), count in series.decisions.items():
                decisions.add_metric((*labels, action, constraint), count)
            for offset, p in series.wait_exceeds.items():
                exceeds.add_metric((*labels, offset), p)
            for kind, (reason, value) in series.conditions.items():
                conditions.add_metric((*labels, kind, reason), value)
        yield from gauges.values()
        yield from (decisions, exceeds, conditions)
