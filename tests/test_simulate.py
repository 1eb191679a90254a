"""The simulator: the fleet against queueing theory, cold starts, billing, the policies and the trace loader."""

import math
from pathlib import Path
from dataclasses import replace

import numpy as np

import pytest

from inferencepool.core.capacity import TokenTimeCurve
from inferencepool.core.policy import PoolSpec
from inferencepool.core.queueing import Queue
from inferencepool.simulate import baselines, compare, report
from inferencepool.simulate import trace as tr
from inferencepool.simulate.fleet import ColdStarts, FleetConfig, simulate

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"  # ../shared beside the checkout, as CI lays it


class Scripted:
    """A policy that wants a given replica count from given times on."""

    def __init__(self, steps, name="scripted"):
        self.steps, self.name = steps, name  # [(from time, replicas)], sorted

    def initial_replicas(self, default):
        return self.steps[0][1]

    def reconcile(self, obs, fleet):
        return [r for t, r in self.steps if t <= obs.time][-1]


def run_fixed(arrivals, service, policy, config=FleetConfig(), seed=0):
    return simulate(arrivals, service, np.zeros_like(service), policy, config, policy.initial_replicas(1),
                    ColdStarts(config, seed))


@pytest.mark.parametrize("replicas, slots", [(10, 1), (5, 2)])
def test_fleet_waits_match_erlang_c_for_poisson_arrivals_and_exponential_service(replicas, slots):
    rng = np.random.default_rng(7)
    rate, service_mean, n = 8.0, 1.0, 200_000
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    service = rng.exponential(service_mean, n)
    run = run_fixed(arrivals, service, baselines.Static(replicas), FleetConfig(slots_per_replica=slots))
    waits = run.waits[n // 20 :]  # drop the warm-up
    queue = Queue(rate, service_mean)
    servers = replicas * slots
    assert waits.mean() == pytest.approx(queue.mean_wait(servers), rel=0.08)
    for t in (0.0, 0.5, 1.0):
        assert np.mean(waits > t) == pytest.approx(queue.prob_wait_exceeds(servers, t), rel=0.08, abs=0.005)


def test_a_replica_ordered_at_t_serves_only_after_its_cold_start():
    config = FleetConfig(cold_start_seconds=100.0, cold_start_distribution="fixed", reconcile_seconds=15.0,
                         rate_window_seconds=15.0, service_window_seconds=15.0, scrape_delay_seconds=0.0)
    arrivals = np.arange(0.0, 400.0, 0.5)  # 2 requests/s, each 1 s: one replica cannot keep up
    service = np.full(len(arrivals), 1.0)
    run = run_fixed(arrivals, service, Scripted([(0.0, 1), (15.0, 3)]), config)
    assert list(run.ordered[:2]) == [1, 3] and run.change_times[1] == 15.0
    became_ready = run.change_times[np.flatnonzero(np.diff(run.ready) > 0) + 1]
    assert set(became_ready) == {115.0}
    assert run.ready[run.change_times < 115.0].max() == 1
    backlog = (arrivals > 20) & (arrivals < 110)
    assert run.waits[backlog].min() > 0  # the queue grows until the new replicas are Ready
    assert run.waits[arrivals < 115].max() == pytest.approx(115 / 2, abs=2)  # backlog grew at 1/s for 115 s
    late = arrivals > 260  # three replicas drain it at 1/s, then serve 2/s without queueing
    assert run.waits[late].max() == 0


def test_gpu_hours_are_the_integral_of_billed_replicas():
    arrivals = np.array([0.0, 1000.0, 3600.0])
    service = np.full(3, 0.5)
    config = FleetConfig(gpus_per_replica=4, cold_start_seconds=60.0, cold_start_distribution="fixed")
    run = run_fixed(arrivals, service, Scripted([(0.0, 2), (900.0, 5), (1800.0, 1)]), config)
    # 2 replicas until the reconcile at 900 s, 5 until 1800 s, then 1 until the last request at 3600 s
    expected = (2 * 900 + 5 * 900 + 1 * 1800) * 4 / 3600
    assert run.gpu_hours == pytest.approx(expected)
    row = report.summarise(run, PoolSpec(gpu_hour_price=3.0, gpus_per_replica=4))
    assert row["gpu_hours"] == pytest.approx(expected) and row["cost"] == pytest.approx(expected * 3.0)
    assert row["scale_events"] == 2


def test_report_minutes_and_requests_meeting_the_slo():
    arrivals = np.array([0.0, 1.0, 2.0, 61.0, 62.0, 130.0])
    run = run_fixed(arrivals, np.ones(6), baselines.Static(1))
    run.waits = np.array([0.0, 0.0, 20.0, 1.0, 2.0, 0.0])  # minute 0 misses a p99 < 10s SLO, 1 and 2 meet it
    row = report.summarise(run, PoolSpec(slo_percentile=0.99, slo_target_seconds=10.0))
    assert row["minutes_meeting_slo"] == pytest.approx(2 / 3)
    assert row["requests_meeting_slo"] == pytest.approx(5 / 6)
    mean_row = report.summarise(run, PoolSpec(slo_percentile=None, slo_target_seconds=6.0))
    assert mean_row["minutes_meeting_slo"] == pytest.approx(2 / 3)  # minute 0 averages 6.67s > 6s


def small_bursty_scenario(**spec):
    trace = tr.clip(tr.load(), 1200.0)  # the bundled trace's first 20 minutes
    return compare.Scenario(trace=trace, spec=PoolSpec(max_replicas=60, **spec))


def test_our_policies_never_go_below_the_warm_floor():
    scenario = small_bursty_scenario(min_replicas=4)
    for run in compare.run_policies(scenario, ("reactive", "predictive")):
        assert run.ordered.min() >= 4, run.policy
        assert run.gpu_hours >= 4 * run.end / 3600 - 1e-9


def test_the_oracle_is_a_lower_bound_at_equal_or_better_slo():
    conv = tr.clip(tr.load(f"{TRACES}/azure-llm-2023-conv.csv.gz"), 1500.0)
    for trace in (tr.load(), conv):
        scenario = compare.Scenario(trace=trace, spec=PoolSpec(max_replicas=100))
        rows = [report.summarise(run, scenario.spec) for run in compare.run_policies(scenario)]
        oracle = next(r for r in rows if r["policy"] == "oracle")
        assert oracle["minutes_meeting_slo"] >= 0.99
        as_good = [r for r in rows if r is not oracle and r["minutes_meeting_slo"] >= oracle["minutes_meeting_slo"]]
        for row in as_good:
            assert oracle["gpu_hours"] <= row["gpu_hours"], row["policy"]
        if trace is conv:
            assert len(as_good) >= 2  # the smooth trace makes the comparison real


def test_the_same_seed_gives_the_same_run_and_policies_share_cold_starts():
    scenario = small_bursty_scenario()
    first = compare.run_policies(scenario, ("predictive",))[0]
    again = compare.run_policies(scenario, ("predictive",))[0]
    assert np.array_equal(first.waits, again.waits) and first.gpu_hours == again.gpu_hours
    a, b = ColdStarts(FleetConfig(), 3), ColdStarts(FleetConfig(), 3)
    assert np.array_equal(a.upcoming(5, 3), b.upcoming(0, 8)[5:])
    draws = ColdStarts(FleetConfig(cold_start_seconds=180.0), 1).upcoming(0, 4000)
    assert draws.mean() == pytest.approx(180.0, rel=0.03) and draws.min() > 0


def test_the_bundled_trace_loads():
    trace = tr.load()
    assert len(trace) == 8819
    assert trace.prompt_tokens.mean() == pytest.approx(2048, abs=1)
    assert trace.output_tokens.mean() == pytest.approx(28, abs=0.5)
    assert trace.arrivals[0] == 0.0 and np.all(np.diff(trace.arrivals) >= 0)
    assert 55 * 60 < trace.span < 58 * 60
    assert "CC-BY-4.0" in trace.name


def test_trace_reshaping_says_what_it_did():
    rng = np.random.default_rng(0)
    trace = tr.load()
    fast = tr.compress_time(trace, 4)
    assert fast.span == pytest.approx(trace.span / 4) and "compressed 4x" in fast.notes[0]
    double = tr.scale_rate(trace, 2, rng)
    assert len(double) == 2 * len(trace) and np.all(np.diff(double.arrivals) >= 0)
    assert double.span == pytest.approx(trace.span)
    half = tr.scale_rate(trace, 0.5, rng)
    assert len(half) == pytest.approx(len(trace) / 2, rel=0.05)
    twice = tr.repeat(trace, 2)
    assert len(twice) == 2 * len(trace) and twice.span > 2 * trace.span - 1
    assert "repeated 2x" in twice.notes[-1]


def test_a_rate_trace_becomes_arrivals_at_its_rates():
    rates = tr.load(f"{TRACES}/servegen-m-large-rate-600s.csv.gz", rate_scale=0.01, seconds=6 * 3600)
    assert 5.5 * 3600 < rates.span <= 6 * 3600
    expected = 0.01 * 6 * 3600 * 200  # ServeGen runs at ~200 requests/s
    assert 0.5 * expected < len(rates) < 2 * expected
    assert "rates x0.01" in rates.notes[0]


def test_oracle_needs_follow_the_replayed_queue():
    arrivals = np.arange(0.0, 120.0, 0.25)  # 4/s of 1 s requests: 4 Erlangs, no randomness
    service = np.ones(len(arrivals))
    need = baselines.bucket_needs(arrivals, service, np.zeros(len(arrivals)), PoolSpec(max_replicas=50), 60.0,
                                  arrivals[-1])
    assert list(need) == [4, 4]  # exactly enough: deterministic arrivals never queue at 4 slots
    waits = baselines.replay_waits(arrivals.tolist(), service.tolist(), [-math.inf] * 3)
    assert waits[-1] > 10  # one slot short, the queue grows without bound


def test_a_few_long_requests_in_a_quiet_window_do_not_size_the_fleet():
    """decide() blends a service-time mean from fewer than MIN_SERVICE_SAMPLES completions with the last
    trusted one; without that, one 24 s request in a quiet minute sized the bundled trace's pool at 100."""
    from inferencepool.core.policy import MIN_SERVICE_SAMPLES, History, Observations, decide

    spec = PoolSpec(prediction=False, max_replicas=100)

    def observe(service, samples, history=History()):
        obs = Observations(time=15.0 if history.last_service_time else 0.0, current_replicas=8, ready_replicas=8,
                           arrival_rate=5.0, service_time=service, service_samples=samples)
        return decide(spec, obs, history)

    busy = observe(1.0, 600)
    quiet = observe(24.0, 1, busy.history)
    blended = 24.0 / MIN_SERVICE_SAMPLES + 1.0 * (1 - 1 / MIN_SERVICE_SAMPLES)
    assert quiet.replicas == observe(blended, None, busy.history).replicas
    assert quiet.replicas < observe(24.0, None, busy.history).replicas / 5
    assert quiet.history.last_service_time == 1.0  # the thin window is not remembered as the truth
    assert observe(24.0, MIN_SERVICE_SAMPLES, busy.history).history.last_service_time == 24.0


FAST = FleetConfig(cold_start_seconds=60.0, cold_start_distribution="fixed", reconcile_seconds=15.0,
                   rate_window_seconds=15.0, service_window_seconds=15.0, scrape_delay_seconds=0.0)


def test_a_removed_busy_replica_is_billed_until_its_request_finishes():
    arrivals = np.array([0.0, 1.0, 300.0])
    service = np.array([100.0, 100.0, 0.1])  # both replicas busy when one is removed at the first tick (15 s)
    run = run_fixed(arrivals, service, Scripted([(0.0, 2), (15.0, 1)]), FAST)
    assert run.ordered[-1] == 1
    # billed for 2 until the removed replica's request ends at 100 s, then 1 until the last arrival at 300 s
    assert run.gpu_hours == pytest.approx((2 * 100 + 1 * 200) / 3600)
    assert run.waits[1] == 0 and run.waits[2] == 0  # the removed replica took no new request; none was queued
    idle = run_fixed(np.array([0.0, 300.0]), np.array([1.0, 0.1]), Scripted([(0.0, 2), (15.0, 1)]), FAST)
    assert idle.gpu_hours == pytest.approx((2 * 15 + 1 * 285) / 3600)  # an idle replica stops billing at once


def test_a_removed_replica_takes_no_new_requests_while_it_drains():
    arrivals = np.array([0.0, 1.0, 50.0, 300.0])
    service = np.array([100.0, 100.0, 10.0, 0.1])
    run = run_fixed(arrivals, service, Scripted([(0.0, 2), (15.0, 1)]), FAST)
    # the slot freed at 100 s belongs to the removed replica: the request queued at 50 s waits for the other (101 s)
    assert run.waits[2] == pytest.approx(101.0 - 50.0)
    assert run.gpu_hours == pytest.approx((2 * 100 + 1 * 200) / 3600)


def test_every_policy_and_the_oracle_start_from_the_same_warm_fleet():
    scenario = small_bursty_scenario()
    start = compare.starting_replicas(scenario)
    need = compare.oracle_need(scenario)
    assert start == need[: int((180 + 15) // 60) + 1].max() >= 2  # the oracle's need over the first cold start
    names = [n for n in compare.POLICIES if n != "static"]
    for run in compare.run_policies(scenario, names):
        assert run.ordered[0] == start, run.policy
    fixed = compare.run_policies(replace(scenario, initial_replicas=7), ("oracle", "hpa", "predictive"))
    assert [r.ordered[0] for r in fixed] == [7, 7, 7]


def test_a_warm_up_before_score_from_is_neither_billed_nor_scored():
    arrivals = np.array([0.0, 1.0, 2.0, 61.0, 62.0, 130.0])
    run = run_fixed(arrivals, np.ones(6), baselines.Static(2))
    run.waits = np.array([0.0, 0.0, 20.0, 1.0, 2.0, 0.0])
    run.score_from = 60.0
    row = report.summarise(run, PoolSpec(slo_percentile=0.99, slo_target_seconds=10.0))
    assert row["minutes_meeting_slo"] == 1.0 and row["requests_meeting_slo"] == 1.0  # minute 0 is not scored
    assert row["gpu_hours"] == pytest.approx(2 * 70 / 3600)


class Recorder(Scripted):
    """A scripted policy that keeps every Observations it is shown."""

    def __init__(self, steps):
        super().__init__(steps)
        self.seen = []

    def reconcile(self, obs, fleet):
        self.seen.append(obs)
        return super().reconcile(obs, fleet)


def test_the_fleet_reports_each_minutes_share_of_requests_within_the_wait_target():
    config = replace(FAST, slo_target_seconds=10.0, scrape_delay_seconds=15.0)
    arrivals = np.array([0.0, 1.0, 2.0, 3.0, 70.0, 300.0])
    service = np.array([30.0, 1.0, 1.0, 1.0, 1.0, 0.1])  # one slot: the three behind the first wait 29-30 s
    policy = Recorder([(0.0, 1)])
    run_fixed(arrivals, service, policy, config)
    by_end = {o.slo_window_end: o.slo_window_good for o in policy.seen}
    # minute 0: requests started at 0 (wait 0), 30, 31, 32 (29 s each) -> 1 of 4 within 10 s
    assert by_end[60.0] == pytest.approx(1 / 4)
    assert by_end[120.0] == pytest.approx(1.0) and by_end[180.0] is None
    first = min(o.time for o in policy.seen if o.slo_window_end == 60.0)
    assert first >= 75.0  # the minute ending at 60 s is seen once the 15 s scrape delay has passed


# Load-dependent service: per-token time doubles from 1 to 2 running, x4 at 4 (t(n) = n at n >= 1).
LINEAR = TokenTimeCurve.fit([(1, 0.01), (2, 0.02), (4, 0.04)])


def test_a_request_is_stretched_by_the_slowdown_at_the_concurrency_it_starts_at():
    config = replace(FAST, slots_per_replica=4, token_time_curve=LINEAR)
    arrivals = np.array([0.0, 0.5, 1.0, 1.5, 1.6, 500.0])
    service = np.array([10.0, 10.0, 10.0, 10.0, 10.0, 0.1])
    prefill = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 0.0])  # only the 8 s of decode stretch
    policy = Recorder([(0.0, 1)])
    run = simulate(arrivals, service, prefill, policy, config, 1, ColdStarts(config, 0))
    # the k-th starts with k running: done at 10, 18.5, 27, 35.5; the 5th waits for the first slot (10 s)
    assert run.waits.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 8.4, 0.0])
    flat = run_fixed(arrivals, service, Scripted([(0.0, 1)]), replace(config, token_time_curve=None))
    assert flat.waits[4] == pytest.approx(2.0 + 10.0 - 1.6 - 2.0)  # constant: the first is done at 10 s too
    # What Prometheus shows per 15 s window: token-weighted token time of its completions, running at its end.
    # (0,15]: the 1st (x1) -> 0.01 s with 4 running; (15,30]: the 2nd and 3rd (x2, x3) -> 0.025 s with 2 running
    # (the 5th, started at 10 s with 4 running, is x4); a dip with more running is noise to the fit: kept flat.
    first, second = (o for o in policy.seen if o.time in (15.0, 30.0))
    assert (first.token_time_curve.concurrency, first.token_time_curve.token_time) == ((4.0,), (0.01,))
    assert second.token_time_curve.concurrency == (2.0, 4.0)
    assert second.token_time_curve.token_time == pytest.approx((0.025, 0.025))
    assert first.service_concurrency == 4.0 and second.service_concurrency == 2.0
    assert policy.seen[-1].service_concurrency is None  # idle: running says nothing about speed


def test_load_dependent_service_queues_where_constant_service_does_not():
    config = replace(FAST, slots_per_replica=4)
    arrivals = np.arange(0.0, 200.0, 2.0)  # 0.5 req/s x 6 s = 3 Erlangs on 4 slots
    service = np.full(len(arrivals), 6.0)
    constant = run_fixed(arrivals, service, baselines.Static(1), config)
    loaded = run_fixed(arrivals, service, baselines.Static(1), replace(config, token_time_curve=LINEAR))
    assert constant.waits.max() == 0.0
    assert loaded.waits.max() > 10.0  # three running stretch each to 18 s: 9 Erlangs cannot fit 4 slots


def test_a_flat_curve_changes_nothing_and_the_kv_cap_binds_below_the_slots():
    config = replace(FAST, slots_per_replica=4)
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(0.5, 400))
    service = rng.exponential(1.5, 400)
    plain = run_fixed(arrivals, service, baselines.Static(1), config)
    flat = run_fixed(arrivals, service, baselines.Static(1),
                     replace(config, token_time_curve=TokenTimeCurve.fit([(1, 0.02), (8, 0.02)])))
    assert flat.waits.tolist() == plain.waits.tolist()
    two = run_fixed(arrivals, service, baselines.Static(1), replace(config, slots_per_replica=2))
    policy = Recorder([(0.0, 1)])
    capped = run_fixed(arrivals, service, policy, replace(config, kv_max_sequences=2))
    assert capped.waits.tolist() == two.waits.tolist()  # 4 slots but KV for 2 sequences = 2 slots
    kv = [o.kv_cache_usage for o in policy.seen]
    assert all(0.0 <= u <= 1.0 for u in kv) and max(kv) == 1.0 and policy.seen[-1].preemptions == 0.0


def test_the_fleet_reports_the_last_minutes_arrival_rate_for_the_hindsight_floor():
    config = replace(FAST, scrape_delay_seconds=15.0)
    arrivals = np.concatenate([np.arange(0.0, 60.0, 1.0), np.arange(60.0, 200.0, 0.25)])  # 1/s, then 4/s
    service = np.full(len(arrivals), 0.1)
    policy = Recorder([(0.0, 1)])
    run_fixed(arrivals, service, policy, config)
    by_time = {o.time: o.minute_rate for o in policy.seen}
    # seen 15 s late: at 75 s the minute (0, 60] (1/s), at 105 s the minute (30, 90]: 30 at 1/s + 120 at 4/s
    assert by_time[75.0] == pytest.approx(1.0, abs=1 / 60) and by_time[105.0] == pytest.approx(150 / 60, abs=1 / 60)
    assert by_time[180.0] == pytest.approx(4.0, abs=1 / 60)  # (105, 165]
