"""Time inferencepool's inverse Erlang-C solves against the textbook formula.

    python benchmarks/erlang_solve.py            # about 1.5 minutes (the exact baseline)
    python benchmarks/erlang_solve.py --quick    # skip the slow exact-integer baseline past c = 1000

For fleets of about 10 to 100,000 servers, find the fewest servers with
P(wait <= 10 s) >= 99% (S = 15 s) and with utilisation <= 80%, three ways:

  ours         Queue.servers_for_wait_quantile / servers_for_utilization
               (O(sqrt c) Erlang B, exponential search + bisection)
  naive float  the textbook sum a^k/k! with math.factorial in floats, scanning c = 1, 2, ...
               (overflows as soon as a^c passes 1.8e308: from about 140 Erlangs on)
  naive exact  the same sum in exact Python integers (scaled by c!), scanning c upward
               from the stable floor(a)+1; never overflows, but each step is O(c) big-int work
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from fractions import Fraction

from inferencepool.core.queueing import Queue

SERVICE_TIME = 15.0  # seconds
WAIT_TARGET = 10.0  # seconds
PERCENTILE = 0.99
MAX_UTILIZATION = 0.8
EXACT_BUDGET_S = 20.0  # estimate, rather than run, an exact scan that would take longer
EXACT_MAX_SERVERS = 100_000  # the exact check at 100k takes ~1 min


def naive_float_erlang_c(c: int, a: float) -> float:
    """Textbook Erlang C with factorials in floats (raises OverflowError for large c)."""
    top = a**c / math.factorial(c) * c / (c - a)
    below = sum(a**k / math.factorial(k) for k in range(c))
    return top / (below + top)


def naive_exact_erlang_c(c: int, a: int) -> float:
    """Textbook Erlang C in exact integers: multiply the sums by c! (integer load a)."""
    scaled_sum, power = 1, 1  # sum_{k<=n} a^k n!/k! and a^n, built up to n = c
    for n in range(1, c + 1):
        power *= a
        scaled_sum = n * scaled_sum + power
    return float(Fraction(c * power, (c - a) * scaled_sum + a * power))


def tail_meets(waits: float, c: int, a: float) -> bool:
    """P(W > target) = C exp(-(c - a) t / S) <= 1 - p, as Queue computes it."""
    return waits * math.exp(-(c - a) * WAIT_TARGET / SERVICE_TIME) <= 1 - PERCENTILE


class Overflowed(Exception):
    """The float formula overflowed at server count `c`."""

    def __init__(self, c: int):
        self.c = c


def naive_float_solve(a: float) -> int:
    for c in itertools.count(1):
        try:
            if c > a and tail_meets(naive_float_erlang_c(c, float(a)), c, a):
                return c
        except OverflowError:
            raise Overflowed(c) from None


def naive_exact_solve(a: int) -> int:
    for c in itertools.count(math.floor(a) + 1):
        if tail_meets(naive_exact_erlang_c(c, a), c, a):
            return c


def best_time(function, *args, repeat: int = 5) -> tuple[float, object]:
    """(fastest wall time in seconds over `repeat` runs, result)."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def load_near(c: int) -> int:
    """An integer load whose p99 answer lands near c (square-root staffing, c ~ a + 1.6 sqrt a)."""
    return max(1, round(c - 1.6 * math.sqrt(c)))


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the exact baseline past c = 1000")
    args = parser.parse_args()

    header = ("target c", "load (Erl)", "ours p99", "c", "ours rho<=0.8", "c", "naive float", "naive exact", "agree")
    rows = [header]
    for target in (10, 30, 100, 170, 300, 1000, 3000, 10_000, 30_000, 100_000):
        a = load_near(target)
        queue = Queue(a / SERVICE_TIME, SERVICE_TIME)
        ours_time, ours = best_time(queue.servers_for_wait_quantile, WAIT_TARGET, PERCENTILE)
        util_time, util = best_time(queue.servers_for_utilization, MAX_UTILIZATION)
        assert util == math.ceil(a / MAX_UTILIZATION - 1e-9), (util, a)
        answers = [ours]
        try:
            float_time, float_answer = best_time(naive_float_solve, a, repeat=1)
            float_cell = f"{fmt_time(float_time)}"
            answers.append(float_answer)
        except Overflowed as overflow:
            float_cell = f"overflow at c={overflow.c}"
        exact_limit = 1000 if args.quick else EXACT_MAX_SERVERS
        if target > exact_limit:
            exact_cell = "not run"
        else:
            # Time one exact evaluation; run the whole scan only if it fits the budget,
            # else check our answer exactly: c meets the target and c - 1 does not.
            one_step, waits = best_time(naive_exact_erlang_c, ours, a, repeat=1)
            steps = ours - math.floor(a)
            if one_step * steps <= EXACT_BUDGET_S:
                exact_time, exact_answer = best_time(naive_exact_solve, a, repeat=1)
                exact_cell = fmt_time(exact_time)
                answers.append(exact_answer)
            else:
                exact_cell = f"~{fmt_time(one_step * steps)} (est.)"
                below = naive_exact_erlang_c(ours - 1, a) if ours - 1 > a else 1.0
                checked = tail_meets(waits, ours, a) and not tail_meets(below, ours - 1, a)
                answers.append(ours if checked else -1)
        agree = "yes" if len(set(answers)) == 1 else f"NO {answers}"
        if len(answers) == 1:
            agree = "(ours only)"
        elif exact_cell.endswith("(est.)") and agree == "yes":
            agree = "yes (exact c, c-1)"
        rows.append((f"{target:,}", f"{a:,}", fmt_time(ours_time), f"{ours:,}", fmt_time(util_time), f"{util:,}",
                     float_cell, exact_cell, agree))
        print(" | ".join(rows[-1]), flush=True)

    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    print(f"P(wait <= {WAIT_TARGET:g} s) >= {PERCENTILE:g} with S = {SERVICE_TIME:g} s; "
          "times are best of 5 (ours) or one run (naive).")
    for index, row in enumerate(rows):
        print("| " + " | ".join(cell.rjust(width) for cell, width in zip(row, widths)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


if __name__ == "__main__":
    main()
