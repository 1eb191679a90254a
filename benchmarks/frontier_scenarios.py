"""The frontier benchmark's scenarios, each built the same way every time and saying how (Scenario.trace.notes)."""

from __future__ import annotations

import os
from pathlib import Path

from dataclasses import replace

import numpy as np

from inferencepool.core.policy import PoolSpec
from inferencepool.simulate import trace as tr
from inferencepool.simulate.compare import Scenario

TRACES = os.environ.get("IPOOL_TRACES", str(Path(__file__).resolve().parents[2] / "shared" / "traces"))  # ../shared beside the checkout
SPEC = PoolSpec(max_replicas=100, gpu_hour_price=2.50)  # p99 queue wait <= 10 s per 1-minute window, floor swept
SERVEGEN_SCALE = 0.008  # ServeGen m-large averages ~200 requests/s; x0.008 with conv's tokens ~ 9 Erlangs


def azure_repeated(kind: str, seed: int, times: int = 2) -> Scenario:
    """An Azure one-hour trace played `times` times back to back; only the last hour is scored, so the
    forecaster and every policy's windows have learnt the trace once (the first hour warms them)."""
    trace = tr.repeat(tr.load(f"{TRACES}/azure-llm-2023-{kind}.csv.gz"), times)
    period = trace.span / times + trace.span / max(len(trace) - 1, 1) / times
    trace = replace(trace, notes=trace.notes + (f"scored from {period * (times - 1) / 60:.1f} min on (the last copy only)",))
    return Scenario(trace=trace, spec=SPEC, seed=seed, score_from=period * (times - 1))


def servegen_bursty(seed: int, days: float = 7.0) -> Scenario:
    """ServeGen m-large's 10-minute rates x0.008 as a renewal process at each window's own
    rate_weighted_client_iat_cv (gamma inter-arrivals; CVs above 8 clipped), tokens from the Azure conv trace."""
    rng = np.random.default_rng([seed, 3])
    conv = tr.load(f"{TRACES}/azure-llm-2023-conv.csv.gz")
    table = np.loadtxt(f"{TRACES}/servegen-m-large-rate-600s.csv.gz", delimiter=",", skiprows=1)
    table = table[table[:, 0] < days * 86400]
    trace = tr.renewal_from_rates(table[:, 0], table[:, 1] * SERVEGEN_SCALE, table[:, 4], conv, rng,
                                  name="ServeGen m-large, bursty")
    trace = replace(trace, notes=(f"ServeGen m-large rates x{SERVEGEN_SCALE:g}, first {days:g} days; " + trace.notes[0],))
    return Scenario(trace=trace, spec=SPEC, seed=seed)


def code_diurnal(seed: int, days: float = 3.0, trough: float = 0.3) -> Scenario:
    """The Azure code trace's bursts hour after hour (random circular shift per hour) on a daily curve."""
    rng = np.random.default_rng([seed, 4])
    return Scenario(trace=tr.on_daily_curve(tr.load(f"{TRACES}/azure-llm-2023-code.csv.gz"), days, trough, rng),
                    spec=SPEC, seed=seed)


SCENARIOS = {
    "code": ("Azure code, 2 x 1 h, last hour scored (bursty)", lambda seed: azure_repeated("code", seed)),
    "conv": ("Azure conv, 2 x 1 h, last hour scored (smooth)", lambda seed: azure_repeated("conv", seed)),
    "servegen": ("ServeGen m-large, first 2 days, renewal arrivals at the trace's CV", lambda seed: servegen_bursty(seed, 2.0)),
    "code-diurnal": ("Azure code bursts on a daily curve, 2 days", lambda seed: code_diurnal(seed, 2.0)),
}
