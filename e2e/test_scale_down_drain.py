"""Scale-down on the test bed: the idlest replicas go, and no request in flight is cut off.

The operator runs as a process with the chart's ServiceAccount and RBAC (so patching pods is allowed by
exactly the chart's Role). e2e/fleet.py serves a background load over the Ready pods and exports running
requests per pod; the test puts long requests straight onto two pods so the three differ: A runs many,
C a few, B none. Lowering minReplicas 3 -> 1 makes the operator set each pod's deletion cost from
Prometheus, then scale down: A must remain. C's requests must finish while C terminates (the fleet
models the kubelet: a deleted pod takes nothing new and is killed at its deletionTimestamp), so the
exporter counts no abort.

The CRD's refusal of extraArgs the operator owns is checked with `kubectl apply` here too.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import Fleet  # noqa: E402
from operators import OperatorProcess  # noqa: E402
from test_operator import L4, crd, pool_manifest, replicas  # noqa: E402,F401 - crd is a fixture

POOL, SLOTS, GRACE, INTERVAL = "drain", 10, 60, 2
LONG, DRAINING = 3600.0, 45.0  # A's requests outlive the test; C's finish within C's grace period
BACKGROUND_RATE, BACKGROUND_SERVICE = 1.0, 0.5


def deletion_cost_logs(op: OperatorProcess) -> list[dict]:
    return [entry for entry in op.decisions("deletion costs") if entry.get("pool") == POOL]


def pod_names(cluster, namespace: str, live_only: bool = False) -> list[str]:
    items = cluster.kubectl_json("-n", namespace, "get", "pods", "-l", f"autoscaling.inferencepool.dev/pool={POOL}")["items"]
    return sorted(p["metadata"]["name"] for p in items if not (live_only and p["metadata"].get("deletionTimestamp")))


def test_scale_down_removes_the_idlest_pods_and_drains_in_flight_requests(  # noqa: F811 - crd is a fixture
        cluster, crd, namespace, prometheus, chart_operator):
    fleet = Fleet(cluster.api_client(), namespace, POOL, SLOTS, lambda t: BACKGROUND_RATE, BACKGROUND_SERVICE, seed=3)
    try:
        fleet.start()
        prom = prometheus(scrape_configs=[{"job_name": "vllm", "static_configs": [{"targets": [fleet.target]}]}])
        op = chart_operator(prom.url, interval=INTERVAL)
        cluster.apply(pool_manifest(
            POOL, product=L4, minReplicas=3, maxReplicas=4, slotsPerReplica=SLOTS,
            scaleDown={"stabilizationWindowSeconds": 0, "maxStep": 2},
            drain={"gracePeriodSeconds": GRACE, "deregisterSeconds": 0}), namespace=namespace)
        cluster.wait_until(lambda: fleet.ready == 3, timeout=120, desc="3 Ready pods")
        template = cluster.kubectl_json("-n", namespace, "get", "deployment", POOL)["spec"]["template"]["spec"]
        assert template["terminationGracePeriodSeconds"] == GRACE
        assert template["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][0] == "python3"

        b, a, c = pod_names(cluster, namespace)  # A in the middle: neither the first nor the last name
        for _ in range(8):
            fleet.submit(a, LONG)
        draining = [fleet.submit(c, DRAINING) for _ in range(4)]
        # The fleet's exporter negotiates the format as vLLM does: Prometheus 2.42 stores the names escaped, vllm_*
        per_pod = f'sum by (pod) (vllm_num_requests_running{{pool="{POOL}"}})'
        prom.wait_for(f'{per_pod} >= 8', timeout=60)
        prom.wait_for(f'sum(vllm_request_success_total{{pool="{POOL}"}}) >= 10', timeout=60)  # a service time

        cluster.kubectl("-n", namespace, "patch", "ipool", POOL, "--type=merge", "-p", '{"spec": {"minReplicas": 1}}')
        cluster.wait_until(lambda: replicas(cluster, namespace, POOL) == 1, timeout=90, desc="scaled down to 1")
        cluster.wait_until(lambda: pod_names(cluster, namespace) == [a], timeout=60, desc="the deleted pods gone")
        cluster.wait_until(lambda: all(r.outcome for r in draining), timeout=DRAINING + 30, desc="C's requests finished")
        # the exporter's counts, from a scrape after C's requests ended
        ended = time.time()
        prom.wait_for(f'timestamp(vllm_num_requests_waiting{{pool="{POOL}"}}) > {ended:.3f}', timeout=30)
        stopped = prom.query(f'sum(vllm_request_success_total{{pool="{POOL}", finished_reason="stop"}})')
        aborted = prom.query(f'sum(vllm_request_success_total{{pool="{POOL}", finished_reason="abort"}})')
        costs = deletion_cost_logs(op)
        pods = {name: fleet.pods[name] for name in (a, b, c)}
        requests = list(fleet.requests)
    finally:
        fleet.stop()
        chart_operator.close()  # pools deleted, operator stopped, chart uninstalled

    # the operator made the scale-down (a spec edit once dropped the Deployment to 1 replica by itself)
    assert costs, "no deletion costs logged: the replicas fell without the operator"
    marked = costs[0]["set"]  # the first scale-down marks every pod
    print(json.dumps({"pods (A kept, B and C deleted)": {"A": a, "B": b, "C": c},
                      "running read before the scale-down": costs[0]["running"], "deletion costs set": marked,
                      "grace period (s)": GRACE,
                      "C's requests: seconds finished after C began terminating":
                          [round(r.finished - pods[c].terminating_since, 1) for r in draining],
                      "aborted (exporter)": aborted[0]["value"][1], "finished (exporter)": stopped[0]["value"][1]},
                     indent=1))
    # the idlest went: A, with the most running, is the one left, and the costs say why
    assert int(marked[a]) >= 8 and int(marked[c]) >= 4 and int(marked[a]) > int(marked[c]) > int(marked.get(b, "0"))
    # C drained: none aborted by the exporter's count (and the fleet's), its requests finished after its deletion began
    assert float(aborted[0]["value"][1]) == 0.0 and fleet.aborted == 0, (aborted, fleet.aborted)
    assert all(r.outcome == "stop" and r.finished > pods[c].terminating_since for r in draining), draining
    # a terminating pod took no new request
    for r in requests:
        if r.pod in (b, c) and r.wait is not None:
            assert r.arrival + r.wait <= pods[r.pod].terminating_since, r


EXTRA_ARGS_REFUSED = [
    (["--port", "9000"], "--port: the operator sets it: use spec.engine.port"),
    (["--max_num_seqs=8"], "--max-num-seqs: the operator sets it: use spec.slotsPerReplica"),
    (["-tp", "2"], "--tensor-parallel-size: the operator sets it: use spec.gpu.perReplica"),
    (["--disable-log-stats"], "--disable-log-stats: the operator sizes the pool from the engine metrics it turns off"),
    (["--served-model-name=x"], "--served-model-name: the operator sets it: use spec.model.name"),
    (["--shutdown-timeout", "5"], "--shutdown-timeout: the operator sets it: use spec.drain.gracePeriodSeconds"),
]


@pytest.mark.parametrize("args, message", EXTRA_ARGS_REFUSED)
def test_crd_refuses_extra_args_the_operator_owns(cluster, crd, namespace, args, message):  # noqa: F811
    manifest = pool_manifest("bad", engine={"image": "vllm/vllm-openai:fake", "extraArgs": ["--max-model-len", "8192", *args]})
    r = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert r.returncode != 0, f"{args} accepted"
    assert "spec.engine.extraArgs" in r.stderr and message in r.stderr, r.stderr


def test_crd_refuses_a_grace_period_without_room_to_drain_and_defaults_the_rest(cluster, crd, namespace):  # noqa: F811
    bad = pool_manifest("bad", drain={"gracePeriodSeconds": 70, "deregisterSeconds": 30})
    r = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "spec.drain.gracePeriodSeconds must be at least spec.drain.deregisterSeconds + 60" in r.stderr, r.stderr
    bad = pool_manifest("bad", engine={"resources": {"memory": "lots"}})
    r = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "spec.engine.resources.memory" in r.stderr, r.stderr

    good = pool_manifest("good", engine={"extraArgs": ["--max-model-len", "8192", "--port-offset", "1"]})
    cluster.apply(good, namespace=namespace)
    spec = cluster.kubectl_json("-n", namespace, "get", "ipool", "good")["spec"]
    assert spec["drain"] == {"gracePeriodSeconds": 600, "deregisterSeconds": 15}
    assert spec["engine"]["resources"] == {"cpu": "4", "memory": "32Gi", "memoryLimit": "64Gi", "sharedMemory": "8Gi"}
    assert spec["engine"]["image"] == "vllm/vllm-openai:v0.33.0"
    cluster.kubectl("-n", namespace, "delete", "ipool", "good")
