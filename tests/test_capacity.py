"""Load-dependent capacity: a replica's service time grows with its concurrency, and a full KV cache caps it.

The curve is the public H100 sweep quoted in issue 11: time per output token 6.5 / 6.6 / 10.9 / 46.9 ms at
1 / 4 / 16 / 64 running requests."""

import math

import pytest

from inferencepool.core.capacity import KvState, TokenTimeCurve, effective_capacity
from inferencepool.core.policy import Observations, PoolSpec, decide
from inferencepool.core.queueing import Queue

H100 = [(1, 6.5e-3), (4, 6.6e-3), (16, 10.9e-3), (64, 46.9e-3)]


def curve() -> TokenTimeCurve:
    return TokenTimeCurve.fit(H100)


def test_curve_passes_through_the_sweep_and_extrapolates_by_the_upper_slope():
    c = curve()
    for n, t in H100:
        assert c(n) == pytest.approx(t)
    assert c(40) == pytest.approx((10.9e-3 + 46.9e-3) / 2)  # linear between 16 and 64
    assert c(96) == pytest.approx(46.9e-3 + 32 * (46.9e-3 - 10.9e-3) / 48)  # the 16-64 slope continues
    assert c.slowdown(64, 1) == pytest.approx(46.9 / 6.5)


def test_fit_averages_repeats_drops_idle_and_keeps_time_non_decreasing():
    c = TokenTimeCurve.fit([(8, 0.010), (8, 0.012), (0, 0.5), (4, math.nan), (12, 0.009), (16, 0.02)])
    assert c.concurrency == (8.0, 12.0, 16.0)
    assert c.token_time == pytest.approx((0.011, 0.011, 0.02))  # the dip at 12 is noise
    flat = TokenTimeCurve.fit([(10, 0.01), (10.2, 0.012)])
    assert flat(1) == flat(64) == pytest.approx(0.011)  # one level: no slope known, constant service time
    with pytest.raises(ValueError, match="at least one"):
        TokenTimeCurve.fit([(0, 0.01)])


@pytest.mark.parametrize("slots, factor", [(16, 10.9 / 6.5), (64, 46.9 / 6.5)])
def test_constant_service_time_overstates_capacity_by_the_slowdown(slots, factor):
    # S = 10 s measured at one running request: 10 s / 6.5 ms = 1538 tokens per request
    measured = 10.0
    cap = effective_capacity(slots, measured, 1.0, curve())
    assert cap.slots == slots and cap.limited_by == "slots"
    assert cap.capacity_ratio(slots, measured) == pytest.approx(factor)  # 1.68x at 16 slots, 7.2x at 64
    tokens = measured / 6.5e-3
    true_throughput = slots / (tokens * dict(H100)[slots])  # requests/s of a replica with every slot busy
    assert cap.slots / cap.service_time == pytest.approx(true_throughput)
    assert slots / measured == pytest.approx(factor * true_throughput)


def test_service_time_measured_at_load_is_rescaled_from_where_it_was_measured():
    at16 = 10.0 * 10.9 / 6.5  # the same requests measured at 16 running
    cap = effective_capacity(64, at16, 16.0, curve())
    assert cap.service_time == pytest.approx(10.0 * 46.9 / 6.5)


def test_kv_pressure_caps_slots_at_what_runs_now():
    c = curve()
    full = effective_capacity(64, 10.0, 1.0, c, KvState(usage=0.97, running_per_replica=30.6))
    assert full.slots == 30 and full.limited_by == "kv_cache"
    assert full.service_time == pytest.approx(10.0 * c(30) / 6.5e-3)
    preempting = effective_capacity(64, 10.0, 1.0, c, KvState(usage=0.6, preemptions=3, running_per_replica=20))
    assert preempting.slots == 20 and preempting.limited_by == "kv_cache"
    roomy = effective_capacity(64, 10.0, 1.0, c, KvState(usage=0.6, preemptions=0, running_per_replica=20))
    assert roomy.slots == 64 and roomy.limited_by == "slots"


def test_token_time_target_caps_concurrency():
    cap = effective_capacity(64, 10.0, 1.0, curve(), max_token_time=0.020)
    assert cap.limited_by == "token_time" and curve()(cap.slots) <= 0.020 < curve()(cap.slots + 1)


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(slots=0), "slots"), (dict(service_time=0.0), "service_time"), (dict(measured_concurrency=-1.0), "measured_concurrency")],
)
def test_bad_inputs_name_the_argument(kwargs, name):
    args = dict(slots=8, service_time=1.0, measured_concurrency=1.0, curve=curve()) | kwargs
    with pytest.raises(ValueError, match=name):
        effective_capacity(**args)


# ---------------------------------------------------------------- decide()


def _obs(**kw) -> Observations:
    base = dict(time=0.0, current_replicas=1, ready_replicas=1, arrival_rate=4.0, service_time=10.0, running=1.0)
    return Observations(**(base | kw))


SPEC = PoolSpec(slots_per_replica=64, slo_target_seconds=10.0, max_replicas=64, prediction=False)


def test_decide_without_a_curve_is_unchanged_and_with_one_sizes_for_the_loaded_service_time():
    constant = decide(SPEC, _obs())
    assert constant.capacity is None and constant.replicas == 1  # 40 Erlangs on 64 slots at S = 10 s
    loaded = decide(SPEC, _obs(token_time_curve=curve(), service_concurrency=1.0))
    s64 = 10.0 * 46.9 / 6.5
    assert loaded.capacity.slots == 64 and loaded.capacity.service_time == pytest.approx(s64)
    # Truth at full concurrency: 4 req/s x 72 s = 289 Erlangs. The constant-S fleet is overloaded 4.5x;
    # the load-dependent one is stable with room for the p99 target.
    assert 4.0 * s64 / (constant.replicas * 64) > 4
    assert 4.0 * s64 / (loaded.replicas * 64) < 1
    assert loaded.replicas == math.ceil(Queue(4.0, s64).servers_for_wait_quantile(10.0, 0.99) / 64) == 5
    assert "effective slots" in loaded.reason


def test_decide_with_a_flat_curve_matches_the_constant_model():
    flat = TokenTimeCurve.fit([(1, 0.01), (64, 0.01)])
    assert decide(SPEC, _obs(token_time_curve=flat)).replicas == decide(SPEC, _obs()).replicas


def test_decide_reads_kv_pressure_from_observations():
    d = decide(SPEC, _obs(token_time_curve=curve(), service_concurrency=1.0, running=24.0, kv_cache_usage=0.99))
    assert d.capacity.slots == 24 and d.capacity.limited_by == "kv_cache"
    assert d.replicas == decide(PoolSpec(**(vars(SPEC) | {"slots_per_replica": 24})), _obs(service_time=10.0 * curve()(24) / 6.5e-3)).replicas
