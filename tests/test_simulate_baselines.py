"""Each peer autoscaler's control law on tiny synthetic cases, against replica counts worked out by hand."""

import pytest

from inferencepool.core.policy import Observations
from inferencepool.simulate import baselines


def obs(t=0.0, current=5, ready=None, running=None, waiting=None, rate=None, service=None):
    return Observations(time=t, current_replicas=current, ready_replicas=current if ready is None else ready,
                        running=running, waiting=waiting, arrival_rate=rate, service_time=service)


def test_hpa_utilisation_proposal_tolerance_and_scale_up_limit():
    hpa = baselines.Hpa(slots=1, min_replicas=1, max_replicas=100, target=0.8)
    # 9 busy of 5: r = 9/5/0.8 = 2.25 -> ceil(2.25*5) = 12, limited to max(5+4, 2*5) = 10 per sync
    assert hpa.reconcile(obs(running=9), None) == 10
    # 4.2 busy of 5: r = 1.05, inside the 10% tolerance -> keep 5
    assert baselines.Hpa(1, 1, 100, 0.8).reconcile(obs(running=4.2), None) == 5
    # 2 Ready + 6 starting, 2 busy: r = 1.25 > 1, but with the 6 missing pods at 0, r' = 2/(0.8*8) < 1: a flip -> keep 8
    assert baselines.Hpa(1, 1, 100, 0.8).reconcile(obs(current=8, ready=2, running=2), None) == 8
    # 2 Ready + 1 starting, 3 busy: r = 1.875; r' = 3/(0.8*3) = 1.25 -> ceil(1.25*3) = 4
    assert baselines.Hpa(1, 1, 100, 0.8).reconcile(obs(current=3, ready=2, running=3), None) == 4


def test_hpa_scale_down_waits_out_the_300s_window():
    hpa = baselines.Hpa(slots=1, min_replicas=1, max_replicas=100, target=0.8)
    assert hpa.reconcile(obs(t=0, running=4), None) == 5  # r = 1.0: recommendation 5
    assert hpa.reconcile(obs(t=15, running=2), None) == 5  # wants ceil(0.5*5) = 3; the window still holds 5
    assert hpa.reconcile(obs(t=300, running=2), None) == 3  # the 5 from t=0 has left the window


def test_keda_on_waiting_requests_averagevalue_and_legacy_limit():
    keda = baselines.QueueDepth(min_replicas=1, max_replicas=100, waiting_per_replica=5)
    # 22 waiting: ceil(22/5) = 5, capped by the nil-behavior limit max(2*2, 4) = 4
    assert keda.reconcile(obs(current=2, waiting=22), None) == 4
    # 10 waiting on 2 replicas: 10/(5*2) = 1, inside the tolerance -> keep 2
    assert baselines.QueueDepth(1, 100, 5).reconcile(obs(current=2, waiting=10), None) == 2
    # an empty queue asks for 0 -> clamped to minReplicaCount, once the window allows
    keda = baselines.QueueDepth(min_replicas=2, max_replicas=100, waiting_per_replica=5)
    assert keda.reconcile(obs(t=0, current=6, waiting=0), None) == 2


class Area:
    """A FleetView stand-in whose request-seconds integral the test drives."""

    def __init__(self):
        self.area = 0.0

    def in_system_integral(self):
        return self.area


def test_kpa_stable_window_panic_and_its_hold():
    kpa = baselines.Kpa(min_replicas=1, max_replicas=1000, target=0.5)
    fleet, t, out = Area(), 0.0, None
    for _ in range(30):  # 60 s at 2.5 requests in flight: ceil(2.5 / 0.5) = 5
        t += 2
        fleet.area += 2.5 * 2
        out = kpa.reconcile(obs(t=t, current=5), fleet)
    assert out == 5 and kpa.panic_time is None
    for _ in range(3):  # 6 s at 15 in flight: panic value 15 -> dppc 30 = 6x the 5 Ready >= 200%: panic;
        t += 2  # stable (2.5 x 54 + 15 x 6) / 60 = 3.75 -> dspc 8; output max(8, 30)
        fleet.area += 15 * 2
        out = kpa.reconcile(obs(t=t, current=5), fleet)
    assert kpa.panic_time == t and out == 30
    for _ in range(10):  # quiet again: in panic the output never falls
        t += 2
        out = kpa.reconcile(obs(t=t, current=30, ready=5), fleet)
    assert out == 30
    for _ in range(25):  # 60 s after the last panic tick the stable value rules, at most halving the Ready pods
        t += 2
        out = kpa.reconcile(obs(t=t, current=30, ready=5), fleet)
    assert kpa.panic_time is None and out == 2  # stable ~0 -> 0, clamped to floor(5 / 2)


def test_wva_saturation_targets():
    wva = baselines.Wva(slots=1, min_replicas=1, max_replicas=100)
    assert wva.target(current=4, ready=4, kv=0.75, queue=0) == 5  # spare KV 0.05 < 0.1
    assert wva.target(current=4, ready=4, kv=0.5, queue=2.5) == 5  # spare queue 2.5 < 3
    assert wva.target(current=4, ready=4, kv=0.9, queue=0) == 5  # saturated
    # 4 at 0.3: with one fewer, 0.3 * 4/3 = 0.4, spare 0.4 >= 0.1 and queue spare 5 >= 3: down by one
    assert wva.target(current=4, ready=4, kv=0.3, queue=0) == 3
    assert wva.target(current=4, ready=4, kv=0.6, queue=0) == 4  # 0.6*4/3 = 0.8: spare 0 < 0.1, hold
    assert wva.target(current=5, ready=4, kv=0.9, queue=9) == 5  # a replica still starting: no further step


def test_wva_goes_through_the_charts_hpa_windows():
    wva = baselines.Wva(slots=1, min_replicas=1, max_replicas=100)
    saturated = dict(current=4, running=3.8, waiting=0)  # KV 0.95 >= 0.8: the analyser wants 5 every 30 s
    # the HPA's 240 s scale-up stabilisation takes the lowest target in its window, which still holds the 4
    # it had been keeping at the start
    assert wva.reconcile(obs(t=0, **saturated), None) == 4
    assert wva.reconcile(obs(t=225, **saturated), None) == 4
    assert wva.reconcile(obs(t=240, **saturated), None) == 5


def test_dynamo_planner_sizes_every_180s_for_the_predicted_rate():
    planner = baselines.DynamoPlanner(slots=1, min_replicas=1, max_replicas=100, utilisation=0.5)
    t, outs = 135.0, []
    for _ in range(30):  # 2 requests/s, 1 s each; one engine sustains 0.5 x 1 / 1 s = 0.5/s at the SLA
        outs.append(planner.reconcile(obs(t=t, current=2, rate=2.0, service=1.0), None))
        t += 15
    assert outs[0] == 2  # nothing decided before the first 180 s interval
    first = outs.index(4)
    assert first == 12  # 135 + 180 s: ceil(2.0 / 0.5) = 4
    assert set(outs[first:]) == {4}


def test_dynamo_kalman_predictor_follows_a_linear_ramp():
    planner = baselines.DynamoPlanner(slots=1, min_replicas=1, max_replicas=100)
    forecasts = [planner.predict(100.0 + 10 * k) for k in range(30)]
    assert forecasts[2] == 120.0  # fewer than 5 points: the last value
    assert forecasts[-1] == pytest.approx(100 + 10 * 30, rel=0.02)  # one interval ahead on the ramp
