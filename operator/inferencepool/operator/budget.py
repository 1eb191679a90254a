"""GPUBudget in the operator: one clamp step after each pool's decide(), and a timer per budget.

- `BudgetBook` is the operator's memory, shared by the pools' timers and the budgets' timers: each pool's
  latest claim (what decide() wants for it alone, its queue, what it runs), and each budget's members and
  the GPUs it may use now.
- `BudgetBook.clamp` (from Operator.autoscale): computes the split afresh with this pool's new claim and
  caps its decision at its grant (constraint `shared_budget`, condition ScalingLimited/BudgetLimited,
  `status.budget`, an Event `BudgetLimited` naming who holds the GPUs). A pool grows only into GPUs the
  other pools do not hold now, so a lower-priority pool shrinks (through the normal drain) before the
  higher one grows, and the sum never exceeds the budget.
- `BudgetHandlers.reconcile` (a kopf timer per GPUBudget): resolves its pools, counts the GPUs of its
  product that other workloads hold (node allocatable, pod requests), and writes who got what and why.

Bad input is reported in the budget's status naming the field and the fix: a pool in two budgets (the
budget whose name sorts first keeps it), floors above the budget (kept; the budget is overcommitted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import kopf

from inferencepool.core import budget as core_budget, policy
from inferencepool.core.queueing import Queue
from inferencepool.operator import logs, spec as pool_spec, status as pool_status, workload

PLURAL = "gpubudgets"
RESOURCE = (pool_spec.GROUP, pool_spec.VERSION, PLURAL)
GPU = workload.GPU_RESOURCE
log = logs.get("inferencepool.operator.budget")


class BudgetSpecError(ValueError):
    """A GPUBudget spec that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True)
class Member:
    priority: int = 0
    weight: float = 1.0


@dataclass(frozen=True)
class BudgetSpec:
    gpus: int
    product: str | None
    entries: tuple[tuple[str | None, dict | None, Member], ...]  # (name, matchLabels, member)

    def member(self, name: str, labels: Mapping[str, str]) -> Member | None:
        """The first entry that picks this pool (by name or by all its matchLabels), or None."""
        for entry_name, match, member in self.entries:
            if entry_name == name or (match and all(labels.get(k) == v for k, v in match.items())):
                return member
        return None


def parse(spec: Mapping) -> BudgetSpec:
    """The budget's spec, checked (the CRD schema checks the same; this guards an older CRD)."""
    gpus = spec.get("gpus")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise BudgetSpecError(f"spec.gpus must be a whole number >= 0, got {gpus!r}")
    entries = []
    for i, entry in enumerate(spec.get("pools") or ()):
        name, selector = entry.get("name"), (entry.get("selector") or {}).get("matchLabels")
        if bool(name) == bool(selector):
            raise BudgetSpecError(f"spec.pools[{i}]: set exactly one of name or selector.matchLabels")
        weight = float(entry.get("weight", 1.0))
        if weight <= 0:
            raise BudgetSpecError(f"spec.pools[{i}].weight must be > 0, got {weight:g}")
        entries.append((name, dict(selector) if selector else None, Member(int(entry.get("priority", 0)), weight)))
    if not entries:
        raise BudgetSpecError("spec.pools must list at least one pool (by name or selector)")
    return BudgetSpec(gpus, spec.get("gpuProduct") or None, tuple(entries))


def claim_for(key: str, config: pool_spec.PoolConfig, obs: policy.Observations, decision: policy.Decision,
              member: Member) -> core_budget.Claim:
    """The pool's ask: decide()'s answer and the queue it sized (planning rate, effective slots and service)."""
    spec = config.policy
    service = decision.capacity.service_time if decision.capacity else (obs.service_time or decision.history.last_service_time)
    slots = decision.capacity.slots if decision.capacity else spec.slots_per_replica
    queue = None
    if decision.metrics_available and decision.planning_rate is not None and service:
        queue = Queue(decision.planning_rate, service, obs.arrival_cv, obs.service_cv)
    want = decision.replicas
    if decision.constraint == "unschedulable" and decision.required_replicas is not None:
        # held because pods are Pending for lack of GPUs (often a budget partner's, about to be freed): the
        # pool still wants what its SLO needs; claiming what it holds let the book flip its grants each tick
        want = max(want, min(decision.required_replicas, spec.replica_cap))
    return core_budget.Claim(
        key, want=want, floor=spec.min_replicas, current=obs.current_replicas, priority=member.priority,
        weight=member.weight, gpus_per_replica=spec.gpus_per_replica, queue=queue, slots=slots,
        target=max(policy.wait_target(spec, obs), 0.0),
    )


@dataclass
class BudgetState:
    key: str  # namespace/name
    spec: BudgetSpec
    available: int  # GPUs it may use now
    members: dict[str, Member] = field(default_factory=dict)  # pool key -> its entry
    running: dict[str, int] = field(default_factory=dict)  # pool key -> replicas its status says it runs


class BudgetBook:
    """What the pools' and the budgets' timers share (one operator process)."""

    def __init__(self):
        self.lock = threading.RLock()  # kopf runs the pools' and budgets' sync handlers in a thread pool
        self.budgets: dict[str, BudgetState] = {}
        self.claims: dict[str, core_budget.Claim] = {}
        self.applied: dict[str, int] = {}  # pool key -> replicas last set by the operator
        self.live: dict[str, int] = {}  # pool key -> the Deployment's replicas at the pool's last tick

    def owners(self, pool: str) -> list[str]:
        """Every budget that picks this pool, first by name (the one that keeps it)."""
        return sorted(k for k, b in self.budgets.items() if pool in b.members)

    def budget_of(self, pool: str) -> BudgetState | None:
        owners = self.owners(pool)
        return self.budgets[owners[0]] if owners else None

    def claims_of(self, state: BudgetState) -> list[core_budget.Claim]:
        """Each member's latest claim; a member not decided yet in this process holds what it runs."""
        out = []
        for pool, member in sorted(state.members.items()):
            if self.budget_of(pool) is not state:
                continue
            known = self.claims.get(pool)
            if known is None:
                running = state.running.get(pool, 0)
                known = core_budget.Claim(pool, want=running, floor=running, current=running, priority=member.priority)
            out.append(replace(known, priority=member.priority, weight=member.weight))
        return out

    def allocation(self, state: BudgetState) -> core_budget.Allocation:
        return core_budget.allocate(self.claims_of(state), state.available)

    def clamp(self, body, config: pool_spec.PoolConfig, obs: policy.Observations, decision: policy.Decision,
              patch) -> policy.Decision:
        """Cap the pool's decision at its share of its budget (no budget: the decision as it is)."""
        with self.lock:
            return self._clamp(body, config, obs, decision, patch)

    def _clamp(self, body, config, obs, decision, patch) -> policy.Decision:
        namespace, name = body.metadata.namespace, body.metadata.name
        key = f"{namespace}/{name}"
        self.live[key] = obs.current_replicas
        self._join(key, namespace, name, body.metadata.get("labels") or {}, obs.current_replicas)
        state = self.budget_of(key)
        previous = (body.get("status") or {}).get("budget")
        if state is None:
            self.claims.pop(key, None)
            if previous:
                patch.status["budget"] = None
            return decision
        self.claims[key] = claim_for(key, config, obs, decision, state.members[key])
        allocation = self.allocation(state)
        grant = allocation.grants[key]
        gpr = config.policy.gpus_per_replica
        current = obs.current_replicas
        others = sum(self._running(state, pool) * self.claims[pool].gpus_per_replica if pool in self.claims
                     else self._running(state, pool) for pool in state.members if pool != key and self.budget_of(pool) is state)
        free = max((state.available - others) // gpr, 0)
        limit = grant.replicas if grant.replicas <= current else min(grant.replicas, max(current, free))
        limit = max(limit, grant.floor if decision.metrics_available else decision.replicas)
        replicas = min(decision.replicas, limit)
        self.applied[key] = replicas
        waiting_for = grant.replicas > limit
        message = core_budget.explain(grant, allocation, state.key)
        if waiting_for:
            message += f"; {grant.replicas - limit} more once the other pools free their GPUs ({others} held)"
        patch.status["budget"] = {
            "name": state.key.split("/", 1)[1], "priority": grant.priority, "grantedReplicas": grant.replicas,
            "wantedReplicas": grant.want, "availableGPUs": allocation.gpus, "grantedGPUs": allocation.used,
            "limited": replicas < decision.replicas, "heldBy": list(grant.held_by) or None, "message": message,
        }
        if replicas >= decision.replicas:
            return decision
        move = "hold at" if replicas == current else ("scale up" if replicas > current else "scale down")
        head = f"{move} {replicas}" if replicas == current else f"{move} {current} -> {replicas}"
        reason = f"{head}: {message}; alone: {decision.reason}"
        if not previous or previous.get("message") != message:
            kopf.warn(body, reason="BudgetLimited", message=message)
        limited = replace(decision, replicas=replicas, constraint="shared_budget", reason=reason)
        log.info("budget clamp", namespace=namespace, pool=name, budget=state.key, wanted=decision.replicas,
                 granted=grant.replicas, replicas=replicas, held_by=list(grant.held_by), others_gpus=others)
        return limited

    def _join(self, key: str, namespace: str, name: str, labels: Mapping[str, str], running: int) -> None:
        """A pool its budget's last tick did not list yet (just created) joins at once, not a tick late."""
        for state in self.budgets.values():
            if key not in state.members and state.key.split("/", 1)[0] == namespace:
                member = state.spec.member(name, labels)
                if member is not None:
                    state.members[key] = member
                    state.running.setdefault(key, running)

    def _running(self, state: BudgetState, pool: str) -> int:
        """GPUs a pool holds, as far as another may grow: until its next tick has seen its Deployment at a
        lower count, a pool that was just told to shrink still holds what it ran (its scale is applied after
        the clamp, in its own thread), so the others grow only into what is really given back."""
        if pool in self.applied:
            return max(self.applied[pool], self.live.get(pool, 0))
        return state.running.get(pool, 0)

    def forget_pool(self, key: str) -> None:
        self.claims.pop(key, None)
        self.applied.pop(key, None)
        self.live.pop(key, None)


def gpus_held_elsewhere(nodes: list[dict], pods: list[dict], product: str, members: set[tuple[str, str]]) -> tuple[int, int]:
    """(allocatable GPUs on the product's nodes, GPUs requested there by pods not of the budget's pools)."""
    names = {n["metadata"]["name"] for n in nodes
             if (n["metadata"].get("labels") or {}).get(workload.GPU_PRODUCT_LABEL) == product}
    offered = sum(int((n.get("status") or {}).get("allocatable", {}).get(GPU, 0) or 0) for n in nodes
                  if n["metadata"]["name"] in names)
    held = 0
    for pod in pods:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if spec.get("nodeName") not in names or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        pool = (meta.get("labels") or {}).get(workload.POOL_LABEL)
        if pool and (meta.get("namespace"), pool) in members:
            continue
        held += sum(int(((c.get("resources") or {}).get("requests") or {}).get(GPU, 0) or 0)
                    for c in spec.get("containers") or ())
    return offered, held


class BudgetHandlers:
    """The GPUBudget timer and delete handler, with their dependencies passed in."""

    def __init__(self, book: BudgetBook, api_client=None):
        from kubernetes import client

        self.book = book
        self.api = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def _plain(self, obj) -> dict:
        return self.api.sanitize_for_serialization(obj)

    def reconcile(self, body, patch, **_) -> None:
        namespace, name = body.metadata.namespace, body.metadata.name
        key = f"{namespace}/{name}"
        now = time.time()
        generation = body.metadata.get("generation")
        try:
            spec = parse(body.get("spec") or {})
        except BudgetSpecError as error:
            with self.book.lock:
                self.book.budgets.pop(key, None)
            patch.status.update({"conditions": [pool_status.condition("Ready", False, "InvalidSpec", str(error), now, generation)]})
            return
        pools = self.custom.list_namespaced_custom_object(pool_spec.GROUP, pool_spec.VERSION, namespace, pool_spec.PLURAL)["items"]
        members, running, products = {}, {}, {}
        for pool in pools:
            meta = pool["metadata"]
            member = spec.member(meta["name"], meta.get("labels") or {})
            if member is not None:
                pool_key = f"{namespace}/{meta['name']}"
                members[pool_key] = member
                running[pool_key] = int((pool.get("status") or {}).get("desiredReplicas")
                                        or (pool.get("spec") or {}).get("minReplicas") or 0)
                products[pool_key] = ((pool.get("spec") or {}).get("gpu") or {}).get("product")
        available, offered, held = spec.gpus, None, None
        if spec.product:
            nodes = self._plain(self.core.list_node(label_selector=f"{workload.GPU_PRODUCT_LABEL}={spec.product}")).get("items", [])
            pods = self._plain(self.core.list_pod_for_all_namespaces(
                field_selector="status.phase!=Succeeded,status.phase!=Failed")).get("items", [])
            offered, held = gpus_held_elsewhere(nodes, pods, spec.product, {tuple(k.split("/", 1)) for k in members})
            available = min(spec.gpus, max(offered - held, 0))
        state = BudgetState(key, spec, available, members, running)
        with self.book.lock:
            self.book.budgets[key] = state
            allocation = self.book.allocation(state)
            owners = {pool: self.book.owners(pool)[0] for pool in members}
            claims = {c.name: c for c in self.book.claims_of(state)}

        problems = []
        for pool in sorted(members):
            owner = owners[pool]
            if owner != key:
                problems.append(("PoolInTwoBudgets", f"pool {pool} is also in GPUBudget {owner}, which keeps it: remove it "
                                 f"from spec.pools of one of them"))
            if spec.product and products.get(pool) and products[pool] != spec.product:
                problems.append(("ProductMismatch", f"pool {pool} asks for spec.gpu.product {products[pool]}, this budget "
                                 f"counts spec.gpuProduct {spec.product}: make them the same"))
        floors = sum(c.kept * c.gpus_per_replica for c in claims.values())
        if allocation.overcommitted:
            problems.append(("FloorsExceedBudget", f"the pools' floors (and holds without metrics) need {floors} GPUs, "
                             f"{available} are available: raise spec.gpus to {floors} (or free GPUs of the product), "
                             f"or lower the pools' minReplicas"))
        grants = sorted(allocation.grants.values(), key=lambda g: (-g.priority, g.name))
        status = {
            "observedGeneration": generation,
            "availableGPUs": available,
            "offeredGPUs": offered,
            "otherWorkloadGPUs": held,
            "grantedGPUs": allocation.used,
            "wantedGPUs": sum(g.want * claims[g.name].gpus_per_replica for g in grants),
            "limitedPools": ",".join(g.name.split("/", 1)[1] for g in grants if g.limited) or None,
            "allocations": [_compact({
                "pool": g.name.split("/", 1)[1], "priority": g.priority, "weight": _number(claims[g.name].weight),
                "wantedReplicas": g.want, "grantedReplicas": g.replicas, "gpus": g.gpus, "floor": g.floor,
                "missProbability": pool_status.rounded(g.miss_probability, 3), "limited": g.limited,
                "heldBy": [h.split("/", 1)[1] for h in g.held_by] or None,
                "reason": core_budget.explain(g, allocation, key),
            }) for g in grants] or None,
            "conditions": pool_status.merge_conditions((body.get("status") or {}).get("conditions"), [
                pool_status.condition("Ready", not problems, problems[0][0] if problems else "Allocated",
                                      "; ".join(m for _, m in problems) if problems else
                                      f"{allocation.used} of {available} GPUs granted to {len(grants)} pools", now, generation),
            ]),
        }
        previous = _ready_message(body.get("status"))
        if problems and previous != status["conditions"][0]["message"]:
            kopf.warn(body, reason=problems[0][0], message=status["conditions"][0]["message"])
        patch.status.update(status)
        log.info("budget", namespace=namespace, budget=name, available=available, offered=offered, held_elsewhere=held,
                 granted=allocation.used, grants={g.name: g.replicas for g in grants}, problems=[p for p, _ in problems])

    def forget(self, body, **_) -> None:
        with self.book.lock:
            self.book.budgets.pop(f"{body.metadata.namespace}/{body.metadata.name}", None)


def _compact(entry: dict) -> dict:
    """Without None values: inside a list they would be stored as absent, and kopf would see a difference."""
    return {k: v for k, v in entry.items() if v is not None}


def _number(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _ready_message(status: Mapping | None) -> str | None:
    return next((c.get("message") for c in (status or {}).get("conditions") or () if c.get("type") == "Ready"), None)


def register(registry: kopf.OperatorRegistry, handlers: BudgetHandlers, interval: float,
             labels: Mapping | None = None) -> None:
    """`labels`: a shard's selector, as for the pools (a budget and its pools must be in one shard: the
    book that shares it lives in one operator's memory)."""
    budgets = {"labels": dict(labels)} if labels else {}
    # A failed round (the apiserver down) is retried after one interval, as the pools' ticks are (handlers.py).
    kopf.timer(*RESOURCE, id="budget", interval=interval, backoff=interval, registry=registry,
               **budgets)(handlers.reconcile)
    kopf.on.delete(*RESOURCE, id="forget-budget", optional=True, registry=registry, **budgets)(handlers.forget)
