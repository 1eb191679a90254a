"""Request traces: load them, and reshape them (compress time, scale the rate, repeat) saying so.

A trace is three numpy arrays, not a list of request objects, so a week of requests stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

import numpy as np

from inferencepool.simulate import formats

BUNDLED_NAME = "azure-llm-2023-code.csv.gz"
BUNDLED_LABEL = "Azure LLM inference trace 2023, code (bundled; Patel et al., Splitwise, ISCA 2024; CC-BY-4.0)"


@dataclass(frozen=True)
class Trace:
    name: str
    arrivals: np.ndarray  # seconds since the first request, sorted
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    notes: tuple[str, ...] = ()  # every reshaping applied, for the report

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def span(self) -> float:
        """Seconds from the first to the last request."""
        return float(self.arrivals[-1]) if len(self.arrivals) else 0.0


def bundled_path() -> Path:
    return Path(str(files("inferencepool") / "data" / BUNDLED_NAME))


def load(path: str | Path | None = None, rng: np.random.Generator | None = None, rate_scale: float = 1.0,
         seconds: float | None = None, format: str | None = None, columns: dict[str, str] | None = None,
         time_unit: str | None = None) -> Trace:
    """A request trace in any format formats.read knows (Azure, Mooncake, BurstGPT, a column map) or a rate trace
    (window_start_seconds, rate_rps).

    The request rate is multiplied by `rate_scale` (see scale_rate) and only the first `seconds` are kept. A
    rate trace becomes Poisson arrivals at each window's scaled rate, with token counts drawn from the bundled trace.
    """
    rng = rng or np.random.default_rng(0)
    path = Path(path) if path is not None else bundled_path()
    loaded = formats.read(path, format=format, columns=columns, time_unit=time_unit)
    name = BUNDLED_LABEL if path == bundled_path() else path.name
    if isinstance(loaded, formats.Requests):
        trace = Trace(name=name if loaded.format == "azure" else f"{name} ({formats.LABELS[loaded.format]})",
                      arrivals=loaded.arrivals, prompt_tokens=loaded.prompt_tokens,
                      output_tokens=loaded.output_tokens, notes=loaded.notes)
        trace = trace if seconds is None else clip(trace, seconds)
        return scale_rate(trace, rate_scale, rng)
    header, table = loaded.header, loaded.table
    if "rate_rps" in header:
        column = {c: i for i, c in enumerate(header)}
        starts = table[:, column["window_start_seconds"]].astype(float)
        rates = table[:, column["rate_rps"]].astype(float) * rate_scale
        keep = starts - starts[0] < (seconds if seconds is not None else np.inf)
        trace = from_rates(starts[keep], rates[keep], load(None), rng, name=name)
        note = f"rates x{rate_scale:g}" + (f", first {seconds / 86400:g} days" if seconds is not None else "")
        return replace(trace, notes=(note + "; " + trace.notes[0],))
    raise formats.TraceFileError(path, "not a rate series")  # formats.read returns no other RateSeries


def from_rates(starts: np.ndarray, rates: np.ndarray, tokens: Trace, rng: np.random.Generator, name: str = "rates",
               resolution: float = 60.0) -> Trace:
    """Poisson arrivals at a rate interpolated linearly between window centres (no artificial jumps at window
    edges), piecewise constant per `resolution` seconds; each request's tokens drawn from another trace."""
    width = float(np.median(np.diff(starts))) if len(starts) > 1 else 60.0
    origin = starts[0]
    fine = np.arange(origin, starts[-1] + width, resolution)
    fine_rates = np.interp(fine + resolution / 2, starts + width / 2, np.maximum(rates, 0))
    counts = rng.poisson(fine_rates * resolution)
    arrivals = np.repeat(fine - origin, counts) + rng.random(counts.sum()) * resolution
    arrivals.sort()
    pick = rng.integers(0, len(tokens), len(arrivals))
    return Trace(
        name=name,
        arrivals=arrivals,
        prompt_tokens=tokens.prompt_tokens[pick],
        output_tokens=tokens.output_tokens[pick],
        notes=(f"Poisson arrivals at the trace's {width:g}s-window rates, interpolated; tokens drawn from {tokens.name}",),
    )


def clip(trace: Trace, seconds: float) -> Trace:
    """The first `seconds` of a trace."""
    keep = trace.arrivals < seconds
    return replace(
        trace, arrivals=trace.arrivals[keep], prompt_tokens=trace.prompt_tokens[keep],
        output_tokens=trace.output_tokens[keep], notes=trace.notes + (f"first {seconds / 3600:g} h only",),
    )


def compress_time(trace: Trace, factor: float) -> Trace:
    """Divide every timestamp by `factor`: a burst becomes `factor` times shorter (and the rate higher)."""
    if factor == 1:
        return trace
    note = f"time compressed {factor:g}x (timestamps / {factor:g}; rates x{factor:g}; cold starts not compressed)"
    return replace(trace, arrivals=trace.arrivals / factor, notes=trace.notes + (note,))


def scale_rate(trace: Trace, factor: float, rng: np.random.Generator) -> Trace:
    """Multiply the request rate by `factor`, keeping the trace's shape over time.

    Below 1: keep each request with probability `factor`. Above 1: each request gets floor(factor) or
    floor(factor)+1 copies (expected `factor`), the extra ones placed at random within the gap before the next
    request, so bursts stay where they were.
    """
    if factor == 1:
        return trace
    copies = np.floor(factor).astype(int) + (rng.random(len(trace)) < factor % 1)
    index = np.repeat(np.arange(len(trace)), copies)
    first = np.r_[True, index[1:] != index[:-1]]
    gaps = np.diff(trace.arrivals, append=trace.arrivals[-1] if len(trace) else 0.0)
    arrivals = trace.arrivals[index] + np.where(first, 0.0, rng.random(len(index)) * gaps[index])
    order = np.argsort(arrivals, kind="stable")
    note = f"request rate scaled x{factor:g} ({'thinned' if factor < 1 else 'copies spread within inter-arrival gaps'})"
    return replace(
        trace, arrivals=arrivals[order], prompt_tokens=trace.prompt_tokens[index][order],
        output_tokens=trace.output_tokens[index][order], notes=trace.notes + (note,),
    )


def repeat(trace: Trace, times: int) -> Trace:
    """The trace played `times` times back to back."""
    if times == 1:
        return trace
    period = trace.span + (trace.span / max(len(trace) - 1, 1))
    offsets = np.repeat(np.arange(times) * period, len(trace))
    return replace(
        trace, arrivals=np.tile(trace.arrivals, times) + offsets, prompt_tokens=np.tile(trace.prompt_tokens, times),
        output_tokens=np.tile(trace.output_tokens, times), notes=trace.notes + (f"repeated {times}x back to back",),
    )
