"""The Deployment and Service a pool owns: GPUs, placement, probes, vLLM args, labels and owner refs."""

from __future__ import annotations

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


def container(manifest: dict) -> dict:
    (c,) = manifest["spec"]["template"]["spec"]["containers"]
    return c


def test_deployment_requests_and_limits_the_gpus_per_replica():
    resources = container(workload.deployment(POOL, parse(SPEC)))["resources"]
    assert resources == {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}


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
        "--max-model-len", "8192",
    ]


def test_extra_args_may_set_tensor_parallelism_themselves():
    config = parse({**SPEC, "engine": {"extraArgs": ["--tensor-parallel-size=1", "--pipeline-parallel-size=2"]}})
    command = container(workload.deployment(POOL, config))["command"]
    assert command.count("--tensor-parallel-size") == 0 and "--tensor-parallel-size=1" in command


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
