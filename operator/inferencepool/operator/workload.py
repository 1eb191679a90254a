"""The vLLM Deployment and Service a pool owns, as plain manifests (pure functions, no I/O).

The Deployment carries no `replicas`: the template is server-side applied by one field manager and the
count by the autoscaler under a field manager of its own, so re-applying the template never resets the
count. Owner references make deleting the pool delete both objects (garbage collector).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from inferencepool.operator.spec import GROUP, KIND, VERSION, PoolConfig

MANAGED_BY = {"app.kubernetes.io/managed-by": "inferencepool"}
POOL_LABEL = f"{GROUP}/pool"
TEMPLATE_HASH = f"{GROUP}/template-hash"
MODEL_MOUNT = "/models"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


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


def vllm_command(config: PoolConfig) -> list[str]:
    """`vllm serve <source> --port P --served-model-name N --max-num-seqs <slots>` plus extraArgs."""
    command = [
        "vllm", "serve", config.model_source,
        "--host", "0.0.0.0",
        "--port", str(config.port),
        "--served-model-name", config.model_name,
        "--max-num-seqs", str(config.slots),
    ]
    if config.gpus_per_replica > 1 and not any(a.startswith(("--tensor-parallel-size", "-tp")) for a in config.extra_args):
        command += ["--tensor-parallel-size", str(config.gpus_per_replica)]
    return command + list(config.extra_args)


def _probe(port_name: str, period: int, failures: int) -> dict:
    return {
        "httpGet": {"path": "/health", "port": port_name},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def pod_template(pool: Mapping, config: PoolConfig) -> dict:
    name = pool["metadata"]["name"]
    gpus = str(config.gpus_per_replica)
    container = {
        "name": "vllm",
        "image": config.image,
        "command": vllm_command(config),
        "ports": [{"name": "http", "containerPort": config.port, "protocol": "TCP"}],
        "env": list(config.env),
        "resources": {"requests": {GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}},
        # Loading weights can take many minutes: the startup probe allows 30, then readiness takes over.
        "startupProbe": _probe("http", period=10, failures=180),
        "readinessProbe": _probe("http", period=5, failures=3),
        "livenessProbe": _probe("http", period=10, failures=6),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]  # NCCL and tensor parallelism need shm
    if config.model_pvc:
        container["volumeMounts"].append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": config.model_pvc, "readOnly": True}})
    node_selector = dict(config.node_selector)
    if config.gpu_product:
        node_selector[GPU_PRODUCT_LABEL] = config.gpu_product
    spec = {
        "containers": [container],
        "volumes": volumes,
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
