"""Load-dependent capacity: how many requests a vLLM replica really serves at once, and how fast.

Decode is memory-bound and batched: every engine step produces one token for each running sequence,
and a step takes longer the more sequences share it.  So a request's service time grows with the
replica's concurrency n, and a replica with `slots` (`--max-num-seqs`) slots is *not* `slots` servers
each as fast as one measured at low load.  With per-token time t(n), a request lasts about
S(n) = S(n_obs) t(n) / t(n_obs), where n_obs is the concurrency its service time S(n_obs) was measured at,
and a full replica completes n / S(n) requests per second.

The curve is learned from pairs vLLM exports every scrape: running requests per replica
(`vllm:num_requests_running`) against the mean inter-token latency over the same window
(`vllm:inter_token_latency_seconds`, in 0.10.2 and 0.33; 0.10.2 also exports the deprecated
`vllm:time_per_output_token_seconds` with the same values, which 0.33 dropped; vllm/v1/metrics/loggers.py
in the vLLM repository).  The KV cache caps concurrency further: when
`vllm:kv_cache_usage_perc` is near 1 or the scheduler preempts (`vllm:num_preemptions_total` rises),
a replica cannot hold more sequences than it runs now, whatever `--max-num-seqs` says.

Pure numpy, no I/O: the operator and the simulator both call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TokenTimeCurve", "KvState", "Capacity", "effective_capacity", "KV_FULL"]

KV_FULL = 0.95  # kv_cache_usage_perc at or above which the cache counts as full


@dataclass(frozen=True)
class TokenTimeCurve:
    """Per-token time t(n) against running requests n per replica: piecewise linear through the
    observed (n, t) points, and continued past either end with the least-squares slope of that half of
    the points (a straight line t0 + k n where data are few).  Below the smallest n it never falls under
    half the smallest time: a lower t(measured) only makes the rescaled service time longer (the safe side).

    Made by `fit`, which averages repeated n, and keeps t non-decreasing (more sequences in a step never
    make each token faster; an apparent dip is noise).
    """

    concurrency: tuple[float, ...]  # increasing n
    token_time: tuple[float, ...]  # non-decreasing t(n), seconds per output token

    @classmethod
    def fit(cls, points, resolution: float = 0.5) -> TokenTimeCurve:
        """Fit from (running requests per replica, seconds per output token) pairs.

        Pairs with n <= 0, t <= 0 or a NaN are dropped (an idle replica says nothing about its speed);
        n is rounded to `resolution` and each rounded n's times averaged.  Needs one usable pair.
        """
        usable = [(float(n), float(t)) for n, t in points if n > 0 and t > 0 and math.isfinite(n) and math.isfinite(t)]
        if not usable:
            raise ValueError("TokenTimeCurve.fit needs at least one (running > 0, token time > 0) pair")
        n = np.round(np.array([p[0] for p in usable]) / resolution) * resolution
        t = np.array([p[1] for p in usable])
        levels = np.unique(n)
        means = np.array([t[n == level].mean() for level in levels])
        return cls(tuple(levels.tolist()), tuple(np.maximum.accumulate(means).tolist()))

    def _slope(self, part: slice) -> float:
        n, t = np.array(self.concurrency)[part], np.array(self.token_time)[part]
        if len(n) < 2:
            return 0.0  # one level: no slope is known, so the curve is flat (today's constant service time)
        return max(float(np.polyfit(n, t, 1)[0]), 0.0)

    def __call__(self, n: float) -> float:
        """t(n) in seconds per token, for n >= 0."""
        levels, half = self.concurrency, (len(self.concurrency) + 1) // 2
        if n > levels[-1]:
            return self.token_time[-1] + self._slope(slice(-max(half, 2), None)) * (n - levels[-1])
        if n < levels[0]:
            low = self.token_time[0] - self._slope(slice(0, max(half, 2))) * (levels[0] - n)
            return max(low, self.token_time[0] / 2)
        return float(np.interp(n, levels, self.token_time))

    def slowdown(self, n: float, measured_at: float) -> float:
        """t(n) / t(measured_at): how much longer a request takes at n than where it was measured."""
        return self(n) / self(measured_at)


@dataclass(frozen=True)
class KvState:
    """The KV cache now: mean usage over replicas (0-1), preemptions in the window, running per replica."""

    usage: float | None = None  # vllm:kv_cache_usage_perc (a 0-1 fraction despite the name)
    preemptions: float | None = None  # increase of vllm:num_preemptions_total over the window
    running_per_replica: float | None = None
    # sequences a replica's KV cache holds: its KV tokens (vllm:cache_config_info num_gpu_blocks x block_size)
    # over the mean tokens per request (prompt + generated); caps concurrency before the cache fills
    sequences: float | None = None

    @property
    def full(self) -> bool:
        """The cache holds no more sequences: usage at KV_FULL or more, or the scheduler preempted."""
        return (self.usage is not None and self.usage >= KV_FULL) or (self.preemptions is not None and self.preemptions > 0)


@dataclass(frozen=True)
class Capacity:
    """What to size with: servers per replica and the mean service time each then has."""

    slots: int  # effective servers per replica
    service_time: float  # seconds per request at that concurrency
    limited_by: str  # "slots", "token_time" (an inter-token latency target) or "kv_cache"
    slowdown: float  # service_time / the measured service time

    def capacity_ratio(self, slots: int, measured_service_time: float) -> float:
        """How many times the constant-S model (slots servers at the measured S) overstates this capacity."""
        return (slots / measured_service_time) / (self.slots / self.service_time)


def effective_capacity(
    slots: int,
    service_time: float,
    measured_concurrency: float,
    curve: TokenTimeCurve,
    kv: KvState | None = None,
    max_token_time: float | None = None,
) -> Capacity:
    """Effective servers per replica and the service time at that concurrency.

    A replica's throughput n / S(n) rises with n whenever t(n) grows less than in proportion to n (it does
    for t0 + k n with t0 > 0), and so does the rate a queue drains at, so a fleet is sized with every slot
    busy: n = slots.  An inter-token latency target `max_token_time` lowers n to the most that meets it
    (at least 1); a full KV cache lowers it to what a replica runs now, and a KV cache that holds fewer
    sequences of the mean size (kv.sequences) to that, full or not (a fleet sized past it fills the cache).  `service_time` was measured at
    `measured_concurrency` running requests per replica; it is rescaled by t(n) / t(measured).
    """
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots!r}")
    if not service_time > 0:
        raise ValueError(f"service_time must be > 0 seconds, got {service_time!r}")
    if not measured_concurrency >= 0:
        raise ValueError(f"measured_concurrency must be >= 0 running requests per replica, got {measured_concurrency!r}")
    n, limited_by = slots, "slots"
    if max_token_time is not None and curve(n) > max_token_time:
        n, limited_by = max(1, max((k for k in range(1, slots + 1) if curve(k) <= max_token_time), default=1)), "token_time"
    if kv is not None and kv.full and kv.running_per_replica is not None and kv.running_per_replica < n:
        n, limited_by = max(1, math.floor(kv.running_per_replica)), "kv_cache"
    if kv is not None and kv.sequences is not None and kv.sequences < n:
        n, limited_by = max(1, math.floor(kv.sequences)), "kv_cache"
    slowdown = curve.slowdown(n, measured_concurrency)
    return Capacity(slots=n, service_time=service_time * slowdown, limited_by=limited_by, slowdown=slowdown)
