"""decide(): the one scaling rule shared by the operator and the simulator."""

import json
import math

import pytest

from inferencepool.core.policy import History, Observations, PoolSpec, decide
from inferencepool.core.queueing import Queue

SEED_RATE = 100 / 60  # 100 requests/min
SEED_SERVICE = 15.0  # seconds: 25 Erlangs


def reactive(**overrides) -> PoolSpec:
    base = dict(slo_percentile=0.99, slo_target_seconds=10.0, min_replicas=1, max_replicas=64, prediction=False)
    return PoolSpec(**{**base, **overrides})


def observe(rate=SEED_RATE, service=SEED_SERVICE, current=1, time=0.0, **kw) -> Observations:
    return Observations(time=time, current_replicas=current, ready_replicas=current, arrival_rate=rate, service_time=service, **kw)


def test_sizes_the_seed_to_thirty_servers():
    d = decide(reactive(), observe())
    assert d.replicas == 30 and d.constraint == "slo" and d.action == "scale_up"
    assert d.p_wait_exceeds[30] <= 0.01 < d.p_wait_exceeds[29]
    assert d.utilization == pytest.approx(25 / 30)
    assert "30 replicas meet p99 wait <= 10s" in d.reason


def test_batched_replicas_round_servers_up():
    d = decide(reactive(slots_per_replica=8), observe())
    expected = math.ceil(Queue(SEED_RATE, SEED_SERVICE).servers_for_wait_quantile(10.0, 0.99) / 8)
    assert d.replicas == expected == 4
    assert d.utilization == pytest.approx(25 / 32)


def test_mean_wait_slo():
    d = decide(reactive(slo_percentile=None, slo_target_seconds=2.0), observe())
    assert d.replicas == Queue(SEED_RATE, SEED_SERVICE).servers_for_mean_wait(2.0)
    assert d.predicted_wait <= 2.0


def test_ttft_slo_spends_prefill_first():
    wait_only = decide(reactive(slo_target_seconds=10.0), observe())
    ttft = decide(reactive(slo_metric="ttft", slo_target_seconds=10.5), observe(prefill_time=0.5))
    assert ttft.replicas == wait_only.replicas
    hopeless = decide(reactive(slo_metric="ttft", slo_target_seconds=0.4), observe(prefill_time=0.5))
    assert hopeless.replicas == 64 and hopeless.saturated


def test_zero_traffic_goes_to_the_warm_floor_after_the_window():
    spec = reactive(min_replicas=2, scale_down_max_step=10, scale_down_window_seconds=300)
    d = decide(spec, observe(rate=0.0, service=None, current=5, time=1000.0))
    assert d.replicas == 2 and d.constraint == "warm_floor"


@pytest.mark.parametrize(
    "obs_change, words",
    [
        (dict(rate=None), "arrival rate is missing"),
        (dict(rate=float("nan")), "arrival rate is missing"),
        (dict(service=None), "service time is missing"),
        (dict(metrics_age_seconds=600.0), "metrics are 600s old"),
    ],
)
def test_missing_or_stale_metrics_never_scale_down(obs_change, words):
    d = decide(reactive(), observe(rate=obs_change.get("rate", 0.01), service=obs_change.get("service", 1.0), current=12,
                                    metrics_age_seconds=obs_change.get("metrics_age_seconds", 0.0)))
    assert d.replicas == 12 and d.action == "hold"
    assert not d.metrics_available and d.constraint == "metrics_missing"
    assert words in d.reason


def test_missing_metrics_still_raise_to_the_warm_floor():
    d = decide(reactive(min_replicas=3), observe(rate=None, current=1))
    assert d.replicas == 3 and not d.metrics_available
    assert d.reason.startswith("scale up 1 -> 3 to the warm floor")


def test_last_known_service_time_bridges_a_window_without_completions():
    first = decide(reactive(), observe())
    again = decide(reactive(), observe(service=None, current=first.replicas, time=15.0), first.history)
    assert again.metrics_available and again.replicas == first.replicas


def test_overload_goes_to_the_cap_and_says_saturated():
    d = decide(reactive(max_replicas=20), observe(rate=10.0))  # 150 Erlangs
    assert d.replicas == 20 and d.saturated and d.constraint == "max_replicas"
    assert d.p_wait_exceeds[20] == 1.0
    assert math.isinf(d.predicted_wait)


def test_gpu_budget_caps_replicas():
    spec = reactive(max_replicas=64, max_gpus=10, gpus_per_replica=4)
    d = decide(spec, observe())
    assert spec.replica_cap == 2 and d.replicas == 2 and d.constraint == "gpu_budget"
    assert d.cost_per_hour(PoolSpec(gpus_per_replica=4, gpu_hour_price=2.5)) == pytest.approx(2 * 4 * 2.5)


def test_no_scale_up_while_pods_cannot_be_scheduled():
    d = decide(reactive(), observe(current=10, unschedulable_replicas=2))
    assert d.replicas == 10 and d.scaling_limited and d.constraint == "unschedulable"
    assert d.required_replicas == 30


def test_scale_down_waits_for_the_window_then_steps():
    spec = reactive(scale_down_window_seconds=300, scale_down_max_step=2)
    up = decide(spec, observe(time=0.0))
    assert up.replicas == 30
    history, replicas = up.history, up.replicas
    for t in (60.0, 120.0, 240.0):
        d = decide(spec, observe(rate=SEED_RATE / 5, current=replicas, time=t), history)
        assert d.replicas == 30 and d.constraint == "stabilization"
        history = d.history
    d = decide(spec, observe(rate=SEED_RATE / 5, current=30, time=301.0), history)
    assert d.replicas == 28 and d.constraint == "max_step" and d.action == "scale_down"


def test_scale_up_is_immediate_despite_the_window():
    spec = reactive(scale_down_window_seconds=300)
    low = decide(spec, observe(rate=SEED_RATE / 5, current=1))
    high = decide(spec, observe(current=low.replicas, time=15.0), low.history)
    assert high.replicas == 30


def test_prediction_scales_ahead_of_a_ramp():
    spec_pred = reactive(prediction=True, prediction_horizon_seconds=180)
    history_pred = history_react = History()
    for step in range(40):
        obs = observe(rate=0.5 + 0.02 * step, time=15.0 * step, current=10)
        pred = decide(spec_pred, obs, history_pred)
        react = decide(reactive(), obs, history_react)
        history_pred, history_react = pred.history, react.history
    assert pred.forecast_rate > obs.arrival_rate
    assert pred.required_replicas > react.required_replicas
    assert pred.horizon_seconds == 180 and "forecast q0.9 peak" in pred.reason


def test_horizon_is_the_measured_cold_start():
    d = decide(reactive(prediction=True), observe(cold_start_seconds=95.0))
    assert d.horizon_seconds == 95.0
    d = decide(reactive(prediction=True, default_cold_start_seconds=240.0), observe())
    assert d.horizon_seconds == 240.0


def test_history_survives_a_json_round_trip():
    spec = reactive(prediction=True)
    d = decide(spec, observe(time=0.0))
    d = decide(spec, observe(time=15.0, rate=SEED_RATE * 1.2, current=d.replicas), d.history)
    restored = History.from_dict(json.loads(json.dumps(d.history.to_dict())))
    assert restored == d.history
    assert History.from_dict({"forecaster": {"bogus": 1}}) == History()


def test_falling_demand_lets_the_forecast_hold_capacity_but_not_add_it():
    spec = reactive(prediction=True, prediction_horizon_seconds=180)
    history = History()
    for step in range(30):  # a noisy plateau at 1.5x the seed rate
        d = decide(spec, observe(rate=SEED_RATE * (1.5 + 0.1 * (-1) ** step), time=15.0 * step, current=40), history)
        history = d.history
    reactive_need = decide(reactive(), observe(rate=SEED_RATE * 1.1)).replicas
    falling = observe(rate=SEED_RATE * 1.1, time=450.0, current=reactive_need + 2)
    d = decide(spec, falling, history)
    assert d.forecast_rate > falling.arrival_rate  # the bound still remembers the plateau...
    assert d.replicas == reactive_need + 2  # ...but only holds what is there
    assert d.constraint == "falling_demand" and "demand is falling" in d.reason
    rising = observe(rate=SEED_RATE * 1.9, time=450.0, current=31)
    assert decide(spec, rising, history).replicas > decide(reactive(), rising).replicas  # ahead on the way up


def test_error_budget_feedback_moves_the_headroom_once_per_window():
    from inferencepool.core.policy import FEEDBACK_STEP

    spec = PoolSpec(max_replicas=100, prediction=False, slo_objective=0.99)
    missed = decide(spec, observe(current=30, slo_window_end=60.0, slo_window_good=0.95))
    assert missed.history.headroom == pytest.approx(math.exp(FEEDBACK_STEP))  # 95% within 10 s < p99: a miss
    again = decide(spec, observe(current=30, time=15.0, slo_window_end=60.0, slo_window_good=0.95), missed.history)
    assert again.history.headroom == missed.history.headroom  # the same window is folded in once
    met = decide(spec, observe(current=30, time=60.0, slo_window_end=120.0, slo_window_good=1.0), again.history)
    assert met.history.headroom == pytest.approx(math.exp(FEEDBACK_STEP * (1 - 0.01 / 0.99)))
    idle = decide(spec, observe(current=30, time=75.0, slo_window_end=180.0, slo_window_good=None), met.history)
    assert idle.history.headroom == met.history.headroom  # a window without requests says nothing
    off = decide(PoolSpec(max_replicas=100, prediction=False),
                 observe(current=30, slo_window_end=60.0, slo_window_good=0.5))
    assert off.history.headroom == 1.0


def test_the_headroom_factor_sizes_for_a_higher_rate():
    spec = PoolSpec(max_replicas=100, prediction=False, slo_objective=0.99)
    history = History(headroom=1.5)
    raised = decide(spec, observe(current=30), history)
    plain = decide(PoolSpec(max_replicas=100, prediction=False), observe(rate=SEED_RATE * 1.5, current=30))
    assert raised.replicas == plain.replicas > decide(PoolSpec(max_replicas=100, prediction=False), observe(current=30)).replicas
    assert History.from_dict(json.loads(json.dumps(raised.history.to_dict()))).headroom == 1.5


def test_burst_memory_sizes_for_the_burstiest_cv_of_its_trailing_span():
    spec = reactive(burst_memory_seconds=1800.0)
    bursty = decide(spec, observe(current=30, time=0.0, arrival_cv=3.0))
    calm = decide(spec, observe(current=bursty.replicas, time=600.0, arrival_cv=1.0), bursty.history)
    # ten minutes later the CV reads 1 again, but the spell of CV 3 is remembered: same size as at CV 3
    assert calm.replicas == bursty.replicas == decide(reactive(), observe(current=30, arrival_cv=3.0)).replicas
    assert calm.replicas > decide(reactive(), observe(current=30, arrival_cv=1.0)).replicas
    assert "arrival CV 3 (peak over 1800s)" in calm.reason
    later = decide(spec, observe(current=30, time=2000.0, arrival_cv=1.0), calm.history)  # the spell has aged out
    assert later.replicas == decide(reactive(), observe(current=30, arrival_cv=1.0)).replicas
    assert [c for _, c in later.history.cv_peaks] == [1.0, 1.0]  # one peak per minute, older ones dropped
    restored = History.from_dict(json.loads(json.dumps(calm.history.to_dict())))
    assert restored.cv_peaks == calm.history.cv_peaks
    # without the knob the history stays empty (status does not grow)
    assert decide(reactive(), observe(arrival_cv=3.0)).history.cv_peaks == ()


def test_a_corrupt_burst_memory_is_dropped():
    d = decide(reactive(burst_memory_seconds=1800.0), observe(current=30, time=60.0),
               History(cv_peaks=((0.0, float("nan")), (30.0, 1e9))))
    assert d.history.cv_peaks == ((60.0, 1.0),)


def test_a_backlog_adds_the_capacity_to_drain_it_within_the_drain_time():
    plain = decide(reactive(), observe(current=30, waiting=4.0))
    drained = decide(reactive(backlog_drain_seconds=10.0), observe(current=30, waiting=4.0))
    # 4 waiting x 15 s of work / 10 s = 6 more replicas than the steady-state Erlang-C answer (30)
    assert plain.replicas == 30 and drained.replicas == 36 and drained.required_replicas == 36
    assert decide(reactive(backlog_drain_seconds=10.0), observe(current=30, waiting=0.0)).replicas == 30
    assert decide(reactive(backlog_drain_seconds=10.0), observe(current=30)).replicas == 30  # gauge missing


def test_hindsight_floor_is_the_upper_quantile_of_the_per_minute_needs():
    spec = reactive(hindsight_quantile=0.95, hindsight_seconds=3600.0, scale_down_max_step=100, scale_down_window_seconds=60)
    need = {rate: decide(reactive(min_replicas=0), observe(rate=rate, current=30)).required_replicas for rate in (0.5, SEED_RATE)}
    assert need[0.5] < need[SEED_RATE] == 30
    history, current = History(), 30
    for minute in range(20):  # 18 quiet minutes (0.5/s), then 2 busy ones (100/min), each sized on its minute rate
        rate = SEED_RATE if minute >= 18 else 0.5
        d = decide(spec, observe(rate=0.5, current=current, time=60.0 * minute, minute_rate=rate), history)
        history, current = d.history, d.replicas
        if minute < 9:  # under ten minutes known: no learnt floor
            assert d.hindsight_floor is None
    assert [r for _, r in history.minute_needs] == [need[0.5]] * 18 + [30] * 2
    # q0.95 of the 21 minutes known (the 20th smallest) is a busy minute's need: held though the rate needs fewer
    later = decide(spec, observe(rate=0.5, current=current, time=60.0 * 20, minute_rate=0.5), history)
    assert later.hindsight_floor == 30 and later.replicas == 30 and later.constraint == "hindsight_floor"
    assert "the learnt floor is 30 (the q0.95 of the per-minute needs over 3600s)" in later.reason
    # q0.9 of the 21 minutes now known is the 19th smallest (nearest rank, ceil(0.9 x 21)), the last quiet one
    lower = decide(reactive(hindsight_quantile=0.9, scale_down_max_step=100, scale_down_window_seconds=60),
                   observe(rate=0.5, current=current, time=60.0 * 20, minute_rate=0.5), history)
    assert lower.hindsight_floor == need[0.5] and lower.replicas == need[0.5]
    # minutes older than the horizon are forgotten: an hour on, only quiet minutes remain
    aged = decide(replace_spec(spec, hindsight_seconds=300.0), observe(rate=0.5, current=30, time=60.0 * 40,
                                                                       minute_rate=0.5), later.history)
    assert [r for _, r in aged.history.minute_needs] == [need[0.5]] and aged.hindsight_floor is None
    restored = History.from_dict(json.loads(json.dumps(later.history.to_dict())))
    assert restored.minute_needs == later.history.minute_needs


def replace_spec(spec: PoolSpec, **changes) -> PoolSpec:
    from dataclasses import replace
    return replace(spec, **changes)


def test_hindsight_floor_is_off_by_default_and_one_minute_counts_once():
    assert decide(reactive(), observe(current=30, minute_rate=SEED_RATE)).history.minute_needs == ()
    spec = reactive(hindsight_quantile=0.9)
    first = decide(spec, observe(current=30, time=600.0, minute_rate=0.5))
    again = decide(spec, observe(current=30, time=615.0, minute_rate=SEED_RATE), first.history)
    assert again.history.minute_needs == ((600.0, 30),)  # the newest read of a minute replaces the older one
    unknown = decide(spec, observe(current=30, time=630.0), again.history)
    assert unknown.history.minute_needs == ((600.0, 30),)  # a missing minute rate keeps what the minute had
    corrupt = decide(spec, observe(current=30, time=660.0), History(minute_needs=((0.0, -3), (float("inf"), 5), (60.0, 4))))
    assert corrupt.history.minute_needs == ((60.0, 4),)
    broken = decide(spec, observe(current=30, minute_rate=-1.0))  # impossible: the pool holds, naming the field
    assert not broken.metrics_available and broken.replicas == 30 and "minute_rate" in broken.reason


def test_the_error_budget_headroom_scales_the_hindsight_floor_when_asked():
    base = dict(hindsight_quantile=0.95, scale_down_max_step=100, scale_down_window_seconds=60, slo_objective=0.99)
    needs = tuple((60.0 * m, 20) for m in range(20))  # twenty past minutes that each needed 20 replicas
    at = observe(rate=0.5, current=20, time=60.0 * 20, minute_rate=0.5)
    plain = decide(reactive(**base), at, History(minute_needs=needs, headroom=1.5))
    scaled = decide(reactive(**base, hindsight_feedback=True), at, History(minute_needs=needs, headroom=1.5))
    assert plain.hindsight_floor == 20 and plain.replicas == 20  # off: the headroom leaves the floor alone
    assert scaled.hindsight_floor == 30 and scaled.replicas == 30 and scaled.constraint == "hindsight_floor"
    assert "x the error-budget headroom" in scaled.reason
    # a healthy budget (headroom below 1) lowers the floor: 20 x 0.8 = 16, and it holds the pool there
    spent = decide(reactive(**base, hindsight_feedback=True), at, History(minute_needs=needs, headroom=0.8))
    assert spent.hindsight_floor == 16 and spent.replicas == 16
    # without an objective there is no headroom to apply
    no_objective = {**base, "slo_objective": None}
    assert decide(reactive(**no_objective, hindsight_feedback=True), at,
                  History(minute_needs=needs, headroom=1.5)).hindsight_floor == 20


def test_a_ramp_seen_between_rate_windows_sizes_for_where_it_leads():
    """A clean ramp through a 2-minute window: Holt's bound trails it, the ramp test carries it to the
    horizon; turned off (spec.prediction.ramp: false) or without a known window it is not used."""
    def run(spec, window=120.0):
        history, d = History(), None
        for step in range(24):  # 6 minutes: 2/s, rising 0.01/s per second after the first 2 minutes
            t = 15.0 * step
            obs = observe(rate=2.0 + 0.01 * max(t - 120.0, 0.0), service=1.0, time=t, current=5, rate_window_seconds=window)
            d = decide(spec, obs, history)
            history = d.history
        return d, obs
    spec = reactive(prediction=True, prediction_horizon_seconds=180, slo_target_seconds=1.0)
    on, obs = run(spec)
    off, _ = run(reactive(prediction=True, prediction_horizon_seconds=180, slo_target_seconds=1.0, ramp_detection=False))
    blind, _ = run(spec, window=None)
    # against the rate two windows (240 s) back, 2.0/s, carried 60 + 180 s ahead: as far as the rise was seen
    assert on.ramp_rate == pytest.approx(obs.arrival_rate + (obs.arrival_rate - 2.0) / 240.0 * 240.0)
    assert on.forecast_rate == on.ramp_rate and "on a ramp" in on.reason
    assert on.required_replicas > off.required_replicas
    assert off.ramp_rate is None and blind.ramp_rate is None and off.forecast_rate == blind.forecast_rate
    assert decide(reactive(), obs, on.history).ramp_rate is None  # prediction off: reactive, no ramp either


def test_a_falling_rate_does_not_raise_the_sizing_cv():
    """After a burst the dispersion windows hold counts from before and after the fall, and read as bursty;
    while the rate is below Holt's level the CV sized with stays at the last decision's, so nothing is
    ordered for a burst that is over. Level or rising, the measured CV is taken as it is."""
    spec = reactive(slo_target_seconds=1.0, scale_down_window_seconds=0.0)
    history = History()
    for step in range(20):  # a steady 10/s at CV 1
        d = decide(spec, observe(rate=10.0, service=1.0, time=15.0 * step, current=4, arrival_cv=1.0), history)
        history = d.history
    after = observe(rate=3.0, service=1.0, time=300.0, current=d.replicas, arrival_cv=4.0)
    held = decide(spec, after, history)
    assert held.arrival_cv == 1.0 and held.replicas <= d.replicas
    assert held.held_cv == 4.0 and "arrival CV held at 1.00 while demand falls (measured 4.00)" in held.reason
    assert decide(spec, after, History()).arrival_cv == 4.0  # nothing to hold to: as measured
    assert decide(spec, after, history).replicas < decide(spec, after, History()).replicas
    rising = observe(rate=12.0, service=1.0, time=300.0, current=d.replicas, arrival_cv=2.0)
    assert decide(spec, rising, history).arrival_cv == 2.0  # burstier while rising: followed
