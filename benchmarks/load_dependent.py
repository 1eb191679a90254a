"""decide() with a constant service time vs with the learned per-token-time curve, on a load-dependent fleet.

Scenario: the Azure conv trace played twice, the last hour scored (benchmarks/frontier_scenarios.py "conv"),
p99 queue wait <= 10 s per minute, predictive decide() with its defaults, 3 seeds (cold-start draws), every
run from 4 warm replicas. The fleet stretches each request's decode by t(n) / t(1) at the concurrency it
starts at (simulate/fleet.py), t = the public H100 sweep of issue 11 (6.5 / 6.6 / 10.9 / 46.9 ms per output
token at 1 / 4 / 16 / 64 running), scaled so t(1) is the service model's 25 ms per token. Both arms see the
same Observations; the constant-S arm has token_time_curve removed (today's model: every slot as fast as
the service time measured now), the other sizes with core/capacity.py from the curve the fleet's metrics
show (running per replica vs token-weighted token time per window; the true curve is never given).

    python benchmarks/load_dependent.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from frontier_scenarios import azure_repeated  # noqa: E402

from inferencepool.core.capacity import TokenTimeCurve  # noqa: E402
from inferencepool.simulate import baselines, compare, report  # noqa: E402

H100 = [(1, 6.5e-3), (4, 6.6e-3), (16, 10.9e-3), (64, 46.9e-3)]
SETTINGS = (("16 slots", 16, None), ("64 slots", 64, None), ("64 slots, KV for 32", 64, 32))


class ConstantService(baselines.ErlangC):
    """decide() as it sizes without a curve: the Observations' capacity fields are dropped."""

    def reconcile(self, obs, fleet):
        return super().reconcile(replace(obs, token_time_curve=None), fleet)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    base = azure_repeated("conv", 0)
    curve = TokenTimeCurve.fit([(n, t * base.service_model.decode_seconds_per_token / H100[0][1]) for n, t in H100])
    print("| fleet | decide() sizes with | GPU-hours (mean, min-max) | minutes meeting the SLO (mean, worst seed) |"
          " requests within 10 s | p99 wait (worst seed) |")
    print("|---|---|---|---|---|---|")
    for label, slots, kv in SETTINGS:
        for arm, make in (("constant service time", ConstantService), ("learned curve", baselines.ErlangC)):
            rows = []
            for seed in range(args.seeds):
                scenario = azure_repeated("conv", seed)
                spec = replace(scenario.spec, slots_per_replica=slots)
                fleet = replace(scenario.fleet, slots_per_replica=slots, token_time_curve=curve, kv_max_sequences=kv)
                scenario = replace(scenario, spec=spec, fleet=fleet, initial_replicas=4)
                rows.append(report.summarise(compare.run_policy(scenario, make(arm, spec)), spec))
            gpu = [r["gpu_hours"] for r in rows]
            minutes = [r["minutes_meeting_slo"] for r in rows]
            requests = [r["requests_meeting_slo"] for r in rows]
            p99 = max(r["p99_wait_seconds"] for r in rows)
            print(f"| {label} | {arm} | {np.mean(gpu):.2f} ({min(gpu):.2f}-{max(gpu):.2f}) |"
                  f" {100 * np.mean(minutes):.1f}% ({100 * min(minutes):.1f}%) | {100 * np.mean(requests):.1f}% |"
                  f" {p99:.1f} s |")
    print(f"\n{args.seeds} seeds, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
