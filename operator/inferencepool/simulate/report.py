"""Turn runs into the numbers people compare (GPU-hours, cost, SLO attainment, waits) and one figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from inferencepool.core.policy import PoolSpec
from inferencepool.simulate.fleet import Run
from inferencepool.core.units import format_duration

MINUTE = 60.0


def slo_values(run: Run, spec: PoolSpec) -> np.ndarray:
    """Per request, the quantity the SLO is on: the queue wait, or wait + prefill for TTFT."""
    return run.waits + run.prefill if spec.slo_metric == "ttft" else run.waits


def per_minute(run: Run, spec: PoolSpec) -> tuple[np.ndarray, np.ndarray]:
    """(minute start, the SLO statistic of the requests arriving in it); NaN for minutes without requests."""
    values = slo_values(run, spec)
    minute = (run.arrivals // MINUTE).astype(int)
    minutes = int(minute.max()) + 1 if len(minute) else 0
    counts = np.bincount(minute, minlength=minutes)
    stat = np.full(minutes, np.nan)
    busy = counts > 0
    if spec.slo_percentile is None:
        with np.errstate(invalid="ignore"):
            stat[busy] = np.bincount(minute, values, minutes)[busy] / counts[busy]
    else:
        ordered = values[np.lexsort((values, minute))]
        first = np.cumsum(counts) - counts
        rank = np.ceil(spec.slo_percentile * counts).astype(int) - 1  # nearest-rank percentile
        stat[busy] = ordered[(first + rank)[busy]]
    return np.arange(minutes) * MINUTE, stat


def replicas_at(run: Run, times: np.ndarray) -> np.ndarray:
    """Billed replicas at each time (the Deployment's plus draining ones)."""
    return run.billed[np.searchsorted(run.change_times, times, side="right") - 1]


def summarise(run: Run, spec: PoolSpec) -> dict:
    """The row of the report for one run, over its scored span (from run.score_from on)."""
    scored = run.arrivals >= run.score_from
    values = slo_values(run, spec)[scored]
    minute_start, minute_stat = per_minute(run, spec)
    busy = ~np.isnan(minute_stat) & (minute_start >= run.score_from)
    gpu_hours = run.gpu_hours
    waits = run.waits[scored]
    span = run.end - run.score_from
    quantile = lambda q: float(np.quantile(waits, q, method="inverted_cdf")) if len(waits) else 0.0
    return {
        "policy": run.policy,
        "gpu_hours": gpu_hours,
        "cost": gpu_hours * spec.gpu_hour_price,
        "requests_meeting_slo": float(np.mean(values <= spec.slo_target_seconds)) if len(values) else 1.0,
        "minutes_meeting_slo": float(np.mean(minute_stat[busy] <= spec.slo_target_seconds)) if busy.any() else 1.0,
        "p50_wait_seconds": quantile(0.5),
        "p99_wait_seconds": quantile(0.99),
        "max_wait_seconds": float(waits.max()) if len(waits) else 0.0,
        "scale_events": run.scale_events,
        "mean_replicas": gpu_hours * 3600 / run.gpus_per_replica / span if span > 0 else float(run.ordered[0]),
        "peak_replicas": int(run.billed.max()),
        "wall_seconds": run.wall_seconds,
    }


def _wait(seconds: float) -> str:
    return format_duration(seconds) if math.isfinite(seconds) else "never"


def table(rows: list[dict], price: float) -> str:
    """A fixed-width table, one row per policy."""
    head = ["policy", "GPU-h", f"cost @${price:g}/GPU-h", "req in SLO", "min in SLO", "p50 wait", "p99 wait",
            "scale events", "mean/peak replicas"]
    body = [
        [r["policy"], f"{r['gpu_hours']:.2f}", f"${r['cost']:,.2f}", f"{r['requests_meeting_slo']:.2%}",
         f"{r['minutes_meeting_slo']:.1%}", _wait(r["p50_wait_seconds"]), _wait(r["p99_wait_seconds"]),
         str(r["scale_events"]), f"{r['mean_replicas']:.1f} / {r['peak_replicas']}"]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    line = lambda row: "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _time_axis(span: float) -> tuple[float, str]:
    if span <= 3 * 3600:
        return 60.0, "minutes"
    if span <= 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def mean_replicas(run: Run, edges: np.ndarray) -> np.ndarray:
    """Billed replicas averaged over each bin between `edges` (the integral of the step function)."""
    times = np.append(run.change_times, run.end)
    area = np.concatenate([[0.0], np.cumsum(run.billed * np.maximum(np.diff(times), 0.0))])
    return np.diff(np.interp(edges, times, area)) / np.diff(edges)


def plot(runs: list[Run], spec: PoolSpec, title: str, path: Path, need: np.ndarray | None = None,
         need_bucket: float = MINUTE) -> Path:
    """Demand, billed replicas per policy and SLO attainment over time, in one PNG.

    Up to three hours everything is per minute and the bottom panel is each minute's wait statistic; longer
    traces are averaged into ~300 bins and the bottom panel is the share of minutes meeting the SLO per bin.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = runs[0].end
    unit, unit_name = _time_axis(end)
    per_minute_view = end <= 3 * 3600
    width = MINUTE if per_minute_view else MINUTE * max(1, round(end / 300 / MINUTE))
    edges = np.arange(0, end + width, width)
    x = edges[:-1] / unit
    fig, (ax_rate, ax_rep, ax_slo) = plt.subplots(3, 1, figsize=(11, 9), sharex=True,
                                                  gridspec_kw={"height_ratios": [1, 1.4, 1.2]})
    counts, _ = np.histogram(runs[0].arrivals, edges)
    ax_rate.step(x, counts / width, where="post", color="black", lw=1)
    ax_rate.set_ylabel(f"arrivals / s\n(per {format_duration(width)})")
    ax_rate.set_title(title, fontsize=9)

    colors = plt.get_cmap("tab10")
    if need is not None:
        needed = np.repeat(need, int(need_bucket // MINUTE))[: len(edges) - 1] if per_minute_view else None
        if needed is not None:
            ax_rep.fill_between(np.arange(len(needed)) * MINUTE / unit, needed, step="post", color="0.85",
                                label="oracle's need (each minute replayed)")
    tops = []
    for k, run in enumerate(runs):
        replicas = mean_replicas(run, edges)
        tops.append(replicas.max())
        ax_rep.step(x, replicas, where="post", lw=1.2, color=colors(k), label=run.policy)
        t, stat = per_minute(run, spec)
        if per_minute_view:
            ax_slo.plot(t / unit, np.maximum(stat, 1e-2), lw=1, color=colors(k), label=run.policy)
        else:
            bins = (t // width).astype(int)
            busy = ~np.isnan(stat)
            met = np.bincount(bins[busy], stat[busy] <= spec.slo_target_seconds, len(x))
            seen = np.bincount(bins[busy], minlength=len(x))[: len(x)]
            with np.errstate(invalid="ignore", divide="ignore"):
                ax_slo.step(x, 100 * met[: len(x)] / seen, where="post", lw=1, color=colors(k), label=run.policy)
    sane = sorted(tops)[len(tops) // 2] * 2.5  # a runaway policy must not flatten the others
    if max(tops) > sane:
        ax_rep.set_ylim(0, sane)
        ax_rep.set_ylabel("replicas (billed)\n(clipped)")
    else:
        ax_rep.set_ylabel("replicas (billed)")
    ax_rep.legend(fontsize=8, ncol=2, loc="upper right")
    statistic = "mean" if spec.slo_percentile is None else f"p{spec.slo_percentile * 100:g}"
    if per_minute_view:
        ax_slo.axhline(spec.slo_target_seconds, color="red", ls="--", lw=1)
        ax_slo.set_yscale("log")
        ax_slo.set_ylim(bottom=1e-2)
        ax_slo.set_ylabel(f"{statistic} {spec.slo_metric} per minute (s)\n(dashed: SLO target)")
    else:
        ax_slo.set_ylim(0, 102)
        ax_slo.set_ylabel(f"% of minutes with\n{statistic} {spec.slo_metric} <= {format_duration(spec.slo_target_seconds)}")
    ax_slo.set_xlabel(f"trace time ({unit_name})")
    for ax in (ax_rate, ax_rep, ax_slo):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
