"""Where the operator's memory goes (issue 14): an opt-in heap dump, off unless IPOOL_MEMORY_DUMP is set.

IPOOL_MEMORY_DUMP=/tmp/op starts tracemalloc as Kopf starts (after the imports: under tracemalloc the
kubernetes client's import took minutes, and what grows with the pools comes later), IPOOL_MEMORY_FRAMES
frames per allocation (default 15), and every IPOOL_MEMORY_DUMP_EVERY seconds (default 60) writes /tmp/op.snap (a tracemalloc snapshot,
the live allocations with their tracebacks) and /tmp/op.json (RSS, traced bytes, and a gc census: the
count of live objects by type). `benchmarks/memory_report.py /tmp/op` groups the snapshot by who
allocated. Debugging only: tracemalloc slows the operator and costs memory of its own.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path


def start_from_env(environ=os.environ) -> bool:
    """Start the dumps if IPOOL_MEMORY_DUMP names a path prefix; False (and nothing done) otherwise."""
    prefix = environ.get("IPOOL_MEMORY_DUMP")
    if not prefix:
        return False
    frames = int(environ.get("IPOOL_MEMORY_FRAMES", "15"))
    if frames > 0:  # 0: no tracemalloc (it slowed a 300-pool operator several fold), the census and totals only
        tracemalloc.start(frames)
    every = float(environ.get("IPOOL_MEMORY_DUMP_EVERY", "60"))

    def loop():
        while True:
            time.sleep(every)
            dump(prefix)

    threading.Thread(target=loop, name="memory-dump", daemon=True).start()
    return True


def census(top: int = 40) -> list[tuple[str, int]]:
    """Live gc-tracked objects by type name, most first."""
    return Counter(type(o).__qualname__ for o in gc.get_objects()).most_common(top)


def pymalloc_stats() -> dict[str, int]:
    """CPython's small-object allocator totals (sys._debugmallocstats, which writes to fd 2): the bytes
    its arenas hold against the bytes in live blocks tell fragmentation from live objects."""
    import sys
    import tempfile

    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    stats = {}
    for line in text.splitlines():
        name, _, value = line.rpartition("=")
        if name.startswith("#") or name.strip().startswith(("bytes in", "Total")):
            try:
                stats.setdefault(name.strip(" #"), int(value.strip().replace(",", "")))
            except ValueError:
                pass
    return stats


def mappings() -> dict[str, float]:
    """Resident MiB by kind of mapping (/proc/self/smaps): the main heap, glibc's per-thread arenas (64 MiB
    reservations), CPython's 1 MiB object arenas and other anonymous maps, and files (code, libraries)."""
    out: dict[str, float] = {}
    kind = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not line.endswith(" kB"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            name = head[5] if len(head) > 5 else ""
            size = end - start
            kind = (name if name.startswith("[") else "files" if name else
                    "anon >= 32 MiB (glibc thread arenas)" if size >= 32 * 2**20 else
                    "anon 1-32 MiB (CPython arenas, big blocks)" if size >= 2**20 else "anon < 1 MiB")
        elif line.startswith("Rss:") and kind:
            out[kind] = out.get(kind, 0.0) + int(line.split()[1]) / 1024
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def dump(prefix: str) -> None:
    """Write prefix.json (RSS, mappings, pymalloc totals, gc census) and, when tracing, prefix.snap (the
    tracemalloc snapshot), atomically."""
    tracing = tracemalloc.is_tracing()
    snapshot = tracemalloc.take_snapshot() if tracing else None
    current, peak = tracemalloc.get_traced_memory()
    rss = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmRSS:")) / 1024
    summary = {"time": time.time(), "rss_mib": round(rss, 1), "traced_mib": round(current / 2**20, 1),
               "traced_peak_mib": round(peak / 2**20, 1), "mappings_mib": mappings(), "pymalloc": pymalloc_stats(),
               "objects_by_type": census()}
    if snapshot is not None:
        snapshot.dump(f"{prefix}.snap.tmp")
        os.replace(f"{prefix}.snap.tmp", f"{prefix}.snap")
    Path(f"{prefix}.json.tmp").write_text(json.dumps(summary, indent=1))
    os.replace(f"{prefix}.json.tmp", f"{prefix}.json")
