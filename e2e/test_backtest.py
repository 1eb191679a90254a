"""`inferencepool backtest` against the bed's real Prometheus, filled with a pool's 90-minute past by
Prometheus' own backfill (e2e/backfill.py -> promtool tsdb create-blocks-from openmetrics): no mock.

The past: 2, 4, then 2 requests/s for 30 minutes each, 1.5 s mean service, 4 replicas all along (as
kube-state-metrics reports them), requests waiting 0.05 s except in the busy half hour (2 s, above the 1 s target).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backfill  # noqa: E402
from test_operator import robust_answer  # noqa: E402

PHASES = [backfill.Phase(1800, 2.0, 1.5, 4), backfill.Phase(1800, 4.0, 1.5, 4, wait=2.0), backfill.Phase(1800, 2.0, 1.5, 4)]


@pytest.fixture
def history_prometheus(cluster, tmp_path):
    import ipool_bed as bed  # loaded by conftest

    if backfill.promtool() is None:
        pytest.skip("promtool not found (Debian's prometheus package, or the bed's bin)")
    end = float(int(time.time()) - 120)
    workdir = tmp_path / "prometheus"
    backfill.create_blocks(backfill.openmetrics("serving", "llama", PHASES, end), tmp_path / "om", workdir / "data")
    prom = bed.Prometheus([], workdir).start()
    try:
        prom.wait_for('kube_deployment_spec_replicas{deployment="llama"}[3h]', timeout=60)
        yield prom, end
    finally:
        prom.stop()


def test_backtest_replays_the_real_history(history_prometheus, tmp_path, capsys):
    from inferencepool.cli import main

    prom, end = history_prometheus
    out = tmp_path / "scores.json"
    code = main(["backtest", "--prometheus", prom.url, "--pool", "serving/llama", "--since", "90m", "--until", f"{end:.0f}",
                 "--step", "1m", "--target-seconds", "1", "--percentile", "0.99", "--slots-per-replica", "4",
                 "--json", str(out), "--png", str(tmp_path / "backtest.png")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    scores = {s["policy"]: s for s in json.loads(out.read_text())}
    assert set(scores) == {"actual", "ours", "hpa", "static-peak"}
    assert "| actual | " in printed and "| ours | " in printed
    assert (tmp_path / "backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    actual = scores["actual"]
    assert set(actual["replicas"]) == {4} and len(actual["replicas"]) == 91  # kube_deployment_spec_replicas, each minute
    assert actual["gpu_hours"] == pytest.approx(91 * 4 / 60)
    # measured by the pool's queue-time histogram: the busy half hour (4/s of the 8/s-hours) waited above target
    assert actual["measured"] == pytest.approx(0.5, abs=0.03)

    ours = scores["ours"]["replicas"]
    quiet, busy = robust_answer(2.0, 1.5, 4, 1.0, 0.99), robust_answer(4.0, 1.5, 4, 1.0, 0.99)
    assert (quiet, busy) == (2, 3)
    # from the 4 that ran, down one per step; a young forecast (few samples, wide bounds) holds 3 for a while;
    # the busy half hour (steps 30-59) and the 300 s stabilisation window after it; the step up first reads as a
    # ramp (forecast.ramp: the 2-minute rate against the one two windows back) and orders one replica more,
    # which the stabilisation window holds: [4, 3, ..., 2, 3, 4 x 7, 3 x 27, 2, ...] on the bed
    assert ours[0] == 4 and set(ours[20:30]) == {quiet} and set(ours[70:]) == {quiet}
    assert set(ours[32:39]) == {busy + 1} and set(ours[39:60]) == {busy}, ours
    assert scores["ours"]["gpu_hours"] < actual["gpu_hours"]
    assert scores["ours"]["attainment"] >= 0.99 and scores["ours"]["steps_met"] >= 0.9
    assert set(scores["static-peak"]["replicas"]) == {busy}


def test_backtest_says_when_the_pool_has_no_history(history_prometheus, capsys):
    from inferencepool.cli import main

    prom, end = history_prometheus
    code = main(["backtest", "--prometheus", prom.url, "--pool", "serving/nothing", "--since", "30m", "--until", f"{end:.0f}"])
    assert code == 1
    assert 'no vLLM series for pool serving/nothing' in capsys.readouterr().err


def test_backtest_reads_the_label_it_is_told(history_prometheus, capsys):
    """A fleet not yet managed names its pools by another label: the history is there by `pool`, not by `app`."""
    from inferencepool.cli import main

    prom, end = history_prometheus
    code = main(["backtest", "--prometheus", prom.url, "--pool", "serving/llama", "--since", "30m", "--until", f"{end:.0f}",
                 "--pool-label", "app"])
    assert code == 1 and '(labels namespace="serving", app="llama")' in capsys.readouterr().err
