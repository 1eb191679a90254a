"""The Deployment and Service a pool owns: GPUs, placement, probes, vLLM args, labels and owner refs."""

from __future__ import annotations

import pytest

from inferencepool.operator import workload
from inferencepool.operator.spec import parse

POOL = {
    "apiVersion": "autoscaling.inferencepool.dev/v1alpha1",
    "kind": "InferencePool",
    "metadata": {"name": "llama", "namespace": "serving", "uid": "0f7c-uid"},
}
SPEC = {
    "model": {"name": "llama-8b", "source": "meta-llama/Llama-3.1-8B-Instruct"},
    "engine": {"extraArgs": ["--max-model-len", "8192"]},
    "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perReplica": 2},
    "slo": {"targetSeconds": 5},
    "maxReplicas": 4,
    "slotsPerReplica": 24,
}


BUCKETS_JSON = ('{"request_latency":[0.01,0.025,0.05,0.1,0.2,0.3,0.5,0.8,1,1.5,2,2.5,5,10,15,20,30,40,50,60,120,'
                '240,480,960,1920,7680]}')
# vLLM 0.33's request_latency defaults (vllm/v1/metrics/buckets.py): the operator's must keep every one
VLLM_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680]


def container(manifest: dict) -> dict:
    (c,) = manifest["spec"]["template"]["spec"]["containers"]
    return c


def test_deployment_requests_gpus_cpu_and_memory_with_a_memory_limit():
    resources = container(workload.deployment(POOL, parse(SPEC)))["resources"]
    assert resources == {"requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "2"},
                         "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}}
    config = parse({**SPEC, "engine": {"resources": {"cpu": 8, "memory": "100Gi", "memoryLimit": "120Gi"}}})
    resources = container(workload.deployment(POOL, config))["resources"]
    assert resources == {"requests": {"cpu": "8", "memory": "100Gi", "nvidia.com/gpu": "2"},
                         "limits": {"memory": "120Gi", "nvidia.com/gpu": "2"}}


def test_shm_is_memory_with_a_size_limit():
    for spec, size in ((SPEC, "8Gi"), ({**SPEC, "engine": {"resources": {"sharedMemory": "16Gi"}}}, "16Gi")):
        d = workload.deployment(POOL, parse(spec))
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}} in d["spec"]["template"]["spec"]["volumes"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container(d)["volumeMounts"]


def test_cache_pvc_holds_hf_home_and_vllm_cache_unless_the_user_set_them():
    d = workload.deployment(POOL, parse({**SPEC, "model": {**SPEC["model"], "cachePVCName": "hf-cache"}}))
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in d["spec"]["template"]["spec"]["volumes"]
    assert {"name": "cache", "mountPath": "/cache"} in container(d)["volumeMounts"]
    assert container(d)["env"] == [{"name": "HF_HOME", "value": "/cache/huggingface"},
                                   {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"}]
    mine = {"name": "HF_HOME", "value": "/cache/mine"}
    spec = {**SPEC, "model": {**SPEC["model"], "cachePVCName": "hf-cache"}, "engine": {"env": [mine]}}
    assert container(workload.deployment(POOL, parse(spec)))["env"] == [mine, {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"}]
    plain = workload.deployment(POOL, parse(SPEC))
    assert container(plain)["env"] == [] and all(v["name"] != "cache" for v in plain["spec"]["template"]["spec"]["volumes"])


def test_pods_land_on_the_gpu_product_and_tolerate_the_gpu_taint():
    config = parse({**SPEC, "scheduling": {"nodeSelector": {"zone": "a"}, "tolerations": [{"key": "kwok", "operator": "Exists"}]}})
    pod = workload.deployment(POOL, config)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"zone": "a", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "kwok", "operator": "Exists"},
    ]


def test_no_product_means_no_node_selector():
    config = parse({**SPEC, "gpu": {"perReplica": 1}})
    assert "nodeSelector" not in workload.deployment(POOL, config)["spec"]["template"]["spec"]


def test_vllm_serve_command():
    assert container(workload.deployment(POOL, parse(SPEC)))["command"] == [
        "vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct",
        "--host", "0.0.0.0", "--port", "8000",
        "--served-model-name", "llama-8b",
        "--max-num-seqs", "24",
        "--tensor-parallel-size", "2",
        "--shutdown-timeout", "20",
        "--custom-histogram-buckets", BUCKETS_JSON,
        "--max-model-len", "8192",
    ]


@pytest.mark.parametrize("image, version, drains", [
    ("vllm/vllm-openai:v0.33.0", (0, 33, 0), True),
    ("vllm/vllm-openai:v0.18.0", (0, 18, 0), True),
    ("vllm/vllm-openai:v0.17.1", (0, 17, 1), False),
    ("registry.local:5000/vllm:0.20.1-cu128", (0, 20, 1), True),
    ("vllm/vllm-openai:latest", None, False),
    ("vllm/vllm-openai@sha256:0123abcd", None, False),
    ("registry.local:5000/vllm", None, False),
])
def test_shutdown_timeout_only_where_the_image_has_it(image, version, drains):
    assert workload.image_version(image) == version
    command = container(workload.deployment(POOL, parse({**SPEC, "engine": {"image": image}})))["command"]
    assert ("--shutdown-timeout" in command) is drains


def test_termination_waits_for_the_longest_request():
    config = parse({**SPEC, "drain": {"gracePeriodSeconds": 900, "deregisterSeconds": 20}})
    d = workload.deployment(POOL, config)
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    command = container(d)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python3", "-c", workload.PRESTOP_SCRIPT]
    port, deregister, budget = command[3:]
    assert (port, deregister, budget) == ("8000", "20", str(900 - 20 - workload.DRAIN_RESERVE_SECONDS))
    # the whole drain fits the grace period: preStop, then vLLM's own drain, then a margin to exit
    assert int(deregister) + int(budget) + workload.SHUTDOWN_TIMEOUT_SECONDS < 900


def test_probes_hit_vllm_health_and_allow_a_long_model_load():
    c = container(workload.deployment(POOL, parse(SPEC)))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_labels_selector_and_scrape_annotations():
    d = workload.deployment(POOL, parse(SPEC))
    assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "inferencepool"
    assert d["metadata"]["labels"]["autoscaling.inferencepool.dev/pool"] == "llama"
    assert d["spec"]["selector"] == {"matchLabels": {"autoscaling.inferencepool.dev/pool": "llama"}}
    template = d["spec"]["template"]["metadata"]
    assert template["labels"]["autoscaling.inferencepool.dev/pool"] == "llama"
    assert template["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}


def test_owned_by_the_pool_so_deleting_it_cascades():
    expected = [{
        "apiVersion": "autoscaling.inferencepool.dev/v1alpha1", "kind": "InferencePool", "name": "llama",
        "uid": "0f7c-uid", "controller": True, "blockOwnerDeletion": True,
    }]
    config = parse(SPEC)
    assert workload.deployment(POOL, config)["metadata"]["ownerReferences"] == expected
    assert workload.service(POOL, config)["metadata"]["ownerReferences"] == expected


def test_deployment_leaves_replicas_to_the_autoscaler():
    assert "replicas" not in workload.deployment(POOL, parse(SPEC))["spec"]


def test_model_pvc_is_mounted_read_only():
    config = parse({**SPEC, "model": {"name": "llama", "source": "/models/llama", "pvcName": "weights"}})
    d = workload.deployment(POOL, config)
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in container(d)["volumeMounts"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in d["spec"]["template"]["spec"]["volumes"]


def test_template_hash_changes_with_the_spec_only():
    a = workload.deployment(POOL, parse(SPEC))
    b = workload.deployment(POOL, parse(SPEC))
    c = workload.deployment(POOL, parse({**SPEC, "engine": {"image": "vllm/vllm-openai:v0.11.0"}}))
    h = workload.TEMPLATE_HASH
    assert a["metadata"]["annotations"][h] == b["metadata"]["annotations"][h] != c["metadata"]["annotations"][h]
    # scaling knobs do not roll the pods
    d = workload.deployment(POOL, parse({**SPEC, "maxReplicas": 9, "slo": {"targetSeconds": 1}}))
    assert d["metadata"]["annotations"][h] == a["metadata"]["annotations"][h]


def test_service_fronts_the_vllm_port():
    s = workload.service(POOL, parse({**SPEC, "engine": {"port": 9000}}))
    assert s["spec"]["selector"] == {"autoscaling.inferencepool.dev/pool": "llama"}
    assert s["spec"]["ports"] == [{"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}]
    assert (s["metadata"]["name"], s["metadata"]["namespace"]) == ("llama", "serving")


class _Metrics:
    """A loopback /metrics whose running count is `busy[i]` at the i-th scrape (then the last value)."""

    def __init__(self, busy: list[float], name: str):
        import http.server
        import threading

        self.busy, self.served = busy, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                value = outer.busy[min(len(outer.served), len(outer.busy) - 1)]
                outer.served.append(value)
                body = (f'# TYPE {name}_running gauge\n{name}_running{{engine="0",model_name="m"}} {value}\n'
                        f'{name}_waiting{{engine="0",model_name="m"}} 0.0\n').encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _prestop(port: int, budget: float) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", workload.PRESTOP_SCRIPT, str(port), "0", str(budget)], check=True, timeout=60)


@pytest.mark.parametrize("name", ["vllm:num_requests", "vllm_num_requests"])
def test_prestop_waits_until_vllm_has_nothing_in_flight(name):
    with _Metrics([3.0, 2.0, 1.0, 0.0, 5.0], name) as metrics:
        _prestop(metrics.server.server_port, budget=50)
    assert metrics.served == [3.0, 2.0, 1.0, 0.0]  # polled until idle, then stopped


def test_prestop_gives_up_at_its_budget():
    with _Metrics([4.0], "vllm:num_requests") as metrics:
        _prestop(metrics.server.server_port, budget=1.5)
    assert metrics.served and set(metrics.served) == {4.0}  # never idle: returned anyway, SIGTERM follows


def test_prestop_returns_when_vllm_is_gone():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _prestop(port, budget=50)


@pytest.mark.parametrize("image, finer", [
    ("vllm/vllm-openai:v0.33.0", True),
    ("vllm/vllm-openai:v0.32.0", True),
    ("vllm/vllm-openai:v0.31.0", False),
    ("vllm/vllm-openai:v0.10.2", False),
    ("vllm/vllm-openai:latest", False),
])
def test_finer_latency_buckets_only_where_the_image_has_the_flag(image, finer):
    import json

    command = container(workload.deployment(POOL, parse({**SPEC, "engine": {"image": image}})))["command"]
    assert ("--custom-histogram-buckets" in command) is finer
    if finer:
        buckets = json.loads(command[command.index("--custom-histogram-buckets") + 1])
        assert list(buckets) == ["request_latency"]  # queue, inference, prefill, decode and e2e time
        bounds = buckets["request_latency"]
        assert bounds[0] == 0.01 and all(a < b for a, b in zip(bounds, bounds[1:]))  # vLLM refuses anything else
        assert set(VLLM_LATENCY_BUCKETS) <= set(bounds)  # an SLO target on a default bound still has its bucket


@pytest.mark.parametrize("args", [
    ["--custom-histogram-buckets", '{"inter_token_latency":[0.005,0.01]}'],
    ['--custom_histogram_buckets={"request_latency":[0.1,1]}'],
])
def test_the_users_own_histogram_buckets_win(args):
    command = container(workload.deployment(POOL, parse({**SPEC, "engine": {"extraArgs": args}})))["command"]
    assert command[-len(args):] == args and BUCKETS_JSON not in command
