"""`inferencepool simulate` end to end on the bundled trace: table, JSON, PNG, flags and wiring."""

import argparse
import json

import pytest

from inferencepool.simulate import cli


def test_json_report_and_png_on_the_bundled_trace(tmp_path, capsys):
    assert cli.main(["--json", "--out", str(tmp_path), "--quiet"]) == 0
    document = json.loads(capsys.readouterr().out)
    policies = [row["policy"] for row in document["policies"]]
    assert policies == ["static-peak", "hpa-util-0.8", "keda-queue-5", "kpa-conc-0.7", "wva-kv-0.8", "dynamo-util-0.8",
                        "erlang-c-reactive", "erlang-c-predictive", "oracle"]
    assert document["trace"]["requests"] == 8819
    for row in document["policies"]:
        assert row["gpu_hours"] > 0 and 0 <= row["minutes_meeting_slo"] <= 1
        assert row["cost"] == pytest.approx(row["gpu_hours"] * 2.50)
    png = tmp_path / "simulate.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert json.loads((tmp_path / "simulate.json").read_text())["policies"] == document["policies"]


def test_the_table_says_how_the_trace_was_reshaped(tmp_path, capsys):
    code = cli.main(["--out", str(tmp_path), "--time-scale", "4", "--rate-scale", "0.25",
                     "--policies", "reactive,predictive,oracle", "--slo", "p95 wait < 5s", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "time compressed 4x" in out and "rate scaled x0.25" in out
    assert "SLO: p95 wait < 5s" in out and "erlang-c-predictive" in out and "static-peak" not in out
    assert "GPU-h" in out and "Wrote" in out


def test_wired_as_a_subcommand_like_the_main_cli(tmp_path):
    parser = argparse.ArgumentParser(prog="inferencepool")
    subparsers = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(subparsers)
    args = parser.parse_args(["simulate", "--out", str(tmp_path), "--policies", "static,oracle", "--quiet",
                              "--gpus-per-replica", "2", "--cold-start", "2min", "--json"])
    assert args.handler(args) == 0
    document = json.loads((tmp_path / "simulate.json").read_text())
    assert document["fleet"]["gpus_per_replica"] == 2 and document["fleet"]["cold_start_seconds"] == 120


def test_the_inferencepool_command_has_simulate():
    from inferencepool.cli import build_parser

    args = build_parser().parse_args(["simulate", "--policies", "oracle"])
    assert args.handler is cli.run


@pytest.mark.parametrize("flags", [["--policies", "magic"], ["--slo", "fast please"], ["--time-scale", "0"],
                                   ["--cold-start", "soon"]])
def test_bad_flags_exit_2_with_one_line(flags, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(flags)
    assert stop.value.code == 2
    assert capsys.readouterr().err.count("\n") <= 2


def test_cli_defaults_are_the_models_defaults():
    from inferencepool.core.policy import PoolSpec
    from inferencepool.simulate.fleet import FleetConfig, ServiceModel

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    fleet, service, spec = FleetConfig(), ServiceModel(), PoolSpec()
    assert (args.reconcile_interval, args.rate_window, args.scrape_delay) == (
        fleet.reconcile_seconds, fleet.rate_window_seconds, fleet.scrape_delay_seconds)
    assert args.rate_window == fleet.service_window_seconds
    assert (args.cold_start, args.cold_start_spread, args.cold_start_distribution) == (
        fleet.cold_start_seconds, fleet.cold_start_spread, fleet.cold_start_distribution)
    assert (args.prefill_tokens_per_second, args.decode_time_per_token) == (
        service.prefill_tokens_per_second, service.decode_seconds_per_token)
    assert (args.slo.percentile, args.slo.target_seconds, args.slo.metric) == (
        spec.slo_percentile, spec.slo_target_seconds, spec.slo_metric)
