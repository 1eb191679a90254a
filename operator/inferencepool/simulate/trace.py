"""Request traces: load them, and reshape them (compress time, scale the rate, repeat) saying so.

A trace is three numpy arrays, not a list of request objects, so a week of requests stays cheap.
"""

from __future__ import annotations

import math
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


CV_COLUMN = "rate_weighted_client_iat_cv"  # ServeGen: inter-arrival CV in each window


def load(path: str | Path | None = None, rng: np.random.Generator | None = None, rate_scale: float = 1.0,
         seconds: float | None = None, format: str | None = None, columns: dict[str, str] | None = None,
         time_unit: str | None = None) -> Trace:
    """A request trace in any format formats.read knows (Azure, Mooncake, BurstGPT, a column map) or a rate trace
    (window_start_seconds, rate_rps).

    The request rate is multiplied by `rate_scale` (see scale_rate) and only the first `seconds` are kept. A
    rate trace becomes arrivals at each window's scaled rate, with token counts drawn from the bundled trace:
    a renewal process at the window's `rate_weighted_client_iat_cv` where the series has it (ServeGen's),
    Poisson otherwise.
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
        _check_size(path, starts[keep], rates[keep])
        if CV_COLUMN in column:  # ServeGen's own burstiness: a renewal process at each window's CV, not Poisson
            cvs = table[:, column[CV_COLUMN]].astype(float)
            cvs = np.where(np.isfinite(cvs) & (cvs > 0), cvs, 1.0)
            trace = renewal_from_rates(starts[keep], rates[keep], cvs[keep], load(None), rng, name=name)
        else:
            trace = from_rates(starts[keep], rates[keep], load(None), rng, name=name)
        note = f"rates x{rate_scale:g}" + (f", first {seconds / 86400:g} days" if seconds is not None else "")
        return replace(trace, notes=(note + "; " + trace.notes[0],))
    raise formats.TraceFileError(path, "not a rate series")  # formats.read returns no other RateSeries


MAX_ARRIVALS = 1e8  # a simulated trace this large already takes hours; 1e308 req/s must not hang or crash
MAX_SPAN_SECONDS = 10 * 365 * 86400


def _check_size(path, starts: np.ndarray, rates: np.ndarray) -> None:
    """Refuse a rate series whose arrivals could not be held in memory (issue 15: a window at 1e7 req/s hung,
    one at 1e308 died in numpy's Poisson draw), naming the file and what to change."""
    width = float(np.median(np.diff(starts))) if len(starts) > 1 else 60.0
    span = float(starts[-1] - starts[0]) if len(starts) else 0.0
    if span > MAX_SPAN_SECONDS:
        raise formats.TraceFileError(path, f"window_start_seconds spans {span:.3g} s, over {MAX_SPAN_SECONDS:.3g} s "
                                     "(10 years): check the column's unit (seconds)")
    with np.errstate(over="ignore"):
        expected = float(np.sum(np.maximum(rates, 0)) * width)
    if not expected <= MAX_ARRIVALS:
        raise formats.TraceFileError(path, f"rate_rps x window asks for ~{expected:.3g} requests, over the "
                                     f"simulator's {MAX_ARRIVALS:.0e}: lower --rate-scale or use a shorter trace")


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


def renewal_from_rates(starts: np.ndarray, rates: np.ndarray, cvs: np.ndarray, tokens: Trace, rng: np.random.Generator,
                       name: str = "rates", resolution: float = 60.0, max_cv: float = 8.0) -> Trace:
    """Arrivals of a renewal process with gamma inter-arrival times at each window's CV, following the rate.

    The rate is interpolated between window centres as in from_rates; the process runs in operational time
    (the integral of the rate), where gamma gaps with mean 1 and CV `cvs[w]` (window w) are laid end to end,
    then mapped back to wall time. CV 1 is Poisson; above 1, arrivals come in clumps. CVs above `max_cv` are
    clipped (said in the notes): a CV of 55 would put a whole window's requests at a handful of instants.
    """
    width = float(np.median(np.diff(starts))) if len(starts) > 1 else 60.0
    origin = starts[0]
    fine = np.arange(origin, starts[-1] + width, resolution)
    fine_rates = np.interp(fine + resolution / 2, starts + width / 2, np.maximum(rates, 0))
    edges_time = np.append(fine, fine[-1] + resolution) - origin
    edges_work = np.concatenate([[0.0], np.cumsum(fine_rates * resolution)])
    clipped = np.minimum(np.asarray(cvs, dtype=float), max_cv)
    window_of_edge = np.minimum(((edges_time + origin - starts[0]) // width).astype(int), len(starts) - 1)
    out, pos = [], 0.0
    for w in range(len(starts)):
        inside = np.flatnonzero(window_of_edge == w)
        if len(inside) == 0:
            continue
        stop = edges_work[min(inside[-1] + 1, len(edges_work) - 1)]
        shape = 1.0 / max(clipped[w], 1e-3) ** 2
        points = np.empty(0)
        last = pos
        while last < stop:
            chunk = last + np.cumsum(rng.gamma(shape, 1.0 / shape, int(max(stop - last, 0) * 1.1) + 16))
            points = np.concatenate([points, chunk])
            last = chunk[-1]
        kept = points[points < stop]
        out.append(kept)
        if len(kept):
            pos = kept[-1]
    work = np.concatenate(out) if out else np.empty(0)
    arrivals = np.interp(work, edges_work, edges_time)
    arrivals.sort()
    pick = rng.integers(0, len(tokens), len(arrivals))
    many = int(np.sum(np.asarray(cvs) > max_cv))
    return Trace(
        name=name,
        arrivals=arrivals - (arrivals[0] if len(arrivals) else 0.0),
        prompt_tokens=tokens.prompt_tokens[pick],
        output_tokens=tokens.output_tokens[pick],
        notes=(f"renewal arrivals (gamma inter-arrivals at each {width:g}s window's CV, median "
               f"{np.median(clipped):.2f}; {many} of {len(cvs)} windows above {max_cv:g} clipped to it) at the "
               f"window rates, interpolated; tokens drawn from {tokens.name}",),
    )


def on_daily_curve(trace: Trace, days: float, trough: float, rng: np.random.Generator) -> Trace:
    """A one-hour trace's burst pattern laid hour after hour over `days`, thinned to a daily curve.

    Each hour is a copy of the trace circularly shifted by a random offset (bursts keep their shape but do
    not recur at the same minute); each request is kept with probability m(t) = trough + (1 - trough) x
    (1 - cos(2 pi t / 1 day)) / 2: the trace's own rate at the daily peak (t = 12 h), `trough` of it at night.
    """
    period = trace.span + trace.span / max(len(trace) - 1, 1)
    hours = int(math.ceil(days * 86400.0 / period))
    arrivals, index = [], []
    for h in range(hours):
        shifted = (trace.arrivals + rng.uniform(0, period)) % period
        order = np.argsort(shifted, kind="stable")
        arrivals.append(h * period + shifted[order])
        index.append(order)
    arrivals, index = np.concatenate(arrivals), np.concatenate(index)
    keep = arrivals < days * 86400.0
    level = trough + (1 - trough) * (1 - np.cos(2 * np.pi * arrivals / 86400.0)) / 2
    keep &= rng.random(len(arrivals)) < level
    arrivals, index = arrivals[keep], index[keep]
    note = (f"{trace.name}'s burst pattern hour after hour (each hour circularly shifted at random) over {days:g} "
            f"days, thinned to a daily curve from {trough:g}x at midnight to 1x at noon")
    return Trace(name=f"{trace.name} on a daily curve", arrivals=arrivals - arrivals[0],
                 prompt_tokens=trace.prompt_tokens[index], output_tokens=trace.output_tokens[index],
                 notes=trace.notes + (note,))
