"""The opt-in heap dump (operator/memdump.py) and its report (benchmarks/memory_report.py)."""

import importlib.util
import json
import tracemalloc
from pathlib import Path

from inferencepool.operator import memdump

ROOT = Path(__file__).resolve().parents[1]


def test_off_unless_asked():
    assert memdump.start_from_env({}) is False
    assert not tracemalloc.is_tracing()


def test_dump_and_report(tmp_path, capsys):
    tracemalloc.start(5)
    try:
        kept = [bytearray(2**20) for _ in range(3)]  # 3 MiB that the dump must see
        memdump.dump(str(tmp_path / "op"))
    finally:
        tracemalloc.stop()
    summary = json.loads((tmp_path / "op.json").read_text())
    assert summary["traced_mib"] >= 3 and summary["rss_mib"] > 0
    assert dict(summary["objects_by_type"])["dict"] > 0
    spec = importlib.util.spec_from_file_location("memory_report", ROOT / "benchmarks" / "memory_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.main([str(tmp_path / "op"), "--top", "5"]) == 0
    out = capsys.readouterr().out
    top_site = out.split("who asked), top 5:\n")[1].splitlines()[0]
    assert "test_memdump.py" in top_site and float(top_site.split()[0]) >= 3.0  # the bytearrays, by line
    del kept
