"""`inferencepool simulate`: replay a request trace through every scaling policy and compare them.

Wiring (in inferencepool/cli.py):  from inferencepool.simulate.cli import add_parser; add_parser(subparsers)
add_parser registers the subcommand with set_defaults(handler=run); run(args) returns the exit status.
Standalone: python -m inferencepool.simulate [flags].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from inferencepool.core.units import format_duration, parse_duration, parse_slo

DEFAULT_GPU_HOUR_PRICE = 2.50  # USD, the same assumed on-demand H100 price as `inferencepool plan`

DESCRIPTION = """\
Replay a request trace through a simulated GPU fleet under each scaling policy, on the same arrivals and the
same cold-start draws and the same warm start, and compare GPU-hours, cost and SLO attainment. Policies:
static (provisioned for the trace's peak), hpa (Kubernetes HPA on utilisation 0.8: 15s sync, 10% tolerance,
300s scale-down window), queue-depth (KEDA on vllm:num_requests_waiting, 5 per replica, as vLLM's
production-stack ships it), kpa (Knative: concurrency 0.7 per slot, 60s/6s windows, panic at 200%), wva
(llm-d's saturation analyser: KV 0.8, queue 5), dynamo (Dynamo's SLA planner: 180s interval, Kalman load
predictor), reactive and predictive (our Erlang-C decide(), without and with scale-ahead) and oracle
(clairvoyant lower bound: knows future arrivals and cold starts). A removed replica is billed until its
in-flight requests finish. --sweep sweeps each family over its own knob and the warm floor instead.

Defaults model a 14-32B model on one H100 per replica serving one request per slot: service time = prompt
tokens / 8000 tok/s + output tokens x 25 ms; cold starts lognormal around 3 min; SLO p99 queue wait < 10s.
On the bundled Azure code trace (57 min, 2.6 requests/s, bursts of 30/s for seconds) the peak needs ~12-18
replicas. Writes simulate.png and simulate.json to --out.
"""

POLICY_CHOICES = ("static", "hpa", "queue-depth", "kpa", "wva", "dynamo", "reactive", "predictive", "oracle")


def _typed(parse):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise ValueError(f"{text!r} must be > 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _nonnegative_float(text: str) -> float:
    value = float(text.strip().lstrip("$"))
    if not value >= 0:
        raise ValueError(f"{text!r} must be >= 0")
    return value


def _warm_up(text: str) -> float | str:
    return "repeats" if text.strip() == "repeats" else parse_duration(text)


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in POLICY_CHOICES]
    if unknown or not names:
        raise ValueError(f"unknown policy {', '.join(unknown) or text!r}; expected some of {','.join(POLICY_CHOICES)}")
    return names


def _columns(text: str) -> dict[str, str]:
    from inferencepool.simulate.formats import parse_columns

    return parse_columns(text)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `simulate` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "simulate", help="replay a request trace through every scaling policy and compare cost and SLO",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    duration = _typed(_positive(parse_duration))
    g = parser.add_argument_group("trace")
    g.add_argument("--trace", type=Path, help="a request trace, gzipped or not: Azure LLM 2023/2024 CSV, Mooncake JSONL, "
                   "BurstGPT CSV, any CSV/JSONL with --columns, or a ServeGen rate series window_start_seconds,rate_rps "
                   "(Poisson arrivals); default: the bundled Azure code trace")
    g.add_argument("--format", choices=("auto", "azure", "mooncake", "burstgpt", "servegen", "columns"), default="auto",
                   help="the trace's format (default auto: sniffed from the header or the first JSON line)")
    g.add_argument("--columns", type=_typed(_columns), metavar="time=COL,input=COL,output=COL",
                   help="read any CSV or JSONL: which column holds the arrival time, prompt tokens and output tokens")
    g.add_argument("--time-unit", choices=("s", "ms", "us", "ns"),
                   help="unit of a numeric --columns time column (default s; ISO date-times are recognised)")
    g.add_argument("--time-scale", type=_typed(_positive(float)), default=1.0, metavar="K",
                   help="compress time: divide every timestamp by K (rates x K) so bursts get shorter than a cold start")
    g.add_argument("--rate-scale", type=_typed(_positive(float)), default=1.0, metavar="R",
                   help="multiply the request rate by R (thin below 1; copies within inter-arrival gaps above 1)")
    g.add_argument("--repeat", type=_typed(_positive(int)), default=1, metavar="N", help="play the trace N times back to back")
    g.add_argument("--warm-up", type=_typed(_warm_up), default=0.0, metavar="DURATION",
                   help="leave the first DURATION unscored (not billed, no SLO); 'repeats' with --repeat N scores only "
                        "the last copy, so every policy has learnt the trace N-1 times (default 0)")
    g = parser.add_argument_group("service and fleet")
    g.add_argument("--slo", type=_typed(parse_slo), default=parse_slo("p99 wait < 10s"),
                   help="e.g. 'p99 wait < 10s' (default), 'mean wait < 2s', 'p95 ttft < 2s'")
    g.add_argument("--slots-per-replica", type=_typed(_positive(int)), default=1,
                   help="requests one replica serves at once (default 1); set the decode time for that batch too")
    g.add_argument("--gpus-per-replica", type=_typed(_positive(int)), default=1, help="default 1")
    g.add_argument("--gpu-hour-price", type=_typed(_nonnegative_float), default=DEFAULT_GPU_HOUR_PRICE,
                   help=f"USD per GPU-hour (default {DEFAULT_GPU_HOUR_PRICE:.2f}, an assumed on-demand H100 price)")
    g.add_argument("--prefill-tokens-per-second", type=_typed(_positive(float)), default=8000.0,
                   help="prompt tokens a slot prefills per second (default 8000)")
    g.add_argument("--decode-time-per-token", type=duration, default=0.025,
                   help="seconds per output token at this batch (default 25ms)")
    g.add_argument("--cold-start", type=duration, default=180.0, help="mean pod creation -> Ready (default 180s)")
    g.add_argument("--cold-start-distribution", choices=("lognormal", "uniform", "fixed"), default="lognormal",
                   help="default lognormal")
    g.add_argument("--cold-start-spread", type=_typed(_nonnegative_float), default=0.25,
                   help="lognormal sigma, or uniform half-width as a fraction of the mean (default 0.25)")
    g.add_argument("--min-replicas", type=_typed(int), default=1, help="warm floor for every adaptive policy (default 1)")
    g.add_argument("--max-replicas", type=_typed(_positive(int)), default=100, help="default 100")
    g.add_argument("--schedule", type=Path, metavar="FILE",
                   help="scheduled warm floors for our policies (reactive, predictive): a YAML/JSON file holding an "
                        "InferencePool's spec.schedule (timeZone, windows); needs --start")
    g.add_argument("--start", metavar="ISO-TIME",
                   help="with --schedule: the wall-clock time of the trace's first second, e.g. 2026-12-07T08:00+01:00")
    g = parser.add_argument_group("control loop")
    g.add_argument("--reconcile-interval", type=duration, default=15.0, help="default 15s")
    g.add_argument("--rate-window", type=duration, default=120.0,
                   help="rates and service-time statistics over this window, as the operator's PromQL (default 2m)")
    g.add_argument("--scrape-delay", type=duration, default=15.0, help="age of the metrics the policies read (default 15s)")
    g.add_argument("--scale-down-window", type=duration, default=None,
                   help="stabilisation window of our policies (default: PoolSpec's, 300s)")
    g = parser.add_argument_group("run")
    g.add_argument("--policies", type=_typed(_policies), default=POLICY_CHOICES,
                   help=f"comma-separated, default all: {','.join(POLICY_CHOICES)}")
    g.add_argument("--seed", type=_typed(int), default=0, help="seeds cold starts and rate scaling (default 0)")
    g.add_argument("--sweep", action="store_true",
                   help="the frontier instead of one operating point: every family over its own knob and the warm "
                        "floor, GPU-hours to reach 90/95/99/99.9%% of minutes meeting the SLO; writes frontier.png/json")
    g.add_argument("--seeds", type=_typed(_positive(int)), default=3, metavar="N",
                   help="with --sweep: seeds --seed .. --seed+N-1; a setting reaches a level if its worst seed does (default 3)")
    g.add_argument("--quick", action="store_true", help="with --sweep: one setting per family and floor 1 (a smoke test)")
    g.add_argument("--jobs", type=_typed(_positive(int)), default=2, help="with --sweep: worker processes (default 2)")
    g.add_argument("--out", type=Path, default=Path("out"), help="directory for simulate.png and simulate.json (default ./out)")
    g.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")


def build(args: argparse.Namespace):
    """The Scenario the flags describe."""
    from inferencepool.core.policy import PoolSpec
    from inferencepool.simulate import trace as tr
    from inferencepool.simulate.compare import Scenario
    import numpy as np

    from inferencepool.simulate.fleet import FleetConfig, ServiceModel

    rng = np.random.default_rng([args.seed, 2])
    trace = tr.load(args.trace, rng=rng, rate_scale=args.rate_scale, format=None if args.format == "auto" else args.format,
                    columns=args.columns, time_unit=args.time_unit)
    one = trace
    trace = tr.compress_time(tr.repeat(trace, args.repeat), args.time_scale)
    warm_up = args.warm_up
    if warm_up == "repeats":  # everything but the last copy, as tr.repeat lays them out
        period = one.span + one.span / max(len(one) - 1, 1)
        warm_up = period * (args.repeat - 1) / args.time_scale
    if len(trace) < 2:
        raise ValueError(f"{args.trace or 'the bundled trace'}: the trace has fewer than two requests")
    slo = args.slo
    spec = PoolSpec(
        schedule=_schedule(args),
        slo_metric=slo.metric, slo_percentile=slo.percentile, slo_target_seconds=slo.target_seconds,
        min_replicas=args.min_replicas, max_replicas=args.max_replicas, gpus_per_replica=args.gpus_per_replica,
        slots_per_replica=args.slots_per_replica, default_cold_start_seconds=args.cold_start,
        gpu_hour_price=args.gpu_hour_price,
        **({} if args.scale_down_window is None else {"scale_down_window_seconds": args.scale_down_window}),
    )
    fleet = FleetConfig(
        slots_per_replica=args.slots_per_replica, gpus_per_replica=args.gpus_per_replica,
        cold_start_seconds=args.cold_start, cold_start_distribution=args.cold_start_distribution,
        cold_start_spread=args.cold_start_spread, reconcile_seconds=args.reconcile_interval,
        rate_window_seconds=args.rate_window, service_window_seconds=args.rate_window,
        scrape_delay_seconds=args.scrape_delay,
    )
    service = ServiceModel(args.prefill_tokens_per_second, args.decode_time_per_token)
    if warm_up >= trace.span:
        raise ValueError(f"--warm-up {format_duration(warm_up)} leaves nothing of the {format_duration(trace.span)} "
                         "trace to score; use --repeat or a shorter warm-up")
    return Scenario(trace=trace, spec=spec, fleet=fleet, service_model=service, seed=args.seed, score_from=warm_up)


def _schedule(args: argparse.Namespace):
    """--schedule at --start: spec.schedule's windows, on a clock that starts at the trace's first second."""
    if getattr(args, "schedule", None) is None:
        return None
    import datetime
    from dataclasses import replace

    import yaml

    from inferencepool.core import schedule as floors

    if not args.start:
        raise ValueError("--schedule needs --start: the wall-clock time of the trace's first second, e.g. 2026-12-07T08:00+01:00")
    try:
        start = datetime.datetime.fromisoformat(args.start)
    except ValueError:
        raise ValueError(f"--start {args.start!r} is not an ISO 8601 time such as 2026-12-07T08:00+01:00") from None
    raw = yaml.safe_load(args.schedule.read_text())
    try:
        parsed = floors.parse(raw.get("schedule", raw) if isinstance(raw, dict) else raw, args.max_replicas)
    except floors.ScheduleError as error:
        raise ValueError(f"--schedule {args.schedule}: spec.{error.field}: {error}") from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=datetime.timezone.utc)
    return replace(parsed, clock_offset=start.timestamp())


def describe(scenario) -> list[str]:
    """What was simulated, in words: every assumption and every reshaping of the trace."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from inferencepool.simulate.baselines import peak_rate
    from inferencepool.simulate.compare import starting_replicas

    t, f, s, m = scenario.trace, scenario.fleet, scenario.spec, scenario.service_model
    service = scenario.service
    peak = peak_rate(t.arrivals, f.rate_window_seconds, f.reconcile_seconds)
    lines = [
        f"Trace: {t.name}",
        f"  {len(t):,} requests over {format_duration(t.span)}; mean {len(t) / t.span:.3g}/s, "
        f"peak {format_duration(f.rate_window_seconds)} rate {peak:.3g}/s; "
        f"mean tokens {t.prompt_tokens.mean():.0f} in / {t.output_tokens.mean():.0f} out",
    ]
    lines += [f"  NOTE: {note}" for note in t.notes]
    lines += [
        f"Service: prompt / {m.prefill_tokens_per_second:g} tok/s + output x {format_duration(m.decode_seconds_per_token)}"
        f" = mean {service.mean():.3g}s (CV {service.std() / service.mean():.2f}); "
        f"load mean {service.sum() / t.span:.3g} Erlangs",
        f"Fleet: {f.slots_per_replica} slot(s) and {f.gpus_per_replica} GPU(s) per replica at "
        f"${s.gpu_hour_price:g}/GPU-h; replicas {s.min_replicas}..{s.replica_cap}; cold start {f.cold_start_distribution} "
        f"mean {format_duration(f.cold_start_seconds)}"
        + (f" (spread {f.cold_start_spread:g})" if f.cold_start_distribution != "fixed" else ""),
        *([f"Schedule: {len(s.schedule.windows)} window(s) in {s.schedule.time_zone} ("
           + ", ".join(f"{w.name} floor {w.min_replicas}" for w in s.schedule.windows)
           + f"), the trace starting {datetime.fromtimestamp(s.schedule.clock_offset, ZoneInfo(s.schedule.time_zone)).isoformat()}"
           "; for our policies only"] if s.schedule else []),
        f"Control: reconcile every {format_duration(f.reconcile_seconds)}; rate over {format_duration(f.rate_window_seconds)}, "
        f"service time over {format_duration(f.service_window_seconds)}, read {format_duration(f.scrape_delay_seconds)} late",
        f"SLO: {'mean' if s.slo_percentile is None else f'p{s.slo_percentile * 100:g}'} {s.slo_metric} < "
        f"{format_duration(s.slo_target_seconds)}; a minute meets it if its requests' statistic does; seed {scenario.seed}",
        f"Fairness: every adaptive policy and the oracle start with the same {starting_replicas(scenario)} warm replicas; "
        "a removed replica is billed until its in-flight requests finish"
        + (f"; the first {format_duration(scenario.score_from)} are not scored" if scenario.score_from else ""),
    ]
    return lines


def verdict(rows: list[dict]) -> list[str]:
    """Plain-words comparison of ours against the oracle and the cheapest policy that meets the SLO as well."""
    by = {r["policy"]: r for r in rows}
    ours, oracle = by.get("erlang-c-predictive"), by.get("oracle")
    lines = []
    if ours and oracle and oracle["gpu_hours"] > 0:
        lines.append(f"Predictive uses {ours['gpu_hours'] / oracle['gpu_hours'] - 1:+.0%} GPU-hours vs the oracle; "
                     f"meets the SLO in {ours['minutes_meeting_slo']:.1%} of minutes (oracle {oracle['minutes_meeting_slo']:.1%}).")
    good = [r for r in rows if r["policy"] != "oracle" and r["minutes_meeting_slo"] >= 0.99]
    if good:
        best = min(good, key=lambda r: r["gpu_hours"])
        lines.append(f"Cheapest non-oracle policy meeting the SLO in >= 99% of minutes: {best['policy']} "
                     f"({best['gpu_hours']:.2f} GPU-h).")
    else:
        lines.append("No non-oracle policy meets the SLO in >= 99% of minutes on this trace.")
    return lines


def run(args: argparse.Namespace) -> int:
    """Simulate, print the report (or JSON), write the PNG and JSON; 0 on success."""
    from inferencepool.simulate import report
    from inferencepool.simulate.compare import ORACLE_BUCKET_SECONDS, make_policy, run_policies

    started = time.perf_counter()
    scenario = build(args)
    if args.sweep:
        return run_sweep(args, scenario, started)
    header = describe(scenario)
    if not args.json:
        print("\n".join(header), flush=True)

    def progress(policy: str, fraction: float) -> None:
        if not args.quiet and time.perf_counter() - started > 2.0:
            print(f"  {policy}: {fraction:.0%} of trace time", file=sys.stderr, flush=True)

    runs = run_policies(scenario, args.policies, progress)
    rows = [report.summarise(run, scenario.spec) for run in runs]
    need = None
    if "oracle" in args.policies:
        need = make_policy("oracle", scenario, scenario.service, scenario.prefill).need
    png = report.plot(runs, scenario.spec, f"{scenario.trace.name}" + "".join(f"\n{n}" for n in scenario.trace.notes),
                      args.out / "simulate.png", need=need, need_bucket=ORACLE_BUCKET_SECONDS)
    document = {
        "trace": {"name": scenario.trace.name, "requests": len(scenario.trace), "span_seconds": scenario.trace.span,
                  "notes": list(scenario.trace.notes)},
        "description": header,
        "spec": asdict(scenario.spec),
        "fleet": asdict(scenario.fleet),
        "service_model": asdict(scenario.service_model),
        "seed": scenario.seed,
        "policies": rows,
        "verdict": verdict(rows),
        "figure": str(png),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "simulate.json").write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print()
        print(report.table(rows, scenario.spec.gpu_hour_price))
        print()
        print("\n".join(verdict(rows)))
        print(f"Wrote {png} and {args.out / 'simulate.json'} ({time.perf_counter() - started:.1f}s).")
    return 0


def run_sweep(args: argparse.Namespace, scenario, started: float) -> int:
    """--sweep: the frontier of every family on seeds --seed .. --seed+N-1, as tables, frontier.png and frontier.json."""
    from dataclasses import replace

    from inferencepool.simulate import sweep

    if not args.json:
        print("\n".join(describe(scenario)), flush=True)
    seeded = [scenario] + [replace(build(_with_seed(args, args.seed + k)), trace=scenario.trace)
                           for k in range(1, args.seeds)]
    grid = sweep.QUICK if args.quick else sweep.Grid()

    def progress(done: int, total: int) -> None:
        if not args.quiet and not args.json:
            print(f"\r  {done}/{total} runs", end="" if done < total else "\n", file=sys.stderr, flush=True)

    rows = sweep.run({"trace": seeded}, grid, jobs=args.jobs, progress=progress)
    args.out.mkdir(parents=True, exist_ok=True)
    png = sweep.plot(rows, "trace", scenario.trace.name + "".join(f"\n{n}" for n in scenario.trace.notes),
                     args.out / "frontier.png")
    windows, requests = sweep.frontier(rows, by="windows"), sweep.frontier(rows, by="requests")
    (args.out / "frontier.json").write_text(json.dumps({"runs": rows, "seeds": args.seeds}, indent=1, default=str) + "\n")
    if args.json:
        print(json.dumps({"windows": windows, "requests": requests}, indent=1, default=str))
        return 0
    print()
    print(f"GPU-hours to reach each share of minutes meeting the SLO, as a multiple of the oracle's (mean over "
          f"{args.seeds} seeds; min-max in brackets; the cheapest setting whose worst seed gets there):")
    print("\n".join(sweep.table(windows, "trace")))
    print()
    print("\n".join(sweep.table(requests, "trace", by="requests")))
    print(f"Wrote {png} and {args.out / 'frontier.json'} ({len(rows)} runs, {time.perf_counter() - started:.0f}s).")
    return 0


def _with_seed(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    copy = argparse.Namespace(**vars(args))
    copy.seed = seed
    return copy


class _Parser(argparse.ArgumentParser):
    """Errors in one line and exit status 2, like `inferencepool`'s own parser."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m inferencepool.simulate`: the subcommand without the rest of the CLI."""
    parser = _Parser(prog="inferencepool simulate", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
