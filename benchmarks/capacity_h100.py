"""How much the constant-service-time model overstates a vLLM replica, and what decide() then orders.

The per-token-time curve is the public H100 sweep quoted in issue 11 (6.5 / 6.6 / 10.9 / 46.9 ms per
output token at 1 / 4 / 16 / 64 running requests).  Requests take S = 10 s when measured at one running
request (about 1,540 output tokens).  For each slot count and arrival rate it prints the replicas decide()
orders with the constant S (today's default) and with the load-dependent capacity (core/capacity.py), and
the true utilisation of each fleet at full concurrency (>= 100% = the queue grows without bound).

    python benchmarks/capacity_h100.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "operator"))

from inferencepool.core.capacity import TokenTimeCurve  # noqa: E402
from inferencepool.core.policy import Observations, PoolSpec, decide  # noqa: E402

H100 = [(1, 6.5e-3), (4, 6.6e-3), (16, 10.9e-3), (64, 46.9e-3)]
MEASURED_S = 10.0  # seconds per request at 1 running request


def main() -> None:
    curve = TokenTimeCurve.fit(H100)
    print("| slots | rate (req/s) | capacity overstated | replicas, constant S | true utilisation | replicas, load-dependent | true utilisation | service time used |")
    print("|---|---|---|---|---|---|---|---|")
    for slots in (4, 16, 64):
        spec = PoolSpec(slots_per_replica=slots, slo_target_seconds=10.0, max_replicas=1000, prediction=False)
        true_s = MEASURED_S * curve.slowdown(slots, 1.0)  # every slot busy
        for rate in (0.5, 2.0, 8.0):
            base = dict(time=0.0, current_replicas=1, ready_replicas=1, arrival_rate=rate, service_time=MEASURED_S, running=1.0)
            constant = decide(spec, Observations(**base))
            loaded = decide(spec, Observations(**base, token_time_curve=curve, service_concurrency=1.0))
            def true_util(replicas: int) -> str:
                return f"{100 * rate * true_s / (replicas * slots):.0f}%"

            print(
                f"| {slots} | {rate:g} | {loaded.capacity.capacity_ratio(slots, MEASURED_S):.2f}x | {constant.replicas} |"
                f" {true_util(constant.replicas)} | {loaded.replicas} | {true_util(loaded.replicas)} | {loaded.capacity.service_time:.1f} s |"
            )


if __name__ == "__main__":
    main()
