"""The frontier benchmark: every policy family swept over its own knob and the warm floor, on 3 seeds.

For each scenario: GPU-hours (as a multiple of the oracle's) needed to reach 90/95/99/99.9% of one-minute
windows, and of requests, meeting p99 queue wait <= 10 s; a PNG of the frontiers. The one-hour Azure
traces run the full grid; the multi-day scenarios a coarser one (sweep.COARSE), for time.

Run: python benchmarks/frontier.py [--scenarios code,conv,servegen,code-diurnal] [--seeds 3] [--jobs 2] [--quick]
Writes benchmarks/frontier/<scenario>.png and .json, and the tables into benchmarks/SIMULATE.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from frontier_scenarios import SCENARIOS  # noqa: E402

from inferencepool.simulate import sweep  # noqa: E402

HERE = Path(__file__).parent
OUT = HERE / "frontier"
DOC = HERE / "SIMULATE.md"
LONG = ("servegen", "code-diurnal")


def block(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN FRONTIER {name} (benchmarks/frontier.py) -->", f"<!-- END FRONTIER {name} -->"


def write_doc(name: str, text: str) -> None:
    begin, end = block(name)
    doc = DOC.read_text()
    if begin not in doc:
        doc = doc.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    DOC.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{text}\n{end}", doc, flags=re.S))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one setting per family, one floor: for a smoke test")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite SIMULATE.md")
    parser.add_argument("--families", default=",".join(sweep.ORDER), help="run only these (the oracle always)")
    parser.add_argument("--from-json", action="store_true",
                        help="run nothing: tables, figure and SIMULATE.md from benchmarks/frontier/<scenario>.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other families' runs from benchmarks/frontier/<scenario>.json (the named ones are replaced)")
    args = parser.parse_args()
    for name in args.scenarios.split(","):
        title, make = SCENARIOS[name]
        started = time.perf_counter()
        seeded = [make(seed) for seed in range(args.seeds)]
        grid = sweep.QUICK if args.quick else sweep.COARSE if name in LONG else sweep.Grid()
        families = tuple(args.families.split(","))
        if args.from_json:
            rows = json.loads((OUT / f"{name}.json").read_text())
        else:
            rows = sweep.run({name: seeded}, grid, jobs=args.jobs, families=families,
                             progress=lambda done, total: print(f"\r{name}: {done}/{total} runs", end="", file=sys.stderr))
        if args.merge and not args.from_json and (OUT / f"{name}.json").exists():
            old = json.loads((OUT / f"{name}.json").read_text())
            rows += [r for r in old if r["family"] not in families + ("oracle",)]  # a re-run family replaces all its rows
        wall = time.perf_counter() - started
        print(file=sys.stderr)
        OUT.mkdir(exist_ok=True)
        (OUT / f"{name}.json").write_text(json.dumps(rows) + "\n")
        png = sweep.plot(rows, name, title + "".join(f"\n{n}" for n in seeded[0].trace.notes), OUT / f"{name}.png")
        lines = [f"### {title}", "", "```"]
        lines += [f"{len(seeded[0].trace):,} requests over {seeded[0].trace.span / 3600:.1f} h (seed 0)"]
        lines += [f"NOTE: {n}" for n in seeded[0].trace.notes]
        lines += ["```", ""]
        for by in ("windows", "requests"):
            lines += sweep.table(sweep.frontier(rows, by=by), name, by=by) + [""]
        timing = "" if args.from_json else f" in {wall:.0f} s with {args.jobs} workers on {platform.machine()}"
        lines += [f"Cells: mean GPU-hours over {args.seeds} seeds / the oracle's (min-max over seeds); the cheapest "
                  f"setting whose worst seed reaches the level. {len(rows)} runs{timing} "
                  f"(`python benchmarks/frontier.py --scenarios {name}`).", "",
                  f"![{title}](frontier/{png.name})"]
        text = "\n".join(lines)
        print(text)
        if not args.no_doc and not args.quick:
            write_doc(name, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
