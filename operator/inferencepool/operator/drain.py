"""Which replicas leave on scale-down: the idlest.

Before the operator lowers a pool's replicas it sets `controller.kubernetes.io/pod-deletion-cost` on each
pod to the requests it is running, from one PromQL read of vLLM's per-pod `num_requests_running`. The
ReplicaSet deletes lower-cost pods first (after any pod that is not Ready), so the fewest requests have
to drain. https://kubernetes.io/docs/concepts/workloads/controllers/replicaset/#pod-deletion-cost

A pod without a series keeps whatever annotation it has; with no per-pod series at all nothing is
changed and the ReplicaSet picks as it would anyway. The series may be spelled `vllm:` or `vllm_`:
both are read, joined as observe.either joins them (no double count of one target under both names).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from inferencepool.operator.observe import QuerySettings, either

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
POD_LABEL = "pod"  # what the Prometheus Operator's PodMonitor and the kubernetes_sd examples name it


def running_query(settings: QuerySettings, namespace: str, pool: str, matchers: str = "", pod_label: str = POD_LABEL) -> str:
    """PromQL: requests running per pod of one pool (series without a namespace label match too)."""
    selector = ", ".join(m for m in (
        f'{settings.namespace_label}=~"{namespace}|"',
        f'{settings.pool_label}="{pool}"',
        f'{pod_label}!=""',
        matchers.strip().strip(","),
    ) if m)
    return f"sum by ({pod_label}) " + either(lambda prefix: f"{prefix}num_requests_running{{{selector}}}")


def parse_running(result: Iterable[Mapping], pod_label: str = POD_LABEL) -> dict[str, float]:
    """{pod: running requests} from the query's result; NaN and missing values are left out."""
    running = {}
    for sample in result:
        try:
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        pod = sample.get("metric", {}).get(pod_label)
        if pod and math.isfinite(value):
            running[pod] = value
    return running


def deletion_costs(pods: Iterable[Mapping], running: Mapping[str, float]) -> dict[str, str]:
    """{pod name: new cost} for the live pods whose cost must change (running requests, rounded)."""
    changes = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        name = meta.get("name")
        if name not in running or meta.get("deletionTimestamp"):
            continue
        cost = str(int(round(running[name])))
        if (meta.get("annotations") or {}).get(DELETION_COST) != cost:
            changes[name] = cost
    return changes


class RunningReader:
    """Reads one pool's per-pod running requests; {} when Prometheus cannot say (never raises)."""

    def __init__(self, default_url: str, settings: QuerySettings, pod_label: str = POD_LABEL, timeout: float = 10.0):
        self.default_url, self.settings, self.pod_label, self.timeout = default_url, settings, pod_label, timeout
        self.last_error: str | None = None

    def read(self, url: str | None, namespace: str, pool: str, matchers: str = "") -> dict[str, float]:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        query = running_query(self.settings, namespace, pool, matchers, self.pod_label)
        try:
            client = PrometheusConnect(url or self.default_url, retry=Retry(total=1, backoff_factor=0.2), timeout=self.timeout)
            result = client.custom_query(query)
        except Exception as error:  # noqa: BLE001 - any failure means "no per-pod data"
            self.last_error = f"{type(error).__name__}: {error}"
            return {}
        self.last_error = None
        return parse_running(result, self.pod_label)
