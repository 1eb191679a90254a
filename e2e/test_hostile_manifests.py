"""Hostile InferencePool manifests against the real apiserver and a running operator (issue 15).

- Names and GPU products the cluster cannot use (`llama-3.1-8b`, a 100-character or emoji product) are
  refused by the CRD with a message naming the field.
- A handler failure (a ResourceQuota forbids the pool's Service) becomes a HandlerFailed Warning Event on
  the pool, kopf's failure line in the operator's JSON log carries the pool's name, and the Service is
  created once the quota goes (time measured).
- Hypothesis generates specs (0, -1, 2^63, 1e308, 1e-300, "NaN", unicode and 10 kB strings, unknown fields,
  1,000 extraArgs, floors above caps) created with field validation Strict, as `kubectl apply` does: each is
  either refused with a message naming the field it broke, or accepted and then handled by the operator
  without a traceback (every accepted pool gets a status: decided, or Ready=False InvalidSpec). A quota of
  2 pods keeps accepted pools from loading the bed. The counts are printed (IPOOL_HOSTILE_REPORT: JSON).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator import (  # noqa: E402,F401  (crd, operator are fixtures)
    conditions, crd, get_pool, operator, pool_events, pool_manifest)

GROUP, VERSION, PLURAL = "autoscaling.inferencepool.dev", "v1alpha1", "inferencepools"
EXAMPLES = int(os.environ.get("IPOOL_HOSTILE_EXAMPLES", "150"))
NO_PROMETHEUS = "http://127.0.0.1:9"  # nothing listens: every accepted pool holds (PrometheusUnavailable)

PATHS = ["minReplicas", "maxReplicas", "slotsPerReplica", "maxGPUs", "slo.percentile", "slo.targetSeconds",
         "slo.metric", "gpu.product", "gpu.perReplica", "model.name", "model.source", "engine.image",
         "engine.port", "engine.extraArgs", "engine.resources.cpu", "engine.resources.memory", "cost.gpuHourPrice",
         "cost.currency", "scaleDown.stabilizationWindowSeconds", "scaleDown.maxStep", "prediction.coldStartSeconds",
         "prediction.quantile", "prediction.enabled", "metrics.matchers", "metrics.prometheusURL",
         "metrics.arrivalRateQuery", "drain.gracePeriodSeconds", "unknownField", "gpu.unknownField"]
HOSTILE = st.sampled_from([0, -1, 1, 2**31, 2**63, 1e308, -1e308, 1e-300, 0.5, "NaN", "inf", "-Infinity", "", " ",
                           "ü🚀\u202e", "x" * 10_000, None, [], {}, True, "1e308", "--port=1",
                           ["--max-model-len=4096"] * 1000, ["--x"] * 3])


def set_path(spec: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = spec
    for p in parents:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            return  # an earlier mutation put a hostile value here
        node = node[p]
    node[leaf] = value


def client(cluster):
    from kubernetes import client as k8s

    return k8s.CustomObjectsApi(cluster.api_client())


def test_names_and_products_the_cluster_cannot_use_are_refused_naming_the_field(cluster, crd, namespace):
    cases = {"llama-3.1-8b": ({}, "metadata.name"), "p1": ({"gpu": {"product": "x" * 100, "perReplica": 1}}, "spec.gpu.product"),
             "p2": ({"gpu": {"product": "NVIDIA-\U0001F680", "perReplica": 1}}, "spec.gpu.product")}
    for name, (spec, field) in cases.items():
        r = cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(pool_manifest(name, **spec)), check=False)
        assert r.returncode != 0 and field in r.stderr, (name, r.stderr)
    assert "llama-3-1-8b" in cluster.kubectl("-n", namespace, "apply", "-f", "-", check=False,
                                             input=json.dumps(pool_manifest("llama-3.1-8b"))).stderr  # the fix


def test_a_handler_failure_is_a_warning_event_and_a_log_line_with_the_pool(cluster, crd, namespace, operator):
    cluster.kubectl("-n", namespace, "create", "quota", "no-services", "--hard=services=0")
    op = operator(NO_PROMETHEUS)
    cluster.apply(pool_manifest("quota"), namespace=namespace)
    event = cluster.wait_until(lambda: next((e for e in pool_events(cluster, namespace, "quota")
                                             if e["type"] == "Warning" and e["reason"] == "HandlerFailed"), None),
                               timeout=90, desc="a HandlerFailed Warning Event")
    assert "failed" in event["message"] and "exceeded quota" in event["message"] or "forbidden" in event["message"], event
    lines = [json.loads(line) for line in op.log_path.read_text().splitlines() if line.startswith("{")]
    failures = [e for e in lines if "failed with an exception" in str(e.get("event"))]
    assert failures and all(e.get("pool") == "quota" and e.get("namespace") == namespace for e in failures), failures[:2]
    removed = time.time()
    cluster.kubectl("-n", namespace, "delete", "quota", "no-services")
    cluster.wait_until(lambda: cluster.kubectl("-n", namespace, "get", "service", "quota", check=False).returncode == 0,
                       timeout=120, desc="the Service once the quota is gone")
    print(f"service created {time.time() - removed:.1f}s after the quota was removed")


def test_hostile_manifests_are_refused_naming_the_field_or_handled_without_a_traceback(cluster, crd, namespace, operator):
    from kubernetes.client.exceptions import ApiException

    cluster.kubectl("-n", namespace, "create", "quota", "few-pods", "--hard=pods=2")
    op = operator(NO_PROMETHEUS)
    api = client(cluster)
    seen = {"refused": 0, "refused_naming_field": 0, "accepted": 0, "unnamed": []}
    accepted: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(PATHS), HOSTILE), min_size=1, max_size=3, unique_by=lambda t: t[0]))
    def one(mutations):
        name = f"h-{sum(seen[k] for k in ('refused', 'accepted'))}"
        body = pool_manifest(name)
        for path, value in mutations:
            set_path(body["spec"], path, value)
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict")
        except ApiException as error:
            assert error.status in (400, 422), (error.status, error.body[:500])
            message = json.loads(error.body).get("message", "") if error.body else ""
            seen["refused"] += 1
            leaves = [p.split(".")[-1] for p, _ in mutations]
            if any(leaf in message for leaf in leaves):
                seen["refused_naming_field"] += 1
            else:
                seen["unnamed"].append({"mutations": repr(mutations)[:300], "message": message[:300]})
            return
        seen["accepted"] += 1
        accepted.append(name)

    one()

    def handled():
        return all(get_pool(cluster, namespace, n).get("status", {}).get("conditions") for n in accepted)

    print(json.dumps(seen, indent=1))  # the counts, before the wait
    cluster.wait_until(handled, timeout=180 + 5 * len(accepted), interval=2,
                       desc=f"a status on all {len(accepted)} accepted pools")
    invalid = sum(1 for n in accepted
                  if conditions(get_pool(cluster, namespace, n)).get("Ready", {}).get("reason") == "InvalidSpec")
    log = op.log_path.read_text()
    report = {**seen, "accepted_invalid_spec": invalid, "accepted_decided": len(accepted) - invalid,
              "tracebacks": log.count("Traceback"), "handler_failures": log.count("failed with an exception")}
    print(json.dumps(report, indent=1))
    if os.environ.get("IPOOL_HOSTILE_REPORT"):
        Path(os.environ["IPOOL_HOSTILE_REPORT"]).write_text(json.dumps(report, indent=1))
    assert op.proc.poll() is None
    assert report["tracebacks"] == 0 and report["handler_failures"] == 0, log[-5000:]
    assert not seen["unnamed"], seen["unnamed"][:5]
    assert seen["refused"] + seen["accepted"] >= EXAMPLES
