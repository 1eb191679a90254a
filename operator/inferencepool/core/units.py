"""Parse the units a person types ("100/min", "15s", "p99 wait < 10s").

Every parser accepts a plain int/float too (already in base units), so values from
a CRD or a config file can go through the same door.  Errors are ValueErrors whose
message says what was wrong and what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Slo", "parse_rate", "parse_duration", "parse_percentile", "parse_slo", "format_duration"]

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"

# seconds per unit of time
_RATE_PERIODS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}
_DURATION_UNITS = {
    "us": 1e-6,
    "ms": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
}
_RATE_ALLOWED = "a number per /s, /sec, /m, /min, /h, /hr, /hour or /day (plain number = per second), e.g. 100/min"
_DURATION_ALLOWED = "a number with us, ms, s, m/min or h (plain number = seconds), e.g. 15s or 500ms"
_PERCENTILE_ALLOWED = "p99, p99.9, 99% or 0.99 (strictly between 0 and 1)"
_SLO_ALLOWED = "'<p99|p95|...|mean> <wait|ttft> < <duration>', e.g. 'p99 wait < 10s' or 'mean wait < 2s'"


def _plain_number(value: object, what: str, allowed: str) -> float | None:
    """A number given as int/float, or None if value is text to parse."""
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not a number; expected {allowed}")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{what} {value!r} is not text or a number; expected {allowed}")
    return None


def _finite_nonnegative(number: float, text: object, what: str, allowed: str) -> float:
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} {text!r} must be finite and >= 0; expected {allowed}")
    return number


def parse_rate(text: str | float) -> float:
    """Requests per second from '100/min', '2.5/s', '6000/hour', '3 req/s' or '1.5'."""
    number = _plain_number(text, "rate", _RATE_ALLOWED)
    if number is None:
        match = re.fullmatch(
            rf"\s*({_NUMBER})\s*(?:(?:req|reqs|requests?)\s*)?(?:(?:/|per\s+)\s*([a-z]+))?\s*",
            text.lower(),
        )
        if not match:
            raise ValueError(f"rate {text!r} not understood; expected {_RATE_ALLOWED}")
        number, period = float(match.group(1)), match.group(2)
        if period is not None:
            if period not in _RATE_PERIODS:
                raise ValueError(f"rate {text!r} has unknown unit '/{period}'; expected {_RATE_ALLOWED}")
            number /= _RATE_PERIODS[period]
    return _finite_nonnegative(number, text, "rate", _RATE_ALLOWED)


def parse_duration(text: str | float) -> float:
    """Seconds from '15s', '500ms', '200us', '2m', '1.5h' or a plain number of seconds."""
    number = _plain_number(text, "duration", _DURATION_ALLOWED)
    if number is None:
        match = re.fullmatch(rf"\s*({_NUMBER})\s*([a-z]*)\s*", text.lower())
        if not match:
            raise ValueError(f"duration {text!r} not understood; expected {_DURATION_ALLOWED}")
        number, unit = float(match.group(1)), match.group(2)
        if unit:
            if unit not in _DURATION_UNITS:
                raise ValueError(f"duration {text!r} has unknown unit '{unit}'; expected {_DURATION_ALLOWED}")
            number *= _DURATION_UNITS[unit]
    return _finite_nonnegative(number, text, "duration", _DURATION_ALLOWED)


def parse_percentile(text: str | float) -> float:
    """A probability in (0, 1) from 'p99' (0.99), 'p99.9', '99%' or '0.99'."""
    number = _plain_number(text, "percentile", _PERCENTILE_ALLOWED)
    if number is None:
        match = re.fullmatch(rf"\s*(?:p\s*({_NUMBER})|({_NUMBER})\s*%|({_NUMBER}))\s*", text.lower())
        if not match:
            raise ValueError(f"percentile {text!r} not understood; expected {_PERCENTILE_ALLOWED}")
        percent, fraction = match.group(1) or match.group(2), match.group(3)
        # "99.9e-2" parses to the nearest float to 0.999; 99.9 / 100 would not
        number = float(f"{percent}e-2") if percent is not None else float(fraction)
    if not 0 < number < 1:
        raise ValueError(f"percentile {text!r} is outside (0, 1); expected {_PERCENTILE_ALLOWED}")
    return number


def format_duration(seconds: float) -> str:
    """Short human form parse_duration reads back: 0.5 -> '500ms', 10 -> '10s', 90 -> '1.5min'."""
    if not math.isfinite(seconds):
        return "inf"
    if seconds == 0:
        return "0s"
    if seconds < 0.001:
        return f"{seconds * 1e6:.3g}us"
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    if seconds < 3600:
        return f"{seconds / 60:.3g}min"
    return f"{seconds / 3600:.3g}h"


@dataclass(frozen=True)
class Slo:
    """A latency objective: the mean (percentile None) or a percentile of a metric stays under a target."""

    metric: str  # 'wait' (time queued before a slot starts the request) or 'ttft' (wait + prefill)
    percentile: float | None  # e.g. 0.99; None means the mean
    target_seconds: float

    def __post_init__(self) -> None:
        if self.metric not in ("wait", "ttft"):
            raise ValueError(f"SLO metric {self.metric!r} unknown; expected 'wait' or 'ttft'")
        if self.percentile is not None and not 0 < self.percentile < 1:
            raise ValueError(f"SLO percentile {self.percentile!r} is outside (0, 1)")
        if not math.isfinite(self.target_seconds) or self.target_seconds < 0:
            raise ValueError(f"SLO target {self.target_seconds!r} must be a finite number of seconds >= 0")

    def __str__(self) -> str:
        if self.percentile is None:
            statistic = "mean"
        else:
            statistic = f"p{self.percentile * 100:.10g}"
        return f"{statistic} {self.metric} < {format_duration(self.target_seconds)}"


def parse_slo(text: str) -> Slo:
    """Slo from 'p99 wait < 10s', 'mean wait < 2s', 'p95 ttft <= 500ms'."""
    if not isinstance(text, str):
        raise ValueError(f"SLO {text!r} is not text; expected {_SLO_ALLOWED}")
    match = re.fullmatch(r"\s*(\S+)\s+([a-z_]+)\s*(<=|<)\s*(.+?)\s*", text.lower())
    if not match:
        raise ValueError(f"SLO {text!r} not understood; expected {_SLO_ALLOWED}")
    statistic, metric, _, target = match.groups()
    if metric not in ("wait", "ttft"):
        raise ValueError(f"SLO {text!r} has unknown metric {metric!r}; expected 'wait' or 'ttft'")
    if statistic in ("mean", "avg", "average"):
        percentile = None
    elif statistic.startswith("p") or statistic.endswith("%"):
        percentile = parse_percentile(statistic)
    else:
        raise ValueError(f"SLO {text!r} has unknown statistic {statistic!r}; expected {_SLO_ALLOWED}")
    return Slo(metric=metric, percentile=percentile, target_seconds=parse_duration(target))
