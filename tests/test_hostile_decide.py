"""Property tests: decide() on hostile observations and history never raises, stays within [floor, cap] and
never scales down on data the operator must not trust (issue 15). Strategies: tests/hostile.py; the
counts and the worst-case time are in benchmarks/hostile_decide.py."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import ABSURD, ABSURD_DEFAULT, histories, observations, specs, untrusted
from inferencepool.core import sanitize
from inferencepool.core.policy import History, Observations, PoolSpec, decide
from inferencepool.core.queueing import Queue, TargetUnreachable

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@st.composite
def cases(draw):
    spec = draw(specs())
    return spec, draw(observations(spec)), draw(histories())


@PROPERTY
@given(cases())
def test_decide_never_raises_stays_in_bounds_and_never_scales_down_on_untrusted_data(case):
    spec, obs, history = case
    d = decide(spec, obs, history)
    floor, cap = spec.min_replicas, spec.replica_cap
    assert floor <= d.replicas <= cap, (d.replicas, floor, cap, d.reason)
    bad = untrusted(obs, spec)
    if bad:
        assert d.replicas == max(obs.current_replicas, floor), (bad, d.reason)
        assert not d.metrics_available
    assert d.reason  # every decision explains itself


@settings(PROPERTY, max_examples=100)
@given(cases())
def test_a_current_count_above_the_cap_never_rises(case):
    spec, obs, history = case
    above = Observations(**{**obs.__dict__, "current_replicas": spec.replica_cap + 7})
    d = decide(spec, above, history)
    assert spec.min_replicas <= d.replicas <= above.current_replicas


@pytest.mark.parametrize("field, value", [
    ("arrival_rate", math.inf), ("arrival_rate", -1.0), ("arrival_rate", 1e308), ("arrival_rate", 2e6),
    ("service_time", math.inf), ("service_time", -1.0), ("service_time", 2 * 86400.0),
    ("arrival_cv", math.inf), ("service_cv", -1.0), ("waiting", -3.0), ("running", 1e308),
    ("kv_cache_usage", 5.0), ("prefill_time", math.inf),
])
def test_an_invalid_field_holds_and_the_reason_names_it(field, value):
    spec = PoolSpec(min_replicas=1, max_replicas=20, scale_down_window_seconds=0)
    history = History(last_service_time=1.0)
    base = dict(time=1000.0, current_replicas=5, arrival_rate=0.01, service_time=1.0)
    assert decide(spec, Observations(**base), history).replicas < 5  # the valid reading scales down
    d = decide(spec, Observations(**{**base, field: value}), history)
    assert d.replicas == 5 and d.constraint == "metrics_invalid" and not d.metrics_available
    assert field in d.reason and "never scaling down" in d.reason


def test_nan_stays_missing_not_invalid():
    """NaN is what 0/0 gives in PromQL when nothing finished: the last known service time still bridges it."""
    spec = PoolSpec(max_replicas=20)
    d = decide(spec, Observations(time=1.0, current_replicas=2, arrival_rate=1.0, service_time=math.nan),
               History(last_service_time=2.0))
    assert d.metrics_available and d.constraint != "metrics_invalid"


def test_corrupt_history_is_dropped_not_trusted():
    from inferencepool.core.forecast import HoltState

    bad = History(
        forecaster=HoltState(time=0.0, level=math.inf, trend=0.0, residual_var=0.0, step=0.0, count=3),
        recommendations=((math.nan, 3), (10.0, -2), (20.0, 4)),
        last_service_time=-5.0,
        last_scale_time=math.inf,
    )
    cleaned = sanitize.clean_history(bad, 100.0)
    assert cleaned == History(recommendations=((20.0, 4),))


def test_sanitize_bounds_are_no_tighter_than_the_tests_idea_of_absurd():
    """The sanitiser's bounds sit below what the property test calls absurd, and above any real pool."""
    for name, (high, _) in sanitize.BOUNDS.items():
        assert high <= ABSURD.get(name, ABSURD_DEFAULT), name
    assert sanitize.MAX_RATE >= 1e6 and sanitize.MAX_SECONDS >= 86400


def test_solver_refuses_a_load_far_beyond_the_cap_at_once():
    """1e12 Erlangs with a 20-server cap: TargetUnreachable without searching for the uncapped answer."""
    q = Queue(1e6, 1e6)
    with pytest.raises(TargetUnreachable) as caught:
        q.servers_for_wait_quantile(10.0, 0.99, max_servers=20)
    assert caught.value.max_servers == 20 and caught.value.servers_needed is None
    assert "1e+12 Erlangs" in str(caught.value) and "max_servers=20" in str(caught.value)
    with pytest.raises(ValueError, match="overflows"):
        Queue(1e200, 1e200)


def test_decide_at_a_load_beyond_the_cap_goes_to_the_cap_saturated():
    spec = PoolSpec(max_replicas=20, prediction=False)
    d = decide(spec, Observations(time=1.0, current_replicas=3, arrival_rate=1e6, service_time=86400.0))
    assert d.replicas == 20 and d.saturated and d.constraint == "max_replicas"


def test_an_underflowing_service_time_decides():
    """Found by the property above (after the issue-11 dispersion merge reordered the draws): 1e-300 s of
    service and a near-zero CV made the conditional mean wait underflow to 0, and P(W > t) divided by it."""
    spec = PoolSpec(slo_percentile=None, slo_target_seconds=1.0, min_replicas=1, max_replicas=1,
                    scale_down_window_seconds=0.0, prediction=False, default_cold_start_seconds=1.0,
                    max_metrics_age_seconds=1.0)
    obs = Observations(time=1000.0, current_replicas=0, ready_replicas=0, arrival_rate=1.0, service_time=1e-300,
                       arrival_cv=0.0, service_cv=3.7e-78, metrics_age_seconds=0.0)
    d = decide(spec, obs, History())
    assert d.replicas == 1 and d.p_wait_exceeds == {1: 0.0, 2: 0.0}


def test_a_forecaster_with_corrupt_recent_rates_restarts():
    """The ramp test's recent rates come from status too: times out of order or after the state's own time,
    a negative or non-finite rate, and the forecaster restarts rather than extrapolate from them."""
    from inferencepool.core.forecast import HoltState

    good = HoltState(time=100.0, level=2.0, trend=0.0, residual_var=0.1, step=2.0, count=9,
                     recent=((60.0, 1.0), (80.0, 2.0), (100.0, 3.0)))
    assert sanitize.clean_history(History(forecaster=good), 101.0).forecaster == good
    for recent in (((80.0, 1.0), (60.0, 2.0)), ((60.0, 1.0), (120.0, 2.0)), ((60.0, -1.0),), ((60.0, math.nan),),
                   ((math.inf, 1.0),), ((60.0, 1e300),)):
        bad = HoltState(time=100.0, level=2.0, trend=0.0, residual_var=0.1, step=2.0, count=9, recent=recent)
        assert sanitize.clean_history(History(forecaster=bad), 101.0).forecaster is None, recent
