"""Re-run the stored frontier picks of a scenario on the present code, beside their stored runs.

For when a full `benchmarks/frontier.py --families ours,reactive --merge` re-run of a multi-day scenario
(~225 runs) does not fit: each point is (family, knob, floor) as benchmarks/frontier/<scenario>.json
stores it, run on the same 3 seeds. Prints GPU-hours / the oracle's (mean over seeds) and the worst seed's
share of windows meeting the SLO, stored and now.

Run: python benchmarks/spot_picks.py code-diurnal|servegen [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from frontier_scenarios import SCENARIOS  # noqa: E402

from inferencepool.simulate import sweep  # noqa: E402

PICKS = {  # ours' and ours-without-forecast's picks at 90/95/99% of windows in the stored tables
    "code-diurnal": [("ours", (0.9, 1.0, 300.0, None), 1), ("ours", (0.9, 1.0, 300.0, None), 8),
                     ("ours", (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97), 1), ("reactive", 1.0, 8), ("reactive", 0.5, 3)],
    "servegen": [("ours", (0.9, 1.0, 300.0, None), 1), ("ours", (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97, 1800.0), 1),
                 ("reactive", 1.0, 19), ("reactive", 0.5, 1)],
}


def key(row: dict) -> tuple:
    knob = row["knob"]
    return row["family"], tuple(knob) if isinstance(knob, list) else knob, row["floor"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(PICKS))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    stored = json.loads((Path(__file__).parent / "frontier" / f"{args.scenario}.json").read_text())
    oracle = {r["seed"]: r["gpu_hours"] for r in stored if r["family"] == "oracle"}
    _, make = SCENARIOS[args.scenario]
    now = sweep.run_points({args.scenario: [make(seed) for seed in sorted(oracle)]}, PICKS[args.scenario], jobs=args.jobs)
    for point in PICKS[args.scenario]:
        for label, rows in (("stored", stored), ("now", now)):
            runs = [r for r in rows if key(r) == point]
            ratio = sum(r["gpu_hours"] / oracle[r["seed"]] for r in runs) / len(runs)
            print(f"{label:6} {point[0]:8} {point[1]} floor {point[2]}: {ratio:.3f}x the oracle, "
                  f"worst seed {min(r['windows'] for r in runs):.4f} of windows ({len(runs)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
