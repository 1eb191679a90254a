"""spec.mode Advisory (operator/modes.py), driven through the handlers with the fakes of test_handlers."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest

from inferencepool.operator import modes
from inferencepool.operator.spec import SpecError, parse
from test_handlers import SPEC, Pool, erlang_c_replicas, events, metrics, world  # noqa: F401 - fixtures

ADVISORY = {**SPEC, "mode": "Advisory"}


def test_mode_defaults_to_active_and_refuses_anything_else():
    assert parse(SPEC).mode == "Active" and parse(ADVISORY).mode == "Advisory"
    with pytest.raises(SpecError, match=r"spec.mode: must be Active or Advisory, got 'DryRun'"):
        parse({**SPEC, "mode": "DryRun"})


def test_an_advisory_pool_reports_what_it_would_set_and_never_scales(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    pool = Pool(ADVISORY)
    status = pool.tick(operator)  # creates the Deployment at the warm floor (1), then only advises
    expected = erlang_c_replicas(12.0, 1.5)
    assert expected > 1
    assert kube.scaled == [] and kube.deployments[("serving", "llama")]["spec"]["replicas"] == 1
    assert status["mode"] == "Advisory" and status["desiredReplicas"] == expected
    advice = status["advisory"]
    assert (advice["recommendedReplicas"], advice["deploymentReplicas"], advice["action"]) == (expected, 1, "scale_up")
    assert advice["reason"] == f"would {status['reason']}" and advice["reason"].startswith(f"would scale up 1 -> {expected}")
    assert "lastScaleTime" not in status and json.loads(status["history"])["last_scale_time"] is None
    assert [e for e in events if e[1] == "WouldScaleUp"] == [("Normal", "WouldScaleUp", "advisory: " + advice["reason"])]
    assert not [e for e in events if e[1] in ("ScaledUp", "ReplicasRestored")]
    text = generate_latest(operator.metrics.registry).decode()
    assert 'inferencepool_advisory{namespace="serving",pool="llama"} 1.0' in text
    assert 'inferencepool_deployment_replicas{namespace="serving",pool="llama"} 1.0' in text
    assert f'inferencepool_desired_replicas{{namespace="serving",pool="llama"}} {expected}.0' in text

    # The same recommendation next tick: no new Event, and `since` stays.
    events.clear()
    again = pool.tick(operator)
    assert kube.scaled == [] and not events and again["advisory"]["since"] == advice["since"]

    # Another scaler (an HPA) sets the Deployment: no hand edit is put back, the advice follows it.
    kube.scale("serving", "llama", 9, manager="kube-controller-manager")
    status = pool.tick(operator)
    assert kube.deployments[("serving", "llama")]["spec"]["replicas"] == 9
    assert status["advisory"]["deploymentReplicas"] == 9 and status["advisory"]["action"] in ("hold", "scale_down")
    assert not [e for e in events if e[1] == "ReplicasRestored"]
    assert [c for c in kube.calls if c[0] == "annotate"] == []  # no deletion costs either


def test_switching_to_active_keeps_the_history_and_scales(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    pool = Pool(ADVISORY)
    pool.tick(operator)
    pool.tick(operator)
    # the History as last decided (the API's copy lags by up to 4 intervals when only live figures move)
    before = json.loads(operator._status[("serving", "llama")][1]["history"])  # noqa: SLF001
    assert before["forecaster"]["count"] == 2
    pool.raw["spec"]["mode"] = "Active"
    status = pool.tick(operator)
    expected = erlang_c_replicas(12.0, 1.5)
    assert kube.scaled == [expected] and status["mode"] == "Active" and "advisory" not in status
    after = json.loads(status["history"])
    assert after["forecaster"]["count"] == 3  # resumed, not restarted
    # kept compact (policy.window_maxima: one entry per answer), the newest is the Active tick's
    assert [r for _, r in before["recommendations"]] == [expected]
    assert after["recommendations"][-1][1] == expected and after["recommendations"][-1][0] > before["recommendations"][-1][0]
    assert status["lastScaleReason"] == status["reason"]
    assert not [e for e in events if e[1] == "ReplicasRestored"]


def test_would_event_only_for_a_new_recommendation():
    from dataclasses import replace

    from inferencepool.core.policy import Decision, History

    d = Decision(replicas=3, previous_replicas=1, constraint="slo", reason="scale up 1 -> 3: x", history=History())
    assert modes.would_event(d, None) == ("WouldScaleUp", "advisory: would scale up 1 -> 3: x")
    assert modes.would_event(d, {"recommendedReplicas": 3, "deploymentReplicas": 1}) is None
    assert modes.would_event(d, {"recommendedReplicas": 3, "deploymentReplicas": 2})[0] == "WouldScaleUp"
    assert modes.would_event(replace(d, replicas=1), None) is None  # hold
    assert modes.would_event(replace(d, previous_replicas=5), None)[0] == "WouldScaleDown"
