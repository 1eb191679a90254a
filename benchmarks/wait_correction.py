"""The fitted wait correction on a mis-modelled simulated fleet (policy.fit_correction).

decide() is told the service CV is 0 (near-deterministic: what vLLM's 0.3 s smallest latency bucket
reads for short requests, issue 11 item 4) while the simulated fleet's service is exponential (10 s mean),
so the model's tail is too light. Poisson arrivals at 2/s (20 Erlangs), slots 1, p99 queue wait <= 5 s,
prediction off, 60 s cold starts, 8 hours; the last 4 scored. The fleet reports each 2 m window's share of
requests over 5 s (FleetConfig.wait_tail_target_seconds), as the operator reads it from vLLM's queue-time
histogram. Same arrivals and cold starts for both arms of a seed.

    python benchmarks/wait_correction.py [--seeds 3]     # ~15 s
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from inferencepool.core.policy import History, PoolSpec, decide
from inferencepool.simulate.fleet import ColdStarts, FleetConfig, simulate


class Misled:
    name = "misled"

    def __init__(self, spec: PoolSpec):
        self.spec, self.history, self.factors = spec, History(), []

    def initial_replicas(self, default: int) -> int:
        return 25

    def reconcile(self, obs, fleet) -> int:
        decision = decide(self.spec, replace(obs, service_cv=0.0), self.history)
        self.history = decision.history
        self.factors.append(decision.wait_correction)
        return decision.replicas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    spec = PoolSpec(slo_target_seconds=5.0, slo_percentile=0.99, prediction=False, max_replicas=60)
    config = FleetConfig(cold_start_seconds=60.0, cold_start_distribution="fixed", wait_tail_target_seconds=5.0)
    print("| seed | correction | requests over 5 s | p99 wait | GPU-hours (8 h) | factor at the end (range, last hour) |")
    print("|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        arrivals = np.cumsum(rng.exponential(0.5, 2 * 3600 * 8))
        service = rng.exponential(10.0, len(arrivals))
        for on in (False, True):
            policy = Misled(replace(spec, wait_correction=on))
            run = simulate(arrivals, service, np.zeros(len(arrivals)), policy, config, 25, ColdStarts(config, seed))
            waits = run.waits[arrivals > 4 * 3600]
            last = policy.factors[-240:]
            print(f"| {seed} | {'on' if on else 'off'} | {np.mean(waits > 5.0):.2%} | {np.quantile(waits, 0.99):.2f} s | "
                  f"{run.gpu_hours:.1f} | {policy.factors[-1]:.2f} ({min(last):.2f}-{max(last):.2f}) |")


if __name__ == "__main__":
    main()
