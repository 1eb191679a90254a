"""What the pools look like now: vLLM's metrics from Prometheus, and cold starts and GPU shortages from pods.

One PromQL query per signal serves every pool (grouped by the pool label), so the load on Prometheus does
not grow with the number of pools. The parsing is pure and separate from the HTTP calls so it can be
tested on canned query results.

Names: every query reads both spellings of vLLM's series, vllm:* and the escaped vllm_* a Prometheus 2.x
scrape of a recent prometheus_client stores (see `either`), so no configuration is needed and a pool
whose pods export both (mid-rollout) is summed once. A pool with neither gets a message that says what to
check (`missing_series_message`, from the pool's scrape targets' `up`).

Signals (vLLM's own metric names; histograms are read as _sum/_count/_bucket):
- arrival rate, by conservation of requests: what left + what was refused + the growth of what is inside.
  Two lower bounds, the larger wins (see `arrival_estimate`): completions of every finished_reason
  (vllm:request_success_total) + growth of waiting + running, and first tokens
  (vllm:time_to_first_token_seconds_count) + growth of waiting; both + 503 refusals
  (vllm:admission_rejections_total, vLLM 0.33). Requests the client cancels are counted by no vLLM
  counter (vllm#31503): the first is blind to all of them, the second only to those cancelled while still
  queued. `spec.metrics.arrivalRateQuery` (a gateway's counter) replaces both when set.
- service time = mean of vllm:request_inference_time_seconds (the time a slot is busy); its coefficient
  of variation from the histogram buckets. Falls back to e2e latency - queue time on older vLLM.
- arrival CV from the dispersion of short-window request counts (index of dispersion ~ ca^2), floored at
  1 (Poisson): completions are smoother than arrivals, so smoother-than-Poisson readings are not trusted.
  Read at three windows (`QuerySettings.dispersion_windows`: 15 s, 60 s, 300 s by default, each over
  max(rate window, 8 windows); the longer two count arrivals by conservation, see dispersion_queries) so
  that bursts slower than 15 s count; decide() picks the one for the pool's time scale
  (policy.dispersion_timescale). Counts over long ranges include trends too, which can only raise the
  estimate (the safe side).
- minute rate = arrivals over the last minute (the 60 s dispersion window) by the same conservation, for
  decide()'s hindsight floor (PoolSpec.hindsight_quantile), which sizes each past minute on its own rate.
- freshness = the newest sample's timestamp; no sample or a stale one leaves every rate unknown (None).
- load-dependent capacity (core/capacity.py): mean vllm:kv_cache_usage_perc over the pool's series, the
  increase of vllm:num_preemptions_total over the window, and one (mean running per series over the
  window, mean inter-token latency) pair per read: rate(vllm:inter_token_latency_seconds_sum) /
  rate(_count) (vLLM 0.10.2 and 0.33), else vllm:time_per_output_token_seconds (older vLLM; 0.33 dropped
  it). The pairs are kept per pool in the PrometheusReader (`CURVE_POINTS` newest, at most one per
  `CURVE_SPACING_SECONDS`), not in the pool's status: a restarted operator learns the curve again within
  minutes, and status stays small. One engine per replica is assumed (running is averaged per series).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from inferencepool.core.capacity import TokenTimeCurve
from inferencepool.core.policy import Observations
from inferencepool.core.signals import (DISPERSION_SAMPLES, DISPERSION_SCALES, arrival_cv, dispersion, histogram_cv,
                                        histogram_quantile, share_above)

PoolKey = tuple[str, str]  # (namespace, pool); namespace "" when the series carry no namespace label


SPELLINGS = ("vllm:", "vllm_")  # as vLLM names them; as a Prometheus 2.x scrape stores them (escaped)


@dataclass(frozen=True)
class QuerySettings:
    rate_window: str = "2m"  # the window of every rate; shorter reacts faster, longer is steadier
    burst_window: str = "15s"  # the short windows whose count dispersion estimates the arrival CV
    pool_label: str = "pool"  # the series label that names the pool
    namespace_label: str = "namespace"
    scrape_interval: float | None = None  # seconds; None: measured from the pools' sample spacing

    @property
    def burst_seconds(self) -> float:
        return parse_duration(self.burst_window)

    @property
    def dispersion_windows(self) -> tuple[float, ...]:
        """Seconds of the windows whose count dispersion is read: the burst window x DISPERSION_SCALES
        (15 s, 60 s, 300 s at the default; raised with it when the scrape is slow)."""
        return tuple(self.burst_seconds * k for k in DISPERSION_SCALES)


def dispersion_names(k: int) -> tuple[str, str]:
    """The query names of the k-th dispersion window (k = 0 is the burst window, as before)."""
    suffix = f"_{k}" if k else ""
    return f"burst_rate_var{suffix}", f"burst_rate_mean{suffix}"


CURVE_POINTS = 240  # (running, token time) pairs kept per pool: 2 hours at one per 30 s
CURVE_SPACING_SECONDS = 30.0  # a new pair at most this often (the 2 m windows overlap; closer pairs repeat)
MIN_SCRAPES = 4  # samples a rate window must hold (Prometheus' own advice: >= 4 scrape intervals)
SPACING_WINDOW = "5m"


def spacing_query(settings: QuerySettings, matchers: str = "", window: str = SPACING_WINDOW, scope: str = "") -> str:
    """The shortest sample spacing of any pool series that is older than the window, in seconds.

    Only series that already had a sample a whole window ago count (`and ... offset`), so a young
    series' few samples do not read as a slow scrape; the shortest spacing is the cluster's interval.
    """
    sel = _selector(settings, matchers, scope)
    w = window
    counts = either(lambda p: f"count_over_time({p}num_requests_running{sel}[{w}]) and {p}num_requests_running{sel} offset {w}")
    return f"min({parse_duration(w):g} / {counts})"


def windows_for(settings: QuerySettings, spacing: float | None) -> tuple[QuerySettings, float | None, str | None]:
    """(settings whose windows hold >= MIN_SCRAPES scrapes, the scrape interval used, a note if raised).

    rate() over a window holding one sample returns nothing: with the common 15 s scrape a 15 s burst
    window was always empty. The interval is --scrape-interval when set, else the measured spacing.
    """
    interval = settings.scrape_interval or spacing
    if not interval:
        return settings, None, None
    floor = MIN_SCRAPES * interval
    raised = {f: f"{math.ceil(floor)}s" for f in ("rate_window", "burst_window") if parse_duration(getattr(settings, f)) < floor}
    if not raised:
        return settings, interval, None
    flags = ", ".join(f"--{f.replace('_', '-')} {getattr(settings, f)} -> {v}" for f, v in raised.items())
    note = (f"the configured windows hold fewer than {MIN_SCRAPES} scrapes at a {interval:g}s scrape interval, "
            f"so they were raised ({flags}); set them to at least {math.ceil(floor)}s")
    return replace(settings, **raised), interval, note


def parse_duration(text: str) -> float:
    """Seconds in a PromQL duration such as 30s, 2m or 1h30m."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        if text[i].isdigit():
            number += text[i]
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else text[i]
        if not number or unit not in units:
            raise ValueError(f"not a PromQL duration: {text!r} (expected e.g. 30s, 2m, 1h)")
        total += int(number) * units[unit]
        number, i = "", i + len(unit)
    if number or total <= 0:
        raise ValueError(f"not a PromQL duration: {text!r} (expected e.g. 30s, 2m, 1h)")
    return total


def either(expression: Callable[[str], str]) -> str:
    """`expression` for both spellings of vLLM's names, joined by `or`.

    vLLM serves /metrics with prometheus_client's content negotiation (`mount_metrics` in
    vllm/entrypoints/openai/api_server.py mounts prometheus_client.make_asgi_app); from prometheus_client 0.23 a Prometheus 2.x scrape gets
    OpenMetrics with escaping=underscores, so its samples are stored as vllm_*, while Prometheus 3 (and
    older clients) store vllm:*. Which one a pool has depends on the image, and a rollout can mix them.
    `or` matches on every label but the metric name: it keeps every series of either name whose
    labels differ (pods differ in their pod/instance labels, so both are summed), and of one target seen
    under both names (a Prometheus upgrade) the first only: no double count, and no "vector cannot
    contain metrics with the same labelset" error, which Prometheus 2.x gives for a
    `{__name__=~"vllm:x|vllm_x"}` selector inside rate() (tested in e2e/test_vllm_output.py).
    """
    return "(" + " or ".join(expression(prefix) for prefix in SPELLINGS) + ")"


def _selector(settings: QuerySettings, matchers: str, scope: str = "") -> str:
    extra = matchers.strip().strip(",")
    return "{" + ", ".join(m for m in (f'{settings.pool_label}!=""', extra, scope) if m) + "}"


def scope_matcher(settings: QuerySettings, pools: Iterable[PoolKey]) -> str:
    """A matcher for these pools' series only: their names as one alternation, which Prometheus looks up
    as a set of exact values in its index. By name alone, so that series without a namespace label (found
    by name in any namespace) still match; another namespace's pool of the same name only costs its rows."""
    names = sorted({name.replace(".", "\\\\.") for _, name in pools})
    return f'{settings.pool_label}=~"{"|".join(names)}"'


def queries(settings: QuerySettings, matchers: str = "", scope: str = "") -> dict[str, str]:
    """The PromQL for every signal, for all pools at once (pool-specific matchers go in `matchers`; `scope`,
    a shard's operator's own pools: scope_matcher, leaves the count of unlabelled series alone)."""
    s = settings
    by = f"{s.namespace_label}, {s.pool_label}"
    extra = matchers.strip().strip(",")
    sel = _selector(s, matchers, scope)
    w = s.rate_window

    def over(function: str, metric: str, window: str = w, extra_by: str = "") -> str:
        return f"sum by ({by}{extra_by}) {either(lambda p: f'{function}({p}{metric}{sel}[{window}])')}"

    def rate(metric: str, extra_by: str = "") -> str:
        return over("rate", metric, extra_by=extra_by)

    def mean(histogram: str) -> str:
        return f"{rate(histogram + '_sum')} / {rate(histogram + '_count')}"

    def gauge(metric: str) -> str:
        return f"sum by ({by}) {either(lambda p: f'{p}{metric}{sel}')}"

    def average(expression: Callable[[str], str]) -> str:
        return f"avg by ({by}) {either(expression)}"

    unlabelled = "{" + ", ".join(m for m in ('__name__=~"vllm[:_]num_requests_running"', f'{s.pool_label}=""', extra) if m) + "}"
    return {
        "completion_rate": rate("request_success_total"),
        "in_system_growth": f"{over('deriv', 'num_requests_waiting')} + {over('deriv', 'num_requests_running')}",
        "rejection_rate": rate("admission_rejections_total"),
        "first_token_rate": rate("time_to_first_token_seconds_count"),
        "waiting_growth": over("deriv", "num_requests_waiting"),
        "waiting": gauge("num_requests_waiting"),
        "running": gauge("num_requests_running"),
        "newest_sample": f"max by ({by}) {either(lambda p: f'timestamp({p}num_requests_running{sel})')}",
        "service_mean": mean("request_inference_time_seconds"),
        "service_buckets": rate("request_inference_time_seconds_bucket", ", le"),
        "service_samples": over("increase", "request_inference_time_seconds_count"),
        "e2e_mean": mean("e2e_request_latency_seconds"),
        "queue_mean": mean("request_queue_time_seconds"),
        "prefill_mean": mean("request_prefill_time_seconds"),
        "queue_buckets": rate("request_queue_time_seconds_bucket", ", le"),
        "ttft_buckets": rate("time_to_first_token_seconds_bucket", ", le"),
        **dispersion_queries(s, over),
        "minute_rate": minute_rate_query(s, over),
        # frozen gauges: waiting/running unchanged while nothing finishes and no token is generated
        "gauge_changes": f"{over('changes', 'num_requests_running')} + {over('changes', 'num_requests_waiting')}",
        "token_growth": over("increase", "generation_tokens_total"),
        # load-dependent capacity: KV pressure, and (running, per-token time) pairs for the curve
        "kv_usage": average(lambda p: f"{p}kv_cache_usage_perc{sel}"),
        "preemptions": over("increase", "num_preemptions_total"),
        "running_mean": average(lambda p: f"avg_over_time({p}num_requests_running{sel}[{w}])"),
        "token_time_mean": mean("inter_token_latency_seconds"),
        # KV capacity: cache_config_info carries CacheConfig as labels (num_gpu_blocks, block_size: strings);
        # over the mean tokens per request it says how many sequences a replica's cache holds
        "kv_config": f"max by ({by}, num_gpu_blocks, block_size) {either(lambda p: f'{p}cache_config_info{sel}')}",
        "tokens_per_request": f"({rate('request_prompt_tokens_sum')} + {rate('request_generation_tokens_sum')})"
                              f" / {rate('request_prompt_tokens_count')}",
        "tpot_mean": mean("time_per_output_token_seconds"),
        # what to say when a pool has no vLLM series: are its targets scraped at all?
        "targets_up": f"max by ({by}) (up{sel})",
        "unlabelled_series": f"count({unlabelled})",
    }


def dispersion_queries(settings: QuerySettings, over: Callable[..., str]) -> dict[str, str]:
    """Variance and mean of completion rates per window, at each dispersion window: one subquery each over
    max(rate window, DISPERSION_SAMPLES windows), stepping one burst window (so the longer windows overlap:
    4-20 times the samples of whole-window steps, for a steadier variance; the burst window's own steps
    are whole windows, as before).

    The burst window counts completions (as before). The longer ones count arrivals by conservation,
    completions + the change of waiting + running over the window: over a minute or more a queue that
    builds while the fleet is short and drains after a scale-up moves completions by bursts of the
    fleet's own making, which would read as bursty demand and feed back into the sizing."""
    named = {}
    step = settings.burst_seconds
    for k, window in enumerate(settings.dispersion_windows):
        span = max(parse_duration(settings.rate_window), DISPERSION_SAMPLES * window)
        w = f"{window:g}s"
        counted = over("rate", "request_success_total", w)
        if k:
            counted = (f"({counted} + {over('delta', 'num_requests_waiting', w)} / {window:g}"
                       f" + {over('delta', 'num_requests_running', w)} / {window:g})")
        series = f"{counted}[{span:g}s:{step:g}s]"
        var, mean = dispersion_names(k)
        named[var], named[mean] = f"stdvar_over_time({series})", f"avg_over_time({series})"
    return named


def minute_rate_query(settings: QuerySettings, over: Callable[..., str]) -> str:
    """Arrivals per second over the last minute (decide()'s hindsight floor sizes each past minute on it):
    completions + the change of waiting + running over the 60 s dispersion window (raised with a slow
    scrape), counted by conservation as dispersion_queries' longer windows are, so that a queue the fleet
    builds and drains does not move it."""
    window = settings.dispersion_windows[1]
    w = f"{window:g}s"
    return (f"{over('rate', 'request_success_total', w)} + {over('delta', 'num_requests_waiting', w)} / {window:g}"
            f" + {over('delta', 'num_requests_running', w)} / {window:g}")


# ---------------------------------------------------------------- pure parsing


def _finite(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# Signals that may be negative: deriv() of a draining queue. Every other one is a rate, a gauge, a count or a
# ratio of them, never below 0. No real pool's value exceeds MAX_VALUE (1e12 requests/s, requests or
# seconds); Prometheus answering 1e308 or -1 with a fresh timestamp is broken, and such a value read as
# demand would scale a pool down (issue 15). Timestamps and `up` are not load and are not checked here.
SIGNED = frozenset({"in_system_growth", "waiting_growth", "minute_rate"})  # minute_rate: a sampled delta
UNCHECKED = frozenset({"newest_sample", "targets_up", "unlabelled_series"})
MAX_VALUE = 1e12


def plausible(name: str, value: float) -> bool:
    """A finite value within what a real pool can show for this signal (NaN is unknown, not invalid)."""
    return math.isnan(value) or (math.isfinite(value) and abs(value) <= MAX_VALUE and (value >= 0 or name in SIGNED))


def invalid_signals(results: Mapping[str, list], settings: QuerySettings) -> dict[PoolKey, tuple[str, ...]]:
    """{pool: names of the signals with a value no real pool can have}, from the raw query results."""
    invalid: dict[PoolKey, set[str]] = {}
    for name, result in results.items():
        if name in UNCHECKED:
            continue
        for sample in result:
            try:
                value = float(sample["value"][1])
            except (TypeError, ValueError, KeyError, IndexError):
                continue
            if not plausible(name, value):
                invalid.setdefault(_key(sample["metric"], settings), set()).add(name)
    return {key: tuple(sorted(names)) for key, names in invalid.items()}


def _key(metric: Mapping, settings: QuerySettings) -> PoolKey:
    return (metric.get(settings.namespace_label, ""), metric.get(settings.pool_label, ""))


def parse_vector(result: Iterable[Mapping], settings: QuerySettings) -> dict[PoolKey, float]:
    """An instant-vector result as {pool: value}; NaN and infinite values are left out (= unknown)."""
    values = {}
    for sample in result:
        value = _finite(sample["value"][1])
        if value is not None:
            values[_key(sample["metric"], settings)] = value
    return values


def parse_buckets(result: Iterable[Mapping], settings: QuerySettings) -> dict[PoolKey, list[tuple[float, float]]]:
    """A `sum by (pool, le)` of bucket rates as {pool: [(le, cumulative rate), ...]} sorted by le."""
    buckets: dict[PoolKey, list[tuple[float, float]]] = {}
    for sample in result:
        le, value = _finite_le(sample["metric"].get("le")), _finite(sample["value"][1])
        if le is not None and value is not None:
            buckets.setdefault(_key(sample["metric"], settings), []).append((le, value))
    return {key: sorted(pairs) for key, pairs in buckets.items()}


def _finite_le(text) -> float | None:
    if text in ("+Inf", "Inf", "inf"):
        return math.inf
    return _finite(text)


@dataclass(frozen=True)
class PoolMetrics:
    """What Prometheus says about one pool. None: not known."""

    newest_sample_time: float | None
    arrival_rate: float | None = None
    completion_rate: float | None = None
    rejection_rate: float | None = None  # 503 refusals (vllm:admission_rejections_total), part of arrivals
    arrival_source: str = "vllm"  # or "query": spec.metrics.arrivalRateQuery
    arrival_cv: float = 1.0
    service_time: float | None = None
    service_samples: float | None = None  # completions behind service_time; decide() distrusts a handful
    service_cv: float = 1.0
    prefill_time: float | None = None
    waiting: float | None = None
    running: float | None = None
    queue_buckets: tuple[tuple[float, float], ...] = ()
    ttft_buckets: tuple[tuple[float, float], ...] = ()
    targets_up: float | None = None  # max of `up` over the pool's scrape targets; None: no target
    gauges_frozen: bool = False  # waiting/running read as stale: unchanged, nothing finished, no token
    service_cv_resolved: bool = True  # False: the histogram is too coarse for the service time; CV 1 assumed
    smallest_service_bucket: float | None = None  # seconds: vLLM's smallest latency bucket, 0.3 by default
    invalid_signals: tuple[str, ...] = ()  # signals whose values were impossible (dropped; the pool holds)
    kv_cache_usage: float | None = None  # mean vllm:kv_cache_usage_perc over the pool's series (0-1)
    preemptions: float | None = None  # increase of vllm:num_preemptions_total over the rate window
    running_mean: float | None = None  # running requests per series, averaged over the rate window
    token_time: float | None = None  # mean seconds per output token over the rate window
    token_time_points: tuple[tuple[float, float], ...] = ()  # (running_mean, token_time) so far (the reader's)
    arrival_dispersion: tuple[tuple[float, float | None], ...] = ()  # (window s, index of dispersion or None)
    kv_tokens: float | None = None  # the smallest engine's KV cache in tokens (cache_config_info blocks x block size)
    tokens_per_request: float | None = None  # mean prompt + generated tokens per request over the rate window
    minute_rate: float | None = None  # arrivals / s over the last minute, by conservation (minute_rate_query)


class Pools(dict):
    """{pool: PoolMetrics}, and how many vLLM series carry no pool label (to say why a pool has none)."""

    unlabelled_series: int = 0
    scrape_interval: float | None = None  # seconds, measured or --scrape-interval
    rate_window: str | None = None  # the windows used (raised to >= MIN_SCRAPES scrapes if needed)
    burst_window: str | None = None
    window_note: str | None = None  # set when the configured windows were too short
    scope: frozenset | None = None  # the pools asked for (a shard's, PrometheusReader's scope); None: all


@dataclass(frozen=True)
class Digest:
    """One query's raw result reduced to what pool_metrics reads: parsed values, implausible ones, KV size."""

    values: dict  # {pool: value}, or {pool: [(le, rate), ...]} for a `_buckets` query
    invalid: dict[PoolKey, tuple[str, ...]]
    kv_tokens: dict[PoolKey, float] | None = None


def digest(name: str, result: list, settings: QuerySettings) -> Digest:
    """Reduce one answer as it arrives, so that a batched read never holds every raw answer at once (at
    1,000 pools the 34 answers, lists of dicts, peaked at about 26 MiB; a digest is a few per cent of that)."""
    parse = parse_buckets if name.endswith("_buckets") else parse_vector
    return Digest(parse(result, settings), invalid_signals({name: result}, settings),
                  kv_capacity(result, settings) if name == "kv_config" else None)


def pool_metrics(results: Mapping[str, list], settings: QuerySettings) -> Pools:
    """Every pool's metrics from the raw results of `queries()` (keyed the same way)."""
    return pool_metrics_of({name: digest(name, result, settings) for name, result in results.items()}, settings)


def pool_metrics_of(digests: Mapping[str, Digest], settings: QuerySettings) -> Pools:
    """Every pool's metrics from the digests of `queries()`' results (keyed the same way).

    A pool whose targets Prometheus knows (`up`) but that has no vLLM sample is present with
    newest_sample_time None, so that its status can say the scrape works but the series are missing.
    """
    invalid: dict[PoolKey, tuple[str, ...]] = {}
    for d in digests.values():
        for key, names in d.invalid.items():
            invalid[key] = tuple(sorted({*invalid.get(key, ()), *names}))
    vec = {name: d.values for name, d in digests.items() if not name.endswith("_buckets")}  # consumed: the pops below
    hist = {name: d.values for name, d in digests.items() if name.endswith("_buckets")}
    for key, names in invalid.items():  # an impossible value is unknown, never zero demand
        for name in names:
            (hist if name.endswith("_buckets") else vec).get(name, {}).pop(key, None)

    def get(name: str, key: PoolKey) -> float | None:
        return vec.get(name, {}).get(key)

    kv_tokens = (digests["kv_config"].kv_tokens or {}) if "kv_config" in digests else {}
    pools = Pools()
    pools.unlabelled_series = int(sum(vec.get("unlabelled_series", {}).values()))
    for key, up in vec.get("targets_up", {}).items():
        if key not in vec.get("newest_sample", {}):
            pools[key] = PoolMetrics(newest_sample_time=None, targets_up=up)
    for key, newest in vec.get("newest_sample", {}).items():
        completions = get("completion_rate", key)
        waiting, running = get("waiting", key), get("running", key)
        frozen = gauges_frozen(waiting, running, get("gauge_changes", key), completions, get("token_growth", key))
        if frozen:  # stale gauges are not load: neither their level nor their (zero) growth
            waiting = running = None
        arrival = arrival_estimate(completions, None if frozen else get("in_system_growth", key),
                                   get("first_token_rate", key), None if frozen else get("waiting_growth", key),
                                   get("rejection_rate", key))
        service = get("service_mean", key)
        if service is None:
            e2e, queued = get("e2e_mean", key), get("queue_mean", key)
            if e2e is not None and queued is not None and e2e > queued:
                service = e2e - queued
        service_buckets = hist.get("service_buckets", {}).get(key, [])
        resolved = resolves(service_buckets, service)
        service_cv = histogram_cv(service_buckets, service) if resolved else None
        pools[key] = PoolMetrics(
            newest_sample_time=newest,
            arrival_rate=arrival,
            completion_rate=completions,
            rejection_rate=get("rejection_rate", key),
            arrival_cv=arrival_cv(get("burst_rate_var", key), get("burst_rate_mean", key), settings.burst_seconds),
            arrival_dispersion=tuple((window, dispersion(get(dispersion_names(k)[0], key), get(dispersion_names(k)[1], key),
                                                         window)) for k, window in enumerate(settings.dispersion_windows)),
            service_time=service,
            service_samples=get("service_samples", key) if get("service_mean", key) is not None else None,
            service_cv=1.0 if service_cv is None else min(service_cv, 10.0),
            prefill_time=get("prefill_mean", key),
            waiting=waiting,
            running=running,
            gauges_frozen=frozen,
            service_cv_resolved=resolved,
            smallest_service_bucket=service_buckets[0][0] if service_buckets and math.isfinite(service_buckets[0][0]) else None,
            queue_buckets=tuple(hist.get("queue_buckets", {}).get(key, [])),
            ttft_buckets=tuple(hist.get("ttft_buckets", {}).get(key, [])),
            targets_up=get("targets_up", key),
            kv_cache_usage=get("kv_usage", key),
            preemptions=get("preemptions", key),
            running_mean=None if frozen else get("running_mean", key),
            token_time=get("token_time_mean", key) if get("token_time_mean", key) is not None else get("tpot_mean", key),
            kv_tokens=kv_tokens.get(key),
            tokens_per_request=get("tokens_per_request", key),
            minute_rate=None if frozen or get("minute_rate", key) is None else max(get("minute_rate", key), 0.0),
        )
        if key in invalid:  # one impossible signal makes the whole reading suspect: no rate, so the pool holds
            pools[key] = replace(pools[key], arrival_rate=None, invalid_signals=invalid[key])
    return pools


def wait_tail(metrics: PoolMetrics | None, slo_metric: str, target: float, window_seconds: float | None
              ) -> tuple[float | None, float | None]:
    """(share of the rate window's requests over the SLO target, how many requests), from vLLM's queue-time
    histogram (vllm:request_queue_time_seconds, WAITING phase) or for a TTFT SLO time_to_first_token; what
    decide() checks its model against (policy.fit_correction). (None, None) without requests."""
    if metrics is None or not window_seconds:
        return None, None
    buckets = list(metrics.queue_buckets if slo_metric == "wait" else metrics.ttft_buckets)
    share = share_above(buckets, target)
    return (None, None) if share is None else (share, buckets[-1][1] * window_seconds)


def kv_capacity(result: Iterable[Mapping], settings: QuerySettings) -> dict[PoolKey, float]:
    """{pool: KV tokens of its smallest engine} from vllm:cache_config_info series, whose labels are the
    engine's CacheConfig attributes as strings (CacheConfig.metrics_info in vllm/config/cache.py, set once
    the cache is sized, PrometheusStatLogger.log_metrics_info in vllm/v1/metrics/loggers.py, vLLM 0.10.2
    and 0.33): tokens = num_gpu_blocks x block_size. Series with "None" or garbage there are skipped."""
    found: dict[PoolKey, float] = {}
    for sample in result:
        labels = sample["metric"]
        try:
            tokens = int(labels.get("num_gpu_blocks", "")) * int(labels.get("block_size", ""))
        except ValueError:
            continue
        if 0 < tokens <= MAX_VALUE:
            key = _key(labels, settings)
            found[key] = min(found.get(key, math.inf), float(tokens))
    return found


def resolves(buckets: list[tuple[float, float]], mean: float | None) -> bool:
    """Whether a histogram can tell the spread of values with this mean: not when the mean is below the
    smallest bucket or that bucket holds most of the samples. vLLM's latency buckets start at 0.3 s
    (vllm/v1/metrics/loggers.py, request_latency_buckets): for exponential times (CV 1) the midpoint
    estimate reads 0.26 at a 0.05 s mean and 0.66 at 0.1 s, so such a CV is not evidence of anything."""
    if not buckets or mean is None or buckets[-1][1] <= 0:
        return True  # nothing to judge: histogram_cv says unknown by itself
    first_bound, first_count = buckets[0]
    return mean >= first_bound and first_count <= buckets[-1][1] / 2


def resolution_note(metrics: PoolMetrics | None, slo_metric: str, slo_target: float) -> str | None:
    """What vLLM's histograms cannot resolve for this pool, in words for its status; None: all fine."""
    if metrics is None or metrics.newest_sample_time is None:
        return None
    notes = []
    slo_buckets = metrics.queue_buckets if slo_metric == "wait" else metrics.ttft_buckets
    smallest = slo_buckets[0][0] if slo_buckets and math.isfinite(slo_buckets[0][0]) else None
    if smallest is not None and slo_target < smallest:
        which = "queue-time" if slo_metric == "wait" else "time-to-first-token"
        notes.append(f"slo.targetSeconds {slo_target:g}s is below vLLM's smallest {which} bucket ({smallest:g}s): "
                     "the observed percentile cannot resolve it (the predicted one is computed, not read)")
    if not metrics.service_cv_resolved:
        notes.append(f"the mean service time {metrics.service_time:.3g}s is too short for vLLM's latency buckets "
                     f"(smallest {metrics.smallest_service_bucket:g}s): its CV cannot be read, 1.0 is assumed")
    if not notes:
        return None
    return "; ".join(notes) + (". The operator sets latency buckets from 0.01s on images tagged vLLM >= 0.32; for "
                               "another image set --custom-histogram-buckets in engine.extraArgs (vLLM >= 0.32); "
                               "older versions cannot")


def gauges_frozen(
    waiting: float | None, running: float | None, changes: float | None, completions: float | None, tokens: float | None
) -> bool:
    """Waiting/running hold requests but have not moved over the window while nothing finished and no
    token was generated: vLLM sets them at engine steps, and after every request is aborted they keep
    their last values until the next step (vLLM issues #22545, #29928) while the scrapes stay fresh."""
    inside = (waiting or 0.0) + (running or 0.0)
    return inside > 0 and changes == 0 and completions == 0 and not tokens


def arrival_estimate(
    completions: float | None,
    in_system_growth: float | None,
    first_tokens: float | None = None,
    waiting_growth: float | None = None,
    rejections: float | None = None,
) -> float | None:
    """Arrivals per second from what vLLM counts; None without a completion rate.

    Every arrival is refused (503), queued, running or gone; gone = finished (counted) or cancelled by
    the client (not counted). So completions + rejections + d(waiting + running)/dt misses every
    cancellation, and first tokens + rejections + d(waiting)/dt misses only the requests cancelled
    before their first token. Both are lower bounds: take the larger, never below 0 (a draining queue
    makes the growth negative; noise can push the sum under 0).
    """
    if completions is None:
        return None
    refused = rejections or 0.0
    estimate = completions + refused + (in_system_growth or 0.0)
    if first_tokens is not None:
        estimate = max(estimate, first_tokens + refused + (waiting_growth or 0.0))
    return max(estimate, 0.0)


def missing_series_message(
    metrics: PoolMetrics | None, unlabelled_series: int, settings: QuerySettings, namespace: str, name: str
) -> str:
    """Why a pool has no vLLM series under either spelling, and what to check."""
    who = f'{settings.pool_label}="{name}"'
    names = "vllm:num_requests_running nor vllm_num_requests_running"
    if metrics is not None and metrics.targets_up is not None:
        if metrics.targets_up >= 1:
            return (f"Prometheus scrapes targets labelled {who} (up=1) but finds neither {names}: check the scrape's "
                    "port and path (vLLM serves /metrics on spec.engine.port) and that engine.extraArgs has no "
                    "--disable-log-stats")
        return (f"the targets labelled {who} fail to scrape (up=0): check that the pods run and that the scrape "
                "uses vLLM's port and /metrics")
    message = (f"no series {names} with {who} (namespace {namespace!r}) and no scrape target with that label: check "
               "that Prometheus scrapes the pods and copies the pod label autoscaling.inferencepool.dev/pool "
               f"to the label {settings.pool_label!r} (--pool-label; see examples/prometheus-scrape.yaml)")
    if unlabelled_series:
        message += f"; {unlabelled_series} vLLM series in Prometheus carry no {settings.pool_label!r} label"
    return message


def scalar_result(result: list) -> tuple[float | None, str | None]:
    """The one value of an instant-query result, or None and why not (in words for the pool's status)."""
    if not result:
        return None, "returned no series"
    if len(result) > 1:
        return None, f"returned {len(result)} series, not one: aggregate it, e.g. sum(...)"
    value = _finite(result[0]["value"][1])
    ok = value is not None and 0 <= value <= MAX_VALUE
    return (value, None) if ok else (None, f"returned {result[0]['value'][1]}, not a rate in [0, {MAX_VALUE:g}]")


def find(pools: Mapping[PoolKey, PoolMetrics], namespace: str, name: str) -> PoolMetrics | None:
    """A pool's metrics; series without a namespace label match a pool of that name in any namespace."""
    return pools.get((namespace, name)) or pools.get(("", name))


def observations(
    metrics: PoolMetrics | None,
    now: float,
    current_replicas: int,
    ready_replicas: int = 0,
    unschedulable_replicas: int = 0,
    cold_start_seconds: float | None = None,
) -> Observations:
    """Observations for policy.decide(); without fresh samples every rate is None, so decide() holds."""
    base = Observations(
        time=now,
        current_replicas=current_replicas,
        ready_replicas=ready_replicas,
        unschedulable_replicas=unschedulable_replicas,
        cold_start_seconds=cold_start_seconds,
    )
    if metrics is None or metrics.newest_sample_time is None:
        return base
    m = metrics
    obs = replace(
        base,
        arrival_rate=m.arrival_rate,
        service_time=m.service_time,
        service_samples=m.service_samples,
        arrival_cv=m.arrival_cv,
        arrival_dispersion=m.arrival_dispersion,
        service_cv=m.service_cv,
        prefill_time=m.prefill_time,
        waiting=m.waiting,
        running=m.running,
        metrics_age_seconds=max(now - m.newest_sample_time, 0.0),
        kv_cache_usage=m.kv_cache_usage,
        preemptions=m.preemptions,
        kv_sequences=m.kv_tokens / m.tokens_per_request if m.kv_tokens and m.tokens_per_request else None,
        minute_rate=m.minute_rate,
    )
    if m.token_time_points:  # any usable pair (the reader keeps only those): the service is load-dependent
        obs = replace(obs, token_time_curve=TokenTimeCurve.fit(m.token_time_points),
                      service_concurrency=m.running_mean if m.running_mean else None)
    return obs


# ---------------------------------------------------------------- pods (plain dicts, as the API returns them)


def _timestamp(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _condition(pod: Mapping, kind: str) -> Mapping | None:
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind:
            return condition
    return None


def cold_start_seconds(pods: Iterable[Mapping], recent: int = 5) -> float | None:
    """The longest creation -> Ready time among the `recent` newest Ready pods: the horizon to plan over."""
    starts = []
    for pod in pods:
        ready = _condition(pod, "Ready")
        created = _timestamp((pod.get("metadata") or {}).get("creationTimestamp"))
        if ready and ready.get("status") == "True" and created is not None:
            became_ready = _timestamp(ready.get("lastTransitionTime"))
            if became_ready is not None:
                starts.append((created, became_ready - created))
    newest = sorted(starts, reverse=True)[:recent]
    return max((seconds for _, seconds in newest), default=None)


class ColdStarts:
    """Creation -> Ready times of the pods this operator saw cold-starting, per pool (issue 15).

    A pod's Ready condition is re-set whenever its node flaps (a node NotReady after an apiserver outage),
    and a later lastTransitionTime read as a cold start made one jump from 6 s to 4,612 s. So only a pod
    first seen not Ready is measured, once, at the first tick that sees it Ready; a pod first seen Ready
    (a restarted operator) is not measured (status.coldStartSeconds carries the last figure over).
    Memory: the pods of the last listing only.
    """

    def __init__(self):
        self._pods: dict[PoolKey, dict[str, float | str]] = {}  # uid -> seconds, "cold" or "warm"

    def measure(self, key: PoolKey, pods: Iterable[Mapping], recent: int = 5) -> float | None:
        """The longest measured cold start among the `recent` newest measured pods, None if none."""
        seen, now_seen, starts = self._pods.get(key, {}), {}, []
        for pod in pods:
            meta = pod.get("metadata") or {}
            uid = meta.get("uid") or meta.get("name")
            before = seen.get(uid)
            if before is None:  # first sighting: only a pod not Ready yet is cold-starting under our eyes
                now_seen[uid] = "warm" if _is_ready(pod) else "cold"
            elif before == "cold" and _is_ready(pod):
                measured = cold_start_seconds([pod])
                now_seen[uid] = "warm" if measured is None else measured
            else:  # still cold, or measured / warm for good: later Ready flaps change nothing
                now_seen[uid] = before
            if isinstance(now_seen[uid], float):
                starts.append((_timestamp(meta.get("creationTimestamp")) or 0.0, now_seen[uid]))
        self._pods[key] = now_seen
        newest = sorted(starts, reverse=True)[:recent]
        return max((seconds for _, seconds in newest), default=None)

    def forget(self, key: PoolKey) -> None:
        self._pods.pop(key, None)


def _is_ready(pod: Mapping) -> bool:
    ready = _condition(pod, "Ready")
    return bool(ready and ready.get("status") == "True")


def unschedulable_pods(pods: Iterable[Mapping]) -> list[tuple[str, str]]:
    """(pod name, scheduler message) for pods Pending because no node fits (typically: no free GPU)."""
    stuck = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending" or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            stuck.append((pod["metadata"]["name"], scheduled.get("message", "")))
    return stuck


# ---------------------------------------------------------------- the HTTP shell


class PrometheusUnavailable(RuntimeError):
    """Prometheus could not be asked or answered with an error; the pools hold."""


def _connect(url: str):
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    client = PrometheusConnect(url=url, retry=Retry(total=1, backoff_factor=0.2), timeout=10)
    client._session.hooks["response"].append(_bounded)  # the client's own requests.Session
    return client


MAX_ANSWER_BYTES = 50 * 2**20  # a 300-pool answer is ~1 MB; a 100 MB one is broken, and would sit in memory


def _bounded(response, **_):
    """Read the body at most MAX_ANSWER_BYTES (decompressed) far, refusing a larger one (issue 15).

    A requests response hook runs before the body is read (requests.Session.send), so the cap holds
    whatever Content-Length says, or without one."""
    body = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
    if len(body) > MAX_ANSWER_BYTES:
        response.close()
        raise ValueError(f"the answer is over {MAX_ANSWER_BYTES // 2**20} MB (a broken or hostile Prometheus)")
    response._content, response._content_consumed = body, True
    return response


MAX_WAIT_SECONDS = 2.0  # how long a pool waits for another pool's read of the same Prometheus
READ_BUDGET_SECONDS = 30.0  # one batched read gives up past this (a Prometheus answering each query slowly)


class PrometheusReader:
    """Reads all pools' signals once per `ttl` seconds per (Prometheus URL, matchers) and shares the answer.

    Every pool's timer asks; the first one after the answer expires starts one refresh (in its own
    thread), and everyone, that one too, goes on with the last answer meanwhile: a slow or hung Prometheus
    never holds a decision, and one Prometheus never delays the pools of another (no lock is held while a
    fetch runs). An answer's age counts from the end of its fetch (`age`), and the metrics' own sample
    times age with it, so a stale one reads as stale. Only a caller with no answer at all waits, at most
    `first_wait` seconds after the refresh started. `wait` is how long the caller that starts a refresh
    waits for it (None: until it is done, as a single-threaded caller wants). A failure is cached too, so
    a down Prometheus is asked once per ttl, not once per pool.
    """

    def __init__(
        self,
        default_url: str,
        settings: QuerySettings = QuerySettings(),
        ttl: float = 7.5,
        connect: Callable[[str], object] = _connect,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[str, Exception], None] | None = None,
        wait: float | None = None,
        first_wait: float | None = None,
        scope: Callable[[], Iterable[PoolKey]] | None = None,
    ):
        self.default_url = default_url
        self.settings = settings
        self.ttl = ttl
        self._connect = connect
        self._clock = clock
        self._on_error = on_error
        self.wait, self.first_wait = wait, first_wait
        self.scope = scope  # the pools this operator decides now (a shard's); None: every pool in Prometheus
        self._lock = threading.Lock()
        self._refreshing: dict[tuple, tuple[float, threading.Event]] = {}  # key -> (started, done)
        self._cache: dict[tuple, tuple[float, object]] = {}  # key -> (end of its fetch, answer or error)
        self._clients: dict[str, object] = {}
        self._curves: dict[tuple, tuple[float, deque]] = {}  # (url, matchers, pool) -> (last added, pairs)

    def read(self, url: str | None = None, matchers: str = "", pool: PoolKey | None = None) -> Pools:
        """All pools' metrics from that Prometheus (with a scope, the scope's); raises PrometheusUnavailable.
        With `pool`, an answer read before the pool joined the scope starts a refresh (and serves meanwhile,
        without the pool: a pool that just joined is new, or has just been relabelled into this shard)."""
        key = (url or self.default_url, matchers.strip())

        def covers(answer) -> bool:
            return pool is None or getattr(answer, "scope", None) is None or pool in answer.scope

        return self._cached(("pools", *key), lambda: self._fetch(*key), covers=covers)

    def value(self, url: str | None, promql: str) -> tuple[float | None, str | None]:
        """One pool's own query (spec.metrics.arrivalRateQuery): (value, None) or (None, why there is none)."""
        url = url or self.default_url

        def fetch():
            try:
                return scalar_result(self._client(url).custom_query(promql))
            except Exception as error:  # noqa: BLE001 - any failure means "no metrics", never a crash
                if self._on_error:
                    self._on_error("arrival_rate_query", error)
                return PrometheusUnavailable(f"Prometheus at {url} failed on spec.metrics.arrivalRateQuery: {error}")

        return self._cached(("value", url, promql), fetch)

    def results_at(self, url: str | None, named: Mapping[str, str], at: float) -> dict[str, list]:
        """Raw results of named queries evaluated at one time (unix s), shared by every pool that asks the
        same ones (the SLO attainment queries); raises PrometheusUnavailable. A past time's answer does not
        change, so it is kept until a later time is asked (a failure only for the ttl)."""
        url = url or self.default_url

        def fetch():
            try:
                return {name: self._client(url).custom_query(promql, params={"time": f"{at:.3f}"})
                        for name, promql in named.items()}
            except Exception as error:  # noqa: BLE001 - any failure means "not measured", never a crash
                if self._on_error:
                    self._on_error("slo", error)
                return PrometheusUnavailable(f"Prometheus at {url} failed on the SLO attainment query: {error}")

        with self._lock:  # earlier windows are never asked again: keep the cache from growing
            for old in [k for k in self._cache if k[0] == "at" and k[2] < at]:
                self._cache.pop(old, None)
        return self._cached(("at", url, at, *sorted(named.items())), fetch, keep_answers=True)

    def age(self, url: str | None = None, matchers: str = "") -> float | None:
        """Seconds since the newest answer of read(url, matchers) came back (None: none yet)."""
        cached = self._cache.get(("pools", url or self.default_url, matchers.strip()))
        return None if cached is None else self._clock() - cached[0]

    def _cached(self, key: tuple, fetch: Callable[[], object], keep_answers: bool = False,
                covers: Callable[[object], bool] = lambda answer: True):
        with self._lock:
            cached = self._cache.get(key)
            expired = cached is None or not covers(cached[1]) or (  # read before the pool was in the scope
                self._clock() - cached[0] >= self.ttl and not (keep_answers and not isinstance(cached[1], Exception)))
            started, done = self._refreshing.get(key, (None, None))
            starter = expired and done is None
            if starter:
                started, done = self._refreshing[key] = (self._clock(), threading.Event())
        if starter:
            threading.Thread(target=self._refresh, args=(key, fetch, done), name="prometheus-refresh", daemon=True).start()
        if cached is None:  # nothing to go on: wait for the first answer, a bounded time after it was asked
            limit = self.first_wait if self.first_wait is not None else self.wait
            done.wait(None if limit is None else max(limit - (self._clock() - started), 0.0))
        elif starter:
            done.wait(self.wait)
        if expired:
            cached = self._cache.get(key, cached)
        if cached is None:
            raise PrometheusUnavailable(f"Prometheus has not answered yet ({self._clock() - started:.1f}s since asked: {key[0]} "
                                        f"from {key[1]})")
        if isinstance(cached[1], Exception):
            raise cached[1]
        return cached[1]

    def _refresh(self, key: tuple, fetch: Callable[[], object], done: threading.Event) -> None:
        """One fetch; its answer (or failure) is stamped when it comes back, not when it was asked."""
        try:
            answer = fetch()
        except Exception as error:  # noqa: BLE001 - a bug in parsing must not wedge the refresh forever
            answer = PrometheusUnavailable(f"reading Prometheus failed: {error!r}")
        with self._lock:
            self._cache[key] = (self._clock(), answer)
            del self._refreshing[key]
        done.set()

    def _client(self, url: str):
        return self._clients.get(url) or self._clients.setdefault(url, self._connect(url))

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted pool's (running, token time) history, so the reader's memory stays bounded."""
        with self._lock:
            for key in [k for k in self._curves if k[2] in ((namespace, name), ("", name))]:
                del self._curves[key]

    def _with_curve_points(self, url: str, matchers: str, pools: Pools) -> Pools:
        """Add each pool's new (running, token time) pair to its bounded history and attach the history."""
        now = self._clock()
        for key, m in pools.items():
            last, points = self._curves.get((url, matchers, key), (-math.inf, deque(maxlen=CURVE_POINTS)))
            usable = m.running_mean is not None and m.running_mean > 0 and m.token_time is not None and m.token_time > 0
            if usable and now - last >= CURVE_SPACING_SECONDS:
                points.append((m.running_mean, m.token_time))
                last = now
            self._curves[(url, matchers, key)] = (last, points)
            if points:
                pools[key] = replace(m, token_time_points=tuple(points))
        return pools

    def _fetch(self, url: str, matchers: str) -> Pools | Exception:
        started = self._clock()

        def ask(name: str, promql: str):
            if self._clock() - started > READ_BUDGET_SECONDS:
                raise PrometheusUnavailable(f"Prometheus at {url} answered too slowly: the read took over "
                                            f"{READ_BUDGET_SECONDS:g}s before {name}")
            try:
                return self._client(url).custom_query(promql)
            except Exception as error:  # noqa: BLE001 - any failure means "no metrics", never a crash
                if self._on_error:
                    self._on_error(name, error)
                raise PrometheusUnavailable(f"Prometheus at {url} failed on {name}: {error}") from error

        scope = frozenset(self.scope()) if self.scope is not None else None
        if scope is not None and not scope:
            answer = Pools()
            answer.scope = scope
            return answer
        only = scope_matcher(self.settings, scope) if scope else ""
        try:
            spacing = min(parse_vector(ask("scrape_spacing", spacing_query(self.settings, matchers, scope=only)),
                                       self.settings).values(), default=None)
            settings, interval, note = windows_for(self.settings, spacing)
            digests = {name: digest(name, ask(name, promql), settings)
                       for name, promql in queries(settings, matchers, only).items()}
        except PrometheusUnavailable as error:
            return error
        pools = self._with_curve_points(url, matchers, pool_metrics_of(digests, settings))
        pools.scope = scope
        pools.scrape_interval, pools.window_note = interval, note
        pools.rate_window, pools.burst_window = settings.rate_window, settings.burst_window
        return pools
