"""GPUBudget end to end on the real bed: three pools share one budget that is smaller than their combined
need; the priorities decide who waits; other workloads' GPUs on the product's nodes shrink the budget; when
the first pool's load falls, the allocation is recomputed and the others grow into what it freed.

The operator, Prometheus and exporters are those of test_operator.py (one exporter per pool).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator import (  # noqa: E402,F401 - fixtures
    H100, crd, event_seen, exporters, get_pool, operator, pool_events, pool_manifest, replicas, robust_answer,
    scrape_config, wait_for_full_window,
)

ROOT = Path(__file__).resolve().parents[1]
BUDGET_CRD = ROOT / "crds" / "gpubudgets.autoscaling.inferencepool.dev.yaml"
SERVICE, SLOTS, TARGET, P = 1.5, 4, 1.0, 0.99
POOLS = {"chat": (10, 4.0), "search": (5, 4.0), "batch": (0, 4.0)}  # name: (priority, requests/s)


@pytest.fixture(scope="module")
def budget_crd(cluster):
    cluster.kubectl("apply", "-f", str(BUDGET_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/gpubudgets.autoscaling.inferencepool.dev")


def other_workload(name: str, gpus: int) -> dict:
    """A plain pod (not a pool's) holding H100 GPUs, as a training job would."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "nodeSelector": {"nvidia.com/gpu.product": H100},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"name": "train", "image": "trainer:fake",
                        "resources": {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}}}]}}


def test_three_pools_share_a_budget_by_priority(cluster, crd, budget_crd, namespace, operator, prometheus, exporters):
    need = {name: robust_answer(rate, SERVICE, SLOTS, TARGET, P) for name, (_, rate) in POOLS.items()}
    assert need == {"chat": 3, "search": 3, "batch": 3}  # 9 GPUs wanted

    # Other workloads hold 10 of the bed's 16 H100s: the budget of 10 has 6 left.
    h100 = sum(p["count"] * p["gpus"] for p in cluster.pools if p.get("gpuProduct") == H100)
    assert h100 == 16
    cluster.apply([other_workload("train-a", 8), other_workload("train-b", 2)], namespace=namespace)
    cluster.wait_until(lambda: all(cluster.kubectl_json("-n", namespace, "get", "pod", p)["spec"].get("nodeName")
                                   for p in ("train-a", "train-b")), timeout=60, desc="training pods bound")

    started = {name: exporters(rate, SERVICE) for name, (_, rate) in POOLS.items()}
    prom = prometheus(scrape_configs=[scrape_config(n, namespace, e) for n, e in started.items()])
    for name in POOLS:
        wait_for_full_window(prom, name)
    cluster.apply({"apiVersion": "autoscaling.inferencepool.dev/v1alpha1", "kind": "GPUBudget",
                   "metadata": {"name": "shared"},
                   "spec": {"gpus": 10, "gpuProduct": H100, "pools": [
                       {"name": "chat", "priority": 10}, {"name": "search", "priority": 5},
                       {"selector": {"matchLabels": {"tier": "batch"}}}]}}, namespace=namespace)
    op = operator(prom.url)

    def budget_status() -> dict:
        return cluster.kubectl_json("-n", namespace, "get", "gpubudget", "shared").get("status") or {}

    cluster.wait_until(lambda: budget_status().get("availableGPUs") == 6, timeout=60, desc="budget counts 6 GPUs free")
    for name in POOLS:
        manifest = pool_manifest(name)
        if name == "batch":
            manifest["metadata"]["labels"] = {"tier": "batch"}
        cluster.apply(manifest, namespace=namespace)

    # floors 1 + 1 + 1; then chat (priority 10) gets its 3, search (5) the last GPU: 3 + 2 + 1 = 6
    expected = {"chat": 3, "search": 2, "batch": 1}
    seen_totals = []

    def settled(want: dict) -> bool:
        now = {n: replicas(cluster, namespace, n) or 0 for n in POOLS}
        seen_totals.append(sum(now.values()))
        return now == want

    cluster.wait_until(lambda: settled(expected), timeout=120, desc=f"replicas {expected}")
    granted = lambda: {a["pool"]: a["grantedReplicas"] for a in budget_status().get("allocations") or ()}  # noqa: E731
    cluster.wait_until(lambda: granted() == expected, timeout=30, desc="the budget's status after the pools' ticks")
    # every pool's want is in the book once each has ticked with its metrics (a pool without them wants what it runs)
    status = cluster.wait_until(lambda: (lambda s: s if s.get("wantedGPUs") == 9 else None)(budget_status()),
                                timeout=60, desc="the budget's status with all three pools' wants")
    assert (status["offeredGPUs"], status["otherWorkloadGPUs"], status["availableGPUs"]) == (16, 10, 6)
    assert status["grantedGPUs"] == 6 and status["wantedGPUs"] == 9
    rows = {a["pool"]: a for a in status["allocations"]}
    assert [a["pool"] for a in status["allocations"]] == ["chat", "search", "batch"]
    assert {n: rows[n]["grantedReplicas"] for n in POOLS} == expected
    assert {n: rows[n]["wantedReplicas"] for n in POOLS} == need
    assert rows["search"]["heldBy"] == ["chat"] and rows["batch"]["heldBy"] == ["chat", "search"]
    assert not rows["chat"]["limited"] and rows["batch"]["limited"]

    # while search gave back the GPU its first tick took (before batch was in the book), batch's floor pod was
    # Pending and its decision said `unschedulable`; its next tick, once that pod is bound, says the budget
    batch = cluster.wait_until(lambda: (lambda s: s if s.get("constraint") == "shared_budget" else None)(
        get_pool(cluster, namespace, "batch")["status"]), timeout=30, desc="batch limited by the budget in its status")
    assert batch["requiredReplicas"] == 3
    assert batch["budget"]["grantedReplicas"] == 1 and batch["budget"]["heldBy"] == [f"{namespace}/chat", f"{namespace}/search"]
    limited = {c["type"]: c for c in batch["conditions"]}["ScalingLimited"]
    assert limited["status"] == "True" and limited["reason"] == "BudgetLimited"
    assert f"budget {namespace}/shared: 1 of the 3 replicas the SLO wants" in limited["message"]
    held_back = f"held back by {namespace}/chat (priority 10), {namespace}/search (priority 5)"
    assert event_seen(cluster, namespace, "batch", lambda e: e["reason"] == "BudgetLimited" and held_back in e["message"])
    assert "budget" in get_pool(cluster, namespace, "chat")["status"]
    assert get_pool(cluster, namespace, "chat")["status"]["constraint"] == "slo"
    table = cluster.kubectl("-n", namespace, "get", "gpub", "shared").stdout
    assert H100 in table and "search,batch" in table
    # for the README (shown with -s): the budget, the pools, and what the limited pool says
    print(table, cluster.kubectl("-n", namespace, "get", "ipool").stdout, json.dumps(status, indent=1),
          json.dumps(batch["budget"], indent=1), sep="\n")

    # chat's load falls: it needs 1; the GPUs it frees go to search (priority 5) first, then batch, and only
    # as chat gives them back: the pools never hold more than the budget on the way. (While the pools were
    # being created they could: a new pool starts at its floor, and the others make room at their next tick.)
    seen_totals.clear()
    started["chat"].set_load(0.5, SERVICE)
    after = {"chat": 1, "search": 3, "batch": 2}
    cluster.wait_until(lambda: settled(after), timeout=180, desc=f"replicas {after}")
    cluster.wait_until(lambda: granted() == after, timeout=30, desc="budget status recomputed")
    assert max(seen_totals) <= 6, f"the pools held more than the budget at some point: {seen_totals}"
    clamps = [json.loads(line) for line in op.log_path.read_text().splitlines() if '"budget clamp"' in line]
    assert clamps and all(c["replicas"] <= c["granted"] for c in clamps)
