"""Measured SLO attainment from vLLM's histograms in Prometheus: the statistic the simulator scores.

A scoring window (spec.slo.window) meets the SLO when the share of its requests whose queue wait (or TTFT)
is within the target is at least the SLO percentile. That share is read from the histogram's cumulative
bucket at the target: increase(bucket{le=target}[window]) / increase(count[window]). When the target is
not a bucket bound it is interpolated linearly between the neighbouring bounds (the lower bound of the
first bucket is 0), as Prometheus' histogram_quantile does between bucket counts. Attainment over the
period (spec.slo.period) is the share of windows *that had requests* meeting the SLO, by a PromQL subquery
whose steps are aligned to multiples of the window (Prometheus aligns subquery steps to absolute time), so
every window is scored once and never overlaps another:

    avg_over_time((<good share> >= bool <percentile>)[<period>:<window>])

All queries are evaluated at the end of the last completed window (the newest whole window that has had
one more scrape since it ended), and one set of queries serves every pool of a (metric, target,
percentile, window, period, bounds) group, grouped by pool like observe.py's queries.

A window holding fewer than MIN_SCRAPES scrapes cannot be measured (increase() needs two samples inside
it, and a window of 1-3 samples reads as noise), nor can a target finer than vLLM's smallest bucket
except by interpolation: both are said in status.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from inferencepool.operator.observe import MIN_SCRAPES, PoolKey, QuerySettings, _selector, either, parse_duration, parse_vector

HISTOGRAMS = {"wait": "request_queue_time_seconds", "ttft": "time_to_first_token_seconds"}


@dataclass(frozen=True)
class SloGroup:
    """What one set of attainment queries depends on; pools that share it share the queries."""

    metric: str  # "wait" or "ttft"
    target: float  # seconds
    percentile: float
    window: str  # PromQL duration, e.g. 60s
    period: str  # PromQL duration, e.g. 7d
    lower: float  # bucket bound at or below the target (0 below the first bucket)
    upper: float  # bucket bound at or above the target (== lower when the target is a bound)

    @property
    def interpolated(self) -> bool:
        """The share is not a bucket's own count: interpolated, or clamped above the last finite bound."""
        return not math.isclose(self.upper, self.target, rel_tol=1e-9)

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window)


def bracket(bounds: Iterable[float], target: float) -> tuple[float, float]:
    """(lower, upper) finite bucket bounds around the target; equal when the target is a bound.

    Below the first bound the lower is 0 (histogram_quantile's convention); above the last finite bound
    both are that bound: requests between it and +Inf cannot be told apart, so they count as missing.
    """
    finite = sorted(b for b in bounds if math.isfinite(b) and b > 0)
    if not finite:
        raise ValueError("the histogram has no finite bucket bound")
    for bound in finite:
        if math.isclose(bound, target, rel_tol=1e-9):
            return bound, bound
    below = [b for b in finite if b < target]
    above = [b for b in finite if b > target]
    if not above:
        return finite[-1], finite[-1]
    return (below[-1] if below else 0.0), above[0]


def le_regex(bound: float) -> str:
    """A regex for a bucket's le label: prometheus_client writes 5.0, other clients (and Prometheus 3's
    normalisation) may write 5; both spellings match."""
    forms = {f"{bound:g}", repr(float(bound))}
    if float(bound).is_integer():
        forms |= {f"{int(bound)}", f"{int(bound)}.0"}
    return "|".join(sorted(forms))


def good_share(settings: QuerySettings, matchers: str, group: SloGroup) -> str:
    """PromQL: per pool, the share of one window's requests within the target (absent without requests)."""
    by = f"{settings.namespace_label}, {settings.pool_label}"
    name, w = HISTOGRAMS[group.metric], group.window

    def increase(suffix: str, le: float | None = None) -> str:
        extra = ", ".join(m for m in (matchers.strip().strip(","), f'le=~"{le_regex(le)}"' if le is not None else "") if m)
        sel = _selector(settings, extra)
        return f"sum by ({by}) {either(lambda p: f'increase({p}{name}_{suffix}{sel}[{w}])')}"

    count = increase("count")
    if group.lower == group.upper:
        good = increase("bucket", group.lower)
    else:
        fraction = f"{(group.target - group.lower) / (group.upper - group.lower):.9g}"
        upper = increase("bucket", group.upper)
        if group.lower == 0:
            good = f"({upper} * {fraction})"
        else:
            lower = increase("bucket", group.lower)
            good = f"({lower} + ({upper} - {lower}) * {fraction})"
    return f"({good} / ({count} > 0))"


def period_range(group: SloGroup) -> str:
    """The subquery range: the period less 1 ms, so an aligned evaluation time scores period/window
    windows, not one more (a range's start is inclusive in Prometheus 2.x)."""
    return f"{int(round(parse_duration(group.period) * 1000)) - 1}ms"


def queries(settings: QuerySettings, matchers: str, group: SloGroup) -> dict[str, str]:
    """The three queries of a group: attainment, windows measured, and the last window's good share."""
    share = good_share(settings, matchers, group)
    span = f"[{period_range(group)}:{group.window}]"
    return {
        "attainment": f"avg_over_time(({share} >= bool {group.percentile:g}){span})",
        "windows": f"count_over_time({share}{span})",
        "last_good": share,
    }


def last_window_end(now: float, window_seconds: float, scrape_interval: float | None) -> float:
    """The end of the newest window whose data Prometheus holds: one scrape (and a second) after it ended."""
    lag = 2 * (scrape_interval or 15.0)
    return math.floor((now - lag) / window_seconds) * window_seconds


@dataclass(frozen=True)
class PoolSlo:
    attainment: float | None  # share of measured windows that met; None: no window had requests
    windows: int  # windows over the period that had requests
    last_good: float | None  # the last completed window's good share; None: no request in it


def parse(results: Mapping[str, list], settings: QuerySettings) -> dict[PoolKey, PoolSlo]:
    """Every pool's attainment from the raw results of `queries()`."""
    vec = {name: parse_vector(results.get(name, []), settings) for name in ("attainment", "windows", "last_good")}
    keys = set().union(*(v.keys() for v in vec.values()))
    return {
        key: PoolSlo(
            attainment=vec["attainment"].get(key),
            windows=int(round(vec["windows"].get(key, 0))),
            last_good=vec["last_good"].get(key),
        )
        for key in keys
    }


def error_budget_remaining(attainment: float | None, objective: float) -> float | None:
    """1 - (1 - attainment) / (1 - objective), at least 0: 1 is untouched, 0 spent (or overspent)."""
    if attainment is None:
        return None
    return max(1.0 - (1.0 - attainment) / (1.0 - objective), 0.0)


def window_note(group: SloGroup, scrape_interval: float | None) -> str | None:
    """Why this window cannot be measured at this scrape interval; None when it can."""
    if scrape_interval and group.window_seconds < MIN_SCRAPES * scrape_interval:
        return (f"slo.window {group.window} holds fewer than {MIN_SCRAPES} scrapes at a {scrape_interval:g}s scrape "
                f"interval, so a window's share cannot be measured: set slo.window to at least "
                f"{math.ceil(MIN_SCRAPES * scrape_interval)}s or scrape faster")
    return None


def interpolation_note(group: SloGroup, smallest: float | None) -> str | None:
    if not group.interpolated:
        return None
    if group.lower == group.upper:
        return (f"slo.targetSeconds {group.target:g}s is above the largest finite bucket ({group.upper:g}s): "
                "requests above that bound count as missing the target")
    if smallest is not None and group.target < smallest:
        return (f"slo.targetSeconds {group.target:g}s is below vLLM's smallest bucket ({smallest:g}s): the share "
                f"within target is interpolated from 0 to {group.upper:g}s and cannot be resolved")
    return (f"slo.targetSeconds {group.target:g}s is not a bucket bound: the share within target is "
            f"interpolated between {group.lower:g}s and {group.upper:g}s")


def measure(reader, config, pools, metrics, namespace: str, name: str, now: float) -> tuple[dict | None, float | None,
                                                                                         float | None, str | None]:
    """(status.slo, the last completed window's end, its good share, a MeasurementLimited note) for one pool.

    None status without spec.slo.objective. `reader` is an observe.PrometheusReader, `pools` its last read.
    """
    from inferencepool.operator.observe import PrometheusUnavailable, find
    from inferencepool.operator.status import rounded, timestamp

    p = config.policy
    if p.slo_objective is None:
        return None, None, None, None
    base = {"objective": p.slo_objective, "window": config.slo_window, "period": config.slo_period}
    buckets = (metrics.queue_buckets if p.slo_metric == "wait" else metrics.ttft_buckets) if metrics else ()
    bounds = [le for le, _ in buckets]
    if not any(math.isfinite(b) and b > 0 for b in bounds):
        which = "queue-time" if p.slo_metric == "wait" else "time-to-first-token"
        return {**base, "note": f"no vLLM {which} histogram for this pool now: attainment not measured"}, None, None, None
    group = SloGroup(p.slo_metric, p.slo_target_seconds, p.slo_percentile, config.slo_window, config.slo_period,
                     *bracket(bounds, p.slo_target_seconds))
    interval = getattr(pools, "scrape_interval", None)
    too_short = window_note(group, interval)
    if too_short:
        return {**base, "note": too_short}, None, None, too_short
    end = last_window_end(now, group.window_seconds, interval)
    try:
        results = reader.results_at(config.prometheus_url, queries(reader.settings, config.matchers, group), end)
    except PrometheusUnavailable as error:
        return {**base, "note": f"not measured: {error}"}, None, None, None
    measured = find(parse(results, reader.settings), namespace, name) or PoolSlo(None, 0, None)
    smallest = min((b for b in bounds if math.isfinite(b) and b > 0), default=None)
    status = {
        **base,
        "measuredWindows": measured.windows,
        "attainment": rounded(measured.attainment),
        "errorBudgetRemaining": rounded(error_budget_remaining(measured.attainment, p.slo_objective)),
        "lastWindowEnd": timestamp(end),
        "lastWindowGoodShare": rounded(measured.last_good),
        "interpolated": group.interpolated,
        "note": interpolation_note(group, smallest),
    }
    return status, end, measured.last_good, None
