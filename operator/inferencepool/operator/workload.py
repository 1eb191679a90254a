"""The vLLM Deployment and Service a pool owns, as plain manifests (pure functions, no I/O).

The Deployment carries no `replicas`: the template is server-side applied by one field manager and the
count by the autoscaler under a field manager of its own, so re-applying the template never resets the
count. Owner references make deleting the pool delete both objects (garbage collector).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from inferencepool.operator.spec import GROUP, KIND, VERSION, PoolConfig

MANAGED_BY = {"app.kubernetes.io/managed-by": "inferencepool"}
POOL_LABEL = f"{GROUP}/pool"
TEMPLATE_HASH = f"{GROUP}/template-hash"
MODEL_MOUNT = "/models"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
CACHE_MOUNT = "/cache"  # model.cachePVCName: HF_HOME=/cache/huggingface, VLLM_CACHE_ROOT=/cache/vllm
# `--shutdown-timeout SECONDS` (drain in-flight requests on SIGTERM instead of aborting them) exists
# from vLLM 0.18.0 (vllm-project/vllm#34730, #36666; checked in the 0.17.1 / 0.18.0 / 0.33.0 wheels'
# vllm/engine/arg_utils.py). Its default, 0, aborts everything in flight.
SHUTDOWN_TIMEOUT_SINCE = (0, 18, 0)
# `--custom-histogram-buckets JSON` exists from vLLM 0.32.0 (vllm-project/vllm#48867; present in the 0.32.0
# and 0.33.0 wheels' vllm/engine/arg_utils.py and config/observability.py, absent in 0.31.0). Key
# `request_latency` sets the buckets of e2e, queue, inference, prefill and decode time
# (vllm/v1/metrics/loggers.py); vLLM's defaults start at 0.3 s (vllm/v1/metrics/buckets.py), too coarse for
# short requests' service time and CV and for sub-second queue-wait SLOs. These bounds are vLLM's defaults
# with five finer ones below them, so every default bound (an SLO target on one) is still there.
CUSTOM_BUCKETS_SINCE = (0, 32, 0)
REQUEST_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50,
                           60, 120, 240, 480, 960, 1920, 7680)
CUSTOM_BUCKETS_FLAG = re.compile(r"^--custom[-_]histogram[-_]buckets(=|$)")
# Of the grace period, what the preStop wait leaves for SIGTERM: vLLM drains what is left for
# SHUTDOWN_TIMEOUT seconds, then 10 s remain to exit before SIGKILL.
DRAIN_RESERVE_SECONDS = 30
SHUTDOWN_TIMEOUT_SECONDS = 20

# preStop: sleep while the endpoints and routers drop the pod, then wait until vLLM reports nothing
# running or waiting (its own /metrics on loopback), at most the budget. Only then does the kubelet send
# SIGTERM. Needs python3, which every vLLM image has; works on any vLLM version, with or without
# --shutdown-timeout. argv: port, deregister seconds, budget seconds.
PRESTOP_SCRIPT = """\
import re, sys, time, urllib.request
port, deregister, budget = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
time.sleep(deregister)
busy = re.compile(r"^vllm[:_]num_requests_(?:running|waiting)(?:[{][^}]*[}])? (\\S+)", re.M)
deadline = time.monotonic() + budget
while time.monotonic() < deadline:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        break
    if sum(float(v) for v in busy.findall(text)) == 0:
        break
    time.sleep(1)
"""


def selector(pool_name: str) -> dict:
    """The labels that pick a pool's pods (immutable in a Deployment, so only the pool name)."""
    return {POOL_LABEL: pool_name}


def labels(pool_name: str) -> dict:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": pool_name,
        **selector(pool_name),
    }


def owner_reference(pool: Mapping) -> dict:
    """Makes the pool the controller of what it owns, so deleting the pool deletes them too."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": pool["metadata"]["name"],
        "uid": pool["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(pool: Mapping) -> dict:
    name = pool["metadata"]["name"]
    return {
        "name": name,
        "namespace": pool["metadata"]["namespace"],
        "labels": labels(name),
        "ownerReferences": [owner_reference(pool)],
    }


def image_version(image: str) -> tuple[int, ...] | None:
    """The vLLM version in an image tag such as vllm/vllm-openai:v0.33.0 (None: latest, a digest, custom)."""
    tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", tag)
    return tuple(int(g or 0) for g in match.groups()) if match else None


def drains_on_sigterm(image: str) -> bool:
    """Whether the image's vLLM has --shutdown-timeout; an unknown version gets no flag it might refuse."""
    version = image_version(image)
    return version is not None and version >= SHUTDOWN_TIMEOUT_SINCE


def histogram_buckets_flag(config: PoolConfig) -> list[str]:
    """`--custom-histogram-buckets {"request_latency": [...]}` where the image's vLLM has the flag and
    engine.extraArgs does not set it already (the user's buckets win, for every family)."""
    version = image_version(config.image)
    if version is None or version < CUSTOM_BUCKETS_SINCE:
        return []
    if any(CUSTOM_BUCKETS_FLAG.match(arg) for arg in config.extra_args):
        return []
    return ["--custom-histogram-buckets", json.dumps({"request_latency": list(REQUEST_LATENCY_BUCKETS)}, separators=(",", ":"))]


def vllm_command(config: PoolConfig) -> list[str]:
    """`vllm serve <source> --port P --served-model-name N --max-num-seqs <slots>` [TP] [drain] [buckets] extraArgs."""
    command = [
        "vllm", "serve", config.model_source,
        "--host", "0.0.0.0",
        "--port", str(config.port),
        "--served-model-name", config.model_name,
        "--max-num-seqs", str(config.slots),
    ]
    if config.gpus_per_replica > 1:
        command += ["--tensor-parallel-size", str(config.gpus_per_replica)]
    if drains_on_sigterm(config.image):
        command += ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT_SECONDS)]
    return command + histogram_buckets_flag(config) + list(config.extra_args)


def prestop_budget_seconds(config: PoolConfig) -> int:
    """How long preStop waits for in-flight requests after the deregistration sleep."""
    return config.grace_period_seconds - config.deregister_seconds - DRAIN_RESERVE_SECONDS


def _env(config: PoolConfig) -> list[dict]:
    """The user's env, plus the cache locations on the cache PVC unless the user set them."""
    env = list(config.env)
    if config.cache_pvc:
        named = {e.get("name") for e in env}
        ours = {"HF_HOME": f"{CACHE_MOUNT}/huggingface", "VLLM_CACHE_ROOT": f"{CACHE_MOUNT}/vllm"}
        env += [{"name": k, "value": v} for k, v in ours.items() if k not in named]
    return env


def _probe(port_name: str, period: int, failures: int) -> dict:
    return {
        "httpGet": {"path": "/health", "port": port_name},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def pod_template(pool: Mapping, config: PoolConfig) -> dict:
    """The vLLM pod as vLLM's Kubernetes guide (docs/deployment/k8s.md) and production-stack's chart
    (helm/templates/deployment-vllm-multi.yaml) run it: CPU/memory requests and a memory limit, a sized
    memory /dev/shm, the Hugging Face cache on a PVC, and a drain on termination."""
    name = pool["metadata"]["name"]
    gpus = str(config.gpus_per_replica)
    container = {
        "name": "vllm",
        "image": config.image,
        "command": vllm_command(config),
        "ports": [{"name": "http", "containerPort": config.port, "protocol": "TCP"}],
        "env": _env(config),
        "resources": {
            "requests": {"cpu": config.cpu, "memory": config.memory, GPU_RESOURCE: gpus},
            "limits": {"memory": config.memory_limit, GPU_RESOURCE: gpus},  # no CPU limit: throttling stalls decode
        },
        # Loading weights can take many minutes: the startup probe allows 30, then readiness takes over.
        "startupProbe": _probe("http", period=10, failures=180),
        "readinessProbe": _probe("http", period=5, failures=3),
        "livenessProbe": _probe("http", period=10, failures=6),
        "lifecycle": {"preStop": {"exec": {"command": [
            "python3", "-c", PRESTOP_SCRIPT,
            str(config.port), str(config.deregister_seconds), str(prestop_budget_seconds(config)),
        ]}}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    # NCCL and tensor parallelism need shm; tmpfs counts against the memory limit, hence the size.
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shared_memory}}]
    if config.cache_pvc:
        # Weights downloaded once, not by every new replica (ReadWriteMany for replicas on several nodes).
        container["volumeMounts"].append({"name": "cache", "mountPath": CACHE_MOUNT})
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": config.cache_pvc}})
    if config.model_pvc:
        container["volumeMounts"].append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": config.model_pvc, "readOnly": True}})
    node_selector = dict(config.node_selector)
    if config.gpu_product:
        node_selector[GPU_PRODUCT_LABEL] = config.gpu_product
    spec = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": config.grace_period_seconds,
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}, *config.tolerations],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "metadata": {
            "labels": labels(name),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(config.port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": spec,
    }


def deployment(pool: Mapping, config: PoolConfig) -> dict:
    """The Deployment, without replicas (see the module docstring), with a hash of its own content."""
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool),
        "spec": {
            "selector": {"matchLabels": selector(pool["metadata"]["name"])},
            # Keep serving capacity during a rollout: one extra pod at a time, none taken away first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": pod_template(pool, config),
        },
    }
    manifest["metadata"]["annotations"] = {TEMPLATE_HASH: content_hash(manifest)}
    return manifest


def service(pool: Mapping, config: PoolConfig) -> dict:
    """A ClusterIP Service in front of the pool's ready pods, on the vLLM port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(pool["metadata"]["name"]),
            "ports": [{"name": "http", "port": config.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def content_hash(manifest: Mapping) -> str:
    """A short stable hash: the operator re-applies the template when the live one carries another."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
