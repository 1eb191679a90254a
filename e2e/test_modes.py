"""Advisory mode, scheduled floors and scale from zero, end to end on the real bed (kube-apiserver, KWOK,
Prometheus on 127.0.0.1), with the operator, exporters and fixtures of test_operator.py.

- Advisory: a pool under load never changes its Deployment's replicas while status shows what it would
  set; switched to Active, it scales to that answer and its decision history goes on.
- Schedule: a window that covers now raises the floor above what the load needs; CEL refuses overlaps,
  windows that end before they start, unknown time zones and minReplicas 0 without an upstream signal.
- Zero: a pool at 0 replicas (no vLLM anywhere) stays there while the upstream counter is flat or gone,
  and wakes when it rises; the counter is a loopback exporter the test drives, scraped by the Prometheus.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exposition import serve_exposition, stop_server  # noqa: E402
from test_operator import (  # noqa: E402,F401 - fixtures and helpers
    INTERVAL, conditions, crd, event_seen, exporters, get_pool, operator, pool_events, pool_manifest, replicas,
    robust_answer, scrape_config, settled_status, wait_for_full_window,
)


def test_an_advisory_pool_recommends_and_never_scales_until_made_active(cluster, namespace, operator, prometheus,
                                                                       exporters):
    name, rate, service = "advised", 4.0, 1.5
    expected = robust_answer(rate, service, 4, 1.0, 0.99)
    assert expected >= 3
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporters(rate, service))])
    wait_for_full_window(prom, name)
    op = operator(prom.url)
    cluster.apply(pool_manifest(name, mode="Advisory"), namespace=namespace)

    def advice():
        a = get_pool(cluster, namespace, name).get("status", {}).get("advisory") or {}
        return a if a.get("recommendedReplicas") == expected else None

    a = cluster.wait_until(advice, timeout=120, desc=f"status.advisory.recommendedReplicas == {expected}")
    assert (a["deploymentReplicas"], a["action"]) == (1, "scale_up")
    assert a["reason"].startswith(f"would scale up 1 -> {expected}: {expected} replicas meet p99 wait <= 1s")
    time.sleep(3 * INTERVAL)  # several more decisions under the same load
    status = get_pool(cluster, namespace, name)["status"]
    assert replicas(cluster, namespace, name) == 1 and status["currentReplicas"] == 1
    assert status["mode"] == "Advisory" and status["desiredReplicas"] == expected and "lastScaleTime" not in status
    events = pool_events(cluster, namespace, name)
    would = [e for e in events if e["reason"] == "WouldScaleUp"]
    assert len(would) == 1 and would[0]["message"] == f"advisory: {a['reason']}"
    assert not [e for e in events if e["reason"] in ("ScaledUp", "ReplicasRestored")]
    assert "Advisory" in cluster.kubectl("-n", namespace, "get", "ipool", name).stdout
    text = op.metrics_text()
    assert f'inferencepool_advisory{{namespace="{namespace}",pool="{name}"}} 1.0' in text
    assert f'inferencepool_deployment_replicas{{namespace="{namespace}",pool="{name}"}} 1.0' in text

    # Active: the same pool scales to its answer, resuming the history it built while advising.
    before = json.loads(status["history"])["forecaster"]["count"]
    cluster.kubectl("-n", namespace, "patch", "ipool", name, "--type", "merge", "-p", '{"spec":{"mode":"Active"}}')
    status = settled_status(cluster, namespace, name, expected, timeout=60, desc=f"{expected} replicas")
    assert status["mode"] == "Active" and "advisory" not in status
    assert json.loads(status["history"])["forecaster"]["count"] > before
    event_seen(cluster, namespace, name, lambda e: e["reason"] == "ScaledUp" and f"1 -> {expected}" in e["message"])
    assert not [e for e in pool_events(cluster, namespace, name) if e["reason"] == "ReplicasRestored"]


def _dry_run(cluster, namespace, manifest) -> str:
    r = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert r.returncode != 0, f"accepted: {manifest['spec']}"
    return r.stderr


def test_the_crd_refuses_bad_schedules_and_zero_without_an_upstream_signal(cluster, crd, namespace):
    window = {"start": "09:00", "end": "17:00", "minReplicas": 2}
    cases = [
        ({"schedule": {"timeZone": "Mars/Olympus", "windows": [window]}},
         ["spec.schedule.timeZone", "unknown time zone Mars/Olympus", "IANA time zone"]),
        ({"schedule": {"timeZone": "UTC", "windows": [{**window, "start": "22:00", "end": "06:00"}]}},
         ["spec.schedule.windows[0]", "end must be after start", "split one that crosses midnight"]),
        ({"schedule": {"timeZone": "UTC", "windows": [{**window, "days": ["Mon"]}, {**window, "start": "16:00",
                                                                                    "end": "18:00", "minReplicas": 3}]}},
         ["spec.schedule.windows", "must not overlap with different minReplicas"]),
        ({"minReplicas": 0}, ["spec.minReplicas", "0 needs spec.metrics.arrivalRateQuery"]),
        ({"schedule": {"timeZone": "UTC", "windows": [{**window, "minReplicas": 0}]}},
         ["spec.schedule", "0 needs spec.metrics.arrivalRateQuery"]),
    ]
    for spec, expected in cases:
        stderr = _dry_run(cluster, namespace, pool_manifest("bad", **spec))
        for text in expected:
            assert text in stderr, f"{spec}: {text!r} not in {stderr}"
    # windows that meet end to start, or agree on the floor, are fine
    good = {"timeZone": "Europe/Paris", "windows": [{**window, "days": ["Mon"]}, {**window, "start": "17:00", "end": "24:00",
                                                                                  "minReplicas": 3}]}
    cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-",
                    input=json.dumps(pool_manifest("good", schedule=good)))


def test_a_schedule_window_that_covers_now_raises_the_floor(cluster, namespace, operator, prometheus, exporters):
    name, zone = "scheduled", ZoneInfo("Asia/Tokyo")
    assert robust_answer(0.5, 1.0, 4, 1.0, 0.99) == 1
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporters(0.5, 1.0))])
    wait_for_full_window(prom, name)
    operator(prom.url)
    today = datetime.now(zone)
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    schedule = {"timeZone": "Asia/Tokyo", "windows": [
        {"name": "today", "days": [days[today.weekday()]], "start": "00:00", "end": "24:00", "minReplicas": 3},
        {"name": "tomorrow", "days": [days[(today + timedelta(days=1)).weekday()]], "start": "00:00", "end": "24:00",
         "minReplicas": 5},
    ]}
    cluster.apply(pool_manifest(name, schedule=schedule), namespace=namespace)
    status = settled_status(cluster, namespace, name, 3, timeout=120, desc="3 replicas (the window's floor)")
    assert (status["floorReplicas"], status["scheduleWindow"], status["constraint"]) == (3, "today", "warm_floor")
    assert status["requiredReplicas"] == 1 and "the warm floor is 3 (schedule window today)" in status["reason"]
    # Without the schedule the floor is minReplicas again and the pool scales back down (after its window).
    cluster.kubectl("-n", namespace, "patch", "ipool", name, "--type", "json", "-p", '[{"op":"remove","path":"/spec/schedule"}]')
    status = settled_status(cluster, namespace, name, 1, timeout=90, desc="back to 1 replica")
    assert status["floorReplicas"] == 1 and "scheduleWindow" not in status


class GatewayCounter:
    """A loopback exporter of one counter, gateway_requests_total, that rises at a rate the test sets
    (or disappears from the exposition, as a router's series would)."""

    def __init__(self, route: str):
        self.route, self.rate, self.count, self.visible = route, 0.0, 0.0, True
        self._since, self._lock = time.monotonic(), threading.Lock()
        self.server = serve_exposition(lambda path: self.exposition())
        self.target = f"127.0.0.1:{self.server.server_address[1]}"

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._advance()
            self.rate = rate

    def _advance(self) -> None:
        now = time.monotonic()
        self.count += self.rate * (now - self._since)
        self._since = now

    def exposition(self) -> str:
        with self._lock:
            self._advance()
            if not self.visible:
                return ""
            return (f"# TYPE gateway_requests_total counter\n"
                    f'gateway_requests_total{{route="{self.route}"}} {self.count:.3f}\n')

    def stop(self) -> None:
        stop_server(self.server)


def test_a_pool_at_zero_wakes_when_the_upstream_counter_rises(cluster, namespace, operator, prometheus):
    name = "sleepy"
    gateway = GatewayCounter(route=name)
    try:
        prom = prometheus(scrape_configs=[{"job_name": "gateway", "static_configs": [{"targets": [gateway.target]}]}])
        query = f'sum(rate(gateway_requests_total{{route="{name}"}}[10s]))'
        prom.wait_for(f"count_over_time(gateway_requests_total[10s]) >= 5", timeout=60)
        operator(prom.url)
        cluster.apply(pool_manifest(name, minReplicas=0, metrics={"arrivalRateQuery": query}), namespace=namespace)

        def at_zero():
            pool = get_pool(cluster, namespace, name)
            return pool if conditions(pool).get("Ready", {}).get("reason") == "ScaledToZero" else None

        pool = cluster.wait_until(at_zero, timeout=60, desc="Ready=True ScaledToZero")
        ready = conditions(pool)["Ready"]
        assert ready["status"] == "True" and "waits a cold start (about 180s)" in ready["message"]
        assert pool["status"]["desiredReplicas"] == 0 and pool["status"]["arrivalRateSource"] == "spec.metrics.arrivalRateQuery"
        time.sleep(3 * INTERVAL)
        assert replicas(cluster, namespace, name) == 0

        # The counter's series disappears: the pool stays at zero and says why.
        gateway.visible = False

        def missing():
            c = conditions(get_pool(cluster, namespace, name)).get("MetricsAvailable", {})
            return c if c.get("status") == "False" else None

        c = cluster.wait_until(missing, timeout=60, desc="MetricsAvailable=False")
        assert c["reason"] == "MetricsMissing" and "spec.metrics.arrivalRateQuery" in c["message"]
        assert "holding at 0 replicas" in c["message"]
        assert replicas(cluster, namespace, name) == 0

        # The first requests arrive upstream: the pool wakes.
        gateway.visible = True
        gateway.set_rate(0.5)
        status = settled_status(cluster, namespace, name, lambda n: n >= 1, timeout=60, desc=">= 1 replica")
        assert status["desiredReplicas"] >= 1 and status["lastScaleReason"].startswith("scale up 0 -> 1: arrival ")
        assert event_seen(cluster, namespace, name, lambda e: e["reason"] == "ScaledUp" and "wakes the pool" in e["message"])
    finally:
        gateway.stop()
