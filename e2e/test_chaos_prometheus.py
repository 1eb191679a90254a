"""Prometheus answering garbage (issue 15), on the real bed with a real operator and a real Prometheus.

Six `victim` pools read their metrics (spec.metrics.prometheusURL) through a loopback HTTP server of this
test's own that forwards to the real Prometheus, or answers garbage: HTTP 500, invalid JSON, NaN, +Inf,
1e308 or -1 for every value (timestamps left fresh), an empty result, a reply hanging past the client's
timeout, a 100 MB reply. A `healthy` pool reads the real Prometheus directly (the operator's default).

Each fault: the victims' replicas never fall (sampled every second), their MetricsAvailable condition
names the cause, a Warning Event carries it, and the healthy pool keeps being decided (six victims hold
as many threads as kopf's default executor has, so a waiter that blocks on the hanging read would starve
it). Then the forwarder is put back and the time until every victim is MetricsAvailable=True again is
measured. Times go to IPOOL_CHAOS_REPORT (JSON) and the test's output; nothing is asserted on them.

Each victim reads through its own path of the server (`/v<i>`, its own URL, so its own reads), so that
faults run side by side: three waves (four faults on victims 0-3, four more, then the hang on all six),
every victim sampled in every wave.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator import (  # noqa: E402,F401  (crd, exporters, operator are fixtures)
    INTERVAL, L4, conditions, crd, exporters, free_port, get_pool, operator, pool_events, pool_manifest,
    replicas, robust_answer, scrape_config, wait_for_full_window)

VICTIMS = [f"victim-{i}" for i in range(6)]
V_RATE, V_SERVICE = 2.0, 1.5  # 2 replicas of 4 slots at a 1 s p99 wait
HANG_SECONDS = 40  # past the client's 10 s timeout and its one retry

# mode -> (the MetricsAvailable reason, a word its message must hold)
FAULTS = {
    "http_500": ("PrometheusUnavailable", "500"),
    "invalid_json": ("PrometheusUnavailable", "failed on"),
    "nan": ("MetricsMissing", ""),
    "inf": ("InvalidMetrics", "impossible"),
    "1e308": ("InvalidMetrics", "impossible"),
    "negative": ("InvalidMetrics", "impossible"),
    "empty": ("NoVllmSeries", "no series"),
    "hang": ("PrometheusUnavailable", ""),
    "100MB": ("PrometheusUnavailable", "over 50 MB"),
}
VALUES = {"nan": "NaN", "inf": "+Inf", "1e308": "1e308", "negative": "-1"}
WAVES = [["http_500", "invalid_json", "nan", "inf"], ["1e308", "negative", "empty", "100MB"], ["hang"] * len(VICTIMS)]


class Garbage(ThreadingHTTPServer):
    """Forwards /v<i>/api/v1/* to `upstream`, or answers the garbage of victim i's mode (`modes[i]`)."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.upstream, self.modes = upstream, {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def victim_url(self, i: int) -> str:
        return f"{self.url}/v{i}"


class _Handler(BaseHTTPRequestHandler):
    server: Garbage

    def do_GET(self):  # noqa: N802 - http.server's name
        slot, _, rest = self.path.lstrip("/").partition("/")
        mode, path = self.server.modes.get(int(slot[1:]), "forward"), "/" + rest
        try:
            if mode == "http_500":
                return self._send(500, b'{"status":"error","errorType":"internal","error":"injected"}')
            if mode == "invalid_json":
                return self._send(200, b'{"status":"success","data":{"resultType":"vector","result":[{"met')
            if mode == "empty":
                return self._send(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
            if mode == "hang":
                time.sleep(HANG_SECONDS)
                return self._send(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
            if mode == "100MB":
                return self._send_big(100 * 2**20)
            with urllib.request.urlopen(self.server.upstream + path, timeout=10) as r:
                body = r.read()
            if mode in VALUES:
                body = _rewrite(body, path, VALUES[mode])
            self._send(200, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the operator gave up on this reply: what the test wants

    def _send(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_big(self, size: int):
        head = b'{"status":"success","data":{"resultType":"vector","result":[]},"pad":"'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(head) + size + 2))
        self.end_headers()
        self.wfile.write(head)
        chunk = b"x" * 2**20
        for _ in range(size // len(chunk)):
            self.wfile.write(chunk)
        self.wfile.write(b'"}')

    def log_message(self, *args):
        pass


def _rewrite(body: bytes, path: str, value: str) -> bytes:
    """Every sample's value replaced, but for the freshness query's timestamps (kept fresh on purpose)."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(path).query).get("query", [""])[0]
    answer = json.loads(body)
    if "timestamp(" not in query and answer.get("status") == "success":
        for sample in answer["data"]["result"]:
            sample["value"][1] = value
    return json.dumps(answer).encode()


def _decision_times(op, pool: str) -> list[float]:
    return [datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp()
            for d in op.decisions() if d.get("pool") == pool]


def _max_gap(times: list[float], start: float, end: float) -> float:
    points = [start, *[t for t in times if start < t < end], end]
    return max(b - a for a, b in zip(points, points[1:]))


def test_garbage_from_prometheus_never_scales_down_and_names_the_cause(cluster, namespace, operator, exporters,
                                                                      prometheus):
    expected = robust_answer(V_RATE, V_SERVICE, 4, 1.0, 0.99)
    shared, own = exporters(V_RATE, V_SERVICE), exporters(1.0, 1.0)
    prom = prometheus(scrape_configs=[scrape_config(v, namespace, shared) for v in VICTIMS]
                      + [scrape_config("healthy", namespace, own)])
    garbage = Garbage(prom.url)
    try:
        wait_for_full_window(prom, VICTIMS[0])
        wait_for_full_window(prom, "healthy")
        op = operator(prom.url)
        for i, v in enumerate(VICTIMS):
            cluster.apply(pool_manifest(v, metrics={"prometheusURL": garbage.victim_url(i)}), namespace=namespace)
        cluster.apply(pool_manifest("healthy", product=L4, maxReplicas=3), namespace=namespace)

        def all_fresh():
            pools = [get_pool(cluster, namespace, v) for v in VICTIMS]
            return all(conditions(p).get("MetricsAvailable", {}).get("status") == "True"
                       and replicas(cluster, namespace, p["metadata"]["name"]) == expected for p in pools)

        def sample():  # held, never down, on every victim
            counts = [replicas(cluster, namespace, v) for v in VICTIMS]
            assert counts == [expected] * len(VICTIMS), (wave, counts)
            return min(counts)

        cluster.wait_until(all_fresh, timeout=180, desc=f"every victim at {expected} replicas, metrics fresh")
        report, lowest = {}, expected
        for wave in WAVES:
            start = time.time()
            garbage.modes = dict(enumerate(wave))
            detected: dict[int, float] = {}
            deadline = start + 120
            while len(detected) < len(wave):
                lowest = min(lowest, sample())
                for i, mode in enumerate(wave):
                    c = conditions(get_pool(cluster, namespace, VICTIMS[i])).get("MetricsAvailable", {})
                    if i not in detected and c.get("status") == "False" and c.get("reason") == FAULTS[mode][0]:
                        detected[i] = time.time() - start
                        assert FAULTS[mode][1] in c["message"], (mode, c)
                assert time.time() < deadline, f"{wave}: not every victim named its cause within 120 s ({detected})"
                time.sleep(0.5)
            hold_until = time.time() + 2 * INTERVAL
            while time.time() < hold_until:
                lowest = min(lowest, sample())
                time.sleep(1)
            for v in VICTIMS:
                assert get_pool(cluster, namespace, v)["status"]["desiredReplicas"] == expected, (wave, v)
            for i, mode in enumerate(wave):
                assert any(e["type"] == "Warning" and e["reason"] == FAULTS[mode][0]
                           for e in pool_events(cluster, namespace, VICTIMS[i])), mode
            healthy = _decision_times(op, "healthy")
            faulted_end = time.time()
            assert [t for t in healthy if start < t < faulted_end], f"{wave}: the healthy pool was not decided"
            gap = _max_gap(healthy, start, faulted_end)

            garbage.modes = {}
            back = time.time()
            cluster.wait_until(all_fresh, timeout=120, desc=f"{wave}: every victim fresh again")
            recovered = round(time.time() - back, 1)
            for i, mode in enumerate(wave):
                entry = report.setdefault(mode, {"reason": FAULTS[mode][0], "detected_s": [], "recovered_s": recovered,
                                                 "healthy_max_gap_s": round(gap, 1),
                                                 "held_s": round(faulted_end - start, 1)})
                entry["detected_s"].append(round(detected[i], 1))
        print(json.dumps(report, indent=1))
        if os.environ.get("IPOOL_CHAOS_REPORT"):
            Path(os.environ["IPOOL_CHAOS_REPORT"]).write_text(json.dumps(report, indent=1))
        assert lowest == expected  # no victim ever below its answer
        assert op.proc.poll() is None
        assert "Traceback" not in op.log_path.read_text()
    finally:
        garbage.shutdown()
