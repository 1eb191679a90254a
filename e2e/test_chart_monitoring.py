"""The chart's Grafana dashboard and PrometheusRule against real Prometheus code.

- The rules pass `promtool check rules`, and `promtool test rules` shows each alert firing on its series
  after its `for` (and not before, and not on healthy series).
- On the bed: a pool under more load than its cap, a real operator (as e2e/test_operator.py runs it) and a
  real Prometheus scraping the vLLM-shaped exporter and the operator's /metrics (honor_labels, as the chart's
  ServiceMonitor), loading the chart's rules with short `for`s. Every dashboard panel's PromQL parses and
  returns series for the pool; InferencePoolSaturated and InferencePoolWaitOverTarget fire, then
  InferencePoolOperatorDown once the operator is stopped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator import OperatorProcess, get_pool, pool_manifest, scrape_config, wait_for_full_window  # noqa: E402
from vllm_exporter import VllmExporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "inferencepool-operator"
DASHBOARD = CHART / "dashboards" / "inferencepool.json"
RELEASE = "ipool"
JOB = f"{RELEASE}-inferencepool-operator-metrics"  # the chart's metrics Service: the ServiceMonitor's job
ALERTS = ["InferencePoolMetricsMissing", "InferencePoolSaturated", "InferencePoolScalingLimitedByGPUs",
          "InferencePoolWaitOverTarget", "InferencePoolOperatorDown"]


def _helm() -> Path:
    import ipool_bed as bed  # loaded by conftest

    path = bed.BIN / "helm"
    if not path.exists():
        pytest.skip(f"helm not installed in {bed.BIN}; run e2e/cluster/install")
    return path


def _promtool() -> str:
    import ipool_bed as bed

    for candidate in (bed.BIN / "promtool", Path("/usr/bin/promtool")):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool not installed (Debian's prometheus package ships it); run e2e/cluster/install")
    return found


def rules(*sets: str) -> dict:
    """The `spec` (groups) of the chart's PrometheusRule: a Prometheus rules file."""
    out = subprocess.run([str(_helm()), "template", RELEASE, str(CHART), "--kube-version", "1.36.3",
                          "--set", "alerts.enabled=true", *(a for s in sets for a in ("--set", s))],
                         text=True, capture_output=True, check=True, timeout=60).stdout
    (rule,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "PrometheusRule"]
    return rule["spec"]


def test_rules_pass_promtool_check(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules()))
    r = subprocess.run([_promtool(), "check", "rules", str(path)], text=True, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "SUCCESS: 5 rules found" in r.stdout + r.stderr
    assert [rule["alert"] for rule in rules()["groups"][0]["rules"]] == ALERTS


def render(*sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_helm()), "template", RELEASE, str(CHART), "--namespace", "ipool-system",
                           "--kube-version", "1.36.3", *(a for s in sets for a in ("--set", s))],
                          text=True, capture_output=True, check=check, timeout=60)


def test_off_by_default_and_lint_clean_when_on():
    kinds = [d["kind"] for d in yaml.safe_load_all(render().stdout) if d]
    assert "ConfigMap" not in kinds and "PrometheusRule" not in kinds
    on = ["dashboards.enabled=true", "alerts.enabled=true", "serviceMonitor.enabled=true"]
    r = subprocess.run([str(_helm()), "lint", str(CHART), "--strict", *(a for s in on for a in ("--set", s))],
                       text=True, capture_output=True, timeout=60)
    assert "0 chart(s) failed" in r.stdout and "[WARNING]" not in r.stdout, r.stdout + r.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(render(*on, "dashboards.namespace=monitoring",
                                                            "alerts.labels.release=kps").stdout) if d}
    configmap = docs["ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert json.loads(configmap["data"]["inferencepool.json"]) == json.loads(DASHBOARD.read_text())
    assert docs["PrometheusRule"]["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = docs["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True  # the pool's namespace label survives the scrape


@pytest.mark.parametrize("sets, field", [(["alerts.for.saturated=ten minutes"], "saturated"),
                                         (["alerts.for=5m"], "for"),
                                         (["dashboards.labels.grafana_dashboard=1"], "grafana_dashboard"),
                                         (["dashboards.enable=true"], "enable")])
def test_schema_rejects_bad_monitoring_values(sets, field):
    r = render("alerts.enabled=true", *sets, check=False)
    assert r.returncode != 0 and "schema" in r.stderr and field in r.stderr, r.stderr


POOL = 'namespace="serving", pool="llama"'


def test_each_alert_fires_on_its_series_after_its_for(tmp_path):
    """promtool evaluates the rules over 1-minute samples: each alert pends through its `for` (default values:
    5m or 10m), then fires; healthy series of the same metrics fire nothing."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules()))
    bad = [  # series, values (one a minute), the alert, its `for` in minutes, labels it carries
        (f'inferencepool_condition{{{POOL}, type="MetricsAvailable", reason="MetricsMissing"}}', "0x20",
         "InferencePoolMetricsMissing", 5, {"type": "MetricsAvailable", "reason": "MetricsMissing"}),
        (f'inferencepool_condition{{{POOL}, type="Saturated", reason="DemandExceedsCapacity"}}', "1x20",
         "InferencePoolSaturated", 10, {"type": "Saturated", "reason": "DemandExceedsCapacity"}),
        (f'inferencepool_condition{{{POOL}, type="ScalingLimited", reason="InsufficientGPUs"}}', "1x20",
         "InferencePoolScalingLimitedByGPUs", 10, {"type": "ScalingLimited", "reason": "InsufficientGPUs"}),
    ]
    series = [{"series": s, "values": v} for s, v, *_ in bad] + [
        {"series": f"inferencepool_observed_slo_seconds{{{POOL}}}", "values": "3x20"},
        {"series": f"inferencepool_slo_target_seconds{{{POOL}}}", "values": "2x20"},
        {"series": f'up{{job="{JOB}"}}', "values": "1 1 0x20"},
        # a healthy pool next to it: nothing fires for it
        {"series": 'inferencepool_condition{namespace="serving", pool="ok", type="MetricsAvailable", reason="MetricsFresh"}',
         "values": "1x20"},
        {"series": 'inferencepool_condition{namespace="serving", pool="ok", type="ScalingLimited", reason="NotLimited"}',
         "values": "0x20"},
        {"series": 'inferencepool_observed_slo_seconds{namespace="serving", pool="ok"}', "values": "1x20"},
        {"series": 'inferencepool_slo_target_seconds{namespace="serving", pool="ok"}', "values": "2x20"},
    ]
    cases = [(alert, minutes, {"namespace": "serving", "pool": "llama", **labels}) for *_, alert, minutes, labels in bad]
    cases += [("InferencePoolWaitOverTarget", 10, {"namespace": "serving", "pool": "llama"}),
              ("InferencePoolOperatorDown", 5, {})]
    summaries = {  # as the alert manager shows them
        "InferencePoolMetricsMissing": "InferencePool serving/llama has no usable vLLM metrics (MetricsMissing)",
        "InferencePoolSaturated": "InferencePool serving/llama is saturated at its cap",
        "InferencePoolScalingLimitedByGPUs": "InferencePool serving/llama cannot scale up: InsufficientGPUs",
        "InferencePoolWaitOverTarget": "InferencePool serving/llama misses its SLO: observed 3s",
        "InferencePoolOperatorDown": "The inferencepool operator's /metrics is not scraped up",
    }
    descriptions = {r["alert"]: r["annotations"]["description"] for r in rules()["groups"][0]["rules"]}
    checks = []
    for alert, minutes, labels in cases:
        start = 2 if alert == "InferencePoolOperatorDown" else 0  # up turns 0 at minute 2
        description = descriptions[alert].replace("{{ $labels.namespace }}", "serving").replace("{{ $labels.pool }}", "llama")
        checks.append({"eval_time": f"{start + minutes - 1}m", "alertname": alert, "exp_alerts": []})
        checks.append({"eval_time": f"{start + minutes + 1}m", "alertname": alert, "exp_alerts": [{
            "exp_labels": {"severity": "warning", **labels},
            "exp_annotations": {"summary": summaries[alert], "description": description}}]})
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}]}))
    r = subprocess.run([_promtool(), "test", "rules", "test.yaml"], cwd=tmp_path, text=True, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


# ---------------------------------------------------------------- on the bed


def grafana_to_promql(expr: str, namespace: str, pool: str, rate_interval: str) -> str:
    """What Grafana sends for one selected namespace and pool."""
    return (expr.replace("$namespace", namespace).replace("$pool", pool)
            .replace("$__rate_interval", rate_interval))


def alerts_firing(prom) -> set[tuple[str, str]]:
    with urllib.request.urlopen(f"{prom.url}/api/v1/alerts", timeout=10) as r:
        body = json.load(r)
    return {(a["labels"]["alertname"], a["labels"].get("pool", "")) for a in body["data"]["alerts"]
            if a["state"] == "firing"}


def test_dashboard_panels_return_series_and_alerts_fire_on_the_bed(cluster, crd, namespace, prometheus, tmp_path):
    import test_operator

    name = "busy"
    exporter = VllmExporter().start()
    # 8/s x 1.5 s = 12 Erlangs against a cap of 2 replicas x 4 slots; each request queues 2.5 s (target 1 s)
    exporter.set_load(8.0, 1.5, queue_wait=2.5)
    short = ["alerts.for.metricsMissing=2s", "alerts.for.saturated=3s", "alerts.for.scalingLimited=3s",
             "alerts.for.waitOverTarget=3s", "alerts.for.operatorDown=3s"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules(*short)))
    op = OperatorProcess(cluster, namespace, "", tmp_path / "operator.log")
    scrape = [scrape_config(name, namespace, exporter),
              {"job_name": JOB, "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{op.metrics_port}"]}]}]
    import ipool_bed as bed

    prom = bed.Prometheus(scrape, tmp_path / "prometheus")
    config = json.loads(prom.config_path.read_text())
    prom.config_path.write_text(json.dumps({**config, "rule_files": [str(tmp_path / "rules.yaml")]}))
    prom.start()
    try:
        wait_for_full_window(prom, name)
        op.prometheus_url = prom.url
        op.start()
        slo = {"metric": "QueueWait", "percentile": 0.99, "targetSeconds": 1, "objective": 0.99, "window": "5s",
               "period": "60s"}  # an objective, so that the attainment panel has series
        cluster.apply(pool_manifest(name, maxReplicas=2, prediction={"enabled": True, "horizon": 30}, slo=slo),
                      namespace=namespace)
        cluster.wait_until(lambda: get_pool(cluster, namespace, name).get("status", {}).get("desiredReplicas") == 2,
                           timeout=120, desc="the pool at its cap")
        cluster.wait_until(lambda: "attainment" in get_pool(cluster, namespace, name)["status"].get("slo", {}),
                           timeout=60, desc="status.slo measured")
        prom.wait_for(f'increase(inferencepool_decisions_total{{pool="{name}"}}[{test_operator.RATE_WINDOW}])', timeout=60)
        prom.wait_for(f'inferencepool_slo_attainment{{pool="{name}"}}', timeout=60)

        # every panel's PromQL parses (a parse error raises) and returns series for the pool
        dashboard = json.loads(DASHBOARD.read_text())
        empty = []
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                promql = grafana_to_promql(target["expr"], namespace, name, test_operator.RATE_WINDOW)
                result = prom.query(promql)
                pooled = [s for s in result if s["metric"].get("pool") in (name, None)]
                if not pooled:
                    empty.append((panel["title"], target["legendFormat"], promql))
        assert not empty, f"panels without series: {empty}"
        for variable in ("namespace", "pool"):  # the dashboard's variables list this pool
            query = f"{prom.url}/api/v1/label/{variable}/values?" + urllib.parse.urlencode(
                {"match[]": "inferencepool_desired_replicas"})
            with urllib.request.urlopen(query, timeout=10) as r:
                assert {"namespace": namespace, "pool": name}[variable] in json.load(r)["data"]
        (cost_panel,) = [p for p in dashboard["panels"] if p["title"] == "Cost per hour"]
        cost = prom.query(grafana_to_promql(cost_panel["targets"][0]["expr"], namespace, name, "30s"))
        assert [float(s["value"][1]) for s in cost] == [2 * 2.5]  # 2 replicas x 1 GPU x $2.50

        cluster.wait_until(lambda: {("InferencePoolSaturated", name), ("InferencePoolWaitOverTarget", name)}
                           <= alerts_firing(prom), timeout=90, desc="saturated and wait-over-target alerts firing")
        assert ("InferencePoolOperatorDown", "") not in alerts_firing(prom)
        cluster.kubectl("-n", namespace, "delete", "ipool", name, "--wait=true", "--timeout=60s", check=False)
        op.stop()
        cluster.wait_until(lambda: ("InferencePoolOperatorDown", "") in alerts_firing(prom), timeout=60,
                           desc="operator-down alert firing")
    finally:
        if op.proc and op.proc.poll() is None:  # the operator removes its finalizer
            cluster.kubectl("-n", namespace, "delete", "ipool", "--all", "--wait=true", "--timeout=60s", check=False)
        op.stop()
        release_pools(cluster, namespace)
        exporter.stop()
        prom.stop()
        log = tmp_path / "operator.log"
        if log.exists():
            print("---- operator log (tail) ----\n" + log.read_text()[-6000:])


def release_pools(cluster, namespace: str) -> None:
    """Pools left after a failure: drop Kopf's finalizer, so the namespace can go without an operator."""
    for pool in cluster.kubectl_json("-n", namespace, "get", "ipool")["items"]:
        cluster.kubectl("-n", namespace, "patch", "ipool", pool["metadata"]["name"], "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)


@pytest.fixture(scope="module")
def crd(cluster):
    path = ROOT / "crds" / "inferencepools.autoscaling.inferencepool.dev.yaml"
    cluster.kubectl("apply", "-f", str(path))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/inferencepools.autoscaling.inferencepool.dev")
    return path
