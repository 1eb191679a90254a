"""The frontier: each policy family swept over its own knob and the warm floor, GPU-hours vs SLO attainment.

A point is one family at one setting (knob, floor), run on every seed. It reaches an attainment level if
its WORST seed does; its cost is the mean GPU-hours over the seeds, and the spread is the min-max over
them. A family's frontier at a level is its cheapest point reaching it, as a multiple of the oracle's
mean GPU-hours. Attainment is the share of one-minute windows (with traffic) whose SLO statistic meets
the target, and separately the share of requests. Runs go to a process pool (fork: the traces are shared,
not pickled).
"""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from inferencepool.simulate import compare, report

LEVELS = (0.90, 0.95, 0.99, 0.999)
ORDER = ("ours", "reactive", "static", "hpa", "keda", "kpa", "wva", "dynamo")
LABELS = {
    "ours": "ours (decide(), scale-ahead)", "reactive": "ours without forecast", "static": "constant (hindsight)",
    "hpa": "Kubernetes HPA", "keda": "KEDA queue (production-stack)", "kpa": "Knative KPA",
    "wva": "llm-d WVA", "dynamo": "Dynamo planner", "oracle": "oracle",
}


@dataclass(frozen=True)
class Grid:
    """Knob values per family, and floors as quantiles of the oracle's per-minute need (0 means a floor of 1).

    Ours: (forecast quantile, SLO margin, scale-down window s, objective[, backlog drain s[, burst memory s[,
    hindsight floor quantile[, its horizon s[, the headroom scales that floor]]]]]) tuples; the
    margin scales the wait target decide() sizes for (the SLO scored stays the scenario's), the objective
    turns on error-budget feedback (PoolSpec.slo_objective), the drain time transient sizing
    (PoolSpec.backlog_drain_seconds), the burst memory sizing for the trailing peak arrival CV
    (PoolSpec.burst_memory_seconds), the hindsight floor (PoolSpec.hindsight_quantile, hindsight_seconds,
    hindsight_feedback);
    None: off.
    """

    ours: tuple = ((0.8, 1.0, 300.0, None), (0.9, 1.0, 300.0, None), (0.99, 1.0, 300.0, None), (0.9, 0.5, 300.0, None),
                   (0.9, 1.0, 120.0, None), (0.9, 1.0, 1800.0, None), (0.9, 1.0, 300.0, 0.95),
                   (0.9, 1.0, 300.0, 0.99), (0.9, 1.0, 1800.0, 0.99), (0.9, 1.0, 1800.0, 0.995),
                   (0.9, 1.0, 300.0, None, 10.0), (0.9, 1.0, 300.0, None, 5.0), (0.9, 1.0, 1800.0, 0.995, 10.0),
                   (0.9, 1.0, 300.0, None, None, 1800.0), (0.9, 1.0, 300.0, 0.99, 10.0, 1800.0),
                   (0.9, 1.0, 120.0, None, None, None, 0.9), (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97),
                   (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97, None, True))
    reactive: tuple = (1.0, 0.5, 0.25)
    hpa: tuple = (0.4, 0.6, 0.8, 0.9)
    keda: tuple = (1.0, 2.0, 5.0, 10.0)
    kpa: tuple = (0.3, 0.5, 0.7, 1.0)
    wva: tuple = (0.5, 0.7, 0.8, 0.9)
    dynamo: tuple = (0.4, 0.6, 0.8, 0.9)
    floor_quantiles: tuple = (0.0, 0.5, 0.9, 0.97)  # of the oracle's per-minute need
    static_steps: int = 14  # constant fleets from the need's median to 1.3x its peak


QUICK = Grid(ours=((0.9, 1.0, 300.0, None),), reactive=(1.0,), hpa=(0.8,), keda=(5.0,), kpa=(0.7,), wva=(0.8,), dynamo=(0.8,),
             floor_quantiles=(0.0,), static_steps=3)
COARSE = Grid(ours=((0.9, 1.0, 300.0, None), (0.9, 1.0, 1800.0, None), (0.9, 1.0, 300.0, 0.95),
                    (0.9, 1.0, 300.0, 0.99), (0.9, 1.0, 1800.0, 0.99), (0.9, 1.0, 1800.0, 0.995),
                   (0.9, 1.0, 300.0, None, 10.0), (0.9, 1.0, 300.0, None, 5.0), (0.9, 1.0, 1800.0, 0.995, 10.0),
                   (0.9, 1.0, 300.0, None, None, 1800.0), (0.9, 1.0, 300.0, 0.99, None, 900.0),
                   (0.9, 1.0, 300.0, 0.99, 10.0, 1800.0), (0.9, 1.0, 300.0, 0.995, 10.0, 1800.0),
                   (0.9, 1.0, 300.0, None, 10.0, None, 0.97), (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97),
                   (0.9, 1.0, 300.0, 0.99, 10.0, 1800.0, 0.97), (0.9, 1.0, 300.0, 0.985, 10.0, None, 0.99),
                   (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97, 1800.0), (0.9, 1.0, 300.0, 0.993, 10.0, None, 0.97),
                   (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97, None, True), (0.9, 1.0, 300.0, 0.993, 10.0, None, 0.97, None, True),
                   (0.9, 1.0, 300.0, 0.99, 10.0, None, 0.97, 1800.0, True),
                   (0.9, 1.0, 300.0, 0.993, 10.0, None, 0.97, 1800.0, True)), reactive=(1.0, 0.5), hpa=(0.5, 0.7, 0.9),
              keda=(1.0, 3.0, 10.0), kpa=(0.3, 0.5, 1.0), wva=(0.6, 0.8, 0.9), dynamo=(0.5, 0.7, 0.9),
              floor_quantiles=(0.0, 0.5, 0.9), static_steps=10)


def floors(need: np.ndarray, grid: Grid) -> list[int]:
    busy = need[need > 0]
    if not len(busy):
        return [1]
    return sorted({max(1, int(round(np.quantile(busy, q)))) if q > 0 else 1 for q in grid.floor_quantiles})


def points(scenario: compare.Scenario, grid: Grid, families=ORDER) -> list[tuple[str, object, int]]:
    """Every (family, knob, floor) to run, for the named families (and the oracle)."""
    need = compare.oracle_need(scenario)
    out = []
    for floor in floors(need, grid):
        for family in families:
            if family == "static":
                continue
            for knob in getattr(grid, family):
                out.append((family, knob, floor))
    busy = need[need > 0]
    low, high = int(np.quantile(busy, 0.5)) if len(busy) else 1, int(math.ceil(1.3 * need.max())) if len(need) else 1
    for count in sorted({int(round(x)) for x in np.linspace(max(low, 1), max(high, 1), grid.static_steps)}):
        if "static" in families:
            out.append(("static", count, count))
    out.append(("oracle", None, 1))
    return out


def build(scenario: compare.Scenario, family: str, knob, floor: int):
    """The policy of one sweep point, and the scenario it runs on (the floor set in the spec)."""
    scenario = replace(scenario, spec=replace(scenario.spec, min_replicas=floor if family != "static" else 1))
    service, prefill = scenario.service, scenario.prefill
    if family in ("ours", "reactive"):
        q, margin, window, objective, drain, memory, hq, hs, hf = ((tuple(knob) + (None,) * 5)[:9] if family == "ours"
                                                                   else (None, knob, None, None, None, None, None, None, None))
        spec = replace(scenario.spec, slo_target_seconds=scenario.spec.slo_target_seconds * margin,
                       prediction=q is not None, forecast_quantile=q if q is not None else scenario.spec.forecast_quantile,
                       scale_down_window_seconds=window or scenario.spec.scale_down_window_seconds,
                       slo_objective=objective, backlog_drain_seconds=drain, burst_memory_seconds=memory,
                       hindsight_quantile=hq, hindsight_seconds=hs or scenario.spec.hindsight_seconds,
                       hindsight_feedback=bool(hf))
        name = f"ours {_knob('ours', knob)}" if q is not None else f"reactive m{margin:g}"
        from inferencepool.simulate.baselines import ErlangC

        return scenario, ErlangC(name, spec)
    key = {"keda": "queue-depth"}.get(family, family)
    return scenario, compare.make_policy(key, scenario, service, prefill, knob=knob)


_SCENARIOS: dict = {}  # (scenario name, seed) -> Scenario, set before the pool forks


def _run(task: tuple) -> dict:
    name, seed, family, knob, floor = task
    scenario, policy = build(_SCENARIOS[(name, seed)], family, knob, floor)
    row = report.summarise(compare.run_policy(scenario, policy), scenario.spec)
    return {"scenario": name, "seed": seed, "family": family, "knob": knob, "floor": floor,
            "gpu_hours": row["gpu_hours"], "windows": row["minutes_meeting_slo"], "requests": row["requests_meeting_slo"]}


def run(scenarios: dict[str, list[compare.Scenario]], grid: Grid = Grid(), jobs: int = 2,
        progress: Callable[[int, int], None] | None = None, families=ORDER) -> list[dict]:
    """Every sweep point of every scenario on every seed; one row per run."""
    tasks = []
    for name, seeded in scenarios.items():
        for scenario in seeded:
            _SCENARIOS[(name, scenario.seed)] = scenario
            compare.oracle_need(scenario)  # computed once here, inherited by the workers
        for family, knob, floor in points(seeded[0], grid, families):
            tasks += [(name, s.seed, family, knob, floor) for s in seeded]
    rows = []
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for row in pool.imap_unordered(_run, tasks, chunksize=2):
                rows.append(row)
                if progress:
                    progress(len(rows), len(tasks))
    else:
        for task in tasks:
            rows.append(_run(task))
            if progress:
                progress(len(rows), len(tasks))
    return rows


def run_points(scenarios: dict[str, list[compare.Scenario]], chosen: list[tuple], jobs: int = 2) -> list[dict]:
    """Given (family, knob, floor) points only, on every seed of every scenario."""
    tasks = []
    for name, seeded in scenarios.items():
        for scenario in seeded:
            _SCENARIOS[(name, scenario.seed)] = scenario
            compare.oracle_need(scenario)
        tasks += [(name, s.seed, family, knob, floor) for family, knob, floor in chosen for s in seeded]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            return list(pool.imap_unordered(_run, tasks))
    return [_run(task) for task in tasks]


def settings(rows: list[dict]) -> dict:
    """(scenario, family, knob, floor) -> {gpu_hours: mean, spread: (min, max), windows: worst, requests: worst}."""
    grouped: dict = {}
    for r in rows:
        knob = r["knob"]
        if isinstance(knob, list) and len(knob) == 2:  # ours before the window and objective knobs
            knob = knob + [300.0, None]
        if isinstance(knob, (list, tuple)) and 4 <= len(knob) < 6:  # ours before the drain and burst-memory knobs
            knob = tuple(knob) + (None,) * (6 - len(knob))
        knob = tuple(knob) if isinstance(knob, list) else knob
        grouped.setdefault((r["scenario"], r["family"], knob, r["floor"]), []).append(r)
    out = {}
    for key, runs in grouped.items():
        hours = [r["gpu_hours"] for r in runs]
        out[key] = {"gpu_hours": float(np.mean(hours)), "spread": (min(hours), max(hours)), "seeds": len(runs),
                    "windows": min(r["windows"] for r in runs), "requests": min(r["requests"] for r in runs),
                    "windows_mean": float(np.mean([r["windows"] for r in runs]))}
    return out


def frontier(rows: list[dict], levels=LEVELS, by: str = "windows") -> dict:
    """scenario -> family -> level -> the cheapest setting reaching it (or None), with its ratio to the oracle."""
    table = settings(rows)
    out: dict = {}
    for (scenario, family, knob, floor), s in table.items():
        out.setdefault(scenario, {}).setdefault(family, [])
        out[scenario][family].append((knob, floor, s))
    result = {}
    for scenario, families in out.items():
        oracle = families["oracle"][0][2]["gpu_hours"]
        result[scenario] = {"oracle_gpu_hours": oracle, "oracle": families["oracle"][0][2], "families": {}}
        for family, candidates in families.items():
            if family == "oracle":
                continue
            per_level = {}
            for level in levels:
                ok = [c for c in candidates if c[2][by] >= level]
                if ok:
                    knob, floor, s = min(ok, key=lambda c: c[2]["gpu_hours"])
                    per_level[level] = {"knob": knob, "floor": floor, "gpu_hours": s["gpu_hours"], "spread": s["spread"],
                                        "ratio": s["gpu_hours"] / oracle if oracle > 0 else math.inf}
                else:
                    per_level[level] = None
            result[scenario]["families"][family] = per_level
    return result


def _knob(family: str, knob) -> str:
    if family == "ours":
        q, margin, window, objective, drain, memory, hq, hs, hf = (tuple(knob) + (None,) * 5)[:9]
        return (f"q{q:g}" + (f" m{margin:g}" if margin != 1 else "") + (f" w{window:g}" if window != 300 else "")
                + (f" obj {objective:g}" if objective else "") + (f" drain {drain:g}s" if drain else "")
                + (f" cvmem {memory:g}s" if memory else "")
                + (f" hfloor q{hq:g}" + (f"/{hs:g}s" if hs else "") + (" xheadroom" if hf else "") if hq is not None else ""))
    return {"reactive": "m{}", "static": "{} replicas", "hpa": "util {}", "keda": "{} waiting", "kpa": "conc {}",
            "wva": "kv {}", "dynamo": "util {}"}[family].format(f"{knob:g}" if isinstance(knob, float) else knob)


def table(result: dict, scenario: str, levels=LEVELS, by: str = "windows") -> list[str]:
    """Markdown: per family, GPU-hours / oracle's (spread over seeds) at each attainment level, then the settings."""
    r = result[scenario]
    head = "| family | " + " | ".join(f">= {l * 100:g}% of {by}" for l in levels) + " |"
    lines = [head, "|---" * (len(levels) + 1) + "|"]
    for family in ORDER:
        cells = r["families"].get(family)
        if cells is None:
            continue
        row = []
        for level in levels:
            c = cells[level]
            if c is None:
                row.append("never")
            else:
                lo, hi = c["spread"]
                o = r["oracle_gpu_hours"]
                row.append(f"{c['ratio']:.2f}x ({lo / o:.2f}-{hi / o:.2f}); {_knob(family, c['knob'])}"
                           + (f", floor {c['floor']}" if family != "static" else ""))
        lines.append(f"| {LABELS[family]} | " + " | ".join(row) + " |")
    o = r["oracle"]
    lines.append(f"| oracle | {r['oracle_gpu_hours']:.2f} GPU-h = 1.00x; worst seed {o[by]:.1%} of {by} |"
                 + " |" * (len(levels) - 1))
    return lines


def plot(rows: list[dict], scenario: str, title: str, path: Path) -> Path:
    """GPU-hours (over the oracle's) vs worst-seed share of windows meeting the SLO: each family's Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table_ = {k: v for k, v in settings(rows).items() if k[0] == scenario}
    oracle = next(v for k, v in table_.items() if k[1] == "oracle")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.get_cmap("tab10")
    for i, family in enumerate(ORDER):
        pts = sorted((v["gpu_hours"] / oracle["gpu_hours"], v["windows"]) for k, v in table_.items() if k[1] == family)
        if not pts:
            continue
        front, best = [], -1.0
        for x, y in pts:  # cheapest first: keep a point only if it attains more than every cheaper one
            if y > best:
                front.append((x, y))
                best = y
        xs, ys = zip(*front)
        ax.step(xs, [100 * y for y in ys], where="post", marker="o", ms=3, lw=1.5 if family == "ours" else 1,
                color=colors(i), label=LABELS[family])
    ax.plot([1.0], [100 * oracle["windows"]], "k*", ms=12, label="oracle")
    ax.set_xscale("log")
    ax.set_xlabel("GPU-hours / oracle's (mean over seeds)")
    ax.set_ylabel("% of 1-min windows meeting the SLO (worst seed)")
    ax.set_ylim(50, 100.5)  # below half the windows nothing is a contender
    for level in (90, 95, 99):
        ax.axhline(level, color="0.8", lw=0.8, ls="--")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
