"""`inferencepool plan`: numbers in --json, batching, build vs buy, and bad input."""

import json

import pytest

from inferencepool.cli import main
from inferencepool.plan.planner import (
    HOURS_PER_MONTH,
    ApiPricing,
    Requirements,
    break_even,
    capacity,
    make_plan,
    meets,
    monthly_cost,
    servers_needed,
)
from inferencepool.core.units import parse_slo

SEED = ["plan", "--arrival-rate", "100/min", "--service-time", "15s", "--slo", "p99 wait < 10s"]
API = ["--api-price-input", "3", "--api-price-output", "15", "--input-tokens", "1000", "--output-tokens", "500"]


def run_json(capsys, *extra):
    assert main([*SEED, *extra, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_seed_plan_is_30_servers_against_32_for_the_80_percent_rule(capsys):
    plan = run_json(capsys)
    erlang, naive = plan["erlang_c"], plan["naive"]
    assert plan["inputs"]["offered_load_erlangs"] == pytest.approx(25.0)
    assert (erlang["servers_needed"], erlang["replicas"], erlang["gpus"]) == (30, 30, 30)
    assert (naive["servers_needed"], naive["replicas"], naive["gpus"]) == (32, 32, 32)
    assert erlang["prob_wait_exceeds_threshold"] <= 0.01 and erlang["percentile_wait_s"] <= 10
    assert erlang["meets_requirements"] and naive["meets_requirements"]
    assert erlang["utilization"] == pytest.approx(25 / 30)
    assert erlang["cost_per_hour_usd"] == pytest.approx(30 * 2.50)
    assert erlang["cost_per_month_usd"] == pytest.approx(30 * 2.50 * 720)
    assert plan["comparison"] == {
        "gpus_saved": 2, "monthly_saving_usd": pytest.approx(2 * 2.5 * 720), "naive_meets_requirements": True,
    }
    assert plan["build_vs_buy"] is None


def test_json_keys_are_stable(capsys):
    plan = run_json(capsys, *API)
    assert list(plan) == ["inputs", "erlang_c", "naive", "comparison", "build_vs_buy"]
    assert list(plan["erlang_c"]) == list(plan["naive"]) == [
        "rule", "servers_needed", "replicas", "servers", "gpus", "utilization", "wait_threshold_s",
        "prob_wait_exceeds_threshold", "mean_wait_s", "percentile", "percentile_wait_s", "cost_per_hour_usd",
        "cost_per_month_usd", "meets_requirements", "stable", "capped",
    ]
    assert list(plan["build_vs_buy"]) == [
        "api_cost_per_request_usd", "api_cost_per_month_usd", "self_hosted_cost_per_month_usd", "cheaper",
        "break_even_rate_per_s", "break_even_rate_per_min", "break_even_replicas",
    ]


def test_text_output_has_both_plans_side_by_side(capsys):
    assert main(SEED) == 0
    out = capsys.readouterr().out
    assert "25 Erlangs" in out and "assumed default" in out
    replicas = next(line for line in out.splitlines() if line.startswith("replicas"))
    assert replicas.split() == ["replicas", "30", "32"]
    assert "Erlang C saves 2 GPU(s), $3,600/month" in out


def test_batched_replicas_round_up_whole_replicas(capsys):
    plan = run_json(capsys, "--slots-per-replica", "8", "--gpus-per-replica", "2")
    erlang = plan["erlang_c"]
    assert erlang["servers_needed"] == 30
    assert (erlang["replicas"], erlang["servers"], erlang["gpus"]) == (4, 32, 8)  # ceil(30 / 8) = 4
    assert erlang["utilization"] == pytest.approx(25 / 32)
    assert plan["naive"]["replicas"] == 4  # ceil(32 / 8)
    assert plan["comparison"]["gpus_saved"] == 0


def test_slo_and_utilization_cap_are_both_met(capsys):
    plan = run_json(capsys, "--max-utilization", "0.7")
    assert plan["erlang_c"]["servers_needed"] == 36  # 25 / 0.7 = 35.7, stricter than the SLO's 30
    assert plan["erlang_c"]["utilization"] <= 0.7


def test_utilization_only_plan(capsys):
    argv = ["plan", "--arrival-rate", "100/min", "--service-time", "15s", "--max-utilization", "80%", "--json"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["erlang_c"]["servers_needed"] == plan["naive"]["servers_needed"] == 32
    assert plan["inputs"]["slo"] is None and plan["erlang_c"]["wait_threshold_s"] == 0


def test_ttft_slo_queues_for_what_prefill_leaves():
    base = dict(arrival_rate=30.0, service_time=8.0, slots_per_replica=32)
    ttft = Requirements(**base, slo=parse_slo("p95 ttft < 500ms"), prefill_time=0.2)
    wait = Requirements(**base, slo=parse_slo("p95 wait < 300ms"))
    assert ttft.wait_target == pytest.approx(0.3)
    assert servers_needed(ttft) == servers_needed(wait)


def test_mean_wait_slo(capsys):
    argv = ["plan", "--arrival-rate", "0.6/s", "--service-time", "15s", "--slo", "mean wait < 10.1s", "--json"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["erlang_c"]["servers_needed"] == 10  # 10.03 s mean wait at c = 10, a = 9
    assert plan["erlang_c"]["mean_wait_s"] == pytest.approx(10.03, abs=0.005)


def test_replica_limits_clamp_and_report(capsys):
    plan = run_json(capsys, "--max-replicas", "26")
    erlang = plan["erlang_c"]
    assert erlang["replicas"] == 26 and erlang["capped"] and not erlang["meets_requirements"]
    plan = run_json(capsys, "--max-replicas", "20")  # cannot even carry 25 Erlangs
    assert plan["erlang_c"]["stable"] is False and plan["erlang_c"]["mean_wait_s"] is None
    plan = run_json(capsys, "--min-replicas", "40")
    assert plan["erlang_c"]["replicas"] == 40 and not plan["erlang_c"]["capped"]


def test_build_vs_buy_bills(capsys):
    bvb = run_json(capsys, *API)["build_vs_buy"]
    per_request = (1000 * 3 + 500 * 15) / 1e6
    assert bvb["api_cost_per_request_usd"] == pytest.approx(per_request)
    assert bvb["api_cost_per_month_usd"] == pytest.approx(100 / 60 * 30 * 24 * 3600 * per_request)
    assert bvb["self_hosted_cost_per_month_usd"] == pytest.approx(30 * 2.5 * HOURS_PER_MONTH)
    assert bvb["cheaper"] == "api"


REQUIREMENTS = [
    Requirements(100 / 60, 15, slo=parse_slo("p99 wait < 10s")),
    Requirements(100 / 60, 15, slo=parse_slo("p99 wait < 10s"), slots_per_replica=8, gpus_per_replica=2),
    Requirements(5.0, 4, slo=parse_slo("mean wait < 500ms"), max_utilization=0.9, min_replicas=3),
    Requirements(2.0, 15, max_utilization=0.8, slots_per_replica=16),
    Requirements(20.0, 2, slo=parse_slo("p95 wait < 1s"), slots_per_replica=16, gpu_hour_price=2.0),
]
FRONTIER_API = ApiPricing(3, 15, 1000, 500)  # $0.0105 / request
CHEAP_API = ApiPricing(0.5, 1.5, 800, 300)  # $0.00085 / request


@pytest.mark.parametrize(
    "req, api",
    [(req, FRONTIER_API) for req in REQUIREMENTS] + [(REQUIREMENTS[3], CHEAP_API), (REQUIREMENTS[4], CHEAP_API)],
)
def test_break_even_is_where_the_bills_meet_and_self_hosting_wins_above(req, api):
    rate, replicas = break_even(req, api)
    assert rate is not None and rate > 0
    plan = make_plan(req.at_rate(rate), api)
    assert plan.erlang.replicas == replicas
    assert api.monthly_cost(rate) == pytest.approx(plan.erlang.cost_per_month, rel=1e-9)
    for factor in (1.0001, 1.01, 1.3, 2, 5, 20, 100):  # above: always cheaper to self-host
        above = make_plan(req.at_rate(rate * factor), api)
        assert above.erlang.cost_per_month < api.monthly_cost(rate * factor)
    # Just below, on the same number of replicas, the API is cheaper.
    band_start = capacity(req, replicas - 1) if replicas > max(1, req.min_replicas or 0) else 0.0
    below_rate = (band_start + rate) / 2
    below = make_plan(req.at_rate(below_rate), api)
    assert below.erlang.replicas == replicas
    assert below.erlang.cost_per_month > api.monthly_cost(below_rate)


@pytest.mark.parametrize("req, api", [(REQUIREMENTS[0], FRONTIER_API), (REQUIREMENTS[4], CHEAP_API)])
def test_no_band_past_break_even_lets_the_api_win(req, api):
    """The search assumes bands past break-even all favour self-hosting; check the next 25."""
    rate, replicas = break_even(req, api)
    for n in range(replicas + 1, replicas + 26):
        even = monthly_cost(req, n) / api.monthly_cost(1.0)
        assert even <= capacity(req, n - 1)


@pytest.mark.parametrize("req", REQUIREMENTS[:3])
def test_break_even_never_when_the_api_undercuts_a_busy_gpu(req):
    # Even fully busy, a slot costs more per request (GPU price x S / slots) than CHEAP_API charges.
    assert break_even(req, CHEAP_API) == (None, None)


def test_capacity_is_the_largest_rate_meeting_the_target():
    req = REQUIREMENTS[0]
    top = capacity(req, 30)
    assert meets(req.at_rate(top), 30) and not meets(req.at_rate(top * 1.000001), 30)
    assert capacity(req, 30) >= 100 / 60 > capacity(req, 29)


def test_break_even_in_cli_output(capsys):
    assert main([*SEED, *API]) == 0
    out = capsys.readouterr().out
    assert "Break-even:" in out and "self-hosting is always cheaper" in out


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--arrival-rate", "-5/min"], "--arrival-rate"),
        (["--arrival-rate", "-5"], "--arrival-rate"),
        (["--arrival-rate", "0/min"], "--arrival-rate"),
        (["--arrival-rate", "100/fortnight"], "--arrival-rate"),
        (["--arrival-rate", "lots"], "--arrival-rate"),
        (["--service-time", "0s"], "--service-time"),
        (["--service-time", "15 parsecs"], "--service-time"),
        (["--service-time", "abc"], "--service-time"),
        (["--slo", "p100 wait < 10s"], "--slo"),
        (["--slo", "p0 wait < 10s"], "--slo"),
        (["--slo", "p99 latency < 10s"], "--slo"),
        (["--slo", "mean wait < 0s"], "--slo"),
        (["--max-utilization", "1.5"], "--max-utilization"),
        (["--max-utilization", "0"], "--max-utilization"),
        (["--max-utilization", "most"], "--max-utilization"),
        (["--slots-per-replica", "0"], "--slots-per-replica"),
        (["--slots-per-replica", "2.5"], "--slots-per-replica"),
        (["--gpus-per-replica", "x"], "--gpus-per-replica"),
        (["--gpu-hour-price", "-1"], "--gpu-hour-price"),
        (["--gpu-hour-price", "nan"], "--gpu-hour-price"),
        (["--arrival-cv", "-1"], "--arrival-cv"),
        (["--service-cv", "high"], "--service-cv"),
        (["--min-replicas", "-1"], "--min-replicas"),
        (["--min-replicas", "5", "--max-replicas", "2"], "--max-replicas"),
        (["--prefill-time", "200ms"], "--prefill-time"),  # a wait SLO has no prefill
        (["--slo", "p95 ttft < 500ms", "--prefill-time", "600ms"], "--prefill-time"),
        (["--api-price-input", "3"], "--api-price-output"),
        (["--api-price-input", "0", "--api-price-output", "0", "--input-tokens", "1", "--output-tokens", "1"],
         "--api-price-input"),
        (["--input-tokens", "-1"], "--input-tokens"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_flag(capsys, argv, flag):
    defaults = {"--arrival-rate": "100/min", "--service-time": "15s", "--slo": "p99 wait < 10s"}
    for name in argv[::2]:
        defaults.pop(name, None)
    full = ["plan", *[x for pair in defaults.items() for x in pair], *argv]
    with pytest.raises(SystemExit) as exited:
        main(full)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in captured.err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["plan", "--arrival-rate", "100/min", "--service-time", "15s"], "--slo"),
        (["plan", "--service-time", "15s", "--slo", "p99 wait < 10s"], "--arrival-rate"),
        (["plan", *SEED[1:], "--bogus"], "--bogus"),
        ([], "COMMAND"),
    ],
)
def test_missing_or_unknown_arguments_exit_2(capsys, argv, says):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and says in err
