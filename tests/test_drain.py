"""Deletion costs from per-pod running requests: the PromQL, its parsing, and which pods change."""

from __future__ import annotations

from inferencepool.operator import drain
from inferencepool.operator.observe import QuerySettings


def test_query_matches_both_spellings_one_pool_and_per_pod_series():
    q = drain.running_query(QuerySettings(pool_label="ipool", namespace_label="ns"), "serving", "llama", 'cluster="eu",')
    selector = '{ns=~"serving|", ipool="llama", pod!="", cluster="eu"}'
    assert q == f"sum by (pod) (vllm:num_requests_running{selector} or vllm_num_requests_running{selector})"


def test_parse_keeps_finite_values_of_named_pods():
    result = [
        {"metric": {"pod": "a"}, "value": [1.0, "3"]},
        {"metric": {"pod": "b"}, "value": [1.0, "NaN"]},
        {"metric": {}, "value": [1.0, "2"]},
        {"metric": {"pod": "c"}, "value": [1.0, "0.5"]},
    ]
    assert drain.parse_running(result) == {"a": 3.0, "c": 0.5}


def test_costs_change_only_where_data_exists_and_differs():
    pods = [
        {"metadata": {"name": "a"}},
        {"metadata": {"name": "b", "annotations": {drain.DELETION_COST: "2"}}},
        {"metadata": {"name": "c", "annotations": {drain.DELETION_COST: "9"}}},
        {"metadata": {"name": "d", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ]
    assert drain.deletion_costs(pods, {"a": 4.6, "b": 2.2, "d": 0.0}) == {"a": "5"}
    assert drain.deletion_costs(pods, {}) == {}


def test_reader_says_nothing_when_prometheus_is_down():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reader = drain.RunningReader(f"http://127.0.0.1:{port}", QuerySettings(), timeout=2)
    assert reader.read(None, "serving", "llama") == {}
    assert reader.last_error
