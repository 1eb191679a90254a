"""Erlang-B/C queueing maths for sizing a GPU fleet.

A slot that serves one request at a time is a *server*; a replica with a batch of
``n`` slots is ``n`` servers.  Requests queue for the next free slot, so the fleet
is an M/G/c queue and the Erlang-C formula tells us how long they wait.

Pure functions (math and numpy only; no scipy, so the CLI starts fast), no I/O.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "UnstableQueue",
    "TargetUnreachable",
    "offered_load",
    "erlang_b",
    "erlang_c",
    "utilization",
    "variability_factor",
    "Queue",
]


class UnstableQueue(ValueError):
    """Asked for a finite count or wait from a queue with load >= servers."""


class TargetUnreachable(UnstableQueue):
    """No server count up to ``max_servers`` meets the target.

    Raised by the ``Queue.servers_for_*`` solves.  It subclasses UnstableQueue (and so
    ValueError), so callers may catch either; a policy catches it and goes to its cap.
    ``servers_needed`` is the uncapped answer, ``None`` if there is none.
    """

    def __init__(self, reason: str, *, max_servers: int | None = None, servers_needed: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.max_servers = max_servers
        self.servers_needed = servers_needed


# ---------------------------------------------------------------- validation


def _nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _count(name: str, value: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def _probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return value


# ---------------------------------------------------------------- Erlang formulas


def offered_load(arrival_rate: float, service_time: float) -> float:
    """Offered load in Erlangs, lambda * S: the mean number of busy servers."""
    return _nonnegative("arrival_rate", arrival_rate) * _nonnegative("service_time", service_time)


def utilization(servers: int, load: float) -> float:
    """Fraction of server time busy, load / servers (>= 1 means unstable)."""
    servers = _count("servers", servers)
    load = _nonnegative("load", load)
    if servers == 0:
        return 0.0 if load == 0 else math.inf
    return load / servers


def variability_factor(arrival_cv: float = 1.0, service_cv: float = 1.0) -> float:
    """Allen-Cunneen factor (ca^2 + cs^2) / 2; 1 for Poisson arrivals and exponential service."""
    ca = _nonnegative("arrival_cv", arrival_cv)
    cs = _nonnegative("service_cv", service_cv)
    return (ca * ca + cs * cs) / 2.0


def _stirling_error(n: int) -> float:
    """log(n!) - log(sqrt(2 pi n) (n/e)^n), accurate for all n >= 1 (Loader 2000)."""
    if n < 16:
        return math.lgamma(n + 1) - ((n + 0.5) * math.log(n) - n + 0.5 * math.log(2 * math.pi))
    n2 = float(n) * n
    return (1 / 12 - (1 / 360 - (1 / 1260 - (1 / 1680 - 1 / (1188 * n2)) / n2) / n2) / n2) / n


def _deviance(x: float, m: float) -> float:
    """x log(x/m) + m - x without cancellation when x is close to m (Loader 2000)."""
    if abs(x - m) < 0.1 * (x + m):
        v = (x - m) / (x + m)
        total = (x - m) * v
        term = 2 * x * v
        j = 1
        while True:
            term *= v * v
            bigger = total + term / (2 * j + 1)
            if bigger == total:
                return total
            total = bigger
            j += 1
    return x * math.log(x / m) + m - x


def _log_poisson_pmf(k: int, mean: float) -> float:
    """log(mean^k e^-mean / k!) to full relative precision even for k, mean ~ 1e5."""
    return -_stirling_error(k) - _deviance(k, mean) - 0.5 * math.log(2 * math.pi * k)


_RECURSION_MAX_SERVERS = 50


def erlang_b(servers: int, load: float) -> float:
    """Erlang-B blocking probability B(c, a) = (a^c/c!) / sum_{k<=c} a^k/k!.

    Equivalently Poisson(a) pmf(c) / cdf(c).  Accurate to ~1e-15 relative where
    B > ~1e-20 and ~1e-13 below (checked against mpmath for c, a up to 1e5), in
    O(sqrt(c)) vectorised work and with nothing that can overflow:
      - c <= 50: the textbook stable recursion B(k) = a B(k-1) / (k + a B(k-1));
      - c > a: pmf(c) in log space (Loader's saddle point), and cdf(c) = 1 - upper tail,
        where the tail sum_{j>=1} prod_{i<=j} a/(c+i) has shrinking terms and is <= ~1/2;
      - c <= a: 1/B = sum_j prod_{i<j} (c-i)/a, whose terms also only shrink.
    Products of ratios below 1 near c reach exp(-j^2 / 2(c+j)), so 20 sqrt(c) terms
    leave < 1e-22.  A B below ~1e-308 underflows to 0.0.
    """
    c = _count("servers", servers)
    a = _nonnegative("load", load)
    if c == 0:
        return 1.0
    if a == 0:
        return 0.0
    if c <= _RECURSION_MAX_SERVERS:
        b = 1.0
        for k in range(1, c + 1):
            b = a * b / (k + a * b)
        return b
    terms = int(20 * math.sqrt(c)) + 10
    if c > a:
        pmf = math.exp(_log_poisson_pmf(c, a))
        if pmf == 0.0:
            return 0.0
        upper_tail_over_pmf = float(np.cumprod(a / (c + np.arange(1, terms + 1, dtype=float))).sum())
        return pmf / (1.0 - pmf * upper_tail_over_pmf)
    terms = min(c, terms)
    return 1.0 / (1.0 + float(np.cumprod((c - np.arange(terms, dtype=float)) / a).sum()))


def erlang_c(servers: int, load: float) -> float:
    """Erlang-C P(wait > 0) = c B / (c - a (1 - B)); 1.0 when load >= servers (unstable).

    With zero load nobody waits, so the answer is 0.0 for any number of servers.
    """
    c = _count("servers", servers)
    a = _nonnegative("load", load)
    if a == 0:
        return 0.0
    if a >= c:
        return 1.0
    b = erlang_b(c, a)
    return min(1.0, c * b / (c - a * (1.0 - b)))


# ---------------------------------------------------------------- the queue


def _first_meeting(meets: Callable[[int], bool], lower: int, guesses: Callable[[int], int]) -> int:
    """Smallest c >= lower with meets(c), for meets monotone False...True.

    Tries ``guesses(k)`` for k = 0, 1, 2, ... (increasing, e.g. a + 2^k sqrt(a)) to find a
    passing c, then bisects between the last failure and it: O(log c) evaluations.
    """
    if meets(lower):
        return lower
    failed = lower
    k = 0
    while True:
        candidate = max(guesses(k), failed + 1)
        if meets(candidate):
            break
        failed = candidate
        k += 1
    passed = candidate
    while passed - failed > 1:
        middle = (failed + passed) // 2
        if meets(middle):
            passed = middle
        else:
            failed = middle
    return passed


@dataclass(frozen=True)
class Queue:
    """An M/G/c-ish queue described by what we can measure.

    Waits use the Allen-Cunneen approximation for G/G/c: the M/M/c wait scaled by
    v = (ca^2 + cs^2) / 2.  Mean wait = v C(c,a) / (c mu - lambda) and the tail is
    approximated by P(W > t) ~= C(c,a) exp(-(c mu - lambda) t / v).  With
    ca = cs = 1 both are exactly M/M/c; with c = 1 the mean is exactly Pollaczek-
    Khinchine for Poisson arrivals.  The tail shape is an approximation otherwise.
    """

    arrival_rate: float  # requests / s
    service_time: float  # mean seconds a server (slot) is busy with one request
    arrival_cv: float = 1.0  # coefficient of variation of inter-arrival times
    service_cv: float = 1.0  # coefficient of variation of service times

    def __post_init__(self) -> None:
        for name in ("arrival_rate", "service_time", "arrival_cv", "service_cv"):
            object.__setattr__(self, name, _nonnegative(name, getattr(self, name)))

    @property
    def load(self) -> float:
        """Offered load in Erlangs (lambda * S)."""
        return self.arrival_rate * self.service_time

    @property
    def variability(self) -> float:
        """Allen-Cunneen factor v = (ca^2 + cs^2) / 2."""
        return variability_factor(self.arrival_cv, self.service_cv)

    @property
    def min_stable_servers(self) -> int:
        """Fewest servers with load < servers (0 when there is no load)."""
        return 0 if self.load == 0 else math.floor(self.load) + 1

    def is_stable(self, servers: int) -> bool:
        """True when the queue does not grow without bound (or there is no load)."""
        return self.load == 0 or _count("servers", servers) > self.load

    def _drain_rate(self, servers: int) -> float:
        """c mu - lambda: the rate at which a queue empties, per second."""
        return (servers - self.load) / self.service_time

    def mean_wait(self, servers: int) -> float:
        """Mean time in queue before service, seconds; math.inf when unstable."""
        c = _count("servers", servers)
        if self.load == 0:
            return 0.0
        if c <= self.load:
            return math.inf
        return self.variability * erlang_c(c, self.load) / self._drain_rate(c)

    def prob_wait_exceeds(self, servers: int, t: float) -> float:
        """P(W > t) for t >= 0 seconds; 1.0 when unstable."""
        c = _count("servers", servers)
        t = _nonnegative("t", t)
        if self.load == 0:
            return 0.0
        if c <= self.load:
            return 1.0
        waits = erlang_c(c, self.load)
        if t == 0:
            return waits
        if self.variability == 0:
            return 0.0
        return waits * math.exp(-self._drain_rate(c) * t / self.variability)

    def wait_quantile(self, servers: int, p: float) -> float:
        """Smallest t with P(W <= t) >= p; 0 if C(c,a) <= 1-p; math.inf when unstable."""
        c = _count("servers", servers)
        p = _probability("p", p)
        if self.load == 0:
            return 0.0
        if c <= self.load:
            return math.inf
        waits = erlang_c(c, self.load)
        if waits <= 1 - p:
            return 0.0
        return self.variability / self._drain_rate(c) * math.log(waits / (1 - p))

    # ------------------------------------------------------------ inverse solves

    def _solve(self, meets: Callable[[int], bool], what: str, max_servers: int | None) -> int:
        """Smallest stable c meeting a target monotone in c; see TargetUnreachable."""
        if max_servers is not None:
            max_servers = _count("max_servers", max_servers)
        if self.load == 0:
            return 0
        a = self.load
        lower = self.min_stable_servers
        if max_servers is not None and not (max_servers >= lower and meets(max_servers)):
            needed = self._solve(meets, what, None)
            raise TargetUnreachable(
                f"{what} needs {needed} servers at {a:.6g} Erlangs, more than max_servers={max_servers}",
                max_servers=max_servers,
                servers_needed=needed,
            )
        # Square-root staffing guesses a + 2^k sqrt(a), k = 0, 1, 2, ..., then bisection.
        root = math.sqrt(a)
        return _first_meeting(meets, lower, lambda k: math.ceil(a + (2**k) * max(root, 1.0)))

    def servers_for_mean_wait(self, target: float, max_servers: int | None = None) -> int:
        """Smallest stable c with mean wait <= target seconds (target > 0).

        Raises TargetUnreachable if max_servers is given and does not meet it.
        """
        target = _nonnegative("target", target)
        if target == 0:
            raise ValueError("target must be > 0 seconds: every loaded queue has some mean wait")
        return self._solve(lambda c: self.mean_wait(c) <= target, f"mean wait <= {target:g}s", max_servers)

    def servers_for_wait_quantile(self, target: float, p: float, max_servers: int | None = None) -> int:
        """Smallest stable c with P(W <= target) >= p.

        Raises TargetUnreachable if max_servers is given and does not meet it.
        """
        target = _nonnegative("target", target)
        p = _probability("p", p)
        return self._solve(
            lambda c: self.prob_wait_exceeds(c, target) <= 1 - p,
            f"P(wait <= {target:g}s) >= {p:g}",
            max_servers,
        )

    def servers_for_utilization(self, max_utilization: float, max_servers: int | None = None) -> int:
        """Smallest stable c with load / c <= max_utilization (in (0, 1]).

        Raises TargetUnreachable if max_servers is given and does not meet it.
        """
        u = float(max_utilization)
        if not 0 < u <= 1:
            raise ValueError(f"max_utilization must be in (0, 1], got {max_utilization!r}")
        return self._solve(lambda c: self.load / c <= u, f"utilization <= {u:g}", max_servers)
