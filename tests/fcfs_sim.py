"""An independent FCFS multi-server queue simulator, to check the queueing model against.

It shares no code with `inferencepool.core.queueing`: customers arrive (renewal with a given CV, or
Poisson batches), each takes the first server to come free (a heap of server-free times, the
Kiefer-Wolfowitz recursion for G/G/c), and the wait is start - arrival.  Statistics come with
confidence half-widths from batch means over the run after a warm-up, so tests take their
tolerances from the simulation itself.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

# Student t 97.5% quantiles for the batch-means CI (index: degrees of freedom).
_T975 = {9: 2.262, 19: 2.093, 29: 2.045, 39: 2.023, 49: 2.010, 99: 1.984}


def _positive(rng: np.random.Generator, mean: float, cv: float, n: int, dist: str) -> np.ndarray:
    """n positive draws with this mean and coefficient of variation (cv 0: all equal to the mean)."""
    if cv == 0:
        return np.full(n, mean)
    if dist == "gamma":
        shape = 1.0 / (cv * cv)
        return rng.gamma(shape, mean / shape, n)
    if dist == "lognormal":
        sigma2 = math.log1p(cv * cv)
        return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n)
    raise ValueError(f"dist must be 'gamma' or 'lognormal', got {dist!r}")


def _batch_sizes(rng: np.random.Generator, mean: float, n: int, dist: str) -> np.ndarray:
    """Batch sizes >= 1 with this mean: 'geometric' (P(k) = p (1-p)^(k-1)) or 'constant' (integer mean)."""
    if dist == "geometric":
        return rng.geometric(1.0 / mean, n)
    if dist == "constant":
        if mean != int(mean):
            raise ValueError(f"a constant batch size must be a whole number, got {mean!r}")
        return np.full(n, int(mean))
    raise ValueError(f"batch_dist must be 'geometric' or 'constant', got {dist!r}")


def arrival_times(
    rng: np.random.Generator,
    rate: float,
    n: int,
    *,
    ca: float = 1.0,
    arrival_dist: str = "gamma",
    batch_mean: float = 1.0,
    batch_dist: str = "geometric",
) -> np.ndarray:
    """n arrival epochs at `rate` customers/s: renewal with CV ca, or (batch_mean > 1) Poisson batches.

    Batches arrive as a Poisson process at rate / batch_mean; every member of a batch arrives at once.
    Counts then have index of dispersion E[X^2]/E[X] (2 m - 1 for geometric sizes of mean m).
    """
    if batch_mean <= 1:
        return np.cumsum(_positive(rng, 1.0 / rate, ca, n, arrival_dist))
    sizes = _batch_sizes(rng, batch_mean, int(n / batch_mean * 1.2) + 100, batch_dist)
    while sizes.sum() < n:
        sizes = np.concatenate([sizes, _batch_sizes(rng, batch_mean, len(sizes), batch_dist)])
    epochs = np.cumsum(rng.exponential(batch_mean / rate, len(sizes)))
    return np.repeat(epochs, sizes)[:n]


def modulated_arrivals(rng: np.random.Generator, rates: tuple[float, float], sojourn: float, n: int) -> np.ndarray:
    """n arrival epochs of a two-state Markov-modulated Poisson process: the rate alternates between
    rates[0] and rates[1], each held for an exponential time of mean `sojourn` seconds (bursts of that length)."""
    parts, t, state, total = [], 0.0, 0, 0
    while total < n:
        held = rng.exponential(sojourn)
        k = rng.poisson(rates[state] * held)
        parts.append(t + np.sort(rng.uniform(0.0, held, k)))
        t, state, total = t + held, 1 - state, total + k
    return np.concatenate(parts)[:n]


def fcfs_waits(arrivals: np.ndarray, services: np.ndarray, servers: int) -> np.ndarray:
    """Queue waits of FCFS customers on `servers` identical servers (arrivals sorted)."""
    free = [0.0] * servers  # a heap of the times each server next comes free
    waits = np.empty(len(arrivals))
    for i, (t, s) in enumerate(zip(arrivals.tolist(), services.tolist())):
        earliest = free[0]
        start = earliest if earliest > t else t
        waits[i] = start - t
        heapq.heapreplace(free, start + s)
    return waits


@dataclass(frozen=True)
class SimResult:
    """Estimates and 95% CI half-widths (batch means) of the stationary wait."""

    p_wait: float
    p_wait_ci: float
    mean_wait: float
    mean_wait_ci: float
    quantiles: dict[float, tuple[float, float]]  # p -> (estimate, CI half-width)
    customers: int

    def quantile(self, p: float) -> float:
        return self.quantiles[p][0]

    def quantile_ci(self, p: float) -> float:
        return self.quantiles[p][1]


def summarise(waits: np.ndarray, ps=(0.5, 0.9, 0.95, 0.99), batches: int = 30, warmup: float = 0.05) -> SimResult:
    """P(W>0), mean and quantiles of the waits after the warm-up, each with a batch-means 95% CI."""
    kept = waits[int(len(waits) * warmup):]
    parts = np.array_split(kept, batches)
    t = _T975.get(batches - 1, 2.0)

    def ci(values) -> float:
        return t * float(np.std(values, ddof=1)) / math.sqrt(batches)

    quantiles = {}
    for p in ps:
        quantiles[p] = (float(np.quantile(kept, p)), ci([np.quantile(b, p) for b in parts]))
    return SimResult(
        p_wait=float(np.mean(kept > 0)),
        p_wait_ci=ci([np.mean(b > 0) for b in parts]),
        mean_wait=float(kept.mean()),
        mean_wait_ci=ci([b.mean() for b in parts]),
        quantiles=quantiles,
        customers=len(kept),
    )


def simulate(
    servers: int,
    rho: float,
    *,
    customers: int = 400_000,
    service_time: float = 1.0,
    ca: float = 1.0,
    cs: float = 1.0,
    service_dist: str = "gamma",
    arrival_dist: str = "gamma",
    batch_mean: float = 1.0,
    batch_dist: str = "geometric",
    seed: int = 0,
    ps=(0.5, 0.9, 0.95, 0.99),
    batches: int = 30,
) -> SimResult:
    """Simulate a G/G/c (or M^X/G/c) FCFS queue at utilisation rho and summarise its waits."""
    rng = np.random.default_rng(seed)
    rate = rho * servers / service_time
    arrivals = arrival_times(rng, rate, customers, ca=ca, arrival_dist=arrival_dist, batch_mean=batch_mean, batch_dist=batch_dist)
    services = _positive(rng, service_time, cs, customers, service_dist)
    return summarise(fcfs_waits(arrivals, services, servers), ps=ps, batches=batches)
