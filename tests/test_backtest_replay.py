"""backtest/replay.py on hand-made steps (the Prometheus side is tested on the bed: e2e/test_backtest.py)."""

from __future__ import annotations

import math

import pytest

from inferencepool.backtest.replay import Step, good_share, replay, share_below, table
from inferencepool.core.policy import Observations, PoolSpec
from inferencepool.core.queueing import Queue

SPEC = PoolSpec(slo_target_seconds=1.0, slo_percentile=0.99, slots_per_replica=1, min_replicas=1, max_replicas=10,
                prediction=False, scale_down_window_seconds=0.0, scale_down_max_step=10)


def obs(t, rate, service=1.0):
    return Observations(time=t, current_replicas=0, arrival_rate=rate, service_time=service, metrics_age_seconds=0.0)


def test_share_below_interpolates_between_bucket_bounds():
    buckets = ((0.5, 2.0), (1.5, 6.0), (math.inf, 8.0))
    assert share_below(buckets, 1.0) == (4.0, 8.0)  # halfway from 2 to 6
    assert share_below(buckets, 0.25) == (1.0, 8.0)  # from 0 at 0
    assert share_below(buckets, 9.0) == (6.0, 8.0)  # beyond the last finite bound: what it holds
    assert share_below((), 1.0) is None and share_below(((1.0, 0.0), (math.inf, 0.0)), 1.0) is None


def test_good_share_is_one_minus_the_erlang_c_tail():
    o = obs(0, 1.0)
    assert good_share(SPEC, o, 2) == pytest.approx(1 - Queue(1.0, 1.0).prob_wait_exceeds(2, 1.0))
    assert good_share(SPEC, o, 1) == 0.0  # unstable
    assert good_share(SPEC, obs(0, 0.0), 1) == 1.0 and good_share(SPEC, obs(0, None), 1) is None


def test_replay_scores_every_policy_and_what_ran():
    steps = [Step(60.0 * k, obs(60.0 * k, 3.0 if k < 5 else 0.5), actual_replicas=8,
                  queue_buckets=((1.0, 3.0), (math.inf, 4.0))) for k in range(10)]
    steps.append(Step(600.0, None, actual_replicas=8))  # a gap in the metrics: nothing decided, GPUs still counted
    scores = {s.policy: s for s in replay(steps, SPEC, 60.0)}
    assert scores["actual"].replicas == [8] * 11 and scores["actual"].gpu_hours == pytest.approx(11 * 8 / 60)
    assert scores["actual"].measured == pytest.approx(0.75)
    need = Queue(3.0, 1.0).servers_for_wait_quantile(1.0, 0.99)
    ours = scores["ours"].replicas
    assert ours[:5] == [need] * 5 and ours[-1] == ours[-2]  # held through the gap
    assert scores["static-peak"].replicas == [need] * 11
    assert scores["ours"].gpu_hours < scores["static-peak"].gpu_hours < scores["actual"].gpu_hours
    assert scores["ours"].attainment >= 0.99 and scores["ours"].steps_met_share == 1.0
    rows = table(list(scores.values()))
    assert rows[0].startswith("| policy | GPU-hours") and any(r.startswith("| actual | 1.47 | 8.00 |") for r in rows)


@pytest.mark.parametrize("flags, message", [
    (["--pool", "llama"], "--pool must be NAMESPACE/NAME"),
    (["--pool", "a/b", "--percentile", "1.5"], "--percentile must be strictly between 0 and 1"),
    (["--pool", "a/b", "--since", "a week"], "--since"),
])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(flags, message, capsys):
    from inferencepool.cli import main

    with pytest.raises(SystemExit) as exit_:
        code = main(["backtest", "--prometheus", "http://127.0.0.1:1", *flags])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_an_unreachable_prometheus_is_one_line_and_exit_1(capsys):
    from inferencepool.cli import main

    assert main(["backtest", "--prometheus", "http://127.0.0.1:1", "--pool", "a/b", "--since", "10m"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Prometheus at http://127.0.0.1:1 failed") and len(err.strip().splitlines()) == 1


def test_spec_comes_from_an_inferencepool_manifest(tmp_path):
    import argparse
    from pathlib import Path

    import yaml

    from inferencepool.backtest.cli import pool_spec
    from inferencepool.operator.spec import parse

    example = Path(__file__).resolve().parents[1] / "examples" / "l4-llama8b.yaml"
    manifest = next(d for d in yaml.safe_load_all(example.read_text()) if d and d["kind"] == "InferencePool")
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert pool_spec(argparse.Namespace(spec=str(path))) == parse(manifest["spec"]).policy
    assert pool_spec(argparse.Namespace(spec=str(example))) == parse(manifest["spec"]).policy  # several documents
    path.write_text(yaml.safe_dump({"spec": {**manifest["spec"], "minReplicas": -1}}))
    with pytest.raises(ValueError, match=f"--spec {path}: spec.minReplicas"):
        pool_spec(argparse.Namespace(spec=str(path)))
