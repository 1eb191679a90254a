"""One operator, N pools, on the test bed (issue 14): is every pool decided every interval, and at what cost?

Needs a running bed (`e2e/cluster/bed.py up`, honouring IPOOL_BED_DIR / IPOOL_BED_PORT_BASE). It adds
ceil(N/8) fake 8-GPU nodes (KWOK) so each pool of the operator under test runs its pod, serves vLLM-shaped series for every pool
from one exporter (the series the operator's queries read; labels pool and namespace, honoured by a
real Prometheus scraping every 15 s), creates N pools, measures a baseline window of the apiserver
without the operator, starts `python -m inferencepool.operator.run` and, after every pool's first
decision and one interval more, measures a window of `--minutes`:

- decisions per pool per minute and the gaps between a pool's decisions (p50, p95, max), from the log;
- time from create to first decision: of all N at start, and of one pool created mid-window;
- operator RSS (max over the window) and CPU (share of one core);
- apiserver requests per second by verb and resource, from the apiserver's own apiserver_request_total,
  minus the baseline window (so what the operator caused);
- Prometheus queries per second (its prometheus_http_requests_total for /api/v1/query);
- the load average (the machine is shared: figures are noisy).

    .venv/bin/python benchmarks/operator_scale.py --pools 1000 --minutes 3

Prints one JSON object. Cleans up its namespace and nodes (pools first, while the operator runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))
from exposition import serve_exposition  # noqa: E402  (the e2e tests' loopback /metrics server)

CRD = ROOT / "crds" / "inferencepools.autoscaling.inferencepool.dev.yaml"
GPUS_PER_NODE = 8
INFERENCE_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)


def load_bed():
    spec = importlib.util.spec_from_file_location("ipool_bed", ROOT / "e2e" / "cluster" / "bed.py")
    bed = importlib.util.module_from_spec(spec)
    sys.modules["ipool_bed"] = bed
    spec.loader.exec_module(bed)
    return bed


# ---------------------------------------------------------------- one exporter for every pool


class ManyPools:
    """vLLM's series for every pool, as smooth functions of time: requests finish at the pool's rate,
    each busy `service` seconds on average (exponential), none waits; Little's law gives running."""

    def __init__(self, namespace: str, pools: dict[str, float], service: float = 2.0):
        self.namespace, self.pools, self.service, self.start = namespace, dict(pools), service, time.time()
        self.lock = threading.Lock()
        self.server = None

    def add(self, name: str, rate: float) -> None:
        with self.lock:
            self.pools[name] = rate

    def text(self) -> bytes:
        elapsed = time.time() - self.start
        out = []
        with self.lock:
            pools = list(self.pools.items())
        s = self.service
        for name, rate in pools:
            labels = f'namespace="{self.namespace}",pool="{name}",model_name="m",engine="0"'
            n = rate * elapsed
            out.append(f'vllm:request_success_total{{{labels},finished_reason="stop"}} {n:.3f}')
            out.append(f"vllm:num_requests_running{{{labels}}} {rate * s:.3f}")
            out.append(f"vllm:num_requests_waiting{{{labels}}} 0")
            out.append(f"vllm:time_to_first_token_seconds_count{{{labels}}} {n:.3f}")
            out.append(f"vllm:generation_tokens_total{{{labels}}} {100 * n:.1f}")
            out.append(f"vllm:kv_cache_usage_perc{{{labels}}} 0.3")
            for family, mean in (("request_inference_time_seconds", s), ("request_queue_time_seconds", 0.0),
                                 ("request_prefill_time_seconds", 0.05), ("e2e_request_latency_seconds", s)):
                for le in INFERENCE_BUCKETS:
                    share = 1.0 if mean == 0 else 1 - math.exp(-le / mean)
                    out.append(f'vllm:{family}_bucket{{{labels},le="{le}"}} {n * share:.3f}')
                out.append(f'vllm:{family}_bucket{{{labels},le="+Inf"}} {n:.3f}')
                out.append(f"vllm:{family}_sum{{{labels}}} {n * mean:.3f}")
                out.append(f"vllm:{family}_count{{{labels}}} {n:.3f}")
        return ("\n".join(out) + "\n").encode()

    def serve(self) -> str:
        self.server = serve_exposition(lambda path: self.text())
        return f"127.0.0.1:{self.server.server_port}"


# ---------------------------------------------------------------- the bed


class Bed:
    def __init__(self, bed):
        info = json.loads((bed.STATE / "bed.json").read_text())
        self.kubeconfig, self.kubectl_path = info["kubeconfig"], str(bed.BIN / "kubectl")
        self.env = dict(os.environ, KUBECONFIG=info["kubeconfig"])

    def kubectl(self, *args, input: str | None = None, check: bool = True) -> str:
        r = subprocess.run([self.kubectl_path, *args], input=input, text=True, capture_output=True, env=self.env,
                           timeout=900)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])} failed: {r.stderr}")
        return r.stdout

    def apply(self, items: list[dict], namespace: str | None = None, chunk: int = 250) -> None:
        for i in range(0, len(items), chunk):
            body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items[i:i + chunk]})
            self.kubectl(*(["-n", namespace] if namespace else []), "apply", "-f", "-", input=body)

    def apiserver_requests(self) -> dict[tuple, float]:
        """apiserver_request_total summed by (verb, resource/subresource), from the apiserver's /metrics."""
        counts: dict[tuple, float] = {}
        for line in self.kubectl("get", "--raw", "/metrics").splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
            resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            key = (labels.get("verb", ""), resource)
            counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts


def pool_manifest(name: str, shard: str | None = None) -> dict:
    return {"apiVersion": "autoscaling.inferencepool.dev/v1alpha1", "kind": "InferencePool",
            "metadata": {"name": name, **({"labels": {"autoscaling.inferencepool.dev/shard": shard}} if shard else {})},
            "spec": {"model": {"name": "m", "source": "meta-llama/Llama-3.1-8B-Instruct"},
                     "engine": {"image": "vllm/vllm-openai:fake"},
                     "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perReplica": 1},
                     "slo": {"metric": "QueueWait", "percentile": 0.99, "targetSeconds": 1},
                     "minReplicas": 1, "maxReplicas": 4, "slotsPerReplica": 8,
                     "prediction": {"enabled": False}, "cost": {"gpuHourPrice": "2.50"}}}


def node_manifests(bed, count: int) -> list[dict]:
    cfg = {"gpuTaint": {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
           "pools": [{"name": "bench", "count": count, "instanceType": "p5.48xlarge", "cpu": "192", "memory": "2048Gi",
                      "gpus": GPUS_PER_NODE, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}]}
    nodes = bed.node_manifests(cfg)
    for node in nodes:
        node["metadata"]["labels"]["inferencepool.dev/bench"] = "true"
    return nodes


# ---------------------------------------------------------------- the operator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds so far) of a process, from /proc."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_decisions(path: Path) -> dict[str, list[float]]:
    """pool -> unix times of its decisions, from the operator's JSON log."""
    times: dict[str, list[float]] = {}
    with open(path, errors="replace") as f:
        for line in f:
            if '"event": "decision"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            times.setdefault(entry["pool"], []).append(stamp)
    return times


def prometheus_queries(url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the measured window")
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--shards", type=int, default=1, help="label the pools over N shards, run the operator of shard 0")
    parser.add_argument("--series", choices=("all", "mine"), default="all",
                        help="serve every pool's vLLM series, or only the operator under test's (with shards: the "
                             "other shards' series cost Prometheus, not this operator, whose read names its pools)")
    parser.add_argument("--baseline", type=float, default=30.0, help="seconds of apiserver traffic without the operator")
    parser.add_argument("--keep-log", help="copy the operator's log here")
    parser.add_argument("--start-timeout", type=float, default=1200.0,
                        help="seconds to wait for every pool's first decision before the window starts anyway")
    args = parser.parse_args(argv)

    bed_module = load_bed()
    if not bed_module.running():
        sys.exit("the bed is not running: e2e/cluster/bed.py up (with the same IPOOL_BED_DIR / IPOOL_BED_PORT_BASE)")
    bed = Bed(bed_module)
    namespace = f"bench-{args.pools}"
    names = [f"p-{i:05d}" for i in range(args.pools)]
    shard_of = {n: str(i % args.shards) for i, n in enumerate(names)} if args.shards > 1 else {}
    mine = [n for n in names if shard_of.get(n, "0") == "0"]  # what the operator under test manages
    work = Path(tempfile.mkdtemp(prefix="ipool-scale-"))
    served = names if args.series == "all" else mine  # whose vLLM series Prometheus holds
    exporter = ManyPools(namespace, {n: 0.5 + 0.25 * (i % 5) for i, n in enumerate(served + ["late"])})
    target = exporter.serve()
    prom = bed_module.Prometheus([{"job_name": "vllm", "honor_labels": True, "static_configs": [{"targets": [target]}]}],
                                 work / "prometheus", scrape_interval="15s").start()
    nodes = node_manifests(bed_module, math.ceil((len(mine) + 1) / GPUS_PER_NODE))  # other shards' pods never run here
    op = None
    result: dict = {"pools": args.pools, "shards": args.shards, "pools_of_this_operator": len(mine), "series": args.series,
                    "interval": args.interval, "minutes": args.minutes, "load_at_start": os.getloadavg()}
    try:
        bed.kubectl("apply", "-f", str(CRD))
        bed.apply(nodes)
        bed.kubectl("create", "namespace", namespace)
        deadline = time.time() + 60
        while bed.kubectl("-n", namespace, "get", "sa", "default", check=False) == "" and time.time() < deadline:
            time.sleep(1)
        bed.apply([pool_manifest(n, shard_of.get(n)) for n in names], namespace)
        time.sleep(20)  # two Prometheus scrapes of every pool
        before = bed.apiserver_requests()
        time.sleep(args.baseline)
        baseline = {k: (v - before.get(k, 0.0)) / args.baseline for k, v in bed.apiserver_requests().items()}

        log_path = work / "operator.log"
        command = [sys.executable, "-m", "inferencepool.operator.run", "--kubeconfig", bed.kubeconfig,
                   "--namespace", namespace, "--prometheus-url", prom.url, "--interval", str(args.interval),
                   "--scrape-interval", "15", "--metrics-port", str(free_port()), "--metrics-address", "127.0.0.1"]
        if args.shards > 1:
            command += ["--selector", "autoscaling.inferencepool.dev/shard=0"]
        started = time.time()
        with open(log_path, "ab") as log:
            op = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=bed.env,
                                  start_new_session=True)
        deadline = started + args.start_timeout
        while len(log_decisions(log_path)) < len(mine) and time.time() < deadline:
            time.sleep(2)
        first = log_decisions(log_path)
        result["seconds_until_every_pool_decided_once"] = round(max(min(t) for t in first.values()) - started, 1)
        result["pools_decided_before_the_window"] = len(first)
        time.sleep(args.interval)

        window = args.minutes * 60
        w0, a0, q0 = time.time(), bed.apiserver_requests(), prometheus_queries(prom.url)
        rss0, cpu0 = proc_stats(op.pid)
        rss_max, late_created, late_first = rss0, None, None
        while time.time() < w0 + window:
            time.sleep(5)
            rss_max = max(rss_max, proc_stats(op.pid)[0])
            if late_created is None and time.time() > w0 + window / 3:
                bed.apply([pool_manifest("late", "0" if args.shards > 1 else None)], namespace)
                late_created = time.time()
            if late_created and late_first is None:
                late_first = (log_decisions(log_path).get("late") or [None])[0]
        w1, a1, q1 = time.time(), bed.apiserver_requests(), prometheus_queries(prom.url)
        rss1, cpu1 = proc_stats(op.pid)
        result["load_at_end"] = os.getloadavg()

        times = log_decisions(log_path)
        inside = {p: [t for t in times.get(p, []) if w0 <= t <= w1] for p in mine}
        gaps = [b - a for ts in inside.values() for a, b in zip(ts, ts[1:])]
        counts = [len(ts) for ts in inside.values()]
        minutes = (w1 - w0) / 60
        result.update({
            "decisions_per_pool_per_minute": round(sum(counts) / len(mine) / minutes, 2),
            "least_decided_pool_per_minute": round(min(counts) / minutes, 2),
            "gap_seconds_p50_p95_max": [round(x, 1) for x in (percentile(gaps, 0.5), percentile(gaps, 0.95), max(gaps))],
            "create_to_first_decision_of_a_pool_created_mid_window_s": (round(late_first - late_created, 1)
                                                                        if late_first else None),
            "operator_rss_mib_end_max": [round(rss1), round(rss_max)],
            "operator_cpu_share_of_one_core": round((cpu1 - cpu0) / (w1 - w0), 3),
            "prometheus_queries_per_s": round((q1 - q0) / (w1 - w0), 2),
        })
        caused = {}
        for key in sorted(set(a1) | set(baseline)):
            rate = (a1.get(key, 0.0) - a0.get(key, 0.0)) / (w1 - w0) - baseline.get(key, 0.0)
            if abs(rate) >= 0.05 and key[0] != "WATCH":
                caused[f"{key[0]} {key[1]}"] = round(rate, 2)
        result["apiserver_requests_per_s_by_the_operator"] = caused
        result["apiserver_baseline_per_s_without_it"] = {f"{k[0]} {k[1]}": round(v, 2) for k, v in baseline.items()
                                                         if v >= 0.05 and k[0] != "WATCH"}
        events: dict[str, int] = {}  # who posts the Events in the pools' namespace, and why
        for e in json.loads(bed.kubectl("-n", namespace, "get", "events", "-o", "json"))["items"]:
            who = f"{e.get('reportingComponent') or (e.get('source') or {}).get('component')} {e.get('reason')}"
            events[who] = events.get(who, 0) + int(e.get("count") or 1)
        result["events_in_the_namespace_by_source_and_reason"] = dict(sorted(events.items(), key=lambda kv: -kv[1])[:10])
        if args.keep_log:
            Path(args.keep_log).write_bytes(log_path.read_bytes())
        print(json.dumps(result, indent=1), flush=True)
    finally:
        # the pools first, while the operator runs (their finalizers), then the rest
        bed.kubectl("-n", namespace, "delete", "ipool", "--all", "--wait=true", "--timeout=600s", check=False)
        bed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        if op and op.poll() is None:
            os.killpg(op.pid, signal.SIGTERM)
            try:
                op.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(op.pid, signal.SIGKILL)
        bed.kubectl("delete", "nodes", "-l", "inferencepool.dev/bench=true", "--wait=false", check=False)
        prom.stop()
        exporter.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
