"""operator/budget.py driven without kopf or a cluster: the fakes of test_handlers, real decide() and allocate()."""

from __future__ import annotations

import copy
import time

import kopf
import pytest
from prometheus_client import CollectorRegistry

from inferencepool.core.queueing import Queue
from inferencepool.operator import budget, handlers, observe, workload
from inferencepool.operator.metrics import OperatorMetrics
from test_handlers import SPEC, FakeKube, Pool as HandlerPool, FakeReader, FakeRunning, condition, erlang_c_replicas


class Pool(HandlerPool):
    """test_handlers' pool, named, with spec overrides."""

    def __init__(self, name, **spec):
        super().__init__({**copy.deepcopy(SPEC), **spec}, name=name, uid=f"uid-{name}")


@pytest.fixture(autouse=True)
def events(monkeypatch):
    seen = []
    monkeypatch.setattr(kopf, "info", lambda body, reason, message: seen.append(("Normal", reason, message)))
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: seen.append(("Warning", reason, message)))
    return seen


def loads(**rates):
    now = time.time()
    return {("serving", name): observe.PoolMetrics(newest_sample_time=now - 1, arrival_rate=rate, completion_rate=rate,
                                                     service_time=1.0) for name, rate in rates.items()}


def world(gpus=6, priorities=None):
    kube, reader = FakeKube(), FakeReader()
    book = budget.BudgetBook()
    spec = budget.parse({"gpus": gpus, "pools": [{"name": n, "priority": p} for n, p in (priorities or {}).items()]})
    members = {f"serving/{n}": spec.member(n, {}) for n in priorities or {}}
    book.budgets["serving/shared"] = budget.BudgetState("serving/shared", spec, gpus, members)
    operator = handlers.Operator(handlers.OperatorConfig(interval=3), reader, kube, OperatorMetrics(CollectorRegistry()),
                                 running=FakeRunning(), budgets=book)
    return operator, kube, reader, book


def test_priority_pool_gets_its_need_and_the_other_is_capped_with_a_reason(events):
    operator, kube, reader, _ = world(5, {"chat": 10, "batch": 0})
    reader.pools = loads(chat=12.0, batch=12.0)
    need = erlang_c_replicas(12.0, 1.0)  # 4 replicas each, alone
    assert need == 4
    chat, batch = Pool("chat"), Pool("batch")
    assert chat.tick(operator)["desiredReplicas"] == 4  # batch not decided yet: it holds its 0
    status = batch.tick(operator)
    assert kube.deployments[("serving", "batch")]["spec"]["replicas"] == 1  # 5 - 4 left, its floor
    assert status["constraint"] == "shared_budget" and status["requiredReplicas"] == 4
    assert status["budget"]["grantedReplicas"] == 1 and status["budget"]["heldBy"] == ["serving/chat"]
    assert status["reason"].startswith("hold at 1: budget serving/shared: 1 of the 4 replicas the SLO wants (1 of 5 GPUs")
    limited = condition(status, "ScalingLimited")
    assert limited["status"] == "True" and limited["reason"] == "BudgetLimited"
    assert ("Warning", "BudgetLimited", status["budget"]["message"]) in events
    assert "held back by serving/chat" in status["budget"]["message"]


def test_a_lower_priority_pool_shrinks_before_the_higher_grows():
    operator, kube, reader, book = world(5, {"chat": 10, "batch": 0})
    chat, batch = Pool("chat"), Pool("batch")
    reader.pools = loads(chat=0.5, batch=12.0)
    chat.tick(operator)
    assert batch.tick(operator)["desiredReplicas"] == 4  # chat needs 1: batch takes the 4 it needs
    reader.pools = loads(chat=12.0, batch=12.0)
    status = chat.tick(operator)
    assert status["desiredReplicas"] == 1  # granted 4, but batch still holds 4 GPUs: only 1 free
    assert "3 more once the other pools free their GPUs (4 held)" in status["budget"]["message"]
    assert batch.tick(operator)["desiredReplicas"] == 1  # batch shrinks to its floor (drained as usual)
    assert chat.tick(operator)["desiredReplicas"] == 1  # not before batch's next tick has seen it at 1
    assert batch.tick(operator)["desiredReplicas"] == 1
    assert chat.tick(operator)["desiredReplicas"] == 4
    assert book.applied == {"serving/chat": 4, "serving/batch": 1}


def test_a_pool_without_metrics_is_not_shrunk_by_the_budget():
    operator, kube, reader, _ = world(4, {"chat": 10, "batch": 0})
    chat, batch = Pool("chat"), Pool("batch")
    reader.pools = loads(chat=0.5, batch=12.0)
    chat.tick(operator)
    assert batch.tick(operator)["desiredReplicas"] == 3
    reader.pools = {k: v for k, v in loads(chat=12.0).items()}  # batch's series vanish
    assert batch.tick(operator)["desiredReplicas"] == 3
    assert chat.tick(operator)["desiredReplicas"] == 1  # its floor; batch keeps its 3 while blind


def test_a_pool_outside_every_budget_is_left_alone():
    operator, kube, reader, _ = world(2, {"chat": 10})
    reader.pools = loads(other=12.0)
    status = Pool("other").tick(operator)
    assert status["desiredReplicas"] == 4 and "budget" not in status and status["constraint"] == "slo"


def test_gpus_held_elsewhere_counts_other_workloads_on_the_product_nodes():
    def node(name, product, gpus):
        return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
                "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}}

    def pod(ns, node_name, gpus, pool=None, phase="Running"):
        labels = workload.selector(pool) if pool else {}
        return {"metadata": {"namespace": ns, "labels": labels}, "spec": {"nodeName": node_name, "containers": [
            {"resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}, {"resources": {}}]}, "status": {"phase": phase}}

    nodes = [node("h1", "H100", 8), node("h2", "H100", 8), node("l1", "L4", 1)]
    pods = [pod("ml", "h1", 2), pod("serving", "h1", 1, pool="chat"), pod("ml", "h2", 3, phase="Succeeded"),
            pod("ml", "l1", 1), pod("serving", "h2", 1, pool="other"), pod("ml", None, 4)]
    assert budget.gpus_held_elsewhere(nodes, pods, "H100", {("serving", "chat")}) == (16, 3)


@pytest.mark.parametrize("spec, message", [
    ({"gpus": -1, "pools": [{"name": "a"}]}, "spec.gpus must be a whole number >= 0"),
    ({"gpus": 2, "pools": []}, "spec.pools must list at least one pool"),
    ({"gpus": 2, "pools": [{"name": "a", "selector": {"matchLabels": {"x": "y"}}}]}, "spec.pools[0]: set exactly one"),
    ({"gpus": 2, "pools": [{"name": "a", "weight": 0}]}, "spec.pools[0].weight must be > 0"),
])
def test_bad_budget_specs_name_the_field(spec, message):
    with pytest.raises(budget.BudgetSpecError) as error:
        budget.parse(spec)
    assert message in str(error.value)


def test_members_by_name_or_selector_first_entry_wins():
    spec = budget.parse({"gpus": 4, "pools": [{"name": "a", "priority": 3},
                                              {"selector": {"matchLabels": {"tier": "batch"}}, "weight": 2}]})
    assert spec.member("a", {"tier": "batch"}) == budget.Member(3, 1.0)
    assert spec.member("b", {"tier": "batch", "x": "y"}) == budget.Member(0, 2.0)
    assert spec.member("c", {"tier": "chat"}) is None


class FakeCustom:
    def __init__(self, pools):
        self.pools = pools

    def list_namespaced_custom_object(self, group, version, namespace, plural):
        return {"items": [p for p in self.pools if p["metadata"]["namespace"] == namespace]}


class FakeCore:
    def __init__(self, nodes, pods):
        self.nodes, self.pods = nodes, pods

    def list_node(self, label_selector):
        key, _, value = label_selector.partition("=")
        return {"items": [n for n in self.nodes if n["metadata"]["labels"].get(key) == value]}

    def list_pod_for_all_namespaces(self, field_selector):
        assert field_selector == "status.phase!=Succeeded,status.phase!=Failed"
        return {"items": self.pods}


def budget_handlers(book, pools, nodes=(), pods=()):
    h = budget.BudgetHandlers.__new__(budget.BudgetHandlers)
    h.book, h.custom, h.core = book, FakeCustom(pools), FakeCore(list(nodes), list(pods))
    h._plain = lambda obj: obj
    return h


def reconcile(h, name, spec):
    body = {"metadata": {"name": name, "namespace": "serving", "generation": 1}, "spec": spec, "status": {}}
    patch = kopf.Patch()
    h.reconcile(body=kopf.Body(body), patch=patch)
    return dict(patch["status"])


def pool_object(name, desired, labels=None, product="H100"):
    return {"metadata": {"name": name, "namespace": "serving", "labels": labels or {}},
            "spec": {"minReplicas": 1, "gpu": {"product": product}}, "status": {"desiredReplicas": desired}}


def test_budget_status_lists_who_got_what_and_counts_other_workloads(events):
    book = budget.BudgetBook()
    book.claims["serving/chat"] = budget.core_budget.Claim("serving/chat", want=4, floor=1, current=4, queue=Queue(3, 1))
    book.claims["serving/batch"] = budget.core_budget.Claim("serving/batch", want=4, floor=1, current=1, queue=Queue(3, 1))
    nodes = [{"metadata": {"name": "h1", "labels": {"nvidia.com/gpu.product": "H100"}},
              "status": {"allocatable": {"nvidia.com/gpu": "8"}}},
             {"metadata": {"name": "l1", "labels": {"nvidia.com/gpu.product": "L4"}},
              "status": {"allocatable": {"nvidia.com/gpu": "1"}}}]
    pods = [{"metadata": {"namespace": "ml", "labels": {}}, "status": {"phase": "Running"},
             "spec": {"nodeName": "h1", "containers": [{"resources": {"requests": {"nvidia.com/gpu": "3"}}}]}}]
    h = budget_handlers(book, [pool_object("chat", 4), pool_object("batch", 1, {"tier": "batch"})], nodes, pods)
    status = reconcile(h, "shared", {"gpus": 6, "gpuProduct": "H100", "pools": [
        {"name": "chat", "priority": 10}, {"selector": {"matchLabels": {"tier": "batch"}}}]})
    assert (status["offeredGPUs"], status["otherWorkloadGPUs"], status["availableGPUs"]) == (8, 3, 5)
    assert status["grantedGPUs"] == 5 and status["wantedGPUs"] == 8 and status["limitedPools"] == "batch"
    rows = {a["pool"]: a for a in status["allocations"]}
    assert [a["pool"] for a in status["allocations"]] == ["chat", "batch"]  # by priority
    assert rows["chat"]["grantedReplicas"] == 4 and not rows["chat"]["limited"]
    assert rows["batch"]["grantedReplicas"] == 1 and rows["batch"]["heldBy"] == ["chat"]
    assert status["conditions"][0]["reason"] == "Allocated" and status["conditions"][0]["status"] == "True"


def test_a_pool_in_two_budgets_and_floors_above_the_budget_are_reported(events):
    book = budget.BudgetBook()
    pools = [pool_object("chat", 2), pool_object("batch", 2)]
    first = reconcile(budget_handlers(book, pools), "a-first", {"gpus": 8, "pools": [{"name": "chat"}]})
    assert first["conditions"][0]["reason"] == "Allocated"
    second = reconcile(budget_handlers(book, pools), "b-second", {"gpus": 1, "pools": [{"name": "chat"}, {"name": "batch"}]})
    ready = second["conditions"][0]
    assert ready["status"] == "False" and ready["reason"] == "PoolInTwoBudgets"
    assert "pool serving/chat is also in GPUBudget serving/a-first, which keeps it: remove it from spec.pools" in ready["message"]
    assert "need 2 GPUs, 1 are available: raise spec.gpus to 2" in ready["message"]  # batch holds 2
    assert [a["pool"] for a in second["allocations"]] == ["batch"]
    assert book.budget_of("serving/chat").key == "serving/a-first"
    assert ("Warning", "PoolInTwoBudgets", ready["message"]) in events


def test_an_invalid_budget_is_reported_and_forgotten():
    book = budget.BudgetBook()
    status = reconcile(budget_handlers(book, []), "bad", {"gpus": 2, "pools": [{"name": "a", "weight": -1}]})
    assert status["conditions"][0]["reason"] == "InvalidSpec" and "spec.pools[0].weight" in status["conditions"][0]["message"]
    assert "serving/bad" not in book.budgets


def test_a_new_pool_joins_its_budget_by_label_before_the_budget_lists_it():
    operator, kube, reader, book = world(3, {"chat": 1})
    book.budgets["serving/shared"] = budget.BudgetState(
        "serving/shared", budget.parse({"gpus": 3, "pools": [{"selector": {"matchLabels": {"tier": "batch"}}}]}), 3)
    reader.pools = loads(batch=12.0)
    pool = Pool("batch")
    pool.raw["metadata"]["labels"] = {"tier": "batch"}
    assert pool.tick(operator)["desiredReplicas"] == 3  # wants 4 alone
    assert "serving/batch" in book.budgets["serving/shared"].members
    other = Pool("batch-ns")
    other.raw["metadata"]["namespace"] = "elsewhere"
    other.raw["metadata"]["labels"] = {"tier": "batch"}
    assert book.budget_of("elsewhere/batch-ns") is None


def test_the_budget_condition_keeps_its_transition_time_while_it_holds():
    book = budget.BudgetBook()
    h = budget_handlers(book, [pool_object("chat", 1)])
    spec = {"gpus": 4, "pools": [{"name": "chat"}]}
    first = reconcile(h, "shared", spec)
    old = {**first["conditions"][0], "lastTransitionTime": "2020-01-01T00:00:00Z"}
    body = {"metadata": {"name": "shared", "namespace": "serving", "generation": 1}, "spec": spec,
            "status": {"conditions": [old]}}
    patch = kopf.Patch()
    h.reconcile(body=kopf.Body(body), patch=patch)
    assert patch["status"]["conditions"][0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"


def test_a_pool_held_by_pending_pods_still_claims_what_its_slo_wants():
    """A pool whose floor pod waits for a budget partner's GPU holds at its replicas ("unschedulable"); its
    claim stays the SLO's need, so the book does not hand its share away while the GPU is being freed."""
    from inferencepool.core import policy
    from inferencepool.operator import spec as pool_spec

    config = pool_spec.parse(copy.deepcopy(SPEC))
    obs = policy.Observations(time=time.time(), current_replicas=1, arrival_rate=12.0, service_time=1.0,
                              unschedulable_replicas=1)
    decision = policy.decide(config.policy, obs, policy.History())
    assert (decision.constraint, decision.replicas) == ("unschedulable", 1)
    member = budget.parse({"gpus": 6, "pools": [{"name": "batch"}]}).member("batch", {})
    claim = budget.claim_for("serving/batch", config, obs, decision, member)
    assert claim.want == erlang_c_replicas(12.0, 1.0) == decision.required_replicas
