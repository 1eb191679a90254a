"""A pool's past, written as Prometheus' own backfill wants it: an OpenMetrics file of the vLLM series
(e2e/vllm_exporter.py's VllmSeries, the names and buckets vLLM 0.33 exports) and kube-state-metrics'
kube_deployment_spec_replicas, with timestamps, turned into TSDB blocks by
`promtool tsdb create-blocks-from openmetrics` (https://prometheus.io/docs/prometheus/latest/storage/#backfilling-from-openmetrics-format).

    python e2e/backfill.py OUT.om   # the 90-minute history of e2e/test_backtest.py, ending 2 minutes ago
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.openmetrics.exposition import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_exporter import GOLDEN, VllmSeries  # noqa: E402


@dataclass(frozen=True)
class Phase:
    seconds: float
    rate: float  # requests / s
    service: float  # mean inference seconds (exponential)
    replicas: int  # what the Deployment ran (kube_deployment_spec_replicas)
    wait: float = 0.05  # queue wait of every request, seconds


def openmetrics(namespace: str, pool: str, phases: list[Phase], end: float, step: float = 15.0) -> str:
    """The history as one OpenMetrics text (families not interleaved, each series' points in time order)."""
    registry = CollectorRegistry()
    series = VllmSeries(registry, {"model_name": "llama-8b", "engine": "0", "namespace": namespace, "pool": pool})
    replicas = Gauge("kube_deployment_spec_replicas", "Number of desired pods for a deployment.",
                     ("namespace", "deployment"), registry=registry).labels(namespace, pool)
    families: OrderedDict[str, tuple[list[str], OrderedDict[str, list[str]]]] = OrderedDict()
    total = sum(p.seconds for p in phases)
    t, owed, u = end - total, 0.0, 0.0
    for phase in phases:
        stop = t + phase.seconds
        while t < stop:
            owed += phase.rate * step
            while owed >= 1:
                u = (u + GOLDEN) % 1.0
                series.finished(phase.wait, -phase.service * math.log(1 - u), 0.05)
                owed -= 1
            series.running.set(phase.rate * phase.service)
            series.waiting.set(0)
            replicas.set(phase.replicas)
            _collect(families, generate_latest(registry).decode(), t)
            t += step
    out = []
    for headers, points in families.values():
        out += headers
        for lines in points.values():
            out += lines
    return "\n".join(out + ["# EOF", ""])


def _collect(families, text: str, t: float) -> None:
    current = None
    for line in text.splitlines():
        if line.startswith("# EOF"):
            break
        if line.startswith("#"):
            name = line.split()[2]
            if name not in families:
                families[name] = ([], OrderedDict())
            current = families[name]
            if len(current[0]) < 2 and line not in current[0]:
                current[0].append(line)
            continue
        key, _, value = line.rpartition(" ")
        if "_created" in key.split("{")[0]:
            continue
        current[1].setdefault(key, []).append(f"{key} {value} {t:.3f}")


def promtool() -> str | None:
    return shutil.which("promtool")


def create_blocks(om_text: str, work: Path, data_dir: Path) -> None:
    """Write the history into TSDB blocks under data_dir (Prometheus' --storage.tsdb.path)."""
    work.mkdir(parents=True, exist_ok=True)
    om = work / "history.om"
    om.write_text(om_text)
    data_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([promtool(), "tsdb", "create-blocks-from", "openmetrics", str(om), str(data_dir)],
                       text=True, capture_output=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"promtool failed: {r.stderr}{r.stdout}")


if __name__ == "__main__":  # the history e2e/test_backtest.py uses; prints its end (for --until)
    phases = [Phase(1800, 2.0, 1.5, 4), Phase(1800, 4.0, 1.5, 4, wait=2.0), Phase(1800, 2.0, 1.5, 4)]
    end = float(int(time.time()) - 120)
    Path(sys.argv[1]).write_text(openmetrics("serving", "llama", phases, end))
    print(f"{end:.0f}")
