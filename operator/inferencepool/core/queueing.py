"""Erlang-B/C queueing maths for sizing a GPU fleet.

A slot that serves one request at a time is a *server*; a replica with a batch of
``n`` slots is ``n`` servers.  Requests queue for the next free slot, so the fleet
is an M/G/c queue and the Erlang-C formula tells us how long they wait.

Pure functions (math and numpy only; no scipy, so the CLI starts fast), no I/O.

Two approximations for the wait, both checked against an independent FCFS simulation
(tests/fcfs_sim.py; the accuracy tables are in benchmarks/README.md):

- "allen-cunneen": P(W > 0) = Erlang C, and (ca^2 + cs^2) / 2 scales the decay only.
- "corrected" (the default): bursty arrivals raise P(W > 0) as well.  Counts with index of
  dispersion I = ca^2 make the busy servers "peaked" with peakedness z = 1 + (I - 1) / (1 + cs^2)
  (exact for an infinite-server queue with exponential service and Poisson batches, and z = I for
  deterministic service), so P(W > 0) is Erlang C on c / z servers at load a / z: Hayward's
  scaling (A. A. Fredericks, "Congestion in blocking systems - a simple approximation technique",
  Bell System Technical Journal 59, 1980), here applied to Erlang C.  z is never below 1.  For
  heavy-tailed service (cs > 1) a small fleet's wait, given that it waits, is more variable than an
  exponential: its squared CV is the M/G/1 one (Takacs' second moment, with a third service moment
  6 ((1 + cs^2) / 2)^3, exact for exponential service and close to a lognormal's) diluted by 1 / c^2,
  taken as a balanced two-phase hyperexponential (as W. Whitt, "Approximations for the GI/G/m
  queue", Production and Operations Management 2(2), 1993, fits the conditional delay by its
  moments).  Its tail is never below the exponential one.  With ca = cs = 1 both models are
  exactly M/M/c.
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
    "peakedness",
    "bisect_boundary",
    "APPROXIMATIONS",
    "Queue",
]

APPROXIMATIONS = ("corrected", "allen-cunneen")
MAX_CV = 1e6  # coefficients of variation above this are no workload, and their squares would overflow


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


def peakedness(dispersion: float, service_cv: float) -> float:
    """z = 1 + (I - 1) / (1 + cs^2) >= 1: how much burstier than Poisson the busy servers are.

    For an infinite-server queue fed by Poisson batches (dispersion I = E[X^2]/E[X]) z is exactly
    1 + (I - 1) mu int (1 - G(t))^2 dt, which is (I + 1) / 2 for exponential service and I for
    deterministic; 1 / (1 + cs^2) is the two-moment stand-in for that integral.
    """
    return max(1.0, 1.0 + (_nonnegative("dispersion", dispersion) - 1.0) / (1.0 + _nonnegative("service_cv", service_cv) ** 2))


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


_LAGUERRE = np.polynomial.laguerre.laggauss(60)
_FRACTIONAL_RECURSION_MAX = 200


def _erlang_b_real(servers: float, load: float) -> float:
    """Erlang B for a real number of servers x: a^x e^-a / Gamma(x + 1, a) (the analytic extension).

    Integers go to erlang_b.  Otherwise 1 / B(f, a) = int_0^inf e^-u (1 + u/a)^f du for the fractional
    part f (60-point Gauss-Laguerre) and the stable recursion up to x <= 200; above, log B is
    interpolated between the neighbouring integers (smooth there).  Within ~0.3% of mpmath.
    """
    n, f = divmod(servers, 1.0)
    n = int(n)
    if f == 0.0:
        return erlang_b(n, load)
    if load == 0:
        return 0.0
    if n >= _FRACTIONAL_RECURSION_MAX:
        lo, hi = erlang_b(n, load), erlang_b(n + 1, load)
        if lo == 0.0 or hi == 0.0:
            return lo + f * (hi - lo)
        return math.exp((1 - f) * math.log(lo) + f * math.log(hi))
    nodes, weights = _LAGUERRE
    b = 1.0 / float(np.dot(weights, (1.0 + nodes / load) ** f))
    for k in range(1, n + 1):
        b = load * b / (k + f + load * b)
    return b


def _erlang_c_real(servers: float, load: float) -> float:
    """Erlang C for a real number of servers (see _erlang_b_real); 1.0 when load >= servers."""
    if load == 0:
        return 0.0
    if load >= servers:
        return 1.0
    b = _erlang_b_real(servers, load)
    return min(1.0, servers * b / (servers - load * (1.0 - b)))


def _h2_tail(t: float, mean: float, scv: float) -> float:
    """P(X > t) of a balanced-means two-phase hyperexponential with this mean and squared CV >= 1."""
    p = (1.0 + math.sqrt((scv - 1.0) / (scv + 1.0))) / 2.0
    return p * math.exp(-2.0 * p * t / mean) + (1.0 - p) * math.exp(-2.0 * (1.0 - p) * t / mean)


def _h2_quantile(tail: float, mean: float, scv: float) -> float:
    """t with _h2_tail(t) = tail, for 0 < tail < 1 (bisection: the tail is strictly decreasing)."""
    low, high = 0.0, mean
    while _h2_tail(high, mean, scv) > tail:
        low, high = high, 2.0 * high
    for _ in range(100):
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        if _h2_tail(middle, mean, scv) > tail:
            low = middle
        else:
            high = middle
    return high


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
    return bisect_boundary(meets, failed, candidate)[1]


def bisect_boundary(holds: Callable[[int], bool], low: int, high: int) -> tuple[int, int]:
    """Adjacent (low, high) with holds(low) False and holds(high) True, given that at the start.

    `holds` must be monotone between the two (False below some n, True from it on). Shared by the
    server-count solves here, the planner's break-even search and the simulator's oracle.
    """
    while high - low > 1:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle
    return low, high


@dataclass(frozen=True)
class Queue:
    """An M/G/c-ish queue described by what we can measure.

    P(W > t) ~= alpha T(t), with alpha = P(W > 0) and T the tail of the wait of those who wait,
    whose mean is v S / (c - a), v = (I + cs^2) / 2 (I: the arrivals' index of dispersion, ca^2 for
    renewal arrivals).  "allen-cunneen": alpha = C(c, a), T exponential.  "corrected" (default):
    alpha = C(c/z, a/z) with z = peakedness(I, cs), and for cs > 1 T is a hyperexponential whose
    squared CV falls from the M/G/1 value at c = 1 towards 1 as 1/c^2 (see the module docstring).
    Mean wait = alpha v S / (c - a).  With ca = cs = 1 (and no batches) both are exactly M/M/c;
    with c = 1 and Poisson arrivals the mean is exactly Pollaczek-Khinchine.

    Batch arrivals (agents, fan-out clients): batches of batch_size requests on average, with size CV
    batch_cv, arrive with inter-batch CV arrival_cv; their counts have I = m (ca^2 + cv_X^2).
    A measured index of dispersion already includes batches: pass it as arrival_cv^2 and leave
    batch_size at 1.
    """

    arrival_rate: float  # requests / s
    service_time: float  # mean seconds a server (slot) is busy with one request
    arrival_cv: float = 1.0  # coefficient of variation of inter-arrival times (of batches, with batches)
    service_cv: float = 1.0  # coefficient of variation of service times
    batch_size: float = 1.0  # mean requests arriving together (>= 1)
    batch_cv: float = 0.0  # coefficient of variation of the batch size
    approximation: str = "corrected"  # or "allen-cunneen"

    def __post_init__(self) -> None:
        for name in ("arrival_rate", "service_time", "arrival_cv", "service_cv", "batch_size", "batch_cv"):
            object.__setattr__(self, name, _nonnegative(name, getattr(self, name)))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (mean requests per batch), got {self.batch_size!r}")
        for name in ("arrival_cv", "service_cv", "batch_cv"):
            if getattr(self, name) > MAX_CV:
                raise ValueError(f"{name} must be <= {MAX_CV:g} (its square feeds the maths), got {getattr(self, name)!r}")
        if not math.isfinite(self.arrival_rate * self.service_time):
            raise ValueError(f"offered load arrival_rate x service_time overflows: {self.arrival_rate!r} x {self.service_time!r}")
        if self.approximation not in APPROXIMATIONS:
            raise ValueError(f"approximation must be one of {', '.join(APPROXIMATIONS)}, got {self.approximation!r}")

    @property
    def load(self) -> float:
        """Offered load in Erlangs (lambda * S)."""
        return self.arrival_rate * self.service_time

    @property
    def dispersion(self) -> float:
        """Index of dispersion of arrival counts, I = m (ca^2 + cv_X^2); ca^2 without batches."""
        return self.batch_size * (self.arrival_cv**2 + self.batch_cv**2)

    @property
    def variability(self) -> float:
        """Allen-Cunneen factor v = (I + cs^2) / 2 ((ca^2 + cs^2) / 2 without batches)."""
        return (self.dispersion + self.service_cv**2) / 2.0

    def prob_wait(self, servers: int) -> float:
        """P(W > 0): Erlang C, on c/z servers at load a/z for "corrected"; 1.0 when unstable."""
        c = _count("servers", servers)
        if self.load == 0:
            return 0.0
        if c <= self.load:
            return 1.0
        if self.approximation == "allen-cunneen":
            return erlang_c(c, self.load)
        z = peakedness(self.dispersion, self.service_cv)
        return erlang_c(c, self.load) if z == 1.0 else _erlang_c_real(c / z, self.load / z)

    def _conditional_scv(self, servers: int) -> float:
        """Squared CV of the wait of those who wait: 1 (exponential) unless "corrected" and cs > 1.

        M/G/1 (Takacs): E[W] = rho E[S^2] / (2 (1 - rho) S), E[W^2] = 2 E[W]^2 + lambda E[S^3] / (3 (1 - rho)),
        and W | W > 0 has E[W^k] / rho; E[S^3] = 6 S^3 ((1 + cs^2) / 2)^3.  Diluted by 1/c^2 for c servers.
        """
        cs2 = self.service_cv**2
        if self.approximation == "allen-cunneen" or cs2 <= 1.0:
            return 1.0
        rho = self.load / servers
        # rho E[W^2] / E[W]^2 - 1 with E[W] = rho (1 + cs^2) / (2 (1 - rho)) S, simplified so that no
        # division by E[W]^2 remains (it underflows to 0 at a load of 1e-300)
        single = 2.0 * rho + (1.0 + cs2) * (1.0 - rho) - 1.0
        return 1.0 + max(single - 1.0, 0.0) / (servers * servers)

    def _conditional_mean(self, servers: int) -> float:
        """Mean wait of those who wait, v S / (c - a), seconds."""
        return self.variability / self._drain_rate(servers)

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
        return self.prob_wait(c) * self._conditional_mean(c)

    def prob_wait_exceeds(self, servers: int, t: float) -> float:
        """P(W > t) for t >= 0 seconds; 1.0 when unstable."""
        c = _count("servers", servers)
        t = _nonnegative("t", t)
        if self.load == 0:
            return 0.0
        if c <= self.load:
            return 1.0
        waits = self.prob_wait(c)
        if t == 0:
            return waits
        if self.variability == 0:
            return 0.0
        mean = self._conditional_mean(c)
        if mean == 0:  # underflow (a service time of 1e-300 s): every wait is shorter than any t > 0
            return 0.0
        tail = math.exp(-t / mean)
        scv = self._conditional_scv(c)
        if scv > 1.0:
            tail = max(tail, _h2_tail(t, mean, scv))
        return waits * tail

    def wait_quantile(self, servers: int, p: float) -> float:
        """Smallest t with P(W <= t) >= p; 0 if C(c,a) <= 1-p; math.inf when unstable."""
        c = _count("servers", servers)
        p = _probability("p", p)
        if self.load == 0:
            return 0.0
        if c <= self.load:
            return math.inf
        waits = self.prob_wait(c)
        if waits <= 1 - p:
            return 0.0
        mean = self._conditional_mean(c)
        quantile = mean * math.log(waits / (1 - p))
        scv = self._conditional_scv(c)
        if scv > 1.0:
            quantile = max(quantile, _h2_quantile((1 - p) / waits, mean, scv))
        return quantile

    # ------------------------------------------------------------ inverse solves

    def _solve(self, meets: Callable[[int], bool], what: str, max_servers: int | None) -> int:
        """Smallest stable c meeting a target monotone in c; see TargetUnreachable."""
        if max_servers is not None:
            max_servers = _count("max_servers", max_servers)
        if self.load == 0:
            return 0
        a = self.load
        lower = self.min_stable_servers
        if max_servers is not None and max_servers < lower:
            # Refuse in O(1): the cap cannot even carry the load, and searching for the uncapped answer
            # of a load of 1e12 Erlangs would hold the caller (an operator's handler thread) for seconds.
            raise TargetUnreachable(
                f"{what} needs at least {lower} servers to carry {a:.6g} Erlangs, more than max_servers={max_servers}",
                max_servers=max_servers,
            )
        if max_servers is not None and not meets(max_servers):
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
