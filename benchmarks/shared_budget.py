"""Three real traces against one GPU budget: the shared allocator (decide() per pool + core.budget.allocate)
against a static per-pool split of the same GPUs (proportional to each pool's 1-minute peak need).

    nice -n 10 .venv/bin/python benchmarks/shared_budget.py [--traces DIR] [--gpus N] [--json OUT]

Pools: chat = Azure conv (priority 10), code = Azure code (priority 5, bursty), batch = ServeGen m-large, one
day compressed into the same hour (priority 0). Service: ServiceModel (prefill 8000 tok/s, 25 ms per output
token), 8 slots per replica, SLO p99 queue wait <= 2 s. See operator/inferencepool/simulate/budget.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from inferencepool.core.policy import PoolSpec
from inferencepool.simulate import budget as sim_budget, trace as tr
from inferencepool.simulate.fleet import ServiceModel

DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def pools(traces: Path) -> list[sim_budget.SharedPool]:
    rng = np.random.default_rng(7)
    model = ServiceModel()
    spec = PoolSpec(slo_target_seconds=2.0, slo_percentile=0.99, min_replicas=1, max_replicas=64, slots_per_replica=8,
                    prediction=True, prediction_horizon_seconds=60.0, backlog_drain_seconds=60.0,
                    scale_down_window_seconds=120.0, scale_down_max_step=2)
    chat = tr.load(traces / "azure-llm-2023-conv.csv.gz", rng, rate_scale=2.0)
    code = tr.load(traces / "azure-llm-2023-code.csv.gz", rng, rate_scale=4.0)
    batch = tr.compress_time(tr.load(traces / "servegen-m-large-rate-600s.csv.gz", rng, rate_scale=0.0004 / 24 * 24,
                                     seconds=86400), 24)
    out = []
    for name, t, priority in (("chat", chat, 10), ("code", code, 5), ("batch", tr.clip(batch, 3600), 0)):
        service = model.service_seconds(t.prompt_tokens, t.output_tokens)
        out.append(sim_budget.SharedPool(name, t.arrivals, service, spec, priority=priority))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--gpus", type=int, nargs="+", default=None, help="budgets to try (default: 60%%, 80%% of the static peaks)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    ps = pools(args.traces)
    peaks = sim_budget.static_split(ps, 10**6)
    total = sum(peaks.values())
    budgets = args.gpus or [round(total * 0.6), round(total * 0.8)]
    print(f"pools: " + ", ".join(f"{p.name} (priority {p.priority}, {len(p.arrivals)} requests, "
                                 f"{len(p.arrivals) / p.arrivals[-1]:.1f}/s, peak need {peaks[p.name]})" for p in ps))
    rows = []
    print("| GPUs | pool | priority | static split | static attainment | shared mean replicas | shared attainment | "
          "static p99 wait | shared p99 wait | shared: intervals limited |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for gpus in budgets:
        split = sim_budget.static_split(ps, gpus)
        static_run, shared_run = sim_budget.run(ps, gpus, "static"), sim_budget.run(ps, gpus, "shared")
        assert shared_run.peak_gpus <= gpus and static_run.peak_gpus <= gpus
        static, shared = static_run.pools, shared_run.pools
        for p in ps:
            s, d = static[p.name], shared[p.name]
            rows.append({"gpus": gpus, "pool": p.name, "priority": p.priority, "static_replicas": split[p.name],
                         "static": s.__dict__, "shared": d.__dict__})
            print(f"| {gpus} | {p.name} | {p.priority} | {split[p.name]} | {s.attainment:.4f} | {d.mean_replicas:.2f} | "
                  f"{d.attainment:.4f} | {s.p99_wait:.2f}s | {d.p99_wait:.2f}s | {d.limited_share:.0%} |")
        allp = lambda r: sum(x.attainment * x.requests for x in r.values()) / sum(x.requests for x in r.values())  # noqa: E731
        print(f"| {gpus} | all (by requests) | | {sum(split.values())} | {allp(static):.4f} | "
              f"{sum(x.mean_replicas for x in shared.values()):.2f} | {allp(shared):.4f} | | | |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
