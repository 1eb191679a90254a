"""Which window's count dispersion sizes the queue: sizing with I(15 s), I(60 s), I(300 s) and decide()'s
own choice (I at service time + wait target), each checked in the independent FCFS simulator (tests/fcfs_sim.py).

Arrivals: a two-state Markov-modulated Poisson process (the rate alternates between two levels, each held
for an exponential time of mean `sojourn`); exponential service. For each case: the measured I(T) (population
variance / mean of per-window counts, as Prometheus' stdvar_over_time / avg_over_time of rates give it), the
servers decide() asks for (slots 1, p99 queue wait <= target, prediction off) with each window, and the
simulated p99 wait at that count and one fewer.

    python benchmarks/dispersion_windows.py      # ~1 min
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fcfs_sim import _positive, fcfs_waits, modulated_arrivals, summarise  # noqa: E402

from inferencepool.core import signals  # noqa: E402
from inferencepool.core.policy import Observations, PoolSpec, decide, dispersion_timescale  # noqa: E402

CASES = [  # (service s, target s, sojourn s, low rate, high rate)
    (20.0, 40.0, 60.0, 0.6, 1.4),
    (5.0, 10.0, 30.0, 2.0, 4.0),
    (10.0, 50.0, 120.0, 1.0, 2.0),
    (2.0, 5.0, 300.0, 6.0, 10.0),
]
WINDOWS = (15.0, 60.0, 300.0)


def main() -> None:
    print("| S | target | bursts | I(15s) / I(60s) / I(300s) | time scale | servers: 15 s / 60 s / 300 s / decide() "
          "| simulated p99 at decide()'s (one fewer) |")
    print("|---|---|---|---|---|---|---|")
    for k, (service, target, sojourn, low, high) in enumerate(CASES):
        rng = np.random.default_rng(k + 1)
        arrivals = modulated_arrivals(rng, (low, high), sojourn, 600_000)
        services = _positive(rng, service, 1.0, len(arrivals), "gamma")
        rate = len(arrivals) / arrivals[-1]
        measured = []
        for window in WINDOWS:
            counts = np.bincount((arrivals // window).astype(int))[:-1] / window
            measured.append((window, signals.dispersion(float(counts.var()), float(counts.mean()), window)))
        spec = PoolSpec(slo_target_seconds=target, prediction=False, max_replicas=500, dispersion_windows=True)

        def need(dispersion) -> int:
            obs = Observations(time=0.0, current_replicas=1, ready_replicas=1, arrival_rate=rate, service_time=service,
                               arrival_dispersion=tuple(dispersion))
            return decide(spec, obs).required_replicas

        each = [need([m]) for m in measured]
        chosen = need(measured)
        at = [summarise(fcfs_waits(arrivals, services, c)).quantile(0.99) for c in (chosen, chosen - 1)]
        verdict = "meets" if at[0] <= target else "misses"
        print(f"| {service:g} s | {target:g} s | {low:g} <-> {high:g}/s, ~{sojourn:g} s | "
              f"{' / '.join(f'{i:.1f}' for _, i in measured)} | {dispersion_timescale(service, target):g} s | "
              f"{' / '.join(map(str, each))} / **{chosen}** | {at[0]:.1f} s ({at[1]:.1f} s): {verdict} |")


if __name__ == "__main__":
    main()
