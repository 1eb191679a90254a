"""decide() on hostile observations (issue 15): how many raise, how many scale down on untrusted data, and
the worst-case time per decision.

1. The issue's figure: 4,000 random tuples (fixed seed), every float field of Observations drawn from None,
   NaN, 0, -1, 1e-300, 1e308, inf or an ordinary value; default spec with a 20-replica cap.
2. The solver at 1e12 Erlangs (1e6/s x 1e6 s) with a 20-replica cap, and decide() there.
3. The hypothesis corpus of tests/test_hostile_decide.py (tests/hostile.py), with more examples: crashes,
   out-of-bounds counts, unsafe scale-downs, and the slowest decide().

    .venv/bin/python benchmarks/hostile_decide.py [--examples 2000] [--cli-examples 1000]

4. `inferencepool plan` with the hostile flags of tests/test_hostile_plan_cli.py: exits and tracebacks.

To measure another checkout (e.g. before the fix), put its operator/ first:
`PYTHONPATH=/path/to/checkout/operator .venv/bin/python benchmarks/hostile_decide.py --issue-only`.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.join(HERE, "..", "operator"))

from inferencepool.core.policy import History, Observations, PoolSpec, decide  # noqa: E402
from inferencepool.core.queueing import Queue, TargetUnreachable  # noqa: E402

NASTY = (None, math.nan, 0.0, -1.0, 1e-300, 1e308, math.inf)
ISSUE_FIELDS = ("arrival_rate", "service_time", "service_samples", "arrival_cv", "service_cv", "prefill_time",
                "waiting", "running", "cold_start_seconds")


def issue_tuples(n: int = 4000, seed: int = 15):
    """(errors by type, unsafe scale-downs, worst seconds) over the issue's random tuples."""
    rng = random.Random(seed)
    spec = PoolSpec(max_replicas=20)
    errors, unsafe, worst = collections.Counter(), 0, 0.0
    for i in range(n):
        values = {f: (rng.choice(NASTY) if rng.random() < 7 / 8 else rng.uniform(0.1, 100.0)) for f in ISSUE_FIELDS}
        obs = Observations(time=1000.0 + 15 * i, current_replicas=5, **values)
        started = time.perf_counter()
        try:
            d = decide(spec, obs, History(last_service_time=1.0))
        except Exception as error:  # noqa: BLE001 - counting them is the point
            errors[type(error).__name__] += 1
            continue
        finally:
            worst = max(worst, time.perf_counter() - started)
        rate, service = obs.arrival_rate, obs.service_time
        garbage = any(v is not None and not math.isnan(v) and (math.isinf(v) or v < 0 or v > 1e7)
                      for v in values.values())
        if (garbage or rate is None or math.isnan(rate)) and d.replicas < obs.current_replicas:
            unsafe += 1
        del service
    return errors, unsafe, worst


def huge_load():
    """Seconds for the solver and for decide() at 1e12 Erlangs with a 20-replica cap."""
    started = time.perf_counter()
    try:
        Queue(1e6, 1e6).servers_for_wait_quantile(10.0, 0.99, max_servers=20)
    except TargetUnreachable:
        pass
    solver = time.perf_counter() - started
    started = time.perf_counter()
    try:
        d = decide(PoolSpec(max_replicas=20), Observations(time=1.0, current_replicas=5, arrival_rate=1e6, service_time=1e6))
        outcome = f"{d.replicas} replicas ({d.constraint})"
    except Exception as error:  # noqa: BLE001
        outcome = type(error).__name__
    return solver, time.perf_counter() - started, outcome


def corpus(examples: int):
    """Over the property test's strategies: (cases, crashes, out of bounds, unsafe scale-downs, worst s, worst case)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from hostile import histories, observations, specs, untrusted

    tally = collections.Counter()
    worst = [0.0, None]

    @st.composite
    def cases(draw):
        spec = draw(specs())
        return spec, draw(observations(spec)), draw(histories())

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def run(case):
        spec, obs, history = case
        tally["cases"] += 1
        started = time.perf_counter()
        try:
            d = decide(spec, obs, history)
        except Exception as error:  # noqa: BLE001
            tally["crashes"] += 1
            tally["crash " + type(error).__name__] += 1
            return
        finally:
            elapsed = time.perf_counter() - started
            if elapsed > worst[0]:
                worst[:] = [elapsed, (spec, obs)]
        if not spec.min_replicas <= d.replicas <= spec.replica_cap:
            tally["out_of_bounds"] += 1
        if untrusted(obs, spec) and d.replicas < obs.current_replicas:
            tally["unsafe_scale_downs"] += 1

    run()
    return tally, worst


def cli_corpus(examples: int):
    """`inferencepool plan` with the property test's hostile flags: how many exit 0, exit 2, or crash."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import test_hostile_plan_cli as t

    tally = collections.Counter()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.sampled_from(t.FLAGS), t.HOSTILE, min_size=1, max_size=4), st.booleans())
    def run(hostile, as_json):
        values = {**t.BASE, **hostile}
        argv = [part for flag, value in values.items() for part in (flag, value)] + (["--json"] if as_json else [])
        try:
            code, _, err = t.run(argv)
        except Exception:  # noqa: BLE001 - a traceback
            tally["crashes"] += 1
            return
        tally["cases"] += 1
        tally[f"exit {code}"] += 1
        if code == 2 and len(err.strip().splitlines()) != 1:
            tally["not one line"] += 1

    run()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="hypothesis examples for the corpus")
    parser.add_argument("--cli-examples", type=int, default=1000, help="hypothesis examples for `plan` flags")
    parser.add_argument("--issue-only", action="store_true", help="only parts 1 and 2 (works on older checkouts)")
    args = parser.parse_args()

    errors, unsafe, worst = issue_tuples()
    print(f"issue tuples: 4000 tried, {sum(errors.values())} raise {dict(errors)}, "
          f"{unsafe} unsafe scale-downs, slowest decide {worst * 1000:.1f} ms")
    solver, decided, outcome = huge_load()
    print(f"1e12 Erlangs, 20-replica cap: solver {solver * 1000:.1f} ms, decide {decided * 1000:.1f} ms -> {outcome}")
    if args.issue_only:
        return
    tally, (slowest, case) = corpus(args.examples)
    print(f"hypothesis corpus: {tally['cases']} cases, {tally['crashes']} crashes, {tally['out_of_bounds']} out of "
          f"[floor, cap], {tally['unsafe_scale_downs']} unsafe scale-downs, slowest decide {slowest * 1000:.1f} ms")
    crashes = {k: v for k, v in tally.items() if k.startswith("crash ")}
    if crashes:
        print("  crashes by type:", crashes)
    cli = cli_corpus(args.cli_examples)
    print(f"plan CLI: {cli['cases'] + cli['crashes']} cases, {cli['crashes']} tracebacks, {cli['exit 0']} exit 0, "
          f"{cli['exit 2']} exit 2 ({cli['not one line']} not one line), other exits "
          f"{sum(v for k, v in cli.items() if k.startswith('exit ') and k not in ('exit 0', 'exit 2'))}")
    if case is not None:
        spec, obs = case
        print(f"  slowest case: cap {spec.replica_cap}, slots {spec.slots_per_replica}, rate {obs.arrival_rate!r}, "
              f"service {obs.service_time!r}, cvs {obs.arrival_cv!r}/{obs.service_cv!r}")


if __name__ == "__main__":
    main()
