"""How far the queueing model's p99 wait and server count are from an independent FCFS simulation.

For every case (servers c, utilisation rho, service CV cs, arrival CV ca; gamma or lognormal service;
gamma renewal or Poisson-batch arrivals) the simulator (tests/fcfs_sim.py) gives the p99 wait t* at c
servers with its 95% CI.  Then

- p99 error: (model p99 at c - t*) / t*, for Allen-Cunneen ("old") and the corrected model ("new");
- servers error: the model's fewest servers with p99 <= t*, minus c (the simulated answer: at c - 1 the
  p99 is above t*).  Negative = the model under-provisions.

Cases where under 2% of the simulated customers wait are left out (their p99 is 0 or within noise of it).
Usage:

    python benchmarks/queueing_accuracy.py                 # ~15 min on 2 vCPUs, all three grids
    python benchmarks/queueing_accuracy.py --quick         # a tenth of the customers (noisy)
    python benchmarks/queueing_accuracy.py --cache /tmp/q.json --out benchmarks/queueing_accuracy.md

Seeds are fixed (crc32 of the case), so a run is reproducible; --cache keeps simulations between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "operator"))

from fcfs_sim import simulate  # noqa: E402

from inferencepool.core.queueing import Queue  # noqa: E402

SERVERS = (1, 2, 4, 8, 16, 64)
RHOS = (0.5, 0.7, 0.85, 0.95)
SERVICE_CVS = (0.0, 0.5, 1.0, 1.6, 2.5)
ARRIVAL_CVS = (1.0, 2.0)
BATCHES = (("geometric", 2.5), ("constant", 4))  # index of dispersion 2m - 1 = 4 and m = 4
MODELS = (("old", "allen-cunneen"), ("new", "corrected"))
MIN_P_WAIT = 0.02  # a p99 is compared only where at least this share of customers wait


def cases():
    """(grid, key, simulate kwargs, queue kwargs) for every case."""
    for service in ("gamma", "lognormal"):
        for ca in ARRIVAL_CVS:
            for cs in SERVICE_CVS:
                if service == "lognormal" and cs == 0:
                    continue
                for rho in RHOS:
                    for c in SERVERS:
                        sim = dict(servers=c, rho=rho, ca=ca, cs=cs, service_dist=service)
                        yield service, f"{service},{c},{rho},{cs},{ca}", sim, dict(arrival_cv=ca, service_cv=cs), (ca * ca + cs * cs) / 2
    for dist, mean in BATCHES:
        dispersion = 2 * mean - 1 if dist == "geometric" else mean
        for cs, service in ((1.0, "gamma"), (1.6, "lognormal")):
            for rho in RHOS:
                for c in (1, 4, 16, 64):
                    sim = dict(servers=c, rho=rho, cs=cs, service_dist=service, batch_mean=mean, batch_dist=dist)
                    key = f"batch-{dist}-{mean},{service},{c},{rho},{cs}"
                    yield "batch", key, sim, dict(arrival_cv=math.sqrt(dispersion), service_cv=cs), (dispersion + cs * cs) / 2


def customers(rho: float, v: float, scale: float) -> int:
    """Enough customers for a p99 with a few-% CI: more in heavy traffic and for bursty inputs."""
    return int(scale * min(3e6, max(4e5, 2e4 * max(v, 0.5) / (1 - rho) ** 2)))


def run(scale: float, cache_path: str | None) -> dict:
    cache = json.load(open(cache_path)) if cache_path and os.path.exists(cache_path) else {}
    started = time.time()
    for grid, key, sim_kw, _, v in cases():
        if key in cache:
            continue
        n = customers(sim_kw["rho"], v, scale)
        r = simulate(**sim_kw, customers=n, seed=zlib.crc32(key.encode()), ps=(0.99,))
        cache[key] = dict(p99=r.quantile(0.99), ci=r.quantile_ci(0.99), p_wait=r.p_wait, p_wait_ci=r.p_wait_ci, n=n)
        if cache_path:
            json.dump(cache, open(cache_path, "w"))
        print(f"{time.time() - started:6.0f}s {key} n={n} p99={r.quantile(0.99):.4g}", file=sys.stderr, flush=True)
    return cache


def evaluate(results: dict) -> list[dict]:
    rows = []
    for grid, key, sim_kw, queue_kw, _ in cases():
        r = results[key]
        c, a = sim_kw["servers"], sim_kw["rho"] * sim_kw["servers"]
        row = dict(grid=grid, key=key, c=c, rho=sim_kw["rho"], cs=sim_kw["cs"], ca=queue_kw["arrival_cv"], sim=r)
        for label, approximation in MODELS:
            q = Queue(a, 1.0, approximation=approximation, **queue_kw)
            row[f"{label}_p_wait"] = q.prob_wait(c)
            if r["p_wait"] >= MIN_P_WAIT:
                row[f"{label}_p99"] = (q.wait_quantile(c, 0.99) - r["p99"]) / r["p99"]
                row[f"{label}_servers"] = q.servers_for_wait_quantile(r["p99"], 0.99) - c
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> str:
    """One line per grid and subset: p99 error spread and how often each model is short of servers."""
    subsets = [
        ("all", lambda r: True),
        ("ca = 1", lambda r: r["ca"] == 1),
        ("ca = 2 / batches", lambda r: r["ca"] > 1),
        ("c <= 4", lambda r: r["c"] <= 4),
        ("c >= 16", lambda r: r["c"] >= 16),
        ("cs >= 1.6", lambda r: r["cs"] >= 1.6),
    ]
    out = [
        "| grid | cases | model | median abs p99 err | 90th pct abs p99 err | worst low | worst high | servers short (worst) | servers over (worst) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for grid in ("gamma", "lognormal", "batch"):
        for name, keep in subsets:
            chosen = [r for r in rows if r["grid"] == grid and "old_p99" in r and keep(r)]
            if not chosen or (grid == "batch" and name.startswith("ca")):
                continue
            for label, _ in MODELS:
                errors = sorted(abs(r[f"{label}_p99"]) for r in chosen)
                signed = [r[f"{label}_p99"] for r in chosen]
                servers = [r[f"{label}_servers"] for r in chosen]
                short = [s for s in servers if s < 0]
                over = [s for s in servers if s > 0]
                out.append(
                    f"| {grid} | {len(chosen)} ({name}) | {label} | {100 * errors[len(errors) // 2]:.0f}% |"
                    f" {100 * errors[int(0.9 * (len(errors) - 1))]:.0f}% | {100 * min(signed):+.0f}% | {100 * max(signed):+.0f}% |"
                    f" {len(short)} ({min(short, default=0)}) | {len(over)} (+{max(over, default=0)}) |"
                )
    return "\n".join(out)


def pivot(rows: list[dict], grid: str) -> str:
    """p99 error old / new and servers error old / new, per (ca, cs, c) row and rho column."""
    head = "| ca | cs | c | " + " | ".join(f"rho {rho}: p99 err old / new, servers old / new" for rho in RHOS) + " |"
    out = [head, "|---|---|---|" + "---|" * len(RHOS)]
    index = {(r["ca"], r["cs"], r["c"], r["rho"]): r for r in rows if r["grid"] == grid}
    for ca in sorted({k[0] for k in index}):
        for cs in sorted({k[1] for k in index if k[0] == ca}):
            for c in sorted({k[2] for k in index if k[:2] == (ca, cs)}):
                cells = []
                for rho in RHOS:
                    r = index.get((ca, cs, c, rho))
                    if r is None or "old_p99" not in r:
                        cells.append("(< 2% wait)")
                        continue
                    cells.append(
                        f"{100 * r['old_p99']:+.0f}% / {100 * r['new_p99']:+.0f}%, {r['old_servers']:+d} / {r['new_servers']:+d}"
                    )
                out.append(f"| {ca:g} | {cs:g} | {c} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def batch_table(rows: list[dict]) -> str:
    out = ["| batches | service | c | rho | sim P(W>0) | old | new | sim p99 | p99 err old / new | servers old / new |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["grid"] != "batch":
            continue
        s = r["sim"]
        kind, service = r["key"].split(",")[:2]
        p99 = f"{s['p99']:.3g} +- {s['ci']:.2g}"
        errs = f"{100 * r['old_p99']:+.0f}% / {100 * r['new_p99']:+.0f}%" if "old_p99" in r else "-"
        servers = f"{r['old_servers']:+d} / {r['new_servers']:+d}" if "old_p99" in r else "-"
        out.append(
            f"| {kind[6:]} | {service} cs {r['cs']:g} | {r['c']} | {r['rho']} | {s['p_wait']:.3f} +- {s['p_wait_ci']:.3f} |"
            f" {r['old_p_wait']:.3f} | {r['new_p_wait']:.3f} | {p99} | {errs} | {servers} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the customers per case (noisy)")
    parser.add_argument("--cache", help="JSON file to keep simulated results in between runs")
    parser.add_argument("--out", help="also write the full per-case tables to this Markdown file")
    args = parser.parse_args()
    rows = evaluate(run(0.1 if args.quick else 1.0, args.cache))
    print("## Summary\n\n" + summary(rows))
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Queueing model accuracy, per case\n\nGenerated by `python benchmarks/queueing_accuracy.py"
                    f" --out {args.out}`; see benchmarks/README.md.  S = 1.  Each cell: p99 wait error of Allen-Cunneen"
                    " (old) / the corrected model (new), then servers error old / new (negative = short).\n\n")
            for grid, title in (("gamma", "Gamma service, gamma renewal arrivals"), ("lognormal", "Lognormal service, gamma renewal arrivals")):
                f.write(f"## {title}\n\n{pivot(rows, grid)}\n\n")
            f.write("## Poisson batches (index of dispersion 4)\n\n" + batch_table(rows) + "\n")


if __name__ == "__main__":
    main()
