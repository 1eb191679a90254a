"""Sharing a GPU budget between pools: who gets the next GPU, and why. Pure: no clock, no I/O.

Each pool says what decide() wants for it alone (its `want`), its floor and its queue. The allocator
gives every pool its floor first, then hands out the rest one replica at a time:

- strict priority: a pool of a higher `priority` gets every replica it wants before a lower one gets
  any above its floor (so a lower-priority pool is shrunk before a higher one is refused);
- within one priority, by marginal value: the next replica goes to the pool whose SLO miss
  probability P(wait > target) drops most per GPU, times its `weight` (Erlang C at N and N+1,
  core/queueing.py). Below the stability limit (servers <= load) the miss probability is 1 and flat, so
  the penalty there is 1 + the share of the load the fleet cannot serve: every replica that brings the
  fleet nearer to stable still counts;
- hysteresis: a replica a pool already runs is worth `HYSTERESIS` more to it, so two pools with nearly
  equal value do not trade a GPU back and forth on every small change of load;
- ties go to the pool already holding the replica, then to the name that sorts first: deterministic.

A pool without usable metrics (queue None) keeps what decide() gave it (never scaled down without
metrics): that count is its floor here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inferencepool.core.queueing import Queue

HYSTERESIS = 0.25  # a held replica's marginal value counts this much more (25%)


@dataclass(frozen=True)
class Claim:
    """One pool's ask of the budget."""

    name: str  # "namespace/name"
    want: int  # what decide() wants for the pool alone (after its own floor, caps and stabilisation)
    floor: int = 1  # the pool's minReplicas
    current: int = 0  # replicas it runs now (for hysteresis)
    priority: int = 0  # higher is served first, strictly
    weight: float = 1.0  # within one priority, multiplies the marginal value
    gpus_per_replica: int = 1
    queue: Queue | None = None  # the queue decide() sized for; None: metrics missing, hold `want`
    slots: int = 1  # servers (concurrent requests) per replica
    target: float = 0.0  # seconds of queue wait the SLO allows

    @property
    def kept(self) -> int:
        """Replicas given before any sharing: the floor, or all it holds when its metrics are missing."""
        return max(self.floor, self.want) if self.queue is None else self.floor


def penalty(queue: Queue | None, servers: int, target: float) -> float:
    """P(wait > target) on `servers` slots, extended above 1 by the unserved share of the load when unstable."""
    if queue is None or queue.load == 0:
        return 0.0
    if servers <= queue.load:
        return 1.0 + (queue.load - servers) / queue.load
    return queue.prob_wait_exceeds(servers, max(target, 0.0))


def marginal_value(claim: Claim, replicas: int) -> float:
    """What one more replica (replicas -> replicas + 1) buys the pool, per GPU, weighted."""
    before = penalty(claim.queue, replicas * claim.slots, claim.target)
    after = penalty(claim.queue, (replicas + 1) * claim.slots, claim.target)
    value = claim.weight * (before - after) / claim.gpus_per_replica
    return value * (1 + HYSTERESIS) if replicas < claim.current else value


@dataclass(frozen=True)
class Grant:
    """What one pool got, and why."""

    name: str
    replicas: int
    want: int
    floor: int
    priority: int
    gpus: int  # replicas x GPUs per replica
    limited: bool  # got fewer than it wants
    held_by: tuple[str, ...] = ()  # pools that got GPUs above their floor while this one was short
    miss_probability: float | None = None  # P(wait > target) at the granted count


@dataclass(frozen=True)
class Allocation:
    """The budget's split: every pool's grant, the GPUs counted and any conflict to report."""

    gpus: int  # GPUs the budget may use now
    used: int  # GPUs granted
    grants: dict[str, Grant] = field(default_factory=dict)
    overcommitted: bool = False  # the floors alone exceed `gpus` (they are kept regardless)


def allocate(claims: list[Claim], gpus: int) -> Allocation:
    """Split `gpus` between the claims (see the module docstring for the rules)."""
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    names = [c.name for c in claims]
    if len(set(names)) != len(names):
        raise ValueError(f"a pool is claimed twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    granted = {c.name: c.kept for c in claims}
    used = sum(granted[c.name] * c.gpus_per_replica for c in claims)
    overcommitted = used > gpus
    while True:
        room = gpus - used
        open_ = [c for c in claims if granted[c.name] < c.want and c.gpus_per_replica <= room]
        if not open_:
            break
        best = min(open_, key=lambda c: (
            -c.priority,
            -round(marginal_value(c, granted[c.name]), 12),
            granted[c.name] >= c.current,  # False (still holding) first
            c.name,
        ))
        granted[best.name] += 1
        used += best.gpus_per_replica
    grants = {}
    for c in claims:
        n = granted[c.name]
        limited = n < c.want
        held_by = tuple(sorted(
            o.name for o in claims
            if limited and o.name != c.name and granted[o.name] > o.kept and o.priority >= c.priority
        ))
        miss = penalty(c.queue, n * c.slots, c.target) if c.queue is not None else None
        grants[c.name] = Grant(c.name, n, c.want, c.floor, c.priority, n * c.gpus_per_replica, limited, held_by,
                               min(miss, 1.0) if miss is not None else None)
    return Allocation(gpus=gpus, used=used, grants=grants, overcommitted=overcommitted)


def explain(grant: Grant, allocation: Allocation, budget: str) -> str:
    """One sentence for the pool's status and Event: what it got of the budget and who took the rest."""
    head = f"budget {budget}: {grant.replicas} of the {grant.want} replicas the SLO wants"
    head += f" ({grant.gpus} of {allocation.gpus} GPUs, {allocation.used} granted)"
    if not grant.limited:
        return head
    if not grant.held_by:
        return f"{head}; held back by the floors of other pools"

    def why(name: str) -> str:
        other = allocation.grants[name].priority
        return f"{name} (priority {other})" if other > grant.priority else f"{name} (same priority, more SLO per GPU)"

    return f"{head}; held back by {', '.join(why(n) for n in grant.held_by)}"
