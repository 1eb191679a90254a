"""`inferencepool backtest --prometheus URL --pool NAMESPACE/NAME --since 7d`: what decide() and the
baselines would have run over the pool's real history, against what actually ran (backtest/replay.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "backtest", help="replay a pool's Prometheus history through decide() and the baselines",
        description="Pull the pool's history with range queries (the operator's own queries), replay it through "
                    "decide() and the baselines, and report GPU-hours and attainment against what actually ran.")
    add_arguments(parser)
    return parser


def _duration(text: str) -> float:
    from inferencepool.operator.observe import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _pool(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name:
        raise argparse.ArgumentTypeError(f"--pool must be NAMESPACE/NAME, got {text!r}")
    return namespace, name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", required=True, metavar="URL", help="the Prometheus that scraped the pool")
    parser.add_argument("--pool", required=True, type=_pool, metavar="NAMESPACE/NAME",
                        help="the pool (its series' namespace and pool labels)")
    parser.add_argument("--since", type=_duration, default=_duration("7d"), metavar="DURATION",
                        help="how far back, a PromQL duration (default 7d)")
    parser.add_argument("--until", type=float, default=None, metavar="UNIX_SECONDS", help="end of the history (default now)")
    parser.add_argument("--step", type=_duration, default=60.0, metavar="DURATION", help="one decision per step (default 1m)")
    parser.add_argument("--rate-window", default="2m", help="PromQL window of every rate, as the operator's --rate-window")
    parser.add_argument("--pool-label", default="pool", help="the series label naming the pool (a fleet not yet "
                        "managed may use another, e.g. app or deployment; default %(default)s)")
    parser.add_argument("--namespace-label", default="namespace", help="the series label naming the namespace")
    parser.add_argument("--spec", metavar="FILE", help="an InferencePool manifest (YAML) for the SLO and limits; "
                        "default: the flags below")
    parser.add_argument("--target-seconds", type=float, default=1.0, help="SLO queue-wait target without --spec")
    parser.add_argument("--percentile", type=float, default=0.99, help="SLO percentile without --spec")
    parser.add_argument("--slots-per-replica", type=int, default=1, help="concurrent requests per replica without --spec")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=64)
    parser.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    parser.add_argument("--png", metavar="FILE", help="also plot replicas per policy and the arrival rate over time")
    parser.set_defaults(handler=run)


def pool_spec(args: argparse.Namespace):
    from inferencepool.core.policy import PoolSpec

    if args.spec:
        import yaml

        from inferencepool.operator import spec as pool_spec_module

        with open(args.spec) as f:  # the first InferencePool of the file (examples/ hold several kinds)
            docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
        manifest = next((d for d in docs if d.get("kind") == "InferencePool"), docs[0] if docs else {})
        try:
            return pool_spec_module.parse((manifest or {}).get("spec") or {}).policy
        except pool_spec_module.SpecError as error:
            raise ValueError(f"--spec {args.spec}: {error}") from None
    if not 0 < args.percentile < 1:
        raise ValueError(f"--percentile must be strictly between 0 and 1, got {args.percentile:g}")
    if args.target_seconds <= 0 or args.slots_per_replica < 1:
        raise ValueError("--target-seconds must be > 0 and --slots-per-replica >= 1")
    return PoolSpec(slo_target_seconds=args.target_seconds, slo_percentile=args.percentile,
                    slots_per_replica=args.slots_per_replica, min_replicas=args.min_replicas,
                    max_replicas=args.max_replicas)


def run(args: argparse.Namespace) -> int:
    from inferencepool.backtest import history, replay
    from inferencepool.operator import observe

    spec = pool_spec(args)
    end = args.until if args.until is not None else time.time()
    start = end - args.since
    namespace, name = args.pool
    try:
        client = observe._connect(args.prometheus)
        steps = history.read(client, namespace, name, start, end, args.step, observe.QuerySettings(
            rate_window=args.rate_window, pool_label=args.pool_label, namespace_label=args.namespace_label))
    except Exception as error:  # noqa: BLE001 - one line, not a traceback
        print(f"error: Prometheus at {args.prometheus} failed: {error}", file=sys.stderr)
        return 1
    seen = sum(s.obs is not None for s in steps)
    if not seen:
        print(f"error: no vLLM series for pool {namespace}/{name} in the last {args.since:g}s at {args.prometheus} "
              f"(labels {args.namespace_label}=\"{namespace}\", {args.pool_label}=\"{name}\")", file=sys.stderr)
        return 1
    scores = replay.replay(steps, spec, args.step)
    print(f"backtest {namespace}/{name}: {len(steps)} steps of {args.step:g}s, {seen} with metrics; "
          f"SLO p{spec.slo_percentile * 100:g} wait <= {spec.slo_target_seconds:g}s, {spec.slots_per_replica} slots/replica")
    print("\n".join(replay.table(scores)))
    if args.png:
        plot(steps, scores, f"{namespace}/{name}", args.png)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"policy": s.policy, "gpu_hours": s.gpu_hours, "attainment": s.attainment,
                        "steps_met": s.steps_met_share, "measured": s.measured, "replicas": s.replicas} for s in scores], f)
    return 0


def plot(steps, scores, title: str, path: str) -> None:
    """Replicas each policy (and what ran) held at each step, over the measured arrival rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = steps[0].time
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5), height_ratios=(2, 1))
    for s in scores:
        times = [(st.time - start) / 3600 for st in steps if s.policy != "actual" or st.actual_replicas is not None]
        top.step(times[: len(s.replicas)], s.replicas, where="post", label=f"{s.policy} ({s.gpu_hours:.1f} GPU-h)")
    top.set_ylabel("replicas")
    top.legend(fontsize=8)
    top.set_title(f"backtest {title}")
    bottom.plot([(st.time - start) / 3600 for st in steps],
                [st.obs.arrival_rate if st.obs is not None and st.obs.arrival_rate is not None else float("nan") for st in steps])
    bottom.set_ylabel("arrivals / s")
    bottom.set_xlabel("hours")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
