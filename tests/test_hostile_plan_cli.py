"""`inferencepool plan` with hostile flag values (issue 15): exit 0, or exit 2 with one line on stderr that
names the flag; never a traceback. Run in-process (a traceback is any exception other than SystemExit)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from inferencepool.cli import main

FLAGS = ("--arrival-rate", "--service-time", "--arrival-cv", "--service-cv", "--slo", "--max-utilization",
         "--prefill-time", "--slots-per-replica", "--gpus-per-replica", "--min-replicas", "--max-replicas",
         "--gpu-hour-price", "--api-price-input", "--api-price-output", "--input-tokens", "--output-tokens")
BASE = {"--arrival-rate": "100/min", "--service-time": "15s", "--slo": "p99 wait < 10s"}
NUMBERS = ("nan", "NaN", "inf", "-inf", "-1", "0", "1e-300", "1e308", "1e309", "9" * 400, "-0", "1e6", "0.5",
           "3", "80%", "$2.50", "1,000")
SUFFIXES = ("", "/s", "/min", "/h", "s", "ms", "h", "%")
NUMBER = st.builds(lambda n, s: n + s, st.sampled_from(NUMBERS), st.sampled_from(SUFFIXES))
HOSTILE = st.one_of(
    NUMBER, NUMBER,
    st.builds(lambda p, t: f"p{p} wait < {t}", st.sampled_from(("99", "0", "100", "nan", "1e308", "-5")),
              st.sampled_from(("10s", "nan s", "1e308s", "0s", "-1s", "inf"))),
    st.text(max_size=30),
)
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["plan", *argv])
        except SystemExit as done:
            code = done.code
    return code, out.getvalue(), err.getvalue()


@PROPERTY
@given(st.dictionaries(st.sampled_from(FLAGS), HOSTILE, min_size=1, max_size=4), st.booleans())
@example({"--arrival-rate": "1e6/s", "--service-time": "1e6s"}, False)  # 1e12 Erlangs: 6.5 s before the bound
@example({"--arrival-rate": "1e308/s", "--service-time": "1e308s"}, False)  # the load overflowed
@example({"--arrival-rate": "1e300/s"}, True)  # numpy "Maximum allowed size exceeded"
@example({"--max-utilization": "1e-300"}, False)
@example({"--service-cv": "1e308"}, True)  # OverflowError squaring it, found by benchmarks/hostile_decide.py
@example({"--api-price-input": "1e308", "--api-price-output": "1e308", "--input-tokens": "1e308",
          "--output-tokens": "1e308"}, False)
@example({"--api-price-input": "1e-300", "--api-price-output": "0", "--input-tokens": "1e-300",
          "--output-tokens": "0"}, True)
def test_hostile_flags_exit_0_or_2_with_one_line_naming_the_flag(hostile, as_json):
    values = {**BASE, **hostile}
    argv = [part for flag, value in values.items() for part in (flag, value)] + (["--json"] if as_json else [])
    code, out, err = run(argv)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert any(flag in lines[0] for flag in FLAGS) or "--slo" in lines[0] or "give --slo" in lines[0], (argv, err)
    else:
        assert out and not err


def test_a_closed_pipe_exits_quietly():
    """`inferencepool plan ... | head -1`: no BrokenPipeError traceback."""
    script = ("import sys; from inferencepool.cli import main; "
              "sys.exit(main(['plan', '--arrival-rate', '100/min', '--service-time', '15s', '--slo', 'p99 wait < 10s']))")
    shell = f"{sys.executable} -c \"{script}\" | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("Workload:") and done.stdout.count("\n") == 1
    assert done.stderr == "", done.stderr
