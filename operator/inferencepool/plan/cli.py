"""`inferencepool plan`: capacity planning, cost and build-vs-buy from the command line.

`add_parser(subparsers)` registers the subcommand with its handler; bad input exits 2 with one line
naming the flag (the top-level parser's error style, which subparsers inherit).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Callable

from inferencepool.core.units import format_duration, parse_duration, parse_rate, parse_slo
from inferencepool.plan.planner import (
    DEFAULT_GPU_HOUR_PRICE, HOURS_PER_MONTH, MAX_OFFERED_LOAD, ApiPricing, Requirements, make_plan, plan_to_dict,
)


# ---------------------------------------------------------------- argument types
# Each raises ArgumentTypeError so argparse reports "argument --flag: <why>".


def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


def _number(text: str, allowed: str) -> float:
    try:
        value = float(text.strip().lstrip("$").replace(",", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a number; expected {allowed}") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number; expected {allowed}")
    return value


def _positive_rate(text: str) -> float:
    rate = parse_rate(text)
    if rate <= 0:
        raise ValueError(f"rate {text!r} must be > 0, e.g. 100/min")
    return rate


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be > 0, e.g. 15s")
    return seconds


def _utilization(text: str) -> float:
    allowed = "a fraction in (0, 1] such as 0.8, or a percentage such as 80%"
    stripped = text.strip()
    value = _number(stripped[:-1], allowed) / 100 if stripped.endswith("%") else _number(stripped, allowed)
    if not 0 < value <= 1:
        raise ValueError(f"{text!r} is outside (0, 1]; expected {allowed}")
    return value


def _nonnegative(text: str) -> float:
    value = _number(text, "a number >= 0")
    if value < 0:
        raise ValueError(f"{text!r} is negative; expected a number >= 0")
    return value


def _cv(text: str) -> float:
    """A coefficient of variation in [0, 100]: 100 is an index of dispersion of 10,000, beyond any real
    workload (and core/sanitize.py's bound for the operator); its square must not overflow the maths."""
    value = _nonnegative(text)
    if value > 100:
        raise ValueError(f"{text!r} is above 100; expected a coefficient of variation such as 1 (Poisson) or 2.5")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        allowed = f"a whole number >= {minimum}"
        value = _number(text, allowed)
        if not value.is_integer() or value < minimum:
            raise ValueError(f"{text!r} is not {allowed}")
        return int(value)

    count.__name__ = f"whole number >= {minimum}"
    return count


# ---------------------------------------------------------------- plan


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="size a fleet for a workload and SLO with Erlang C; compare with the 80%% rule and an API",
        description="Size a GPU fleet as a queue (Erlang C / Allen-Cunneen) and price it.",
    )
    workload = parser.add_argument_group("workload")
    workload.add_argument("--arrival-rate", required=True, metavar="RATE", type=_typed(_positive_rate),
                          help="requests per unit time, e.g. 100/min, 2/s, 5000/h (plain number = per second)")
    workload.add_argument("--service-time", required=True, metavar="DURATION", type=_typed(_positive_duration),
                          help="mean time a slot is busy with one request, e.g. 15s, 800ms")
    workload.add_argument("--arrival-cv", metavar="CV", type=_typed(_cv), default=1.0,
                          help="coefficient of variation of inter-arrival times (1 = Poisson; default 1)")
    workload.add_argument("--service-cv", metavar="CV", type=_typed(_cv), default=1.0,
                          help="coefficient of variation of service times (1 = exponential; default 1)")
    target = parser.add_argument_group("target (at least one; both are met if both given)")
    target.add_argument("--slo", type=_typed(parse_slo),
                        help="e.g. 'p99 wait < 10s', 'mean wait < 2s', 'p95 ttft < 500ms'")
    target.add_argument("--max-utilization", metavar="FRACTION", type=_typed(_utilization), help="e.g. 0.8 or 80%%")
    target.add_argument("--prefill-time", metavar="DURATION", type=_typed(parse_duration), default=0.0,
                        help="for a ttft SLO: seconds of prefill; the wait target is ttft - prefill (default 0)")
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--slots-per-replica", metavar="N", type=_typed(_count(1)), default=1,
                       help="requests one replica serves at once (batch slots; default 1)")
    fleet.add_argument("--gpus-per-replica", metavar="N", type=_typed(_count(1)), default=1, help="default 1")
    fleet.add_argument("--min-replicas", metavar="N", type=_typed(_count(0)), help="floor on replicas")
    fleet.add_argument("--max-replicas", metavar="N", type=_typed(_count(0)),
                       help="cap on replicas; the plan reports whether the target is still met")
    fleet.add_argument("--gpu-hour-price", metavar="USD", type=_typed(_nonnegative), default=None,
                       help=f"USD per GPU-hour (default {DEFAULT_GPU_HOUR_PRICE:.2f}, an assumed on-demand price)")
    api = parser.add_argument_group("build vs buy (give all four)")
    api.add_argument("--api-price-input", metavar="USD", type=_typed(_nonnegative), help="USD per 1M input tokens")
    api.add_argument("--api-price-output", metavar="USD", type=_typed(_nonnegative), help="USD per 1M output tokens")
    api.add_argument("--input-tokens", metavar="N", type=_typed(_nonnegative), help="input tokens per request")
    api.add_argument("--output-tokens", metavar="N", type=_typed(_nonnegative), help="output tokens per request")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (stable keys)")
    parser.set_defaults(handler=_run_plan)


_API_FLAGS = ("api_price_input", "api_price_output", "input_tokens", "output_tokens")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _plan_inputs(args: argparse.Namespace):
    """Requirements and ApiPricing from parsed flags; ValueError names the flag."""
    if args.slo is None and args.max_utilization is None:
        raise ValueError("give --slo (e.g. 'p99 wait < 10s') or --max-utilization (e.g. 0.8), or both")
    if args.prefill_time and (args.slo is None or args.slo.metric != "ttft"):
        raise ValueError("--prefill-time only applies to a ttft SLO, e.g. --slo 'p95 ttft < 500ms'")
    if args.slo is not None and args.slo.metric == "ttft" and args.prefill_time >= args.slo.target_seconds:
        raise ValueError(
            f"--prefill-time {format_duration(args.prefill_time)} must be below the --slo ttft target "
            f"{format_duration(args.slo.target_seconds)} (the rest is the time a request may queue)"
        )
    if args.slo is not None and args.slo.target_seconds <= 0:
        raise ValueError(f"--slo target must be > 0, got '{args.slo}'")
    if args.min_replicas is not None and args.max_replicas is not None and args.min_replicas > args.max_replicas:
        raise ValueError(f"--min-replicas {args.min_replicas} is above --max-replicas {args.max_replicas}")
    load = args.arrival_rate * args.service_time
    if not load <= MAX_OFFERED_LOAD:
        raise ValueError(f"--arrival-rate x --service-time is {load:.3g} Erlangs of offered load, above "
                         f"{MAX_OFFERED_LOAD:g}: check their units, e.g. 100/min and 15s")
    given = [dest for dest in _API_FLAGS if getattr(args, dest) is not None]
    api = None
    if given:
        missing = [_flag(dest) for dest in _API_FLAGS if dest not in given]
        if missing:
            raise ValueError(f"build vs buy needs {', '.join(map(_flag, _API_FLAGS))}; missing {', '.join(missing)}")
        if (args.api_price_input * args.input_tokens + args.api_price_output * args.output_tokens) <= 0:
            raise ValueError("--api-price-input/--api-price-output with --input-tokens/--output-tokens "
                             "give a zero API cost per request")
        api = ApiPricing(args.api_price_input, args.api_price_output, args.input_tokens, args.output_tokens)
    req = Requirements(
        arrival_rate=args.arrival_rate,
        service_time=args.service_time,
        slo=args.slo,
        max_utilization=args.max_utilization,
        slots_per_replica=args.slots_per_replica,
        gpus_per_replica=args.gpus_per_replica,
        gpu_hour_price=DEFAULT_GPU_HOUR_PRICE if args.gpu_hour_price is None else args.gpu_hour_price,
        arrival_cv=args.arrival_cv,
        service_cv=args.service_cv,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        prefill_time=args.prefill_time,
    )
    return req, api


def _run_plan(args: argparse.Namespace) -> int:
    req, api = _plan_inputs(args)
    plan = make_plan(req, api)
    if args.json:
        print(json.dumps(plan_to_dict(plan), indent=2))
    else:
        print(_render_plan(plan, price_is_default=args.gpu_hour_price is None))
    return 0


def _money(usd: float) -> str:
    if 0 < abs(usd) < 0.01:
        return f"${usd:.2g}"
    return f"${usd:,.2f}" if abs(usd) < 1000 else f"${usd:,.0f}"


def _percent(fraction: float) -> str:
    if not math.isfinite(fraction):
        return "inf"
    if fraction != 0 and fraction < 0.1:
        return f"{fraction * 100:.2g}%"
    return f"{fraction * 100:.1f}%"


def _seconds(value: float) -> str:
    return "unstable" if not math.isfinite(value) else format_duration(value)


def _per_minute(rate: float) -> str:
    return f"{rate * 60:,.4g}/min ({rate:.4g} req/s)"


def _render_plan(plan, price_is_default: bool) -> str:
    req = plan.requirements
    erlang, naive = plan.erlang, plan.naive
    threshold = format_duration(erlang.wait_threshold)
    percentile = f"p{erlang.percentile * 100:.10g}"
    targets = [f"SLO {req.slo}" if req.slo else None,
               f"utilization <= {req.max_utilization:g}" if req.max_utilization is not None else None]
    lines = [
        f"Workload: {_per_minute(req.arrival_rate)} x {format_duration(req.service_time)} service "
        f"= {req.queue.load:.4g} Erlangs offered load",
        "Target:   " + " and ".join(t for t in targets if t)
        + (f" (wait target {threshold} after {format_duration(req.prefill_time)} prefill)" if req.prefill_time else ""),
        f"Fleet:    {req.slots_per_replica} slot(s) and {req.gpus_per_replica} GPU(s) per replica, "
        f"{_money(req.gpu_hour_price)}/GPU-hour"
        + (" (assumed default; set --gpu-hour-price)" if price_is_default else ""),
        "",
    ]
    rows = [
        ("", erlang.rule, naive.rule),
        ("servers (slots) needed", str(erlang.servers_needed), str(naive.servers_needed)),
        ("replicas", str(erlang.replicas), str(naive.replicas)),
        ("GPUs", str(erlang.gpus), str(naive.gpus)),
        ("utilization", _percent(erlang.utilization), _percent(naive.utilization)),
        (f"P(wait > {threshold})", _percent(erlang.prob_wait_exceeds), _percent(naive.prob_wait_exceeds)),
        ("mean wait", _seconds(erlang.mean_wait), _seconds(naive.mean_wait)),
        (f"{percentile} wait", _seconds(erlang.percentile_wait), _seconds(naive.percentile_wait)),
        ("cost / hour", _money(erlang.cost_per_hour), _money(naive.cost_per_hour)),
        (f"cost / month ({HOURS_PER_MONTH // 24} d)", _money(erlang.cost_per_month), _money(naive.cost_per_month)),
        ("meets target", "yes" if erlang.meets_requirements else "NO", "yes" if naive.meets_requirements else "NO"),
    ]
    width = max(len(row[0]) for row in rows)
    column = max(len(cell) for row in rows for cell in row[1:]) + 2
    lines += [f"{label:<{width}}{a:>{column}}{b:>{column}}" for label, a, b in rows]
    lines.append("")
    if erlang.capped:
        lines.append(f"Capped at --max-replicas {req.max_replicas}: the target needs "
                     f"{math.ceil(erlang.servers_needed / req.slots_per_replica)} replicas.")
    saved = plan.gpus_saved
    verdict = "meets the target too" if naive.meets_requirements else "MISSES the target"
    if saved > 0:
        lines.append(f"Erlang C saves {saved} GPU(s), {_money(plan.monthly_saving)}/month, against the "
                     f"{naive.rule} rule, which {verdict}.")
    elif saved < 0:
        lines.append(f"Erlang C adds {-saved} GPU(s), {_money(-plan.monthly_saving)}/month, over the "
                     f"{naive.rule} rule, which {verdict}.")
    else:
        lines.append(f"Erlang C and the {naive.rule} rule agree on the GPU count; the rule {verdict}.")
    bvb = plan.build_vs_buy
    if bvb is not None:
        self_hosting_wins = bvb.self_hosted_cost_per_month < bvb.api_cost_per_month
        cheaper = "self-hosting is cheaper" if self_hosting_wins else "the API is cheaper"
        lines += [
            "",
            f"Build vs buy at {_per_minute(req.arrival_rate)}, "
            f"API {_money(bvb.api_cost_per_request * 1000)} per 1000 requests:",
            f"  API bill          {_money(bvb.api_cost_per_month):>12}/month",
            f"  self-hosted bill  {_money(bvb.self_hosted_cost_per_month):>12}/month (Erlang C plan)  -> {cheaper}",
        ]
        if bvb.break_even_rate is None:
            lines.append("  Break-even: never - even at its busiest allowed, a slot costs more per request "
                         "than the API.")
        else:
            lines.append(
                f"  Break-even: {_per_minute(bvb.break_even_rate)} on {bvb.break_even_replicas} replica(s). "
                "Above this volume self-hosting is always cheaper; below it the API is cheaper at least some of "
                "the time (self-hosted cost climbs in whole-replica steps, the API bill in a straight line)."
            )
            if req.max_replicas is not None and bvb.break_even_replicas > req.max_replicas:
                lines.append(f"  (That is beyond --max-replicas {req.max_replicas}.)")
    return "\n".join(lines)
