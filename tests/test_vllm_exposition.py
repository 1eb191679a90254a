"""The reader's pure functions on vLLM 0.33.0's own /metrics output (tests/data/vllm-0.33.0, see its README).

Both files: as `curl` shows it (vllm:*) and as a Prometheus 2.x scrape receives it (OpenMetrics with the
sample names escaped to vllm_*). Every expected figure is derived here from the file with numpy, not
copied, and compared with what observe/signals read from the same samples.
"""

from __future__ import annotations

import numpy as np
import pytest
from vllm_exposition import FILES, cumulative, midpoint_cv, total, vllm_samples

from inferencepool.core import signals
from inferencepool.operator import observe

S = observe.QuerySettings()


@pytest.fixture(params=sorted(FILES))
def samples(request):
    return vllm_samples(FILES[request.param])


def test_both_files_carry_the_same_vllm_samples():
    text, escaped = (sorted((n, sorted(lab.items()), v) for n, lab, v in vllm_samples(FILES[k])) for k in ("text", "escaped"))
    assert text == escaped and len(text) > 300
    raw = FILES["escaped"].read_text()
    assert "vllm_num_requests_running{" in raw and "vllm:num_requests_running{" not in raw


def test_counts_the_reader_relies_on(samples):
    """Completions over every finished_reason are the finished requests every histogram counts."""
    reasons = {lab["finished_reason"] for n, lab, _ in samples if n == "request_success_total"}
    assert reasons == {"stop", "length", "abort", "error", "repetition"}  # all pre-created by vLLM
    finished = total(samples, "request_success_total")
    for histogram in ("request_inference_time_seconds", "request_queue_time_seconds", "e2e_request_latency_seconds",
                      "request_prefill_time_seconds"):
        assert total(samples, histogram + "_count") == finished, histogram
    running, waiting = total(samples, "num_requests_running"), total(samples, "num_requests_waiting")
    # time to first token is recorded at the first token, so it also counts the requests still running
    assert total(samples, "time_to_first_token_seconds_count") == finished + running + waiting
    assert total(samples, "admission_rejections_total") == 0
    assert all("engine" in lab for n, lab, _ in samples if n == "request_success_total")


def results_from(samples, pool="llama", namespace="serving", seconds=600.0) -> dict[str, list]:
    """What Prometheus would answer to observe.queries() if every counter grew steadily over `seconds`
    (the files' uptime): rates are counter / seconds, gauges as they are."""

    def one(value):
        return [{"metric": {"pool": pool, "namespace": namespace}, "value": [0, str(value)]}]

    def mean(histogram):
        return one(total(samples, histogram + "_sum") / total(samples, histogram + "_count"))

    def buckets(histogram):
        return [{"metric": {"pool": pool, "namespace": namespace, "le": lab["le"]}, "value": [0, str(v / seconds)]}
                for n, lab, v in samples if n == histogram + "_bucket"]

    return {
        "newest_sample": one(1000.0),
        "completion_rate": one(total(samples, "request_success_total") / seconds),
        "in_system_growth": one(0.0),
        "waiting": one(total(samples, "num_requests_waiting")),
        "running": one(total(samples, "num_requests_running")),
        "service_mean": mean("request_inference_time_seconds"),
        "service_buckets": buckets("request_inference_time_seconds"),
        "service_samples": one(total(samples, "request_inference_time_seconds_count")),
        "e2e_mean": mean("e2e_request_latency_seconds"),
        "queue_mean": mean("request_queue_time_seconds"),
        "prefill_mean": mean("request_prefill_time_seconds"),
        "queue_buckets": buckets("request_queue_time_seconds"),
        "ttft_buckets": buckets("time_to_first_token_seconds"),
    }


def test_what_the_reader_reads_from_vllms_output(samples):
    m = observe.pool_metrics(results_from(samples), S)[("serving", "llama")]
    finished = total(samples, "request_success_total")
    service = total(samples, "request_inference_time_seconds_sum") / total(samples, "request_inference_time_seconds_count")
    assert m.completion_rate == pytest.approx(finished / 600)
    assert m.arrival_rate == pytest.approx(finished / 600)  # no rejections, no growth in a static snapshot
    assert m.service_time == pytest.approx(service)
    assert m.service_samples == finished
    bounds, counts = cumulative(samples, "request_inference_time_seconds")
    assert m.service_cv == pytest.approx(midpoint_cv(bounds, counts, service), rel=1e-9)
    assert 0.3 < m.service_cv < 1.0  # a gamma-like spread, well resolved by 0.3-15 s buckets
    assert m.prefill_time == pytest.approx(total(samples, "request_prefill_time_seconds_sum") / finished)
    assert (m.running, m.waiting) == (total(samples, "num_requests_running"), total(samples, "num_requests_waiting"))


def test_queue_wait_quantile_from_vllms_buckets(samples):
    """Prometheus's histogram_quantile is linear within a bucket: np.interp on the cumulative counts."""
    m = observe.pool_metrics(results_from(samples), S)[("serving", "llama")]
    bounds, counts = cumulative(samples, "request_queue_time_seconds")
    finite = np.isfinite(bounds)
    for q in (0.5, 0.9, 0.99):
        expected = np.interp(q * counts[-1], np.concatenate([[0.0], counts[finite]]), np.concatenate([[0.0], bounds[finite]]))
        assert signals.histogram_quantile(q, list(m.queue_buckets)) == pytest.approx(expected), q
    # the mean wait the file implies lies inside the buckets' picture of it
    mean_wait = total(samples, "request_queue_time_seconds_sum") / total(samples, "request_queue_time_seconds_count")
    assert signals.histogram_quantile(0.5, list(m.queue_buckets)) < mean_wait < signals.histogram_quantile(0.99, list(m.queue_buckets))
