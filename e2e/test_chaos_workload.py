"""The pool's world changing under it (issue 15), on the real bed with a real operator and Prometheus:

- a pool deleted while its pods cold-start: its Deployment, Service and pods go (owner references), the
  operator stops deciding it without an error loop, no Event storm on the deleted object, and the
  operator's own /metrics drop every series of the pool;
- a GPU node removed under running replicas (the Node object deleted, as a cloud provider does): its pods
  go (force-deleted by the test, as a drain would; with IPOOL_CHAOS_PODGC=1 left to the pod garbage
  collector, which takes ~50 s on the bed: the benchmarks' run), the Deployment recreates them, the one that fits nowhere leaves the
  pool ScalingLimited=True InsufficientGPUs with a Warning Event, replicas never below the answer; when
  the node comes back every replica is Ready and ScalingLimited=False again.

The GPU nodes of the second test are two KWOK nodes of the test's own (a product no other test uses),
deleted afterwards whatever happens. Times are printed and written to IPOOL_CHAOS_REPORT, not asserted.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ipool_bed as bed  # noqa: E402  (loaded by conftest)
from chaos_report import report  # noqa: E402
from test_operator import (  # noqa: E402,F401  (crd, exporters, operator are fixtures)
    H100, INTERVAL, conditions, crd, exporters, get_pool, operator, event_seen, pool_events, pool_manifest, replicas,
    robust_answer, scrape_config, wait_for_full_window)

CHAOS_PRODUCT = "NVIDIA-A10G-chaos"  # on the nodes of test_gpu_node_removed... alone
PODGC = os.environ.get("IPOOL_CHAOS_PODGC") == "1"  # wait for the pod garbage collector (~50 s more)


def _owned(cluster, namespace: str) -> str:
    return cluster.kubectl("-n", namespace, "get", "deployment,service,pods", "-o", "name").stdout.strip()


def _pool_series(op, namespace: str, name: str) -> list[str]:
    return [line for line in op.metrics_text().splitlines()
            if not line.startswith("#") and f'namespace="{namespace}"' in line and f'pool="{name}"' in line]


def test_pool_deleted_while_its_pods_cold_start(cluster, namespace, operator, prometheus):
    name = "doomed"
    prom = prometheus(scrape_configs=[])  # no load needed: the warm floor makes the pods
    op = operator(prom.url)
    cluster.apply(pool_manifest(name, minReplicas=3), namespace=namespace)
    cluster.wait_until(lambda: get_pool(cluster, namespace, name).get("status", {}).get("desiredReplicas") == 3,
                       timeout=60, desc="the first decision")
    pods = cluster.wait_until(lambda: (items := cluster.kubectl_json("-n", namespace, "get", "pods")["items"])
                              and len(items) == 3 and items, timeout=30, desc="3 pods")
    assert cluster.kubectl("-n", namespace, "get", "service", name, check=False).returncode == 0
    assert _pool_series(op, namespace, name), "the pool has no series in the operator's /metrics"
    # still loading the model: no pod Ready yet (the H100 cold start is 12 s)
    ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                    for c in p["status"].get("conditions", []))]
    assert not ready, "the pods were Ready already: not deleted during the cold start"

    deleted = time.time()
    cluster.kubectl("-n", namespace, "delete", "ipool", name, "--wait=false")
    cluster.wait_until(lambda: cluster.kubectl("-n", namespace, "get", "ipool", name, check=False).returncode != 0,
                       timeout=60, desc="the pool gone (finalizer removed)")
    pool_gone = time.time() - deleted
    cluster.wait_until(lambda: _owned(cluster, namespace) == "", timeout=90,
                       desc="Deployment, Service and pods garbage-collected")
    owned_gone = time.time() - deleted
    events_then = pool_events(cluster, namespace, name)
    decisions_then = [d for d in op.decisions() if d.get("pool") == name]
    time.sleep(3 * INTERVAL)  # three more ticks: nothing may happen for the deleted pool
    assert pool_events(cluster, namespace, name) == events_then, "Events posted on the deleted pool"
    assert [d for d in op.decisions() if d.get("pool") == name] == decisions_then, "still deciding a deleted pool"
    assert not _pool_series(op, namespace, name), _pool_series(op, namespace, name)
    assert _owned(cluster, namespace) == ""  # nothing re-created it
    log = op.log_path.read_text()
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if '"level": "error"' in line and name in line]
    assert not errors, errors[:3]
    assert op.proc.poll() is None
    report("pool_deleted_during_cold_start", {"pool_gone_s": round(pool_gone, 1),
                                               "deployment_service_pods_gone_s": round(owned_gone, 1),
                                               "events_on_pool": len(events_then)})


def _gpu_nodes(tag: str) -> list[dict]:
    """Two KWOK GPU nodes of 2 GPUs each, as bed.py makes its own, on addresses no bed node has."""
    pool = {"name": f"chaos-{tag}", "count": 2, "instanceType": "g5.12xlarge", "cpu": "48", "memory": "192Gi",
            "gpus": 2, "gpuProduct": CHAOS_PRODUCT, "gpuMemoryMiB": 23028}
    nodes = bed.node_manifests({"pools": [pool], "gpuTaint": {"key": "nvidia.com/gpu", "value": "present",
                                                              "effect": "NoSchedule"}})
    for i, node in enumerate(nodes):
        cidr = f"127.100.{200 + i}.0/24"
        node["spec"]["podCIDR"], node["spec"]["podCIDRs"] = cidr, [cidr]
        node["status"]["addresses"][0]["address"] = f"127.101.0.{200 + i}"
    return nodes


def _node_ready(cluster, name: str) -> bool:
    r = cluster.kubectl("get", "node", name, "-o", "json", check=False)
    return r.returncode == 0 and any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in json.loads(r.stdout)["status"].get("conditions", []))


def test_gpu_node_removed_under_running_replicas(cluster, namespace, operator, exporters, prometheus):
    name, rate, service = "survivor", 4.0, 1.5
    expected = robust_answer(rate, service, 4, 1.0, 0.99)
    assert expected == 3  # 3 pods on 2 nodes of 2 GPUs: one node holds 2, the other 1
    nodes = _gpu_nodes(uuid.uuid4().hex[:6])
    try:
        cluster.apply(nodes)
        for n in nodes:
            cluster.wait_until(lambda n=n: _node_ready(cluster, n["metadata"]["name"]), timeout=60, desc="GPU node Ready")
        exporter = exporters(rate, service)
        prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporter)])
        wait_for_full_window(prom, name)
        op = operator(prom.url)
        cluster.apply(pool_manifest(name, product=CHAOS_PRODUCT), namespace=namespace)
        cluster.wait_until(lambda: replicas(cluster, namespace, name) == expected
                           and get_pool(cluster, namespace, name).get("status", {}).get("readyReplicas") == expected,
                           timeout=150, desc=f"{expected} Ready replicas")
        pods = cluster.kubectl_json("-n", namespace, "get", "pods")["items"]
        by_node: dict[str, list[str]] = {}
        for p in pods:
            by_node.setdefault(p["spec"]["nodeName"], []).append(p["metadata"]["name"])
        assert set(by_node) <= {n["metadata"]["name"] for n in nodes}
        victim = max(by_node, key=lambda n: len(by_node[n]))
        lost = set(by_node[victim])
        assert len(lost) == 2, by_node  # 2 + 1: the survivor has room for one more, not two

        removed = time.time()
        cluster.kubectl("delete", "node", victim, "--wait=true")
        if not PODGC:  # what a drain or the node lifecycle would do; the pod garbage collector takes ~50 s
            cluster.kubectl("-n", namespace, "delete", "pod", *lost, "--force", "--grace-period=0", check=False)
        lowest = expected
        limited = pods_gone = None
        deadline = time.time() + 150
        while limited is None:  # replicas sampled until the pool says it cannot place the lost capacity
            count = replicas(cluster, namespace, name)
            lowest = min(lowest, count)
            assert count >= expected, f"replicas {count} below the answer {expected}"
            names = {p["metadata"]["name"] for p in cluster.kubectl_json("-n", namespace, "get", "pods")["items"]}
            if pods_gone is None and not names & lost:
                pods_gone = time.time() - removed
            c = conditions(get_pool(cluster, namespace, name)).get("ScalingLimited", {})
            if c.get("status") == "True" and c.get("reason") == "InsufficientGPUs":
                limited = c
                detected = time.time() - removed
            assert time.time() < deadline, "no ScalingLimited=True InsufficientGPUs within 150 s of the node removal"
            time.sleep(1)
        assert "nvidia.com/gpu" in limited["message"], limited
        assert event_seen(cluster, namespace, name, lambda e: e["type"] == "Warning" and e["reason"] == "InsufficientGPUs")
        status = get_pool(cluster, namespace, name)["status"]
        assert status["unschedulableReplicas"] == 1 and status["desiredReplicas"] >= expected, status
        assert not {p["metadata"]["name"] for p in cluster.kubectl_json("-n", namespace, "get", "pods")["items"]} & lost

        back = time.time()
        cluster.apply([n for n in nodes if n["metadata"]["name"] == victim])

        def converged():
            pool = get_pool(cluster, namespace, name)
            c = conditions(pool).get("ScalingLimited", {})
            return (pool["status"].get("readyReplicas") == expected and replicas(cluster, namespace, name) == expected
                    and c.get("status") == "False")

        while not converged():
            count = replicas(cluster, namespace, name)
            lowest = min(lowest, count)
            assert count >= expected, f"replicas {count} below the answer {expected}"
            assert time.time() < back + 150, "not converged within 150 s of the node's return"
            time.sleep(1)
        recovered = time.time() - back
        assert lowest >= expected
        assert event_seen(cluster, namespace, name, lambda e: e["type"] == "Normal" and e["reason"] != "InsufficientGPUs"
                          and "ScalingLimited=False" in e["message"])
        assert op.proc.poll() is None and "Traceback" not in op.log_path.read_text()
        report("gpu_node_removed", {"pods_removed_by": "pod garbage collector" if PODGC else "the test (force)",
                                     "pods_gone_s": None if pods_gone is None else round(pods_gone, 1),
                                     "scaling_limited_s": round(detected, 1),
                                     "converged_after_node_back_s": round(recovered, 1)})
    finally:
        for n in nodes:
            cluster.kubectl("delete", "node", n["metadata"]["name"], "--wait=false", check=False)
