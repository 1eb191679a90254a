"""Two operator replicas with kopf peering, and the restricted Pod Security Standard (issue 15).

- The chart with `replicaCount: 2` installs with `--wait` into a namespace that enforces the `restricted`
  Pod Security Standard (a pod without a securityContext is refused there, so enforcement is on); both
  operator pods are admitted and Ready (KWOK: no container runs on the bed).
- Failover: two operator processes run as the chart runs them (its rendered `--peering` argument, no
  `--priority`), against the chart's KopfPeering object. Exactly one decides; it is SIGKILLed; the other
  takes over (time measured: from the kill to its first decision). Never two writers: no decision from the
  standby before the kill, none from the killed one after, replicas never off the answer, one ScaledUp.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from operators import Operators  # noqa: E402
from test_operator import (  # noqa: E402,F401  (crd, exporters are fixtures)
    INTERVAL, crd, exporters, get_pool, pool_events, pool_manifest, replicas, robust_answer, scrape_config,
    wait_for_full_window)

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "inferencepool-operator"
RELEASE = "ha"
FULLNAME = f"{RELEASE}-inferencepool-operator"


def restricted(cluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")


def test_the_chart_with_two_replicas_passes_the_restricted_pod_security_standard(cluster, namespace):
    restricted(cluster, namespace)
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    r = cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(bare), check=False)
    assert r.returncode != 0 and "violates PodSecurity" in r.stderr and "restricted" in r.stderr, r.stderr
    try:
        r = cluster.helm("install", RELEASE, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s",
                         "--set", "replicaCount=2", "--set", "prometheus.url=http://127.0.0.1:9090")
        assert "violate" not in (r.stderr + r.stdout), r.stderr
        deployment = cluster.kubectl_json("-n", namespace, "get", "deployment", FULLNAME)
        assert deployment["status"].get("readyReplicas") == 2, deployment["status"]
        pods = cluster.kubectl_json("-n", namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
        assert len(pods) == 2
        args = pods[0]["spec"]["containers"][0]["args"]
        assert f"--peering={FULLNAME}" in args and not any(a.startswith("--priority") for a in args), args
        cluster.kubectl("get", "clusterkopfpeering", FULLNAME)  # all namespaces: the cluster-wide one
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", namespace, "--wait", check=False)


def decision_times(op) -> list[float]:
    return [datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp() for d in op.decisions()]


def test_the_standby_takes_over_when_the_active_replica_dies_and_never_two_write(cluster, crd, namespace, exporters,
                                                                                   prometheus, tmp_path):
    cluster.kubectl("apply", "-f", str(ROOT / "crds" / "kopf-peering.yaml"))
    peering = [d for d in yaml.safe_load_all(subprocess.run(
        [str(cluster.helm_path), "template", RELEASE, str(CHART), "--namespace", namespace, "--set", "replicaCount=2",
         "--set", "watch.allNamespaces=false", "--set", f"watch.namespaces={{{namespace}}}", "--kube-version", "1.36.3", "--show-only", "templates/peering.yaml"],
        text=True, capture_output=True, check=True).stdout) if d]
    assert [p["kind"] for p in peering] == ["KopfPeering"]
    cluster.apply(peering, namespace=namespace)  # the chart's own KopfPeering object for a watched namespace
    name = "ha"
    expected = robust_answer(2.0, 1.5, 4, 1.0, 0.99)
    exporter = exporters(2.0, 1.5)
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporter)])
    wait_for_full_window(prom, name)
    # two replicas as the chart runs them: its rendered --peering, no --priority
    with Operators(cluster, namespace, tmp_path / "replica.log", extra_args=(f"--peering={FULLNAME}",)) as operator:
        replicas_ = [operator(prom.url, log_path=tmp_path / f"replica-{i}.log") for i in range(2)]
        cluster.apply(pool_manifest(name), namespace=namespace)
        cluster.wait_until(lambda: replicas(cluster, namespace, name) == expected, timeout=120, desc=f"{expected} replicas")
        time.sleep(2 * INTERVAL)  # at start-up the first replica may act for a tick before it sees its peer
        counts = [len(r.decisions()) for r in replicas_]
        time.sleep(3 * INTERVAL)
        grown = [len(r.decisions()) - c for r, c in zip(replicas_, counts)]
        assert min(grown) == 0 and max(grown) >= 2, f"not exactly one writer: {grown} decisions over 3 intervals"
        active, standby = (replicas_[0], replicas_[1]) if grown[0] else (replicas_[1], replicas_[0])
        before = len(standby.decisions())
        killed = time.time()
        active.stop(signal.SIGKILL)
        first = cluster.wait_until(lambda: next(iter(decision_times(standby)[before:]), None), timeout=180,
                                   desc="the standby deciding")
        took_over = first - killed
        cluster.wait_until(lambda: len(standby.decisions()) >= before + 3, timeout=60, desc="the standby keeps deciding")
        assert max(decision_times(active)) < killed  # the dead one wrote nothing after its death
        assert replicas(cluster, namespace, name) == expected
        assert get_pool(cluster, namespace, name)["status"]["desiredReplicas"] == expected
        scaled = [e for e in pool_events(cluster, namespace, name) if e["reason"] in ("ScaledUp", "ScaledDown")]
        assert len(scaled) == 1 and scaled[0]["reason"] == "ScaledUp", scaled  # one scale, by one writer
        report = {"takeover_s": round(took_over, 1), "active_decisions": len(active.decisions()),
                  "standby_decisions_before_the_kill": before, "standby_decisions": len(standby.decisions())}
        print(json.dumps(report))
        if os.environ.get("IPOOL_CHAOS_REPORT"):
            Path(os.environ["IPOOL_CHAOS_REPORT"]).write_text(json.dumps(report, indent=1))
