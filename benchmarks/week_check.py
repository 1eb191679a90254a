"""The full ServeGen week at the settings the 2-day frontier picked (benchmarks/frontier/servegen.json).

The frontier sweep runs 2 days for time; this replays the whole first week (3 seeds) at each family's
cheapest 2-day setting for 95% and 99% of windows, to see whether the picks hold over 7 days.

Run: python benchmarks/week_check.py [--jobs 2]    (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from frontier import OUT, write_doc  # noqa: E402
from frontier_scenarios import servegen_bursty  # noqa: E402

from inferencepool.simulate import sweep  # noqa: E402

PICKS = (("ours", 0.95), ("ours", 0.99), ("hpa", 0.95), ("hpa", 0.99), ("wva", 0.95), ("static", 0.95), ("static", 0.99))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    frontier = sweep.frontier(json.loads((OUT / "servegen.json").read_text()), levels=(0.95, 0.99))["servegen"]
    chosen = []
    for family, level in PICKS:
        c = frontier["families"][family][level]
        if c is not None:
            chosen.append((family, level, c))
    tasks = list(dict.fromkeys((f, c["knob"], c["floor"]) for f, _, c in chosen)) + [("oracle", None, 1)]
    seeded = {"week": [servegen_bursty(seed, 7.0) for seed in range(3)]}
    rows = sweep.run_points(seeded, tasks, jobs=args.jobs)
    table = sweep.settings(rows)
    oracle = next(v for k, v in table.items() if k[1] == "oracle")
    lines = ["### ServeGen m-large, the full week, at the 2-day picks", "",
             "| family (picked for, on 2 days) | setting | 2 days: GPU-h / oracle | week: windows (worst seed) | week: GPU-h / oracle (min-max) |",
             "|---|---|---|---|---|"]
    for family, level, c in chosen:
        v = next(v for k, v in table.items() if k[1] == family and k[2] == c["knob"] and k[3] == c["floor"])
        lo, hi = v["spread"]
        lines.append(f"| {sweep.LABELS[family]} ({level:.0%}) | {sweep._knob(family, c['knob'])}"
                     + (f", floor {c['floor']}" if family != "static" else "")
                     + f" | {c['ratio']:.2f}x | {v['windows']:.1%} | {v['gpu_hours'] / oracle['gpu_hours']:.2f}x "
                     f"({lo / oracle['gpu_hours']:.2f}-{hi / oracle['gpu_hours']:.2f}) |")
    lines += ["", f"Oracle over the week: {oracle['gpu_hours']:,.0f} GPU-h, worst seed {oracle['windows']:.1%} of windows. "
              f"{len(rows)} runs in {time.perf_counter() - started:.0f} s (`python benchmarks/week_check.py`)."]
    text = "\n".join(lines)
    print(text)
    write_doc("servegen week", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
