"""A pool's history from Prometheus range queries: the operator's own queries (operator/observe.py), one
range query each, regrouped per step into the instant results observe.pool_metrics parses. So a backtest
reads a step exactly as the operator would have read it live."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from inferencepool.backtest.replay import Step
from inferencepool.operator import observe


def replicas_query(namespace: str, name: str, settings: observe.QuerySettings) -> str:
    """The replicas that ran: kube-state-metrics' spec.replicas where present, else the pods scraped."""
    sel = f'{settings.namespace_label}="{namespace}", {settings.pool_label}="{name}"'
    pods = observe.either(lambda p: f"count({p}num_requests_running{{{sel}}})")
    return f'max(kube_deployment_spec_replicas{{namespace="{namespace}", deployment="{name}"}}) or {pods}'


def read(client, namespace: str, name: str, start: float, end: float, step: float,
         settings: observe.QuerySettings = observe.QuerySettings()) -> list[Step]:
    """Steps from start to end; `client` is a prometheus_api_client.PrometheusConnect (or alike)."""
    matchers = f'{settings.namespace_label}="{namespace}", {settings.pool_label}="{name}"'
    named = {k: q for k, q in observe.queries(settings, matchers).items() if k not in ("targets_up", "unlabelled_series")}
    named["replicas"] = replicas_query(namespace, name, settings)
    grid = [start + k * step for k in range(int((end - start) // step) + 1)]
    by_time: dict[float, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for key, promql in named.items():
        for series in _range(client, promql, start, end, step):
            for t, value in series.get("values", []):
                by_time[round(float(t), 3)][key].append({"metric": series.get("metric", {}), "value": [t, value]})
    steps = []
    for t in grid:
        results = by_time.get(round(t, 3), {})
        replicas = [float(s["value"][1]) for s in results.get("replicas", [])]
        pools = observe.pool_metrics({k: v for k, v in results.items() if k != "replicas"}, settings)
        metrics = observe.find(pools, namespace, name)
        actual = int(round(max(replicas))) if replicas else None
        obs = observe.observations(metrics, t, actual or 0, actual or 0) if metrics is not None else None
        obs = obs and replace(obs, rate_window_seconds=observe.parse_duration(settings.rate_window))
        steps.append(Step(t, obs, actual, tuple(metrics.queue_buckets) if metrics is not None else ()))
    return steps


def _range(client, promql: str, start: float, end: float, step: float) -> list[dict]:
    """One range query through the client's HTTP session (prometheus_api_client's helper wants datetimes)."""
    from datetime import datetime, timezone

    return client.custom_query_range(promql, start_time=datetime.fromtimestamp(start, timezone.utc),
                                     end_time=datetime.fromtimestamp(end, timezone.utc), step=f"{step:g}")
