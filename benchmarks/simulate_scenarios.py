"""The trace scenarios the simulator benchmarks and tuning share, built the same way every time."""

from __future__ import annotations

from pathlib import Path

from dataclasses import replace

import numpy as np

from inferencepool.core.policy import PoolSpec
from inferencepool.simulate import trace as tr
from inferencepool.simulate.compare import Scenario

TRACES = str(Path(__file__).resolve().parents[2] / "shared" / "traces")  # ../shared beside the checkout
SPEC = PoolSpec(max_replicas=100, gpu_hour_price=2.50)  # the CLI's defaults otherwise (p99 wait < 10s, floor 1)
SERVEGEN_SCALE = 0.008  # ServeGen m-large averages ~200 requests/s; x0.008 with conv's tokens ~ 9 Erlangs


def azure(kind: str, compress: float = 1.0, seed: int = 0) -> Scenario:
    """An Azure trace; compressed K-fold in time and thinned to 1/K, so the fleet keeps its size but every
    burst lasts K times less against the same cold start."""
    trace = tr.load(f"{TRACES}/azure-llm-2023-{kind}.csv.gz")
    if compress != 1:
        rng = np.random.default_rng([seed, 2])
        trace = tr.scale_rate(tr.compress_time(trace, compress), 1 / compress, rng)
    return Scenario(trace=trace, spec=SPEC, seed=seed)


def servegen(days: float, seed: int = 0) -> Scenario:
    """ServeGen's day/night rates as Poisson arrivals, tokens from the Azure conv trace."""
    rng = np.random.default_rng([seed, 3])
    conv = tr.load(f"{TRACES}/azure-llm-2023-conv.csv.gz")
    table = np.loadtxt(f"{TRACES}/servegen-m-large-rate-600s.csv.gz", delimiter=",", skiprows=1, usecols=(0, 1))
    table = table[table[:, 0] < days * 86400]
    trace = tr.from_rates(table[:, 0], table[:, 1] * SERVEGEN_SCALE, conv, rng, name="ServeGen m-large")
    trace = replace(trace, notes=(f"rates x{SERVEGEN_SCALE:g}, first {days:g} days; " + trace.notes[0],))
    return Scenario(trace=trace, spec=SPEC, seed=seed)


def tuning_set() -> dict[str, Scenario]:
    """Bursty and smooth, real time and compressed, and two days of day/night traffic."""
    return {
        "code": azure("code"),
        "code /4": azure("code", 4),
        "conv": azure("conv"),
        "conv /4": azure("conv", 4),
        "servegen 2d": servegen(2),
    }
