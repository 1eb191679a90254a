"""Memory of the operator's own /metrics per pool (issue 14): N pools' decisions recorded as the operator
records them (record, record_status, record_slo, record_mode), traced with tracemalloc.

    .venv/bin/python benchmarks/metrics_memory.py                      # operator/inferencepool/operator/metrics.py
    git show c9d1f90:operator/inferencepool/operator/metrics.py > /tmp/labelled.py
    .venv/bin/python benchmarks/metrics_memory.py --module /tmp/labelled.py   # the labelled-children version
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path):
    spec = importlib.util.spec_from_file_location("metrics_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", type=Path, default=ROOT / "operator" / "inferencepool" / "operator" / "metrics.py")
    parser.add_argument("--pools", type=int, default=1000)
    args = parser.parse_args(argv)
    metrics = load(args.module).OperatorMetrics(CollectorRegistry())
    decision = SimpleNamespace(replicas=3, action="hold", constraint="slo", predicted_wait=0.4, forecast_rate=5.0,
                               p_wait_exceeds={2: 0.3, 3: 0.01, 4: 0.001}, cost_per_hour=lambda spec: 7.5)
    spec = SimpleNamespace(slo_metric="wait", slo_target_seconds=1.0)
    conditions = [{"type": t, "reason": f"Some{t}", "status": "True"}
                  for t in ("Ready", "Saturated", "ScalingLimited", "MetricsAvailable")]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(args.pools):
        pool = f"pool-{i:05d}"
        metrics.record("serving", pool, decision, 2.0, 3)
        metrics.record_status("serving", pool, spec, decision, conditions, {"observedWaitSeconds": 0.2})
        metrics.record_slo("serving", pool, {"attainment": 0.99, "errorBudgetRemaining": 0.5})
        metrics.record_mode("serving", pool, "Active", 3)
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    samples = sum(1 for line in generate_latest(metrics.registry).decode().splitlines() if line.startswith("inferencepool_"))
    print(f"{args.module.name}: {grown / args.pools:.0f} B per pool ({grown / 2**20:.1f} MiB for {args.pools}), "
          f"{samples} samples exposed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
