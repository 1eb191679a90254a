"""Attainment and GPU-hours vs the cold start (1, 3, 6, 10 minutes), every family at its tuned setting.

Each family's setting is the cheapest that reached 95% of windows on its worst seed at the default 3-minute
cold start in benchmarks/frontier/<scenario>.json (python benchmarks/frontier.py first); a family that
never got there keeps the setting that came closest. Then only the cold start changes (lognormal, sigma
0.25, same draws per seed for every policy); the oracle is re-run at each cold start.

Run: python benchmarks/cold_start.py [--scenarios code-diurnal,servegen] [--seeds 3] [--jobs 2]
Writes benchmarks/frontier/cold-start-<scenario>.png and the table into benchmarks/SIMULATE.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from frontier import OUT, write_doc  # noqa: E402
from frontier_scenarios import SCENARIOS  # noqa: E402

from inferencepool.simulate import sweep  # noqa: E402

COLD_STARTS = (60.0, 180.0, 360.0, 600.0)
LEVEL = 0.95


PLAIN = "ours-plain"  # ours tuned among settings without error-budget feedback: what scale-ahead alone does


def tuned(name: str, level: float = LEVEL) -> dict:
    """family -> (knob, floor, reached) from the frontier run at 3 minutes."""
    rows = json.loads((OUT / f"{name}.json").read_text())
    out = {}
    table = sweep.settings(rows)
    for family in sweep.ORDER + (PLAIN,):
        if family == PLAIN:
            candidates = [(k, v) for k, v in table.items() if k[1] == "ours" and k[2][3] is None]
        else:
            candidates = [(k, v) for k, v in table.items() if k[1] == family]
        ok = [(k, v) for k, v in candidates if v["windows"] >= level]
        key, _ = min(ok, key=lambda kv: kv[1]["gpu_hours"]) if ok else max(candidates, key=lambda kv: kv[1]["windows"])
        out[family] = (key[2], key[3], bool(ok))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="code-diurnal,servegen")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--level", type=float, default=LEVEL, help="tune each family for this share of windows")
    parser.add_argument("--cold-starts", default=",".join(f"{c:g}" for c in COLD_STARTS), help="seconds, comma-separated")
    parser.add_argument("--families", default=",".join(sweep.ORDER + (PLAIN,)))
    args = parser.parse_args()
    colds = tuple(float(c) for c in args.cold_starts.split(","))
    wanted = args.families.split(",")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in args.scenarios.split(","):
        title, make = SCENARIOS[name]
        started = time.perf_counter()
        settings = {f: v for f, v in tuned(name, args.level).items() if f in wanted}
        base = [make(seed) for seed in range(args.seeds)]
        results = {}
        for cold in colds:
            seeded = {f"{name}@{cold:g}": [replace(s, fleet=replace(s.fleet, cold_start_seconds=cold),
                                                   spec=replace(s.spec, default_cold_start_seconds=cold)) for s in base]}
            tasks = [("ours" if family == PLAIN else family, knob, floor)
                     for family, (knob, floor, _) in settings.items()] + [("oracle", None, 1)]
            tasks = list(dict.fromkeys(tasks))  # ours-plain may be ours
            rows = sweep.run_points(seeded, tasks, jobs=args.jobs)
            results[cold] = sweep.settings(rows)
            print(f"{name} cold start {cold:g}s: {len(rows)} runs, {time.perf_counter() - started:.0f}s", file=sys.stderr)
        lines = [f"### Cold start: {title}", "",
                 f"Each family at its cheapest setting reaching {args.level:.0%} of windows at a 3 min cold start "
                 f"(worst of {args.seeds} seeds), then only the cold start changes. Cells: worst-seed share of "
                 "windows meeting p99 wait <= 10 s / mean GPU-hours over the oracle's at that cold start.", "",
                 "| family (setting) | " + " | ".join(f"{c / 60:g} min" for c in colds) + " |",
                 "|---" * (len(colds) + 1) + "|"]
        fig, (ax_a, ax_g) = plt.subplots(1, 2, figsize=(11, 4.5))
        colors = plt.get_cmap("tab10")
        for i, family in enumerate([f for f in sweep.ORDER + (PLAIN,) if f in settings] + ["oracle"]):
            knob, floor, reached = settings.get(family, (None, 1, True))
            kind = "ours" if family == PLAIN else family
            key = lambda cold: next(k for k in results[cold] if k[1] == kind and (kind == "oracle" or (k[2], k[3]) == (knob, floor)))
            oracle = lambda cold: next(v for k, v in results[cold].items() if k[1] == "oracle")["gpu_hours"]
            att = [results[c][key(c)]["windows"] for c in colds]
            ratio = [results[c][key(c)]["gpu_hours"] / oracle(c) for c in colds]
            name_ = "ours, no feedback" if family == PLAIN else sweep.LABELS[family]
            label = name_ + ("" if family == "oracle" else f" ({sweep._knob(kind, knob)}"
                                             + (f", floor {floor}" if family != "static" else "") + ")"
                                             + ("" if reached else f" [never {args.level:.0%} at 3 min]"))
            lines.append(f"| {label} | " + " | ".join(f"{a:.1%} / {r:.2f}x" for a, r in zip(att, ratio)) + " |")
            style = dict(marker="o", color="k" if family == "oracle" else colors(i), lw=2 if family == "ours" else 1)
            if family == PLAIN:
                style.update(ls="--", color=colors(0))
            ax_a.plot(np.array(colds) / 60, [100 * a for a in att], label=name_, **style)
            ax_g.plot(np.array(colds) / 60, ratio, **style)
        ax_a.set_xlabel("mean cold start (min)")
        ax_a.set_ylabel("% of 1-min windows meeting the SLO (worst seed)")
        ax_g.set_xlabel("mean cold start (min)")
        ax_g.set_ylabel("GPU-hours / oracle's")
        ax_a.legend(fontsize=7)
        for ax in (ax_a, ax_g):
            ax.grid(alpha=0.3)
        fig.suptitle(f"{title}: each family at its 3-min tuned setting", fontsize=9)
        fig.tight_layout()
        png = OUT / (f"cold-start-{name}.png" if args.level == LEVEL else f"cold-start-{name}-{args.level:g}.png")
        fig.savefig(png, dpi=110)
        plt.close(fig)
        command = " ".join(sys.argv[1:])
        lines += ["", f"`python benchmarks/cold_start.py {command}`: {time.perf_counter() - started:.0f} s.", "",
                  f"![cold start, {title}](frontier/{png.name})"]
        text = "\n".join(lines)
        print(text)
        write_doc(f"cold-start {name}" + ("" if args.level == LEVEL else f" at {args.level:g}"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
