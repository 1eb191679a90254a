"""Prometheus results -> per-pool metrics -> Observations; pods -> cold start and GPU shortage."""

from __future__ import annotations

from dataclasses import replace
import math
import time

import numpy as np
import pytest

from inferencepool.operator import observe
from inferencepool.core import policy, signals
from inferencepool.operator.observe import PoolMetrics, QuerySettings

S = QuerySettings(rate_window="2m", burst_window="15s")
VLLM_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # vLLM's request_latency_buckets


def sample(value, pool="llama", namespace="serving", t=1000.0, **labels):
    metric = {"pool": pool, **({"namespace": namespace} if namespace is not None else {}), **labels}
    return {"metric": metric, "value": [t, str(value)]}


def bucket_samples(values: np.ndarray, pool="llama", scale=1.0):
    """A `sum by (pool, le) (rate(..._bucket))` result for these observed values."""
    out = [sample(scale * float((values <= le).sum()), pool=pool, le=str(le)) for le in VLLM_BUCKETS]
    return out + [sample(scale * len(values), pool=pool, le="+Inf")]


def buckets(values: np.ndarray):
    return [(le, float((values <= le).sum())) for le in VLLM_BUCKETS] + [(math.inf, float(len(values)))]


# ---------------------------------------------------------------- queries


def test_one_query_per_signal_grouped_by_pool_with_vllm_names():
    qs = observe.queries(S)
    assert qs["completion_rate"] == (
        'sum by (namespace, pool) (rate(vllm:request_success_total{pool!=""}[2m])'
        ' or rate(vllm_request_success_total{pool!=""}[2m]))'
    )
    assert "deriv(vllm:num_requests_waiting" in qs["in_system_growth"] and "deriv(vllm:num_requests_running" in qs["in_system_growth"]
    assert "vllm:request_inference_time_seconds_sum" in qs["service_mean"]
    assert qs["service_buckets"].startswith("sum by (namespace, pool, le) (rate(vllm:request_inference_time_seconds_bucket")
    assert "vllm:e2e_request_latency_seconds_sum" in qs["e2e_mean"]
    assert "vllm:request_queue_time_seconds_count" in qs["queue_mean"]
    assert "vllm:request_prefill_time_seconds_sum" in qs["prefill_mean"]
    assert "vllm:time_to_first_token_seconds_bucket" in qs["ttft_buckets"]
    assert qs["newest_sample"] == (
        'max by (namespace, pool) (timestamp(vllm:num_requests_running{pool!=""})'
        ' or timestamp(vllm_num_requests_running{pool!=""}))'
    )
    assert "[120s:15s]" in qs["burst_rate_var"] and qs["burst_rate_var"].startswith("stdvar_over_time(")
    assert "delta(" not in qs["burst_rate_var"]  # the burst window counts completions, as before
    for k, span in ((1, "[480s:15s]"), (2, "[2400s:15s]")):  # the longer windows count arrivals: + growth inside
        assert span in qs[f"burst_rate_var_{k}"] and span in qs[f"burst_rate_mean_{k}"]
        assert "delta(vllm:num_requests_waiting" in qs[f"burst_rate_var_{k}"]
        assert "delta(vllm_num_requests_running" in qs[f"burst_rate_var_{k}"]
    assert all("{pool" in q for name, q in qs.items() if name != "unlabelled_series")


def test_pool_matchers_and_label_names_are_configurable():
    qs = observe.queries(QuerySettings(rate_window="30s", pool_label="ipool", namespace_label="ns"), 'cluster="eu",')
    assert qs["waiting"] == (
        'sum by (ns, ipool) (vllm:num_requests_waiting{ipool!="", cluster="eu"}'
        ' or vllm_num_requests_waiting{ipool!="", cluster="eu"})'
    )
    assert qs["unlabelled_series"] == 'count({__name__=~"vllm[:_]num_requests_running", ipool="", cluster="eu"})'


def test_every_vllm_series_is_read_under_both_spellings():
    """vllm:x and the escaped vllm_x (Prometheus 2.x scraping prometheus_client >= 0.23), always both."""
    import re

    for name, promql in observe.queries(S).items():
        colon = re.findall(r"vllm:(\w+)", promql)
        underscore = re.findall(r"vllm_(\w+)\{", promql)
        if name in ("targets_up", "unlabelled_series"):
            continue
        assert colon and sorted(colon) == sorted(underscore), name


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5)])
def test_parse_duration(text, seconds):
    assert observe.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "2x", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="not a PromQL duration"):
        observe.parse_duration(text)


# ---------------------------------------------------------------- parsing


def test_vector_nan_and_inf_are_unknown():
    result = [sample(2.5, pool="a"), sample("NaN", pool="b"), sample("+Inf", pool="c"), sample(0, pool="d")]
    assert observe.parse_vector(result, S) == {("serving", "a"): 2.5, ("serving", "d"): 0.0}


def test_buckets_sorted_per_pool():
    result = [sample(3, le="+Inf"), sample(1, le="0.5"), sample(2, le="1.0"), sample(7, pool="b", le="+Inf")]
    assert observe.parse_buckets(result, S) == {
        ("serving", "llama"): [(0.5, 1.0), (1.0, 2.0), (math.inf, 3.0)],
        ("serving", "b"): [(math.inf, 7.0)],
    }


@pytest.mark.parametrize(
    "name, draw, tolerance",
    [
        ("exponential, mean 3s", lambda r, n: r.exponential(3.0, n), 0.12),
        ("exponential, mean 20s", lambda r, n: r.exponential(20.0, n), 0.15),
        ("gamma CV 0.5, mean 6s", lambda r, n: r.gamma(4.0, 1.5, n), 0.1),
        ("lognormal CV 2, mean 5s", lambda r, n: r.lognormal(math.log(5 / math.sqrt(5)), math.sqrt(math.log(5)), n), 0.12),
    ],
)
def test_histogram_cv_against_known_distributions(name, draw, tolerance):
    """Within ~10-15% on vLLM's coarse buckets, and erring high (more replicas), not low."""
    values = draw(np.random.default_rng(7), 200_000)
    true_cv = values.std() / values.mean()
    estimate = signals.histogram_cv(buckets(values), values.mean())
    assert estimate == pytest.approx(true_cv, rel=tolerance), name
    assert estimate >= 0.97 * true_cv, name


def test_histogram_cv_of_a_constant_is_small():
    values = np.full(1000, 4.0)
    assert signals.histogram_cv(buckets(values), 4.0) < 0.1


def test_histogram_cv_uses_the_exact_sum_for_the_open_top_bucket():
    # half at ~1s, half far beyond the last bound: the tail's mean comes from sum/count
    values = np.concatenate([np.full(500, 0.9), np.full(500, 9000.0)])
    estimate = signals.histogram_cv(buckets(values), values.mean())
    assert estimate == pytest.approx(values.std() / values.mean(), rel=0.05)


def test_histogram_cv_unknown_without_data():
    assert signals.histogram_cv([], 1.0) is None
    assert signals.histogram_cv([(1.0, 0.0), (math.inf, 0.0)], 1.0) is None
    assert signals.histogram_cv([(1.0, 2.0), (math.inf, 2.0)], None) is None


def test_histogram_quantile_matches_prometheus():
    b = [(1.0, 50.0), (2.0, 90.0), (5.0, 100.0), (math.inf, 100.0)]
    assert signals.histogram_quantile(0.5, b) == 1.0
    assert signals.histogram_quantile(0.25, b) == 0.5
    assert signals.histogram_quantile(0.7, b) == pytest.approx(1.5)
    assert signals.histogram_quantile(0.99, b) == pytest.approx(2 + 3 * 0.9)
    assert signals.histogram_quantile(0.99, [(1.0, 10.0), (math.inf, 20.0)]) == 1.0  # in +Inf: the last bound
    assert signals.histogram_quantile(0.99, [(1.0, 0.0), (math.inf, 0.0)]) is None


def test_arrival_cv_from_count_dispersion():
    window = 15.0
    # Poisson counts at 4/s: Var(N) = E(N) = 60 per window -> Var(rate) = 60 / 15^2
    assert signals.arrival_cv(60 / window**2, 4.0, window) == pytest.approx(1.0)
    # bursty: dispersion 4 -> ca = 2
    assert signals.arrival_cv(4 * 60 / window**2, 4.0, window) == pytest.approx(2.0)
    # smoother than Poisson is not trusted (completions are smoother than arrivals)
    assert signals.arrival_cv(0.0, 4.0, window) == 1.0
    # too few requests per window to tell, or unknown
    assert signals.arrival_cv(10.0, 0.5, window) == 1.0
    assert signals.arrival_cv(None, 4.0, window) == 1.0
    assert signals.arrival_cv(1e6, 4.0, window) == 4.0  # capped


def canned(**overrides):
    """Raw results for one pool 'llama': 3 req/s completing, queue growing by 0.5/s, service ~ Exp(2s)."""
    service = np.random.default_rng(1).exponential(2.0, 20_000)
    results = {
        "completion_rate": [sample(3.0)],
        "in_system_growth": [sample(0.5)],
        "waiting": [sample(4)],
        "running": [sample(6)],
        "newest_sample": [sample(995.0)],
        "service_mean": [sample(service.mean())],
        "service_buckets": bucket_samples(service),
        "service_samples": [sample(360.0)],
        "e2e_mean": [sample(2.5)],
        "queue_mean": [sample(0.3)],
        "prefill_mean": [sample(0.2)],
        "queue_buckets": [sample(10, le="0.3"), sample(10, le="+Inf")],
        "ttft_buckets": [sample(10, le="+Inf")],
        "burst_rate_var": [sample(3.0 / 15)],
        "burst_rate_mean": [sample(3.0)],
    }
    results.update(overrides)
    return results


def test_pool_metrics_from_canned_results():
    pools = observe.pool_metrics(canned(), S)
    m = pools[("serving", "llama")]
    assert m.arrival_rate == pytest.approx(3.5)  # completions + growth of requests in the system
    assert m.completion_rate == 3.0
    assert m.service_time == pytest.approx(2.0, rel=0.03)
    assert m.service_cv == pytest.approx(1.0, abs=0.12)
    assert m.arrival_cv == pytest.approx(1.0)
    assert (m.prefill_time, m.waiting, m.running, m.newest_sample_time) == (0.2, 4.0, 6.0, 995.0)
    assert m.queue_buckets == ((0.3, 10.0), (math.inf, 10.0))


def test_arrival_dispersion_is_read_at_three_windows_and_reaches_decide():
    # 3 req/s; Var(rate) per window chosen for I = 1 at 15 s and 4 at 60 s; 300 s unknown (NaN)
    results = canned(burst_rate_var_1=[sample(4 * 3.0 / 60)], burst_rate_mean_1=[sample(3.0)],
                     burst_rate_var_2=[sample("NaN")], burst_rate_mean_2=[sample(3.0)])
    assert S.dispersion_windows == (15.0, 60.0, 300.0)
    m = observe.pool_metrics(results, S)[("serving", "llama")]
    assert m.arrival_dispersion == ((15.0, pytest.approx(1.0)), (60.0, pytest.approx(4.0)), (300.0, None))
    obs = observe.observations(m, now=1000.0, current_replicas=2, ready_replicas=2)
    assert obs.arrival_dispersion == m.arrival_dispersion
    spec = policy.PoolSpec(slo_target_seconds=58.0, slots_per_replica=4, dispersion_windows=True)  # 2 + 58 = 60 s: I = 4
    decision = policy.decide(spec, obs)
    assert decision.dispersion_timescale == pytest.approx(60.0, rel=0.05)
    assert decision.arrival_cv == pytest.approx(2.0, rel=0.05)
    assert "arrival CV 2.0" in decision.reason


def test_arrivals_never_negative_when_the_queue_drains():
    m = observe.pool_metrics(canned(in_system_growth=[sample(-5.0)]), S)[("serving", "llama")]
    assert m.arrival_rate == 0.0


def test_missing_growth_means_completions_alone():
    m = observe.pool_metrics(canned(in_system_growth=[]), S)[("serving", "llama")]
    assert m.arrival_rate == 3.0


def test_service_time_falls_back_to_e2e_minus_queue():
    m = observe.pool_metrics(canned(service_mean=[sample("NaN")], service_buckets=[]), S)[("serving", "llama")]
    assert m.service_time == pytest.approx(2.2)
    assert m.service_cv == 1.0


def test_no_requests_finished_means_service_time_unknown():
    results = canned(service_mean=[sample("NaN")], e2e_mean=[sample("NaN")], queue_mean=[sample("NaN")],
                     completion_rate=[sample(0)], in_system_growth=[sample(0)])
    m = observe.pool_metrics(results, S)[("serving", "llama")]
    assert m.arrival_rate == 0.0 and m.service_time is None


def test_a_pool_without_fresh_samples_is_absent():
    pools = observe.pool_metrics(canned(newest_sample=[]), S)
    assert pools == {}
    assert observe.find(pools, "serving", "llama") is None


def test_many_pools_from_one_result_set():
    results = canned()
    for name in ("completion_rate", "newest_sample"):
        results[name] = results[name] + [sample(7.0 if name == "completion_rate" else 990.0, pool="mistral")]
    pools = observe.pool_metrics(results, S)
    assert set(pools) == {("serving", "llama"), ("serving", "mistral")}
    assert pools[("serving", "mistral")].arrival_rate == 7.0
    assert pools[("serving", "mistral")].service_time is None


def test_series_without_namespace_match_any_namespace():
    pools = {("", "llama"): PoolMetrics(newest_sample_time=1.0)}
    assert observe.find(pools, "serving", "llama") is pools[("", "llama")]
    assert observe.find(pools, "serving", "other") is None


# ---------------------------------------------------------------- observations and the hold


def test_observations_carry_metrics_and_their_age():
    m = observe.pool_metrics(canned(), S)[("serving", "llama")]
    obs = observe.observations(m, now=1000.0, current_replicas=3, ready_replicas=2, unschedulable_replicas=1, cold_start_seconds=95.0)
    assert (obs.time, obs.current_replicas, obs.ready_replicas, obs.unschedulable_replicas) == (1000.0, 3, 2, 1)
    assert obs.arrival_rate == pytest.approx(3.5) and obs.metrics_age_seconds == 5.0
    assert (obs.prefill_time, obs.cold_start_seconds) == (0.2, 95.0)
    assert obs.service_samples == 360.0  # decide() trusts a window's service time by its completions


def test_service_samples_only_vouch_for_the_measured_service_time():
    m = observe.pool_metrics(canned(service_samples=[sample(3.0)]), S)[("serving", "llama")]
    assert m.service_samples == 3.0
    fallback = observe.pool_metrics(canned(service_mean=[sample("NaN")], service_samples=[sample(3.0)]), S)
    assert fallback[("serving", "llama")].service_samples is None  # e2e - queue: another histogram's count


def test_no_metrics_means_unknown_rates_and_decide_holds():
    obs = observe.observations(None, now=1000.0, current_replicas=4)
    assert obs.arrival_rate is None and obs.service_time is None
    decision = policy.decide(policy.PoolSpec(min_replicas=1, max_replicas=8), obs)
    assert decision.replicas == 4 and not decision.metrics_available


def test_stale_metrics_hold_too():
    m = observe.pool_metrics(canned(completion_rate=[sample(0.0)], in_system_growth=[]), S)[("serving", "llama")]
    obs = observe.observations(m, now=995.0 + 600, current_replicas=4)
    assert obs.metrics_age_seconds == 600
    decision = policy.decide(policy.PoolSpec(min_replicas=1, max_replicas=8, max_metrics_age_seconds=120), obs)
    assert decision.replicas == 4 and not decision.metrics_available and "old" in decision.reason


# ---------------------------------------------------------------- pods


def pod(name, created, ready_at=None, phase="Running", scheduled=None):
    conditions = []
    if ready_at:
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": ready_at})
    if scheduled:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduled})
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": {"phase": phase, "conditions": conditions}}


def test_cold_start_is_the_slowest_recent_creation_to_ready():
    pods = [
        pod("a", "2025-01-01T10:00:00Z", "2025-01-01T10:01:30Z"),  # 90 s
        pod("b", "2025-01-01T11:00:00Z", "2025-01-01T11:02:00Z"),  # 120 s
        pod("c", "2025-01-01T12:00:00Z"),  # not Ready yet
    ]
    assert observe.cold_start_seconds(pods) == 120.0
    assert observe.cold_start_seconds(pods, recent=1) == 120.0
    assert observe.cold_start_seconds([pods[2]]) is None


def test_cold_start_counts_real_creations_not_ready_flaps_after_an_outage():
    """Issue 15: after an apiserver outage the pods' Ready condition flapped and the cold start read 4,612 s."""
    cold_starts, key = observe.ColdStarts(), ("ns", "p")
    loading = [pod("a", "2025-01-01T10:00:00Z"), pod("b", "2025-01-01T10:00:01Z")]
    assert cold_starts.measure(key, loading) is None  # loading: nothing measured yet
    ready = [pod("a", "2025-01-01T10:00:00Z", "2025-01-01T10:00:06Z"),
             pod("b", "2025-01-01T10:00:01Z", "2025-01-01T10:00:08Z")]
    assert cold_starts.measure(key, ready) == 7.0
    # the node flaps: NotReady, then Ready again 4,600 s after creation; the measured figure stays
    flapped = [pod("a", "2025-01-01T10:00:00Z"), pod("b", "2025-01-01T10:00:01Z", "2025-01-01T11:16:53Z")]
    assert cold_starts.measure(key, flapped) == 7.0
    again = [pod("a", "2025-01-01T10:00:00Z", "2025-01-01T11:16:52Z"), flapped[1]]
    assert cold_starts.measure(key, again) == 7.0
    assert observe.cold_start_seconds(again) > 4000  # what the stateless reading said
    # a pod already Ready when first seen (a restarted operator) is not a measured creation
    assert observe.ColdStarts().measure(key, again) is None
    # a new pod seen loading then Ready is measured; a pod gone is forgotten
    new = pod("c", "2025-01-01T12:00:00Z")
    cold_starts.measure(key, [new])
    assert cold_starts.measure(key, [pod("c", "2025-01-01T12:00:00Z", "2025-01-01T12:00:30Z")]) == 30.0
    cold_starts.forget(key)
    assert cold_starts.measure(key, again) is None


def test_unschedulable_pods_with_the_scheduler_message():
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pods = [
        pod("a", "2025-01-01T10:00:00Z", "2025-01-01T10:01:00Z"),
        pod("b", "2025-01-01T10:00:00Z", phase="Pending", scheduled=message),
        pod("c", "2025-01-01T10:00:00Z", phase="Pending"),  # pending, but scheduled (pulling, loading)
    ]
    assert observe.unschedulable_pods(pods) == [("b", message)]


# ---------------------------------------------------------------- the reader: one query per signal per tick


class FakeClient:
    def __init__(self, results, fail=False):
        self.results, self.fail, self.calls = results, fail, []

    def custom_query(self, query):
        self.calls.append(query)
        if self.fail:
            raise ConnectionError("connection refused")
        name = next((n for n, q in observe.queries(S).items() if q == query), "scrape_spacing")
        return self.results.get(name, [])


def test_reader_shares_one_batched_read_between_pools_within_the_ttl():
    client = FakeClient(canned())
    now = [0.0]
    reader = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: client, clock=lambda: now[0])
    assert observe.find(reader.read(), "serving", "llama").arrival_rate == pytest.approx(3.5)
    reader.read()  # a second pool, same tick
    assert len(client.calls) == 1 + len(observe.queries(S))  # the scrape spacing first, then every signal
    now[0] = 6.0
    reader.read()
    assert len(client.calls) == 2 * (1 + len(observe.queries(S)))


def test_reader_failure_is_reported_and_cached():
    client = FakeClient({}, fail=True)
    errors = []
    reader = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: client, clock=lambda: 0.0,
                                      on_error=lambda signal, error: errors.append(signal))
    for _ in range(3):
        with pytest.raises(observe.PrometheusUnavailable, match="connection refused"):
            reader.read()
    assert len(client.calls) == 1 and errors == ["scrape_spacing"]


def test_a_hanging_read_does_not_hold_other_pools_waiting():
    """Issue 15: pools waiting on one hanging Prometheus held every handler thread. A caller now waits at
    most reader.first_wait when nothing was read yet (then a PrometheusUnavailable), and takes the previous
    answer at once while a refresh hangs (wait=0, as run.py builds it)."""
    import threading

    release = threading.Event()

    class Hanging(FakeClient):
        hang = False

        def custom_query(self, query):
            if self.hang:
                release.wait(10)
            return super().custom_query(query)

    client, now = Hanging(canned()), [0.0]
    reader = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: client, clock=lambda: now[0])
    reader.wait, reader.first_wait = 0.0, 0.2

    def while_one_read_hangs(check):
        release.clear()
        client.hang = True
        def read_quietly():  # with nothing read yet this caller too gives up, as the check expects
            try:
                reader.read()
            except observe.PrometheusUnavailable:
                pass

        first = threading.Thread(target=read_quietly)
        first.start()
        time.sleep(0.1)
        try:
            check()
        finally:
            release.set()
            first.join(5)
        client.hang = False

    def nothing_read_yet():
        with pytest.raises(observe.PrometheusUnavailable, match="has not answered yet"):
            reader.read()

    while_one_read_hangs(nothing_read_yet)
    for _ in range(100):  # the released refresh finishes in its own thread
        if reader.age() is not None:
            break
        time.sleep(0.05)
    now[0] = 10.0  # a good answer is cached (by the read that hung), now expired: the next read hangs
    while_one_read_hangs(lambda: observe.find(reader.read(), "serving", "llama").arrival_rate == pytest.approx(3.5)
                         or pytest.fail("the previous answer was not returned"))


def test_a_read_gives_up_past_its_budget():
    now = [0.0]

    class Slow(FakeClient):
        def custom_query(self, query):
            now[0] += 5.0  # each query answers after 5 s
            return super().custom_query(query)

    reader = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: Slow(canned()), clock=lambda: now[0])
    with pytest.raises(observe.PrometheusUnavailable, match="answered too slowly"):
        reader.read()
    assert now[0] <= observe.READ_BUDGET_SECONDS + 5.0  # it stopped asking


def test_a_pool_with_targets_but_no_vllm_series_is_present_without_samples():
    results = canned(targets_up=[sample(1.0), sample(0.0, pool="other")], unlabelled_series=[{"metric": {}, "value": [0, "3"]}])
    pools = observe.pool_metrics(results, S)
    assert pools[("serving", "llama")].targets_up == 1.0 and pools[("serving", "llama")].newest_sample_time == 995.0
    other = pools[("serving", "other")]
    assert (other.newest_sample_time, other.targets_up) == (None, 0.0)
    assert observe.observations(other, now=1000.0, current_replicas=2).arrival_rate is None
    assert pools.unlabelled_series == 3
    message = observe.missing_series_message(None, pools.unlabelled_series, S, "serving", "nowhere")
    assert 'pool="nowhere"' in message and "3 vLLM series in Prometheus carry no 'pool' label" in message


def test_arrivals_count_refusals_and_requests_cancelled_while_running():
    """Overload: 10/s arrive; 2/s refused (503), 6/s finish, 0.5/s cancelled while running and 0.5/s while
    queued (counted nowhere), the queue grows by 1/s, running is full and steady. First tokens = 6.5/s."""
    truth, refused, finished, cancel_running, cancel_waiting, queue_growth = 10.0, 2.0, 6.0, 0.5, 0.5, 1.0
    assert refused + finished + cancel_running + cancel_waiting + queue_growth == truth
    first_tokens = finished + cancel_running
    old = observe.arrival_estimate(finished, queue_growth)  # what was read before: completions + growth
    with_refusals = observe.arrival_estimate(finished, queue_growth, rejections=refused)
    both = observe.arrival_estimate(finished, queue_growth, first_tokens, queue_growth, refused)
    assert (old, with_refusals, both) == (7.0, 9.0, 9.5)
    assert truth - both == cancel_waiting  # only the requests cancelled before their first token are missed
    m = observe.pool_metrics(canned(completion_rate=[sample(finished)], in_system_growth=[sample(queue_growth)],
                                    first_token_rate=[sample(first_tokens)], waiting_growth=[sample(queue_growth)],
                                    rejection_rate=[sample(refused)]), S)[("serving", "llama")]
    assert (m.arrival_rate, m.rejection_rate) == (9.5, 2.0)


def test_arrival_estimate_is_never_negative_and_unknown_without_completions():
    assert observe.arrival_estimate(1.0, -5.0, 1.0, -3.0) == 0.0
    assert observe.arrival_estimate(None, 1.0, 5.0) is None


def test_a_pools_own_query_gives_one_value_or_says_why_not():
    assert observe.scalar_result([{"metric": {}, "value": [0, "4.5"]}]) == (4.5, None)
    assert observe.scalar_result([]) == (None, "returned no series")
    assert observe.scalar_result([sample(1), sample(2, pool="b")])[1].startswith("returned 2 series, not one")
    assert observe.scalar_result([sample("NaN")])[1].startswith("returned NaN")

    class Client:
        calls = 0

        def custom_query(self, query):
            Client.calls += 1
            return [{"metric": {}, "value": [0, "7"]}]

    now = [0.0]
    reader = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: Client(), clock=lambda: now[0])
    assert reader.value(None, "vector(7)") == (7.0, None)
    reader.value(None, "vector(7)")
    assert Client.calls == 1  # cached within the ttl, like the batched read


# ---------------------------------------------------------------- windows from the scrape interval


def test_windows_hold_at_least_four_scrapes():
    settings = QuerySettings(rate_window="2m", burst_window="15s")
    raised, interval, note = observe.windows_for(settings, 15.0)  # the common 15 s scrape
    assert (raised.rate_window, raised.burst_window, interval) == ("2m", "60s", 15.0)
    assert "--burst-window 15s -> 60s" in note and "at least 60s" in note
    assert observe.windows_for(QuerySettings(rate_window="30s", burst_window="6s"), 1.0)[2] is None  # the bed
    assert observe.windows_for(settings, None) == (settings, None, None)  # unknown: as configured
    forced = observe.windows_for(QuerySettings(rate_window="1m", scrape_interval=30.0), 1.0)[0]
    assert (forced.rate_window, forced.burst_window) == ("120s", "120s")  # the flag wins over the measurement


def test_the_scrape_spacing_counts_only_series_older_than_its_window():
    q = observe.spacing_query(S, 'cluster="eu"')
    assert q.startswith("min(300 / (count_over_time(vllm:num_requests_running{pool!=\"\", cluster=\"eu\"}[5m]) and ")
    assert 'vllm_num_requests_running{pool!="", cluster="eu"} offset 5m' in q


def test_the_reader_widens_its_windows_to_the_measured_scrape_interval():
    client = FakeClient({**canned(), "scrape_spacing": [{"metric": {}, "value": [0, "15"]}]})
    pools = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: client, clock=lambda: 0.0).read()
    assert (pools.scrape_interval, pools.rate_window, pools.burst_window) == (15.0, "2m", "60s")
    assert "--burst-window 15s -> 60s" in pools.window_note
    assert any("[480s:60s]" in q for q in client.calls) and not any("[15s]" in q for q in client.calls)
    assert any("[9600s:60s]" in q for q in client.calls)  # the longest dispersion window, 20 x 60 s, 8 of them, by 60 s


# ---------------------------------------------------------------- frozen gauges


def test_frozen_gauges_are_stale_not_load():
    frozen = canned(waiting=[sample(50)], running=[sample(16)], gauge_changes=[sample(0)], completion_rate=[sample(0)],
                    token_growth=[sample(0)], in_system_growth=[sample(0)], first_token_rate=[sample(0)])
    m = observe.pool_metrics(frozen, S)[("serving", "llama")]
    assert m.gauges_frozen and (m.waiting, m.running, m.arrival_rate) == (None, None, 0.0)
    for moving in ({"gauge_changes": [sample(3)]}, {"token_growth": [sample(200)]}, {"completion_rate": [sample(0.5)]},
                   {"waiting": [sample(0)], "running": [sample(0)]}):
        m = observe.pool_metrics({**frozen, **moving}, S)[("serving", "llama")]
        assert not m.gauges_frozen, moving


# ---------------------------------------------------------------- short requests and vLLM's 0.3 s smallest bucket


@pytest.mark.parametrize("mean", [0.05, 0.1, 0.2])
def test_a_service_time_below_the_smallest_bucket_gets_no_cv_from_it(mean):
    service = np.random.default_rng(3).exponential(mean, 50_000)  # CV 1
    naive = signals.histogram_cv(buckets(service), service.mean())
    assert naive < (0.7 if mean <= 0.1 else 0.95)  # what the histogram alone would say: too smooth
    m = observe.pool_metrics(canned(service_mean=[sample(service.mean())], service_buckets=bucket_samples(service)), S)
    m = m[("serving", "llama")]
    assert (m.service_cv, m.service_cv_resolved, m.smallest_service_bucket) == (1.0, False, 0.3)
    note = observe.resolution_note(m, "wait", 10.0)
    assert "too short for vLLM's latency buckets (smallest 0.3s)" in note and "--custom-histogram-buckets" in note


def test_a_resolvable_service_time_keeps_its_histogram_cv():
    m = observe.pool_metrics(canned(), S)[("serving", "llama")]  # Exp(2 s)
    assert m.service_cv_resolved and m.service_cv == pytest.approx(1.0, abs=0.12)
    assert observe.resolution_note(m, "wait", 1.0) is None


def test_an_slo_below_the_smallest_queue_bucket_is_reported():
    m = observe.pool_metrics(canned(), S)[("serving", "llama")]  # queue buckets start at 0.3 s
    assert "slo.targetSeconds 0.1s is below vLLM's smallest queue-time bucket (0.3s)" in observe.resolution_note(m, "wait", 0.1)
    assert observe.resolution_note(m, "ttft", 0.1) is None  # no TTFT bucket below 0.1 s in this result


# ---------------------------------------------------------------- impossible values (issue 15)


@pytest.mark.parametrize("signal, value", [
    ("completion_rate", -3.0), ("completion_rate", 1e308), ("waiting", -1), ("running", 1e308),
    ("service_mean", -2.0), ("in_system_growth", 1e308), ("burst_rate_mean", "+Inf"),
])
def test_an_impossible_value_is_dropped_and_named_and_leaves_no_rate(signal, value):
    m = observe.pool_metrics(canned(**{signal: [sample(value)]}), S)[("serving", "llama")]
    assert m.invalid_signals == (signal,)
    assert m.arrival_rate is None  # unknown, so decide() holds: never read as zero demand
    obs = observe.observations(m, now=1000.0, current_replicas=5)
    d = policy.decide(policy.PoolSpec(max_replicas=10), obs)
    assert d.replicas == 5 and not d.metrics_available


def test_negative_bucket_counts_are_invalid_but_a_draining_queue_is_not():
    m = observe.pool_metrics(canned(service_buckets=[sample(-1, le="+Inf")]), S)[("serving", "llama")]
    assert m.invalid_signals == ("service_buckets",)
    m = observe.pool_metrics(canned(in_system_growth=[sample(-5.0)], waiting_growth=[sample(-2.0)]), S)[("serving", "llama")]
    assert m.invalid_signals == () and m.arrival_rate == 0.0


def test_an_impossible_value_of_another_pool_leaves_this_one_alone():
    results = canned(completion_rate=[sample(3.0), sample(-3.0, pool="other")],
                     newest_sample=[sample(995.0), sample(995.0, pool="other")])
    pools = observe.pool_metrics(results, S)
    assert pools[("serving", "llama")].invalid_signals == () and pools[("serving", "llama")].arrival_rate == pytest.approx(3.5)
    assert pools[("serving", "other")].invalid_signals == ("completion_rate",)


def test_the_arrival_rate_query_refuses_absurd_values():
    assert observe.scalar_result([sample(1e308)])[0] is None
    assert observe.scalar_result([sample(-1)])[0] is None
    assert observe.scalar_result([sample(12.5)]) == (12.5, None)


def test_results_at_a_past_time_are_asked_once_per_time_and_the_old_ones_dropped():
    class AtClient:
        def __init__(self):
            self.calls = []

        def custom_query(self, query, params=None):
            self.calls.append((query, params["time"]))
            return [{"metric": {}, "value": [0, "1"]}]

    client, now = AtClient(), [0.0]
    reader = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: client, clock=lambda: now[0])
    named = {"a": "up", "b": "vector(1)"}
    assert reader.results_at(None, named, 960.0)["a"] == [{"metric": {}, "value": [0, "1"]}]
    now[0] = 50.0  # past the ttl, same window: the answer for 960 cannot have changed
    reader.results_at(None, named, 960.0)
    assert client.calls == [("up", "960.000"), ("vector(1)", "960.000")]
    reader.results_at(None, named, 1020.0)
    assert len(client.calls) == 4 and not [k for k in reader._cache if k[0] == "at" and k[2] == 960.0]  # noqa: SLF001


# ---------------------------------------------------------------- load-dependent capacity (core/capacity.py)


def test_the_capacity_queries_read_kv_preemptions_running_and_token_time_under_both_names():
    qs = observe.queries(S)
    assert qs["kv_usage"] == ('avg by (namespace, pool) (vllm:kv_cache_usage_perc{pool!=""}'
                              ' or vllm_kv_cache_usage_perc{pool!=""})')
    assert qs["preemptions"] == ('sum by (namespace, pool) (increase(vllm:num_preemptions_total{pool!=""}[2m])'
                                 ' or increase(vllm_num_preemptions_total{pool!=""}[2m]))')
    assert qs["running_mean"] == ('avg by (namespace, pool) (avg_over_time(vllm:num_requests_running{pool!=""}[2m])'
                                  ' or avg_over_time(vllm_num_requests_running{pool!=""}[2m]))')
    assert "rate(vllm_inter_token_latency_seconds_sum" in qs["token_time_mean"]
    assert "/ sum by (namespace, pool) (rate(vllm:inter_token_latency_seconds_count" in qs["token_time_mean"]
    assert "vllm:time_per_output_token_seconds_sum" in qs["tpot_mean"]


CAPACITY = dict(kv_usage=[sample(0.97)], preemptions=[sample(2.0)], running_mean=[sample(12.0)],
                token_time_mean=[sample(0.011)], tpot_mean=[sample(0.5)])


def test_pool_metrics_carry_kv_preemptions_and_a_running_token_time_pair():
    m = observe.pool_metrics(canned(**CAPACITY), S)[("serving", "llama")]
    assert (m.kv_cache_usage, m.preemptions, m.running_mean, m.token_time) == (0.97, 2.0, 12.0, 0.011)
    old = observe.pool_metrics(canned(**{**CAPACITY, "token_time_mean": [sample("NaN")]}), S)[("serving", "llama")]
    assert old.token_time == 0.5  # vllm:time_per_output_token_seconds where the inter-token histogram is absent
    none = observe.pool_metrics(canned(), S)[("serving", "llama")]
    assert (none.kv_cache_usage, none.preemptions, none.running_mean, none.token_time) == (None,) * 4
    assert observe.observations(none, 1000.0, 2, 2).token_time_curve is None  # no pairs: constant service


def test_frozen_gauges_give_no_running_for_the_curve():
    frozen = canned(**CAPACITY, gauge_changes=[sample(0)], completion_rate=[sample(0)], token_growth=[sample(0)])
    assert observe.pool_metrics(frozen, S)[("serving", "llama")].running_mean is None


def test_the_reader_keeps_a_bounded_spaced_history_of_pairs_and_decide_sizes_with_its_curve(monkeypatch):
    results = canned(**CAPACITY)
    client = FakeClient(results)
    now = [0.0]
    reader = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: client, clock=lambda: now[0])
    points = lambda: observe.find(reader.read(), "serving", "llama").token_time_points
    assert points() == ((12.0, 0.011),)
    results.update(running_mean=[sample(2.0)], token_time_mean=[sample(0.0066)])
    now[0] = 6.0  # a new read, but within CURVE_SPACING_SECONDS of the last pair: not added
    assert points() == ((12.0, 0.011),)
    now[0] = 31.0
    assert points() == ((12.0, 0.011), (2.0, 0.0066))
    results.update(token_time_mean=[sample("NaN")], tpot_mean=[])
    now[0] = 62.0  # no token in the window: nothing learnt, the history stays
    assert points() == ((12.0, 0.011), (2.0, 0.0066))

    m = observe.find(reader.read(), "serving", "llama")
    obs = observe.observations(m, 1000.0, current_replicas=2, ready_replicas=2)
    assert obs.token_time_curve.concurrency == (2.0, 12.0)
    assert obs.token_time_curve.token_time == (0.0066, 0.011)
    assert (obs.service_concurrency, obs.kv_cache_usage, obs.preemptions) == (2.0, 0.97, 2.0)
    spec = policy.PoolSpec(slots_per_replica=16, max_replicas=50, prediction=False)
    d = policy.decide(spec, obs)
    assert d.capacity is not None and d.capacity.limited_by == "kv_cache"  # KV full, preempting: 6 running per replica
    assert d.capacity.slots == 3 and d.capacity.slowdown > 1

    monkeypatch.setattr(observe, "CURVE_POINTS", 3)
    small = observe.PrometheusReader("http://prom", S, ttl=5, connect=lambda url: client, clock=lambda: now[0])
    results.update(token_time_mean=[sample(0.01)])
    for k in range(5):
        now[0] = 1000.0 + 31 * k
        results.update(running_mean=[sample(float(k + 1))])
        pairs = observe.find(small.read(), "serving", "llama").token_time_points
    assert [n for n, _ in pairs] == [3.0, 4.0, 5.0]  # the newest CURVE_POINTS only
    small.forget("serving", "llama")  # a deleted pool's history goes; a new one starts afresh
    now[0] += 31
    assert observe.find(small.read(), "serving", "llama").token_time_points == ((5.0, 0.01),)


def test_the_wait_tail_is_the_histograms_share_over_the_target():
    waits = np.concatenate([np.zeros(900), np.linspace(0.5, 12.0, 100)])  # 100 of 1000 waited 0.5-12 s
    hist = tuple(buckets(waits))
    exact_over_5 = float((waits > 5.0).mean())  # 5 s is a bucket bound: exact
    assert signals.share_above(list(hist), 5.0) == pytest.approx(exact_over_5)
    # 3 s is inside (2.5, 5]: linear between the bounds' counts, as histogram_quantile reads it
    at_25, at_5 = (waits <= 2.5).sum(), (waits <= 5.0).sum()
    assert signals.share_above(list(hist), 3.0) == pytest.approx(1 - (at_25 + (at_5 - at_25) * 0.5 / 2.5) / 1000)
    assert signals.share_above(list(hist), 9000.0) == pytest.approx(0.0)  # above the last finite bound: none
    assert signals.share_above([(0.3, 0.0), (math.inf, 0.0)], 1.0) is None
    m = PoolMetrics(newest_sample_time=1.0, queue_buckets=tuple((le, c / 120.0) for le, c in hist))  # rates over 2 m
    share, requests = observe.wait_tail(m, "wait", 5.0, 120.0)
    assert share == pytest.approx(exact_over_5) and requests == pytest.approx(1000.0)
    assert observe.wait_tail(m, "ttft", 5.0, 120.0) == (None, None)  # no TTFT histogram here


def test_kv_capacity_from_cache_config_info_caps_the_slots():
    # vLLM exports CacheConfig's attributes as label strings; two engines of the pool, the smaller binds
    config = [sample(1, engine="0", num_gpu_blocks="512", block_size="16"),
              sample(1, engine="1", num_gpu_blocks="400", block_size="16"),
              sample(1, pool="other", num_gpu_blocks="None", block_size="16")]
    assert observe.kv_capacity(config, S) == {("serving", "llama"): 6400.0}
    results = canned(kv_config=config, tokens_per_request=[sample(1600.0)])  # 6400 tokens / 1600 = 4 requests
    m = observe.pool_metrics(results, S)[("serving", "llama")]
    assert (m.kv_tokens, m.tokens_per_request) == (6400.0, 1600.0)
    obs = observe.observations(replace(m, token_time_points=((2.0, 0.02),)), now=1000.0, current_replicas=2, ready_replicas=2)
    assert obs.kv_sequences == 4.0
    decision = policy.decide(policy.PoolSpec(slots_per_replica=16, slo_target_seconds=2.0), obs)
    assert decision.capacity.slots == 4 and decision.capacity.limited_by == "kv_cache"
    assert "4 effective slots per replica (kv_cache)" in decision.reason


def test_an_answer_over_the_cap_is_refused_before_it_is_read_whole():
    import io

    class Raw(io.BytesIO):
        def read(self, amount=-1, decode_content=True):
            return super().read(amount)

    class Response:
        def __init__(self, size):
            self.raw, self.closed = Raw(b"x" * size), False

        def close(self):
            self.closed = True

    small = observe._bounded(Response(1000))
    assert small._content == b"x" * 1000
    big = Response(observe.MAX_ANSWER_BYTES + 10)
    with pytest.raises(ValueError, match="over 50 MB"):
        observe._bounded(big)
    assert big.closed and big.raw.tell() == observe.MAX_ANSWER_BYTES + 1  # read no further than the cap


def test_minute_rate_counts_last_minutes_arrivals_by_conservation():
    q = observe.queries(S)["minute_rate"]
    assert q == ('sum by (namespace, pool) (rate(vllm:request_success_total{pool!=""}[60s])'
                 ' or rate(vllm_request_success_total{pool!=""}[60s]))'
                 ' + sum by (namespace, pool) (delta(vllm:num_requests_waiting{pool!=""}[60s])'
                 ' or delta(vllm_num_requests_waiting{pool!=""}[60s])) / 60'
                 ' + sum by (namespace, pool) (delta(vllm:num_requests_running{pool!=""}[60s])'
                 ' or delta(vllm_num_requests_running{pool!=""}[60s])) / 60')
    assert "[120s]" in observe.queries(QuerySettings(rate_window="4m", burst_window="30s"))["minute_rate"]  # slow scrape
    m = observe.pool_metrics(canned(minute_rate=[sample(4.25)]), S)[("serving", "llama")]
    assert m.minute_rate == 4.25
    assert observe.observations(m, now=1000.0, current_replicas=3).minute_rate == 4.25
    # a queue draining faster than the sampled delta can read below 0: no arrivals, not an invalid reading
    drained = observe.pool_metrics(canned(minute_rate=[sample(-0.4)]), S)[("serving", "llama")]
    assert drained.minute_rate == 0.0 and drained.invalid_signals == () and drained.arrival_rate is not None
    assert observe.pool_metrics(canned(), S)[("serving", "llama")].minute_rate is None  # not returned: unknown
