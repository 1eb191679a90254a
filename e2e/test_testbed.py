"""Smoke tests of the Docker-free test bed: real control plane, fake GPU nodes, cold starts.

Timing checks are semantic only ("not Ready before the cold start"), never about speed.
"""
from __future__ import annotations

import ipaddress
import json
import time
from datetime import datetime

import pytest

from exposition import serve_exposition, stop_server

GPU = "nvidia.com/gpu"
H100 = "NVIDIA-H100-80GB-HBM3"
TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
LOOPBACK_PODS = ipaddress.ip_network("127.100.0.0/16")


def gpu_pod_spec(gpus: int, product: str | None = H100, tolerate: bool = True) -> dict:
    spec = {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:fake",
                            "resources": {"limits": {GPU: str(gpus)}}}],
            "terminationGracePeriodSeconds": 1}
    if product:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    if tolerate:
        spec["tolerations"] = [TOLERATION]
    return spec


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def condition(pod: dict, ctype: str) -> dict | None:
    return next((c for c in pod["status"].get("conditions", []) if c["type"] == ctype), None)


def is_ready(pod: dict) -> bool:
    c = condition(pod, "Ready")
    return bool(c and c["status"] == "True")


def watch_cold_start(cluster, ns: str, selector: str, n: int, cold: float, timeout: float = 240):
    """Poll `n` pods until Ready; return {name: pod}. Asserts that each pod was seen Running but
    not Ready (loading), and that Ready came no earlier than `cold` seconds after its container
    started (1 s slack: API timestamps have 1 s resolution)."""
    loading: set[str] = set()
    ready: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(ready) < n:
        assert time.monotonic() < deadline, f"pods not Ready after {timeout}s (loading: {loading})"
        for pod in cluster.kubectl_json("-n", ns, "get", "pods", "-l", selector)["items"]:
            name = pod["metadata"]["name"]
            if name in ready or not pod["status"].get("podIP"):
                continue
            if not is_ready(pod):
                assert pod["status"]["phase"] == "Running"
                loading.add(name)
                continue
            started = ts(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
            became_ready = ts(condition(pod, "Ready")["lastTransitionTime"])
            assert became_ready - started >= cold - 1.0, (
                f"{name} Ready {became_ready - started:.0f}s after start; cold start is {cold}s")
            assert name in loading, f"{name} was never seen loading (Running, not Ready)"
            ready[name] = pod
        time.sleep(0.5)
    return ready


def test_nodes_have_gpu_capacity(cluster):
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    expected = sum(p["count"] for p in cluster.pools)
    assert len(nodes) == expected
    for pool in cluster.pools:
        members = [n for n in nodes.values()
                   if n["metadata"]["labels"].get("inferencepool.dev/pool") == pool["name"]]
        assert len(members) == pool["count"], pool["name"]
        for n in members:
            st, labels = n["status"], n["metadata"]["labels"]
            assert is_ready(n), n["metadata"]["name"]
            assert st["nodeInfo"]["kubeletVersion"] == cluster.kubernetes_version
            ip = next(a["address"] for a in st["addresses"] if a["type"] == "InternalIP")
            assert ipaddress.ip_address(ip).is_loopback
            if pool.get("gpus"):
                assert st["capacity"][GPU] == str(pool["gpus"])
                assert st["allocatable"][GPU] == str(pool["gpus"])
                assert labels["nvidia.com/gpu.product"] == pool["gpuProduct"]
                assert labels["nvidia.com/gpu.count"] == str(pool["gpus"])
                assert {"key": GPU, "value": "present", "effect": "NoSchedule"} in n["spec"]["taints"]
            else:
                assert GPU not in st["capacity"]
                assert not n["spec"].get("taints")
    h100 = [n for n in nodes.values() if n["metadata"]["labels"].get("nvidia.com/gpu.product") == H100]
    assert len(h100) == 2 and all(n["status"]["capacity"][GPU] == "8" for n in h100)


def test_kubectl_talks_to_real_apiserver(cluster):
    v = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"] == cluster.kubernetes_version
    assert v["clientVersion"]["gitVersion"] == cluster.kubernetes_version
    assert cluster.server.startswith("https://127.0.0.1:")
    # RBAC is on: a plain service account may not list nodes.
    r = cluster.kubectl("auth", "can-i", "list", "nodes",
                        "--as=system:serviceaccount:default:default", check=False)
    assert r.stdout.strip() == "no"


def test_gpu_deployment_binds_to_h100_and_is_ready_only_after_cold_start(cluster, namespace):
    cold = cluster.cold_start_seconds("h100")
    assert cold >= 3, "the test needs a visible cold start"
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "vllm-h100", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "vllm-h100"}},
                 "template": {"metadata": {"labels": {"app": "vllm-h100"}},
                              "spec": gpu_pod_spec(1)}}})
    ready = watch_cold_start(cluster, namespace, "app=vllm-h100", 2, cold)
    for pod in ready.values():
        assert pod["spec"]["nodeName"].startswith("h100-")
        assert ipaddress.ip_address(pod["status"]["podIP"]) in LOOPBACK_PODS
        assert pod["status"]["containerStatuses"][0]["ready"] is True
    dep = cluster.wait_until(lambda: (d := cluster.kubectl_json(
        "-n", namespace, "get", "deployment", "vllm-h100"))["status"].get("availableReplicas") == 2
        and d, desc="2 available replicas")
    assert dep["status"]["readyReplicas"] == 2

    # Scale-in: KWOK removes deleted pods (no kubelet), so the Deployment reaches 0 pods.
    cluster.kubectl("-n", namespace, "scale", "deployment", "vllm-h100", "--replicas=0")
    cluster.wait_until(lambda: not cluster.kubectl_json(
        "-n", namespace, "get", "pods", "-l", "app=vllm-h100")["items"], desc="pods gone")


def test_cold_start_annotation_overrides_pool_default(cluster, namespace):
    pool_cold = cluster.cold_start_seconds("l4")
    cold = pool_cold + 4  # longer than the pool's, so an early Ready would show the override failed
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "slow-load", "namespace": namespace, "labels": {"app": "slow"},
                     "annotations": {"inferencepool.dev/cold-start-seconds": str(cold)}},
        "spec": gpu_pod_spec(1, product="NVIDIA-L4")})
    ready = watch_cold_start(cluster, namespace, "app=slow", 1, cold)
    pod = ready["slow-load"]
    assert pod["spec"]["nodeName"].startswith("l4-")


def test_pod_asking_for_too_many_gpus_stays_pending(cluster, namespace):
    cluster.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "greedy", "namespace": namespace},
                   "spec": gpu_pod_spec(9, product=None)})

    def unschedulable():
        pod = cluster.kubectl_json("-n", namespace, "get", "pod", "greedy")
        c = condition(pod, "PodScheduled")
        return pod if c and c["status"] == "False" and c.get("reason") == "Unschedulable" else None
    pod = cluster.wait_until(unschedulable, timeout=120, desc="greedy Unschedulable")
    assert pod["status"]["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in condition(pod, "PodScheduled")["message"]
    time.sleep(3)  # and it stays that way
    pod = cluster.kubectl_json("-n", namespace, "get", "pod", "greedy")
    assert not pod["spec"].get("nodeName") and pod["status"]["phase"] == "Pending"


def test_gpu_pod_without_toleration_is_kept_off_tainted_nodes(cluster, namespace):
    cluster.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "intolerant", "namespace": namespace},
                   "spec": gpu_pod_spec(1, product=None, tolerate=False)})

    def unschedulable():
        c = condition(cluster.kubectl_json("-n", namespace, "get", "pod", "intolerant"),
                      "PodScheduled")
        return c if c and c.get("reason") == "Unschedulable" else None
    c = cluster.wait_until(unschedulable, timeout=120, desc="intolerant Unschedulable")
    assert "untolerated taint" in c["message"]


def test_helm_installs_a_chart(cluster, namespace, tmp_path):
    v = cluster.helm("version", "--short").stdout
    assert v.startswith("v3."), v
    cluster.helm("create", str(tmp_path / "hello"))
    # The scaffold is an nginx Deployment + Service + ServiceAccount; its pod lands on the
    # untainted CPU node and KWOK makes it Ready, so --wait exercises readiness end to end.
    cluster.helm("install", "hello", str(tmp_path / "hello"), "-n", namespace,
                 "--wait", "--timeout", "4m")
    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("hello", "deployed")]
    pods = cluster.kubectl_json("-n", namespace, "get", "pods")["items"]
    assert pods and all(p["spec"]["nodeName"].startswith("cpu-") and is_ready(p) for p in pods)
    svc = cluster.kubectl_json("-n", namespace, "get", "svc", "hello")
    assert ipaddress.ip_address(svc["spec"]["clusterIP"]).is_loopback
    cluster.helm("uninstall", "hello", "-n", namespace, "--wait", "--timeout", "2m")
    assert json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout) == []


def text_format_exporter(prometheus_client, registry):
    """Serve `registry` on a free 127.0.0.1 port in the classic text format.

    Why not prometheus_client.start_http_server: Prometheus 2.42 asks for OpenMetrics first, and
    prometheus_client's OpenMetrics writer (0.26 here) renames samples `vllm:x` to `vllm_x`; the
    text format keeps vLLM's metric names, so fake vLLM exporters should serve it."""
    return serve_exposition(lambda path: prometheus_client.generate_latest(registry),
                            prometheus_client.CONTENT_TYPE_LATEST)


def test_prometheus_scrapes_a_loopback_exporter(prometheus):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    waiting = prometheus_client.Gauge("vllm:num_requests_waiting", "Requests waiting",
                                      ["model_name"], registry=registry)
    waiting.labels(model_name="llama").set(7)
    server = text_format_exporter(prometheus_client, registry)
    target = f"127.0.0.1:{server.server_address[1]}"
    try:
        prom = prometheus(targets=[target], job="vllm")
        assert prom.url.startswith("http://127.0.0.1:")
        up = prom.wait_for('up{job="vllm"} == 1', timeout=90)
        assert up[0]["metric"]["instance"] == target
        res = prom.wait_for('vllm:num_requests_waiting{model_name="llama"}', timeout=60)
        assert float(res[0]["value"][1]) == 7.0
        waiting.labels(model_name="llama").set(3)
        prom.wait_for('vllm:num_requests_waiting{model_name="llama"} == 3', timeout=60)
    finally:
        stop_server(server)


def test_prometheus_refuses_non_loopback_targets(prometheus):
    with pytest.raises(Exception, match="not on loopback"):
        prometheus(targets=["10.0.0.5:8000"])
