"""SLO attainment end to end: a pool with spec.slo.objective, the exporter serving a queue-wait histogram in
which some 5 s windows meet the p90 and some do not, a real Prometheus 2.42 scraping it every second, and
the operator's status.slo (attainment, error budget, last window's share) checked against what the test
computes from the requests it served. The target (4.5 s) is not a bucket bound (2.5 s and 5 s are), so the
share is interpolated; the test derives its expectation the same way, from the buckets the exporter has.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator import OperatorProcess, crd, exporters, get_pool, pool_manifest, scrape_config  # noqa: E402,F401
from vllm_exporter import LATENCY_BUCKETS  # noqa: E402

WINDOW, PERIOD, WINDOWS = 5, 60, 12
TARGET, PERCENTILE, OBJECTIVE = 4.5, 0.9, 0.5
GOOD_WAIT, BAD_WAIT = 0.1, 4.0  # 4 s lies in the (2.5, 5] bucket: interpolation at 4.5 s counts 80% of them as good
# Requests over target by window number mod 6; the histogram's shares within target are 1, 0.94, 0.88, 1, 0.94,
# 0.85: 4 of 6 windows meet p90, and only 2 would without the interpolation (0.7 and 0.4 at the 2.5 s bound).
BAD_SHARES = (0.0, 0.3, 0.6, 0.0, 0.3, 0.75)


class Served:
    """The queue wait of every request the exporter finishes, chosen by its window, and a tally per window."""

    def __init__(self):
        self.lock = threading.Lock()
        self.total: dict[int, int] = defaultdict(int)
        self.by_wait: dict[int, dict[float, int]] = defaultdict(lambda: defaultdict(int))

    def __call__(self, now: float, k: int) -> float:
        window = math.floor(now / WINDOW)
        bad = BAD_SHARES[window % len(BAD_SHARES)]
        wait = BAD_WAIT if (k % 20) < round(20 * bad) else GOOD_WAIT
        with self.lock:
            self.total[window] += 1
            self.by_wait[window][wait] += 1
        return wait

    def good_share(self, window: int) -> float:
        """The share within TARGET as the histogram tells it: bucket counts at the bounds around the target,
        interpolated linearly between them."""
        lower = max((b for b in LATENCY_BUCKETS if b <= TARGET), default=0.0)
        upper = min(b for b in LATENCY_BUCKETS if b >= TARGET)
        with self.lock:
            waits = dict(self.by_wait[window])
            n = self.total[window]
        at_lower = sum(c for w, c in waits.items() if w <= lower)
        at_upper = sum(c for w, c in waits.items() if w <= upper)
        return (at_lower + (at_upper - at_lower) * (TARGET - lower) / (upper - lower)) / n


def unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_status_reports_the_attainment_and_budget_of_the_served_histogram(cluster, crd, namespace, prometheus,
                                                                         exporters, tmp_path):
    name = "slo"
    served = Served()
    exporter = exporters(20.0, 0.5)
    exporter.wait_for = served
    started = time.time()
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporter)])
    # told the 1 s scrape interval (the operator measures it only after 5 min of samples)
    op = OperatorProcess(cluster, namespace, prom.url, tmp_path / "operator.log", interval=2,
                         extra_args=("--scrape-interval", "1")).start()
    try:
        cluster.apply(pool_manifest(name, slo={"metric": "QueueWait", "percentile": PERCENTILE, "targetSeconds": TARGET,
                                               "objective": OBJECTIVE, "window": f"{WINDOW}s", "period": f"{PERIOD}s"}),
                      namespace=namespace)
        first_full = math.floor(started / WINDOW) + 2  # the first window the exporter served from its start

        def scored():
            slo = get_pool(cluster, namespace, name).get("status", {}).get("slo") or {}
            end = slo.get("lastWindowEnd")
            if not end or "attainment" not in slo:
                return None
            end_s = unix(end)
            return slo if end_s / WINDOW - WINDOWS >= first_full else None

        slo = cluster.wait_until(scored, timeout=150, interval=1, desc="status.slo over a whole period of served windows")
        end = round(unix(slo["lastWindowEnd"]) / WINDOW)
        windows = range(end - WINDOWS, end)  # window w spans [w*5, w*5+5): those ending in (end-60 s, end]
        shares = [served.good_share(w) for w in windows]
        met = [s >= PERCENTILE for s in shares]
        attainment = sum(met) / len(met)
        assert 0 < attainment < 1, shares  # some windows good, some bad: the test can tell a wrong statistic
        assert slo["objective"] == OBJECTIVE and slo["window"] == "5s" and slo["period"] == "60s"
        assert slo["measuredWindows"] == WINDOWS
        assert slo["attainment"] == pytest.approx(attainment, abs=1e-3)
        assert slo["errorBudgetRemaining"] == pytest.approx(max(1 - (1 - attainment) / (1 - OBJECTIVE), 0), abs=1e-3)
        assert slo["lastWindowGoodShare"] == pytest.approx(shares[-1], abs=0.03)
        print(f"windows {list(windows)} shares {[round(x, 3) for x in shares]}: expected attainment {attainment:.4f}, "
              f"budget {max(1 - (1 - attainment) / (1 - OBJECTIVE), 0):.4f}; status.slo {slo}")
        assert slo["interpolated"] is True and "interpolated between 2.5s and 5s" in slo["note"]

        header, row = cluster.kubectl("-n", namespace, "get", "ipool", name).stdout.splitlines()[:2]
        shown = row[header.index("ATTAINMENT"):].split()[:2]  # ATTAINMENT and BUDGET columns, side by side
        assert header[header.index("ATTAINMENT"):].split()[:2] == ["ATTAINMENT", "BUDGET"]
        assert 0 < float(shown[0]) < 1 and 0 <= float(shown[1]) <= 1, row
        text = op.metrics_text()
        gauges = {line.split(" ")[0].split("{")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                  if line.startswith(("inferencepool_slo_attainment{", "inferencepool_error_budget_remaining{"))}
        assert set(gauges) == {"inferencepool_slo_attainment", "inferencepool_error_budget_remaining"}
        assert 0 <= gauges["inferencepool_error_budget_remaining"] <= 1
    finally:
        cluster.kubectl("-n", namespace, "delete", "ipool", "--all", "--wait=true", "--timeout=60s", check=False)
        op.stop()
        log = tmp_path / "operator.log"
        if log.exists():
            print("---- operator log (tail) ----\n" + log.read_text()[-8000:])


@pytest.mark.parametrize("field, value, expected", [
    ("objective", 1.0, "spec.slo.objective must be strictly between 0 and 1"),
    ("objective", 0, "spec.slo.objective must be strictly between 0 and 1"),
    ("window", "3s", "spec.slo.window must be a whole number of seconds >= 4"),
    ("window", "1m30s", "spec.slo.window must be a whole number of seconds >= 4"),
    ("period", "7days", "spec.slo.period must be a whole number with one unit"),
])
def test_crd_rejects_bad_slo_fields_naming_them(cluster, crd, namespace, field, value, expected):
    import json

    manifest = pool_manifest("bad", slo={"targetSeconds": 1, field: value})
    r = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert r.returncode != 0 and expected in r.stderr, r.stderr


def test_crd_defaults_the_slo_window_and_period(cluster, crd, namespace):
    cluster.apply(pool_manifest("good", slo={"targetSeconds": 1, "objective": 0.99}), namespace=namespace)
    slo = get_pool(cluster, namespace, "good")["spec"]["slo"]
    assert (slo["objective"], slo["window"], slo["period"]) == (0.99, "60s", "7d")
    cluster.kubectl("-n", namespace, "delete", "ipool", "good")
