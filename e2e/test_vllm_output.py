"""vLLM 0.33.0's own /metrics output through the bed's real Prometheus, read by observe.PrometheusReader.

tests/data/vllm-0.33.0 holds the exposition as `curl` shows it (vllm:*, text 0.0.4) and as a Prometheus
2.x scrape receives it (OpenMetrics, samples escaped to vllm_*). A loopback server serves each with the
Content-Type vLLM's prometheus_client sends for it; the pool and namespace labels the operator groups by
come from the scrape config's static labels, as a relabeling would add them. The snapshots are static, so
every counter (histogram buckets, sums and counts too) is served growing linearly from the file's value at
the file's own average rate (value / 600 s of uptime): rates are then the files' averages, and
sum/count and bucket ratios are the files' own. Expected figures are derived from the files.

Pools: `text` (one pod, vllm:*), `escaped` (one pod, vllm_*), `both` (one pod of each: a rollout across
the prometheus_client boundary, read as two pods, not four), `upgrade` (one pod seen under both names with
the same labels, as across a Prometheus 2 -> 3 upgrade: read once, no "same labelset" error), `silent`
(scraped, up=1, no vLLM series: the NoVllmSeries message says to check port and path), `frozen` (the
text file served unchanged: 7 requests running, nothing finishing, no token: read as frozen gauges).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from inferencepool.core import signals
from inferencepool.operator import observe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from vllm_exposition import FILES, cumulative, midpoint_cv, total, vllm_samples  # noqa: E402

sys.path.insert(0, str(ROOT / "e2e"))
from exposition import serve_exposition, stop_server  # noqa: E402

UPTIME = 600.0  # seconds of load behind the files' counters (see their README)
CONTENT_TYPES = {  # what prometheus_client 0.26's choose_encoder answers for each
    "text": "text/plain; version=0.0.4; charset=utf-8",
    "escaped": "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores",
    "silent": "text/plain; version=0.0.4; charset=utf-8",
    "frozen": "text/plain; version=0.0.4; charset=utf-8",
}
COUNTER = re.compile(r"^(\S+?(?:_total|_sum|_count|_bucket)(?:\{[^}]*\})?) (\S+)$")
SETTINGS = observe.QuerySettings(rate_window="30s", burst_window="6s")
NAMESPACE = "serving"


def grown(text: str, factor: float) -> str:
    """The exposition with every counter sample multiplied by `factor` (gauges and _created as they are)."""
    lines = []
    for line in text.splitlines():
        m = COUNTER.match(line)
        lines.append(f"{m.group(1)} {float(m.group(2)) * factor!r}" if m else line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def exposition_server():
    texts = {name: path.read_text() for name, path in FILES.items()}
    texts["silent"] = "# HELP other_up An unrelated exporter.\n# TYPE other_up gauge\nother_up 1.0\n"
    texts["frozen"] = texts["text"]  # served as it is: an engine that stopped stepping with 7 requests inside
    start = time.monotonic()

    def render(path: str) -> str:
        name = path.strip("/")
        return grown(texts[name], 1.0 if name == "frozen" else 1 + (time.monotonic() - start) / UPTIME)

    server = serve_exposition(render, lambda path: CONTENT_TYPES[path.strip("/")])
    yield f"127.0.0.1:{server.server_port}"
    stop_server(server)


def query_error(url: str, expr: str) -> str:
    """Prometheus's error for a query that fails (HTTP 422 with a JSON body), or "" if it succeeds."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=10).read()
    except urllib.error.HTTPError as failed:
        return json.loads(failed.read()).get("error", "")
    return ""


def job(name: str, target: str, path: str, pool: str, pod: str, **labels) -> dict:
    return {"job_name": name, "metrics_path": f"/{path}", "static_configs": [{
        "targets": [target], "labels": {"pool": pool, "namespace": NAMESPACE, "pod": pod, **labels}}]}


def test_the_reader_on_vllms_own_output_escaped_unescaped_and_both(prometheus, exposition_server):
    t = exposition_server
    same = {"job": "vllm-upgrade", "instance": "upgrade-0"}  # one target, both names, identical labels
    prom = prometheus(scrape_configs=[
        job("text", t, "text", "text", "text-0"),
        job("escaped", t, "escaped", "escaped", "escaped-0"),
        job("both-text", t, "text", "both", "both-0"),
        job("both-escaped", t, "escaped", "both", "both-1"),
        job("upgrade-text", t, "text", "upgrade", "upgrade-0", **same),
        job("upgrade-escaped", t, "escaped", "upgrade", "upgrade-0", **same),
        job("silent", t, "silent", "silent", "silent-0"),
        job("frozen", t, "frozen", "frozen", "frozen-0"),
    ])
    # until a series is older than the rate window, rate() extrapolates over part of it and reads low
    for name in ("vllm:num_requests_running", "vllm_num_requests_running"):
        prom.wait_for(f'count_over_time({name}{{pool="both"}}[1m]) >= 36', timeout=120)
    # Prometheus 2.42 stores the OpenMetrics samples under the escaped names, as the file's README says
    assert {r["metric"]["pool"] for r in prom.query('vllm_num_requests_running')} == {"escaped", "both", "upgrade"}
    assert {r["metric"]["pool"] for r in prom.query('vllm:num_requests_running')} == {"text", "both", "upgrade", "frozen"}

    pools = observe.PrometheusReader(prom.url, SETTINGS, ttl=0).read()
    samples = vllm_samples(FILES["text"])
    finished = total(samples, "request_success_total")
    service = total(samples, "request_inference_time_seconds_sum") / total(samples, "request_inference_time_seconds_count")
    bounds, counts = cumulative(samples, "request_inference_time_seconds")
    wait_bounds, wait_counts = cumulative(samples, "request_queue_time_seconds")
    rank_p99 = 0.99 * wait_counts[-1]
    i = int((wait_counts >= rank_p99).argmax())  # the bucket holding the p99, linear inside it
    p99_wait = wait_bounds[i - 1] + (wait_bounds[i] - wait_bounds[i - 1]) * (rank_p99 - wait_counts[i - 1]) / (wait_counts[i] - wait_counts[i - 1])

    for pool, pods in {"text": 1, "escaped": 1, "both": 2, "upgrade": 1}.items():
        m = pools[(NAMESPACE, pool)]
        print(f"{pool}: completions {m.completion_rate:.4f}/s arrivals {m.arrival_rate:.4f}/s service {m.service_time:.4f}s "
              f"cv {m.service_cv:.4f} prefill {m.prefill_time:.5f}s running {m.running} waiting {m.waiting} "
              f"p99 wait {signals.histogram_quantile(0.99, list(m.queue_buckets)):.3f}s (file: {p99_wait:.3f}s)")
        assert m.newest_sample_time == pytest.approx(time.time(), abs=10), pool
        assert m.completion_rate == pytest.approx(pods * finished / UPTIME, rel=0.03), pool
        assert m.arrival_rate == pytest.approx(pods * finished / UPTIME, rel=0.03), pool  # gauges steady: no growth
        assert m.minute_rate == pytest.approx(pods * finished / UPTIME, rel=0.05), pool  # the hindsight floor's signal
        assert m.service_time == pytest.approx(service, rel=0.01), pool
        assert m.service_cv == pytest.approx(midpoint_cv(bounds, counts, service), rel=0.01), pool
        assert m.prefill_time == pytest.approx(total(samples, "request_prefill_time_seconds_sum") / finished, rel=0.01), pool
        assert (m.running, m.waiting) == (pods * total(samples, "num_requests_running"), 0.0), pool
        assert signals.histogram_quantile(0.99, list(m.queue_buckets)) == pytest.approx(p99_wait, rel=0.01), pool
        assert m.targets_up == 1.0, pool

    # the same pod under both names, read through a __name__ regex instead of `or`, is an error in Prometheus 2.x
    error = query_error(prom.url, 'sum by (pool) (rate({__name__=~"vllm:request_success_total|vllm_request_success_total", pool="upgrade"}[30s]))')
    assert "vector cannot contain metrics with the same labelset" in error

    # the snapshot served unchanged: 7 running, nothing finishing, no token: stale gauges, not load
    frozen = pools[(NAMESPACE, "frozen")]
    assert frozen.gauges_frozen and (frozen.running, frozen.waiting, frozen.arrival_rate) == (None, None, 0.0)
    assert frozen.minute_rate is None
    assert not any(pools[(NAMESPACE, p)].gauges_frozen for p in ("text", "escaped", "both", "upgrade"))

    # the scrape spacing as the reader measures it (over 20 s here, 5 min in the operator): the bed scrapes every 1 s
    spacing = prom.query(observe.spacing_query(SETTINGS, window="20s"))
    assert len(spacing) == 1 and float(spacing[0]["value"][1]) == pytest.approx(1.0, abs=0.15)
    assert prom.query(observe.spacing_query(SETTINGS, window="5m")) == []  # no series is 5 min old yet: unknown

    # scraped but without vLLM series: present, no samples, and the message says what to check
    silent = pools[(NAMESPACE, "silent")]
    assert (silent.newest_sample_time, silent.targets_up) == (None, 1.0)
    assert "(up=1)" in observe.missing_series_message(silent, pools.unlabelled_series, SETTINGS, NAMESPACE, "silent")
    assert observe.find(pools, NAMESPACE, "absent") is None and pools.unlabelled_series == 0
