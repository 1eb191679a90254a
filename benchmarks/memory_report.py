"""Group an operator heap dump (operator/memdump.py, IPOOL_MEMORY_DUMP=PREFIX) by who allocated it (issue 14).

    .venv/bin/python benchmarks/memory_report.py PREFIX [--top 25]

Prints the RSS and gc census of PREFIX.json, then the live traced bytes of PREFIX.snap grouped three
ways: by library (the outermost frame's package that is not the stdlib or asyncio glue), by the
innermost frame of a library or of inferencepool (who asked for the memory), and by full traceback.
"""

from __future__ import annotations

import argparse
import json
import tracemalloc
from collections import defaultdict
from pathlib import Path

LIBRARIES = ("inferencepool", "kopf", "kubernetes", "prometheus_client", "prometheus_api_client", "aiohttp",
             "urllib3", "requests", "structlog", "yaml", "pydantic", "multidict", "yarl")


def library(filename: str) -> str | None:
    parts = Path(filename).parts
    for name in LIBRARIES:
        if name in parts:
            return name
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    summary = json.loads(Path(f"{args.prefix}.json").read_text())
    print(f"RSS {summary['rss_mib']} MiB, traced {summary['traced_mib']} MiB (peak {summary['traced_peak_mib']})")
    pm = summary.get("pymalloc") or {}
    if pm:
        arenas = pm.get("arenas allocated current", 0) * 2**20  # 1 MiB arenas (CPython >= 3.10, 64-bit)
        print(f"pymalloc: {arenas / 2**20:.0f} MiB in arenas, {pm.get('bytes in allocated blocks', 0) / 2**20:.1f} MiB "
              f"in live blocks, {pm.get('bytes in available blocks', 0) / 2**20:.1f} MiB free in used pools "
              f"(arenas high-water {pm.get('arenas highwater mark')}, reclaimed {pm.get('arenas reclaimed')})")
    print("resident by mapping:", ", ".join(f"{k} {v} MiB" for k, v in (summary.get("mappings_mib") or {}).items()))
    print("gc census:", ", ".join(f"{n} {c}" for n, c in summary["objects_by_type"][:25]))
    if not Path(f"{args.prefix}.snap").exists():
        return 0  # IPOOL_MEMORY_FRAMES=0: no tracemalloc snapshot
    snapshot = tracemalloc.Snapshot.load(f"{args.prefix}.snap").filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    by_lib, by_site = defaultdict(int), defaultdict(int)
    for trace in snapshot.traces:
        frames = list(trace.traceback)[::-1]  # most recent call first (a Traceback is oldest first)
        libs = [library(f.filename) for f in frames]
        outer = next((lib for lib in reversed(libs) if lib), "other")
        by_lib[outer] += trace.size
        inner = next((f for f, lib in zip(frames, libs) if lib), frames[0])
        by_site[f"{inner.filename.split('site-packages/')[-1].split('operator/')[-1]}:{inner.lineno}"] += trace.size
    mib = 2**20
    by_file = defaultdict(int)  # every library file on the stack gets the block: what each layer drove
    for trace in snapshot.traces:
        for name in {f.filename for f in trace.traceback if library(f.filename)}:
            by_file[name.split("site-packages/")[-1].split("operator/")[-1]] += trace.size
    print(f"\nby library file anywhere on the stack (cumulative), top {args.top}:")
    for k, v in sorted(by_file.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {v / mib:8.1f} MiB  {k}")
    print("\nby the outermost library on the stack (who drove it):")
    for k, v in sorted(by_lib.items(), key=lambda kv: -kv[1]):
        print(f"  {v / mib:8.1f} MiB  {k}")
    print(f"\nby the innermost library line (who asked), top {args.top}:")
    for k, v in sorted(by_site.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {v / mib:8.1f} MiB  {k}")
    print(f"\nby traceback, top {min(args.top, 12)}:")
    for stat in snapshot.statistics("traceback")[:min(args.top, 12)]:
        print(f"  {stat.size / mib:8.1f} MiB in {stat.count} blocks")
        for line in stat.traceback.format(limit=8, most_recent_first=True)[::2]:
            print("      ", line.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
