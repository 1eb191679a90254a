"""kopf never gives up on a pool (issue 15): an API request failing through a long apiserver outage is
retried for ever, and a failed autoscale tick is retried after one interval, not kopf's default 60 s."""

from __future__ import annotations

import argparse
import itertools

import kopf
import pytest

from inferencepool.operator import run


@pytest.fixture(scope="module")
def built():
    """Built once: the operator's metrics register in prometheus_client's global registry."""
    args = run.configure_parser(argparse.ArgumentParser()).parse_args(["--metrics-port", "0", "--interval", "7"])
    registry, settings, _, _ = run.build(args)
    return registry, settings


def test_api_retries_never_run_out_and_never_wait_over_30s(built):
    _, settings = built
    backoffs = settings.networking.error_backoffs
    first = list(itertools.islice(backoffs, 1000))  # kopf appends a None (escalate) after the last one
    assert len(first) == 1000 and None not in first and max(first) == 30.0
    assert sum(first) > 8 * 3600  # an 8-hour outage is still retried
    assert list(itertools.islice(backoffs, 3)) == [1, 1, 2]  # every request starts from the short ones
    assert kopf.OperatorSettings().networking.error_backoffs == (1, 1, 2, 3, 5, 8, 13, 21)  # what it replaces


def test_a_failed_tick_is_retried_after_one_interval_for_ever(built):
    """The budget timer retries after one interval; a pool's failed decision is retried by the next round
    (rounds.py, tests/test_rounds.py), and its daemon, should it fail, after one interval too."""
    registry, _ = built
    spawning = {h.id: h for h in registry._spawning.get_all_handlers()}
    assert [(h.id, h.interval, h.backoff, h.retries) for h in spawning.values() if getattr(h, "interval", None)] == [
        ("budget", 7.0, 7.0, None)]
    assert (spawning["autoscale"].backoff, spawning["autoscale"].retries) == (7.0, None)


def test_a_failed_create_update_or_resume_is_retried_after_one_interval(built):
    registry, _ = built
    handlers = {h.id: h.backoff for h in registry._changing.get_all_handlers()}
    assert handlers == {"create-workload": 7.0, "resume-workload": 7.0, "update-workload/spec": 7.0, "forget": None,
                        "forget-budget": None}


def test_replicas_started_alike_get_distinct_peering_priorities():
    """kopf pauses an operator that sees a peer of its own priority: two chart replicas at 0 both paused."""
    drawn = {run.peering_priority(None) for _ in range(50)}
    assert len(drawn) == 50 and min(drawn) >= 1
    assert run.peering_priority(7) == 7 and run.peering_priority(0) == 0
    args = run.configure_parser(argparse.ArgumentParser()).parse_args(["--peering", "p"])
    assert args.priority is None  # so the random default applies

