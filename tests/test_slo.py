"""SLO attainment (operator/slo.py): bucket bracketing, the PromQL, parsing, budget math, and the handler's use."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from inferencepool.operator import observe, slo
from inferencepool.operator.metrics import OperatorMetrics
from inferencepool.operator.spec import parse as parse_spec

BOUNDS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, float("inf")]
S = observe.QuerySettings()


@pytest.mark.parametrize("target, expected", [(5.0, (5.0, 5.0)), (3.0, (2.5, 5.0)), (0.1, (0.0, 0.3)), (20.0, (10.0, 10.0))])
def test_bracket_finds_the_neighbouring_bounds(target, expected):
    assert slo.bracket(BOUNDS, target) == expected


def test_interpolated_only_when_the_target_is_not_a_bound():
    group = lambda t: slo.SloGroup("wait", t, 0.9, "60s", "7d", *slo.bracket(BOUNDS, t))  # noqa: E731
    assert not group(5.0).interpolated
    assert group(3.0).interpolated and group(0.1).interpolated and group(20.0).interpolated
    assert "interpolated between 2.5s and 5s" in slo.interpolation_note(group(3.0), 0.3)
    assert "below vLLM's smallest bucket (0.3s)" in slo.interpolation_note(group(0.1), 0.3)
    assert "above the largest finite bucket (10s)" in slo.interpolation_note(group(20.0), 0.3)
    assert slo.interpolation_note(group(5.0), 0.3) is None


def test_le_regex_matches_both_spellings():
    assert slo.le_regex(5.0) == "5|5.0"
    assert slo.le_regex(2.5) == "2.5"


def test_good_share_reads_the_bucket_at_the_target_over_requests():
    group = slo.SloGroup("wait", 5.0, 0.99, "60s", "7d", 5.0, 5.0)
    share = slo.good_share(S, 'cluster="eu"', group)
    assert share == (
        '(sum by (namespace, pool) (increase(vllm:request_queue_time_seconds_bucket{pool!="", cluster="eu", le=~"5|5.0"}[60s])'
        ' or increase(vllm_request_queue_time_seconds_bucket{pool!="", cluster="eu", le=~"5|5.0"}[60s])) / '
        '(sum by (namespace, pool) (increase(vllm:request_queue_time_seconds_count{pool!="", cluster="eu"}[60s])'
        ' or increase(vllm_request_queue_time_seconds_count{pool!="", cluster="eu"}[60s])) > 0))'
    )


def test_interpolated_share_weights_the_bucket_between_the_bounds():
    share = slo.good_share(S, "", slo.SloGroup("ttft", 3.0, 0.9, "5s", "1m", 2.5, 5.0))
    assert "time_to_first_token_seconds_bucket" in share and 'le=~"2.5"' in share and 'le=~"5|5.0"' in share
    assert ") * 0.2)" in share  # (3 - 2.5) / (5 - 2.5)
    below = slo.good_share(S, "", slo.SloGroup("wait", 0.1, 0.9, "5s", "1m", 0.0, 0.3))
    assert "* 0.333333333)" in below and 'le=~"0.3"' in below


def test_queries_score_each_window_once_over_the_period():
    q = slo.queries(S, "", slo.SloGroup("wait", 5.0, 0.99, "60s", "7d", 5.0, 5.0))
    assert q["attainment"].startswith("avg_over_time((") and q["attainment"].endswith(" >= bool 0.99)[604799999ms:60s])")
    assert q["windows"].startswith("count_over_time(") and q["windows"].endswith("[604799999ms:60s])")
    assert q["last_good"] == slo.good_share(S, "", slo.SloGroup("wait", 5.0, 0.99, "60s", "7d", 5.0, 5.0))


def test_the_last_window_is_one_that_has_had_its_scrapes():
    assert slo.last_window_end(1000.0, 60, 15) == 960.0  # 1000 - 30 = 970 -> 960
    assert slo.last_window_end(989.0, 60, 15) == 900.0  # 959 is still in the window that ends at 960
    assert slo.last_window_end(1001.0, 5, 1) == 995.0


def test_budget_math():
    assert slo.error_budget_remaining(1.0, 0.99) == 1.0
    assert slo.error_budget_remaining(0.995, 0.99) == pytest.approx(0.5)
    assert slo.error_budget_remaining(0.99, 0.99) == pytest.approx(0.0)
    assert slo.error_budget_remaining(0.9, 0.99) == 0.0  # overspent: clamped
    assert slo.error_budget_remaining(2 / 3, 0.5) == pytest.approx(1 / 3)
    assert slo.error_budget_remaining(None, 0.99) is None


def test_window_note_needs_four_scrapes():
    group = slo.SloGroup("wait", 5.0, 0.99, "30s", "7d", 5.0, 5.0)
    assert slo.window_note(group, 7.5) is None
    note = slo.window_note(group, 15)
    assert note.startswith("slo.window 30s holds fewer than 4 scrapes at a 15s scrape interval") and "at least 60s" in note


def vec(value, pool="llama", namespace="serving"):
    return [{"metric": {"namespace": namespace, "pool": pool}, "value": [0, str(value)]}]


def test_parse_results_per_pool():
    parsed = slo.parse({"attainment": vec(0.75), "windows": vec(12), "last_good": []}, S)
    assert parsed == {("serving", "llama"): slo.PoolSlo(attainment=0.75, windows=12, last_good=None)}


class Reader:
    """Canned answers to results_at, recording what was asked (one set of queries per group and window end)."""

    settings = S

    def __init__(self, results):
        self.results, self.asked = results, []

    def results_at(self, url, named, at):
        self.asked.append((url, dict(named), at))
        return self.results


SPEC = {"model": {"name": "m"}, "slo": {"targetSeconds": 3, "percentile": 0.9, "objective": 0.5, "window": "5s",
                                       "period": "1m"}, "maxReplicas": 4, "slotsPerReplica": 1}


def metrics_with_buckets():
    return observe.PoolMetrics(newest_sample_time=time.time(), queue_buckets=tuple((b, 1.0) for b in BOUNDS))


def test_measure_fills_status_and_the_window_observations():
    pools = observe.Pools()
    pools.scrape_interval = 1.0
    reader = Reader({"attainment": vec(2 / 3), "windows": vec(12), "last_good": vec(0.6)})
    status, end, good, note = slo.measure(reader, parse_spec(SPEC), pools, metrics_with_buckets(), "serving", "llama", 1001.5)
    assert (end, good, note) == (995.0, 0.6, None)
    assert status == {"objective": 0.5, "window": "5s", "period": "1m", "measuredWindows": 12, "attainment": 0.6667,
                      "errorBudgetRemaining": 0.3333, "lastWindowEnd": "1970-01-01T00:16:35Z", "lastWindowGoodShare": 0.6,
                      "interpolated": True, "note": "slo.targetSeconds 3s is not a bucket bound: the share within target "
                      "is interpolated between 2.5s and 5s"}
    (_, asked, at), = reader.asked
    assert at == 995.0 and asked["attainment"].endswith("[59999ms:5s])")


def test_measure_says_when_the_window_is_too_fine_and_asks_nothing():
    pools = observe.Pools()
    pools.scrape_interval = 2.0
    reader = Reader({})
    status, end, good, note = slo.measure(reader, parse_spec(SPEC), pools, metrics_with_buckets(), "serving", "llama", 1000)
    assert note.startswith("slo.window 5s holds fewer than 4 scrapes at a 2s scrape interval")
    assert status["note"] == note and "attainment" not in status and reader.asked == [] and end is None


def test_measure_without_objective_or_histogram():
    no_objective = {**SPEC, "slo": {"targetSeconds": 3}}
    assert slo.measure(Reader({}), parse_spec(no_objective), observe.Pools(), metrics_with_buckets(), "s", "p", 0) == (
        None, None, None, None)
    status, *_ = slo.measure(Reader({}), parse_spec(SPEC), observe.Pools(), None, "s", "p", 0)
    assert status["note"] == "no vLLM queue-time histogram for this pool now: attainment not measured"


def test_gauges_follow_status_and_forget_drops_them():
    registry = CollectorRegistry()
    m = OperatorMetrics(registry)
    m.record_slo("serving", "llama", {"attainment": 0.75, "errorBudgetRemaining": 0.5})
    labels = {"namespace": "serving", "pool": "llama"}
    assert registry.get_sample_value("inferencepool_slo_attainment", labels) == 0.75
    assert registry.get_sample_value("inferencepool_error_budget_remaining", labels) == 0.5
    m.record_slo("serving", "llama", {"attainment": 0.75})  # budget unknown now: its series goes
    assert registry.get_sample_value("inferencepool_error_budget_remaining", labels) is None
    m.forget("serving", "llama")
    assert registry.get_sample_value("inferencepool_slo_attainment", labels) is None


def test_a_window_too_fine_is_a_measurement_limit():
    from inferencepool.operator import status as pool_status

    make = lambda kind, ok, reason, message: {"type": kind, "status": ok, "reason": reason, "message": message}  # noqa: E731
    c = pool_status.measurement_condition(parse_spec(SPEC), None, None, make, "slo.window 5s holds fewer than 4 scrapes")
    assert (c["status"], c["reason"], c["message"]) == (True, "SloWindowTooShort", "slo.window 5s holds fewer than 4 scrapes")
    assert pool_status.measurement_condition(parse_spec(SPEC), None, None, make)["reason"] == "Resolved"
