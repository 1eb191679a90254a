"""The frontier sweep: which setting it picks, and a run of every family on a tiny trace."""

import json

import pytest

from inferencepool.core.policy import PoolSpec
from inferencepool.simulate import cli, compare, sweep
from inferencepool.simulate import trace as tr


def row(family, knob, floor, seed, hours, windows, requests=1.0, scenario="s"):
    return {"scenario": scenario, "seed": seed, "family": family, "knob": knob, "floor": floor,
            "gpu_hours": hours, "windows": windows, "requests": requests}


def test_the_frontier_takes_the_cheapest_setting_whose_worst_seed_reaches_the_level():
    rows = [
        row("oracle", None, 1, 0, 10.0, 1.0), row("oracle", None, 1, 1, 10.0, 1.0),
        row("hpa", 0.8, 1, 0, 11.0, 0.96), row("hpa", 0.8, 1, 1, 13.0, 0.995),  # worst seed 0.96
        row("hpa", 0.6, 1, 0, 15.0, 0.99), row("hpa", 0.6, 1, 1, 17.0, 0.999),  # worst seed 0.99
        row("hpa", 0.9, 1, 0, 9.0, 0.80), row("hpa", 0.9, 1, 1, 9.0, 0.99),  # cheap but its worst seed is 0.8
    ]
    result = sweep.frontier(rows, levels=(0.9, 0.95, 0.99, 0.999))["s"]
    assert result["oracle_gpu_hours"] == 10.0
    hpa = result["families"]["hpa"]
    assert hpa[0.9]["knob"] == 0.8 and hpa[0.9]["ratio"] == pytest.approx(1.2)  # mean of 11 and 13
    assert hpa[0.9]["spread"] == (11.0, 13.0)
    assert hpa[0.99]["knob"] == 0.6 and hpa[0.99]["ratio"] == pytest.approx(1.6)
    assert hpa[0.999] is None
    worst = sweep.frontier(rows, levels=(0.85,))["s"]["families"]["hpa"][0.85]
    assert worst["knob"] == 0.8  # knob 0.9 is cheaper and its seeds average 0.895, but its worst seed is 0.8
    lines = sweep.table({"s": result}, "s", levels=(0.9, 0.95, 0.99, 0.999))
    assert "| Kubernetes HPA | 1.20x (1.10-1.30); util 0.8, floor 1 |" in lines[2] and lines[2].endswith("| never |")


def test_a_sweep_on_a_tiny_trace_runs_every_family_and_the_oracle_on_every_seed():
    trace = tr.clip(tr.load(), 900.0)
    seeded = [compare.Scenario(trace=trace, spec=PoolSpec(max_replicas=40), seed=s) for s in (0, 1)]
    rows = sweep.run({"tiny": seeded}, sweep.QUICK, jobs=1)
    families = {r["family"] for r in rows}
    assert families == set(sweep.ORDER) | {"oracle"}
    per_family = {f: sorted(r["seed"] for r in rows if r["family"] == f) for f in families}
    assert per_family["oracle"] == [0, 1] and per_family["hpa"] == [0, 1]
    result = sweep.frontier(rows)["tiny"]
    oracle = [r for r in rows if r["family"] == "oracle"]
    assert result["oracle_gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in oracle) / 2)
    assert min(r["windows"] for r in oracle) >= 0.99
    static = result["families"]["static"]
    reached = [static[level]["gpu_hours"] for level in sweep.LEVELS if static[level] is not None]
    assert reached == sorted(reached)  # a higher level never costs less


def test_the_cli_sweep_writes_the_frontier(tmp_path, capsys):
    argv = ["--sweep", "--quick", "--seeds", "2", "--jobs", "1", "--quiet", "--out", str(tmp_path)]
    trace = tmp_path / "tiny.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2023-11-16 18:{m:02d}:{s:02d}.0000000,{1000 + 37 * s},{20 + s % 7}" for m in range(12) for s in range(0, 60, 2)]
    trace.write_text("\n".join(lines) + "\n")
    assert cli.main(argv + ["--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "| ours (decide(), scale-ahead) |" in out and "| oracle |" in out
    document = json.loads((tmp_path / "frontier.json").read_text())
    assert document["seeds"] == 2 and {r["seed"] for r in document["runs"]} == {0, 1}
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_a_warm_up_longer_than_the_trace_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--warm-up", "2h", "--quiet"])
    assert exit_.value.code == 2
    assert "--warm-up" in capsys.readouterr().err


def test_ours_knob_tuple_sets_the_hindsight_floor_and_its_headroom_scaling():
    scenario = compare.Scenario(trace=tr.clip(tr.load(), 300.0), spec=PoolSpec(max_replicas=40), seed=0)
    knob = (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97, None, True)
    _, policy = sweep.build(scenario, "ours", knob, 3)
    s = policy.spec
    assert (s.slo_objective, s.backlog_drain_seconds, s.hindsight_quantile, s.hindsight_seconds, s.hindsight_feedback,
            s.min_replicas) == (0.99, 10.0, 0.97, 3600.0, True, 3)
    assert sweep._knob("ours", knob) == "q0.9 obj 0.99 drain 10s hfloor q0.97 xheadroom"
    _, eight = sweep.build(scenario, "ours", knob[:8], 3)  # an 8-tuple (older rows) leaves the scaling off
    assert eight.spec.hindsight_feedback is False and sweep._knob("ours", knob[:8]) == "q0.9 obj 0.99 drain 10s hfloor q0.97"
