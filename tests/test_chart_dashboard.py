"""The chart's Grafana dashboard and alert rules as files: the JSON loads, every panel has PromQL, vLLM series are
matched under both names, and every inferencepool_* metric they use is one the operator exports.
(e2e/test_chart_monitoring.py runs the PromQL against a real Prometheus and the rules through promtool.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from inferencepool.operator.metrics import OperatorMetrics

CHART = Path(__file__).resolve().parents[1] / "charts" / "inferencepool-operator"
DASHBOARD = json.loads((CHART / "dashboards" / "inferencepool.json").read_text())
RULES = (CHART / "templates" / "prometheusrule.yaml").read_text()


def exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]


def exported_names() -> set[str]:
    metrics = OperatorMetrics(CollectorRegistry())  # every family is exported, with no pool yet
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update({f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"})
    return names


def test_the_dashboard_is_grafana_json_with_its_variables():
    assert DASHBOARD["uid"] == "inferencepool-operator" and DASHBOARD["schemaVersion"] >= 36
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "pool"} and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert all(t["expr"].strip() and t["refId"] for t in panel["targets"]), panel["title"]


def test_pool_panels_follow_the_variables_and_vllm_names_match_both_spellings():
    titles = {p["title"] for p in DASHBOARD["panels"]}
    for wanted in ("Replicas: desired and ready", "Arrival rate and forecast", "Cost per hour",
                   "Decisions by action and constraint", "Operator: reconcile latency and Prometheus errors"):
        assert wanted in titles
    for expr in exprs():
        if "reconcile_duration" in expr or "prometheus_errors" in expr:
            continue  # the operator's own, not per pool
        assert 'namespace=~"$namespace", pool=~"$pool"' in expr, expr
    vllm = [e for e in exprs() if "vllm" in e]
    assert len(vllm) >= 5
    for expr in vllm:
        for name in re.findall(r'__name__=~"([^"]+)"', expr):
            colon, escaped = name.split("|")
            assert colon.startswith("vllm:") and escaped == colon.replace("vllm:", "vllm_"), expr
        assert not re.search(r"(?<![\"|])vllm[:_]\w+\{", expr), f"a vLLM name under one spelling only: {expr}"


def test_every_operator_metric_used_is_exported():
    used = set(re.findall(r"\binferencepool_[a-z_]+", " ".join(exprs()) + RULES))
    assert used and used <= exported_names(), used - exported_names()
    for needed in ("inferencepool_desired_replicas", "inferencepool_ready_replicas", "inferencepool_cost_per_hour",
                   "inferencepool_reconcile_duration_seconds_bucket", "inferencepool_decisions_total"):
        assert needed in used


def test_the_configmap_ships_this_file_with_the_sidecar_label():
    template = (CHART / "templates" / "dashboard.yaml").read_text()
    assert '.Files.Get "dashboards/inferencepool.json"' in template and "(.Values.dashboards | default dict).enabled" in template
    values = (CHART / "values.yaml").read_text()
    assert 'grafana_dashboard: "1"' in values
