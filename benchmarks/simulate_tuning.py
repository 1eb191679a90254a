"""Tune the forecaster and the scale-down window by what they do in the simulator, not by forecast error alone.

For each setting the predictive policy runs on the tuning set (benchmarks/simulate_scenarios.py: Azure code
and conv at real time and compressed 4x, two days of ServeGen); the oracle's GPU-hours are the yardstick.
Rule: among settings that meet the SLO in >= 99% of minutes on every smooth scenario (conv, conv /4,
servegen), pick the fewest GPU-hours over the oracle, averaged over all five. (The bursty code trace is
reported but no setting reaches 99% there: its bursts last seconds and arrive from nothing.)

Run: python benchmarks/simulate_tuning.py [--jobs 2]   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from simulate_scenarios import tuning_set  # noqa: E402

from inferencepool.core import forecast as fc  # noqa: E402
from inferencepool.simulate import compare, report  # noqa: E402

GRID = {
    "ALPHA": (0.3, 0.5),
    "BETA": (0.0, 0.01, 0.02, 0.05),
    "RESIDUAL_MEMORY": (0.02, 0.05),
    "forecast_quantile": (0.8, 0.9, 0.95),
    "scale_down_window_seconds": (120.0, 300.0),
}
LEAD = (0.3, 0.05, 0.05, 0.9, 300.0)  # the first version's constants and PoolSpec defaults
SMOOTH = ("conv", "conv /4", "servegen 2d")
SCENARIOS = tuning_set()


def run_one(values: tuple) -> tuple[tuple, dict]:
    setting = dict(zip(GRID, values))
    for name in ("ALPHA", "BETA", "RESIDUAL_MEMORY"):
        setattr(fc, name, setting[name])
    out = {}
    for key, scenario in SCENARIOS.items():
        spec = replace(scenario.spec, forecast_quantile=setting["forecast_quantile"],
                       scale_down_window_seconds=setting["scale_down_window_seconds"])
        run = compare.run_policies(replace(scenario, spec=spec), ("predictive",))[0]
        row = report.summarise(run, spec)
        out[key] = (row["gpu_hours"], row["minutes_meeting_slo"])
    return values, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    base = {}
    for key, scenario in SCENARIOS.items():
        rows = [report.summarise(r, scenario.spec) for r in compare.run_policies(scenario, ("oracle", "reactive"))]
        base[key] = {r["policy"]: r for r in rows}
    grid = list(itertools.product(*GRID.values()))
    with Pool(args.jobs) as pool:
        results = dict(pool.imap_unordered(run_one, grid))

    def score(values):
        out = results[values]
        smooth = min(out[k][1] for k in SMOOTH)
        ratio = sum(out[k][0] / base[k]["oracle"]["gpu_hours"] - 1 for k in out) / len(out)
        return smooth, ratio

    ordered = sorted(results, key=lambda v: (score(v)[0] < 0.99, score(v)[1]))
    names = list(SCENARIOS)
    print("GPU-hours over the oracle / share of minutes meeting the SLO, predictive policy\n")
    print("| " + " | ".join(GRID) + " | mean GPU-h over oracle | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(GRID) + 1 + len(names)))

    def line(values, tag=""):
        out = results[values]
        cells = " | ".join(
            f"{out[k][0] / base[k]['oracle']['gpu_hours'] - 1:+.0%} / {out[k][1]:.1%}" for k in names)
        print("| " + " | ".join(f"{v:g}" for v in values) + f"{tag} | {score(values)[1]:+.1%} | {cells} |")

    defaults = next(v for v in ordered if v[3:] == (0.9, 300.0))  # PoolSpec's forecast_quantile and window
    for values in ordered[:12]:
        line(values, " (lead's first version)" if values == LEAD else " (best at PoolSpec defaults)" if values == defaults else "")
    for values, tag in ((defaults, " (best at PoolSpec defaults)"), (LEAD, " (lead's first version)")):
        if values not in ordered[:12]:
            line(values, tag)
    cells = " | ".join(
        f"{base[k]['erlang-c-reactive']['gpu_hours'] / base[k]['oracle']['gpu_hours'] - 1:+.0%} / "
        f"{base[k]['erlang-c-reactive']['minutes_meeting_slo']:.1%}" for k in names)
    print(f"| reactive (no forecast) | | | | | | {cells} |")
    print(f"\nOracle GPU-hours: " + ", ".join(f"{k} {base[k]['oracle']['gpu_hours']:.2f}" for k in names))
    print(f"\n{len(grid)} settings in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
