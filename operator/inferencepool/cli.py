"""The `inferencepool` command line.

Each subcommand is one `_add_<name>(subparsers)` function listed in SUBCOMMANDS; it
registers its parser and a handler via `set_defaults(handler=...)`.  Handlers of
other subcommands import their modules lazily so `inferencepool plan` stays fast.
Bad input exits 2 with one line on stderr naming the flag; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Let "--arrival-rate -5/min" reach our validator (and its clear message)
        # instead of argparse mistaking "-5/min" for a flag.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


# ---------------------------------------------------------------- registry
# Subcommands register here.  To add one, write `_add_<name>(subparsers)` that calls
# subparsers.add_parser(...) and set_defaults(handler=...), keep heavy imports inside the
# handler (not at the top of this file or of the module defining the parser), and append
# it to SUBCOMMANDS.  A handler returns an exit status; a ValueError it raises is shown as
# one "error:" line with exit 2, so raise ValueError only for bad input.


def _add_plan(subparsers) -> None:
    """`plan`: defined by inferencepool/plan/cli.py."""
    from inferencepool.plan.cli import add_parser

    add_parser(subparsers)


def _add_simulate(subparsers) -> None:
    """`simulate`: defined by inferencepool/simulate/cli.py."""
    from inferencepool.simulate.cli import add_parser

    add_parser(subparsers)


def _add_run(subparsers) -> None:
    """`run`: the operator, defined by inferencepool/operator/run.py (kopf is imported in its handler)."""
    from inferencepool.operator.run import add_parser

    add_parser(subparsers)


def _add_backtest(subparsers) -> None:
    """`backtest`: defined by inferencepool/backtest/cli.py."""
    from inferencepool.backtest.cli import add_parser

    add_parser(subparsers)


SUBCOMMANDS: list[Callable] = [_add_plan, _add_simulate, _add_run, _add_backtest]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="inferencepool", description="Queueing-theory autoscaler for vLLM on Kubernetes.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; returns its exit status, exits 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return status
    except ValueError as error:  # input that parsed but does not make sense together
        parser.exit(2, f"{parser.prog} {args.command}: error: {' '.join(str(error).split())}\n")
    except BrokenPipeError:
        # `inferencepool plan ... | head -1`: the reader left; stop quietly, as head and cat do. Point stdout
        # at /dev/null so the exit flush does not raise again (docs.python.org/3/library/signal.html,
        # "Note on SIGPIPE"); 141 = 128 + SIGPIPE, the status a shell shows for a tool killed by it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
