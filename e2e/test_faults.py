"""Faults the operator must ride out, on the test bed (each bounded in time). Covered elsewhere and not
repeated here (e2e/test_operator.py): a hand edit of replicas put back with a ReplicasRestored Event, a
graceful (SIGTERM) restart, the exporter going away (MetricsMissing), invalid manifests naming the field,
and L4 pods Pending for lack of GPUs (InsufficientGPUs).

Here: the whole Prometheus goes away and a new one comes back on the same port; the operator is SIGKILLed
in the middle of a scale-up and restarted; a warm floor bigger than the cluster's GPUs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ipool_bed as bed  # noqa: E402  (loaded by conftest)
from test_operator import (  # noqa: E402,F401  (crd, exporters, operator are fixtures)
    H100, INTERVAL, conditions, crd, exporters, get_pool, operator, event_seen, pool_events, pool_manifest, replicas,
    robust_answer, scrape_config, wait_for_full_window)

RATE, SERVICE, SLOTS, TARGET = 4.0, 1.5, 4, 1.0


def history(cluster, namespace, name) -> dict:
    return json.loads(get_pool(cluster, namespace, name)["status"]["history"])


def test_prometheus_down_holds_replicas_and_recovers_on_a_new_one(cluster, namespace, operator, exporters, tmp_path):
    name = "held"
    expected = robust_answer(RATE, SERVICE, SLOTS, TARGET, 0.99)
    exporter = exporters(RATE, SERVICE)
    configs = [scrape_config(name, namespace, exporter)]
    prom = bed.Prometheus(configs, tmp_path / "prom-1", scrape_interval="1s").start()
    port = prom.port
    try:
        wait_for_full_window(prom, name)
        operator(prom.url)
        cluster.apply(pool_manifest(name), namespace=namespace)
        cluster.wait_until(lambda: replicas(cluster, namespace, name) == expected, timeout=120, desc=f"{expected} replicas")

        prom.stop()
        cluster.wait_until(lambda: conditions(get_pool(cluster, namespace, name))["MetricsAvailable"]["status"] == "False",
                           timeout=60, desc="MetricsAvailable=False")
        cond = conditions(get_pool(cluster, namespace, name))["MetricsAvailable"]
        assert cond["reason"] == "PrometheusUnavailable", cond
        count = history(cluster, namespace, name)["forecaster"]["count"]
        time.sleep(4 * INTERVAL)  # several decisions without Prometheus: held, never down
        assert replicas(cluster, namespace, name) == expected
        assert get_pool(cluster, namespace, name)["status"]["desiredReplicas"] == expected
        assert event_seen(cluster, namespace, name, lambda e: e["type"] == "Warning" and e["reason"] == "PrometheusUnavailable")

        # a new Prometheus (empty storage) on the same port: metrics come back, the answer is the same
        prom = bed.Prometheus(configs, tmp_path / "prom-2", port=port, scrape_interval="1s").start()
        cluster.wait_until(lambda: conditions(get_pool(cluster, namespace, name))["MetricsAvailable"]["status"] == "True",
                           timeout=90, desc="MetricsAvailable=True again")
        wait_for_full_window(prom, name)
        cluster.wait_until(lambda: replicas(cluster, namespace, name) == expected
                           and get_pool(cluster, namespace, name)["status"].get("readyReplicas") == expected,
                           timeout=90, desc="replicas at the answer after recovery")
        assert history(cluster, namespace, name)["forecaster"]["count"] >= count  # the history went on
        assert event_seen(cluster, namespace, name, lambda e: e["reason"] == "MetricsFresh")
    finally:
        prom.stop()


def test_sigkill_mid_scale_up_then_restart_converges(cluster, namespace, operator, exporters, prometheus):
    name = "killed"
    expected = robust_answer(RATE, SERVICE, SLOTS, TARGET, 0.99)
    exporter = exporters(RATE, SERVICE)
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporter)])
    wait_for_full_window(prom, name)
    op = operator(prom.url)
    cluster.apply(pool_manifest(name, minReplicas=1), namespace=namespace)

    # the first scale-up is written; the new pods are still loading (H100 cold start) when the operator dies
    cluster.wait_until(lambda: (replicas(cluster, namespace, name) or 0) > 1, timeout=90, desc="scale-up started")
    os.killpg(op.proc.pid, signal.SIGKILL)
    op.proc.wait(10)
    killed_at = get_pool(cluster, namespace, name)
    ready_then = killed_at.get("status", {}).get("readyReplicas") or 0
    assert ready_then < expected, "the scale-up had already finished: not mid-scale"
    assert "autoscaling.inferencepool.dev/finalizer" in killed_at["metadata"].get("finalizers", [])

    op = operator(prom.url)
    cluster.wait_until(lambda: get_pool(cluster, namespace, name).get("status", {}).get("readyReplicas") == expected
                       and replicas(cluster, namespace, name) == expected, timeout=120, desc="converged after restart")
    before = history(cluster, namespace, name)
    cluster.wait_until(lambda: history(cluster, namespace, name)["forecaster"]["count"] > before["forecaster"]["count"],
                       timeout=60, desc="the restarted operator deciding")
    after = get_pool(cluster, namespace, name)
    assert after["status"]["desiredReplicas"] == expected
    assert after["metadata"]["uid"] == killed_at["metadata"]["uid"]
    # one Deployment, one ReplicaSet generation of pods: nothing recreated or lost
    assert len(cluster.kubectl_json("-n", namespace, "get", "deployments")["items"]) == 1
    assert event_seen(cluster, namespace, name, lambda e: e["reason"] == "ScaledUp")


def test_warm_floor_beyond_the_gpus_is_limited_without_crashing(cluster, namespace, operator, exporters, prometheus):
    """3 replicas x 8 H100s on a bed with 2 nodes of 8: the third can never be scheduled."""
    name = "toobig"
    exporter = exporters(1.0, 1.0)
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporter)])
    wait_for_full_window(prom, name)
    op = operator(prom.url)
    cluster.apply(pool_manifest(name, gpu={"product": H100, "perReplica": 8}, minReplicas=3, maxReplicas=4),
                  namespace=namespace)

    def limited():
        c = conditions(get_pool(cluster, namespace, name)).get("ScalingLimited", {})
        return c if c.get("status") == "True" else None

    cond = cluster.wait_until(limited, timeout=120, desc="ScalingLimited=True")
    assert cond["reason"] == "InsufficientGPUs" and "nvidia.com/gpu" in cond["message"], cond
    decided = len(op.decisions())
    time.sleep(4 * INTERVAL)
    assert op.proc.poll() is None, "the operator exited"
    assert len(op.decisions()) > decided, "the operator stopped deciding"
    assert replicas(cluster, namespace, name) == 3  # the floor, not more while a pod is Pending
    # the two pods that fit turn Ready after their cold start; the third stays Pending
    status = cluster.wait_until(lambda: (s := get_pool(cluster, namespace, name)["status"]).get("readyReplicas") == 2 and s,
                                timeout=90, desc="two of three replicas Ready")
    assert status["unschedulableReplicas"] == 1 and replicas(cluster, namespace, name) == 3
    assert event_seen(cluster, namespace, name, lambda e: e["type"] == "Warning" and e["reason"] == "InsufficientGPUs")
