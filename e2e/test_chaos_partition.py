"""Network partitions (issue 15): the link operator <-> Prometheus, then operator <-> kube-apiserver, cut
so that connections HANG (packets dropped, no reset), then restored; the operator is never restarted.

The operator runs in a network namespace of the test's own (e2e/netns.py) and reaches the bed's
kube-apiserver at 127.96.0.1 (the cluster's Service IP, in the apiserver's certificate, as a pod would)
and Prometheus at 127.213.0.1, each over its own veth link to a relay into the host's 127.0.0.1. Two pools
at their Erlang-C answer on the real bed with a real Prometheus.

- Prometheus cut: replicas never fall (sampled every second), MetricsAvailable=False PrometheusUnavailable
  and a Warning Event; after the restore MetricsAvailable=True again and a MetricsFresh Event.
- kube-apiserver cut, and the apiserver side drops the connections meanwhile (their resets lost on the
  cut link, so the operator's watches are left open and dead): replicas never change (read by the test
  over the host's loopback, which is not cut); after the restore every pool is decided again, uid, history
  and conditions kept, no scale Event, no API request given up (but Events, best effort), and a hand edit
  of a Deployment is put back (the operator's watches and indexes are alive again).

Detection and recovery times are printed and written to IPOOL_CHAOS_REPORT (JSON, merged per fault);
nothing is asserted on them. IPOOL_PARTITION_SECONDS sets how long the apiserver link stays cut (30).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ipool_bed as bed  # noqa: E402  (loaded by conftest)
import netns  # noqa: E402
from chaos_report import report  # noqa: E402
from test_operator import (  # noqa: E402,F401  (crd is a fixture)
    INTERVAL, RATE_WINDOW, OperatorProcess, conditions, crd, get_pool, event_seen, pool_events, pool_manifest, replicas,
    robust_answer, scrape_config, wait_for_full_window)
from vllm_exporter import VllmExporter  # noqa: E402

POOLS = ["cut-0", "cut-1"]
RATE, SERVICE = 2.0, 1.5  # 2 replicas of 4 slots at a 1 s p99 wait
API_ADDRESS, PROM_ADDRESS = "127.96.0.1", "127.213.0.1"
API_CUT_SECONDS = float(os.environ.get("IPOOL_PARTITION_SECONDS", "30"))


class NetnsOperator(OperatorProcess):
    """The operator process of test_operator, started inside the partition's inner namespace."""

    def __init__(self, cluster, namespace, prometheus_url, log_path, partition, kubeconfig):
        super().__init__(cluster, namespace, prometheus_url, log_path)
        self.partition, self.kubeconfig = partition, kubeconfig

    def start(self) -> NetnsOperator:
        command = self.partition.run([
            sys.executable, "-m", "inferencepool.operator.run", "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace, "--prometheus-url", self.prometheus_url,
            "--interval", str(self.interval), "--rate-window", RATE_WINDOW, "--burst-window", "6s",
            "--metrics-port", "0"])
        env = {**self.cluster.env, "KUBECONFIG": str(self.kubeconfig)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        return self


@pytest.fixture(scope="module")
def bed_partition(cluster, crd, tmp_path_factory):
    """Namespace, exporter, Prometheus, the partition and an operator inside it, shared by the faults."""
    why = netns.available()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("partition")
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_until(lambda: cluster.kubectl("-n", namespace, "get", "sa", "default", check=False).returncode == 0,
                       timeout=180, desc=f"default ServiceAccount in {namespace}")
    exporter = VllmExporter()
    exporter.set_load(RATE, SERVICE)
    exporter.start()
    prom = bed.Prometheus([scrape_config(p, namespace, exporter) for p in POOLS], tmp / "prom",
                          scrape_interval="1s").start()
    partition = netns.Partition(uuid.uuid4().hex[:6])
    op = None
    try:
        api = partition.link(cluster.ports["kube-apiserver"], API_ADDRESS)
        prom_link = partition.link(prom.port, PROM_ADDRESS)
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(cluster.kubeconfig.read_text().replace(
            cluster.server, f"https://{API_ADDRESS}:{cluster.ports['kube-apiserver']}"))
        wait_for_full_window(prom, POOLS[0])
        op = NetnsOperator(cluster, namespace, f"http://{PROM_ADDRESS}:{prom.port}", tmp / "operator.log",
                           partition, kubeconfig).start()
        for name in POOLS:
            cluster.apply(pool_manifest(name), namespace=namespace)
        yield {"cluster": cluster, "namespace": namespace, "op": op, "partition": partition, "api": api,
               "prom": prom_link, "expected": robust_answer(RATE, SERVICE, 4, 1.0, 0.99)}
    finally:
        for link in partition.links:  # the operator needs its API link to remove the finalizers
            partition.restore(link)
        if op and op.proc.poll() is None:
            cluster.kubectl("-n", namespace, "delete", "ipool", "--all", "--wait=true", "--timeout=60s", check=False)
            op.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        partition.close()
        prom.stop()
        exporter.stop()
        log = tmp / "operator.log"
        if log.exists():
            print("---- operator log (tail) ----\n" + log.read_text()[-20000:])


def _settled(b) -> None:
    cluster, namespace, expected = b["cluster"], b["namespace"], b["expected"]

    def ok():
        for name in POOLS:
            pool = get_pool(cluster, namespace, name)
            c = conditions(pool).get("MetricsAvailable", {})
            if (c.get("status") != "True" or replicas(cluster, namespace, name) != expected
                    or pool.get("status", {}).get("readyReplicas") != expected):
                return False
        return True

    cluster.wait_until(ok, timeout=180, desc=f"every pool at {expected} Ready replicas, metrics fresh")


def _history_count(pool: dict) -> int:
    return json.loads(pool["status"]["history"])["forecaster"]["count"]


def test_prometheus_link_cut_holds_names_the_cause_and_recovers(bed_partition):
    b = bed_partition
    cluster, namespace, op, expected, partition = b["cluster"], b["namespace"], b["op"], b["expected"], b["partition"]
    _settled(b)
    assert b["prom"].connections > 0 and b["api"].connections > 0  # the operator really goes through the links
    start = time.time()
    partition.cut(b["prom"])
    try:
        def named():
            cs = [conditions(get_pool(cluster, namespace, n)).get("MetricsAvailable", {}) for n in POOLS]
            return cs if all(c.get("status") == "False" and c.get("reason") == "PrometheusUnavailable" for c in cs) else None

        lowest, cond = expected, None
        deadline = time.time() + 120
        while cond is None:  # replicas sampled every second until every pool says why
            counts = [replicas(cluster, namespace, n) for n in POOLS]
            lowest = min(lowest, *counts)
            assert counts == [expected] * len(POOLS), counts
            assert time.time() < deadline, "no PrometheusUnavailable within 120 s of the cut"
            cond = named()
            time.sleep(1)
        detected = time.time() - start
        assert all(PROM_ADDRESS in c["message"] and "never scaling down" in c["message"] for c in cond), cond
        hold_until = time.time() + 2 * INTERVAL
        while time.time() < hold_until:  # held on while cut
            counts = [replicas(cluster, namespace, n) for n in POOLS]
            lowest = min(lowest, *counts)
            assert counts == [expected] * len(POOLS), counts
            time.sleep(1)
        for n in POOLS:
            assert get_pool(cluster, namespace, n)["status"]["desiredReplicas"] == expected, n
            assert event_seen(cluster, namespace, n, lambda e: e["type"] == "Warning" and e["reason"] == "PrometheusUnavailable"), n
    finally:
        partition.restore(b["prom"])
    back = time.time()

    def fresh():
        return all(conditions(get_pool(cluster, namespace, n)).get("MetricsAvailable", {}).get("status") == "True"
                   for n in POOLS)

    cluster.wait_until(fresh, timeout=120, desc="every pool MetricsAvailable=True after the restore")
    recovered = time.time() - back
    for n in POOLS:
        assert replicas(cluster, namespace, n) == expected, n
        assert event_seen(cluster, namespace, n, lambda e: e["reason"] == "MetricsFresh"), n
    assert lowest == expected
    assert op.proc.poll() is None, "the operator exited"
    assert "Traceback" not in op.log_path.read_text()
    report("prometheus_link_cut", {"detected_s": round(detected, 1), "cut_s": round(back - start, 1),
                                    "recovered_s": round(recovered, 1)})


def test_apiserver_link_cut_holds_and_every_pool_is_decided_again(bed_partition):
    b = bed_partition
    cluster, namespace, op, expected, partition = b["cluster"], b["namespace"], b["op"], b["expected"], b["partition"]
    _settled(b)
    time.sleep(INTERVAL)
    scaled = sum(1 for n in POOLS for e in pool_events(cluster, namespace, n) if e["reason"] in ("ScaledUp", "ScaledDown"))
    before = {n: get_pool(cluster, namespace, n) for n in POOLS}
    log_mark = len(op.log_path.read_text())
    start = time.time()
    partition.cut(b["api"])
    partition.forget(b["api"])  # and the apiserver side gives the connections up, as after its TCP retries
    try:
        first_error = None
        while time.time() < start + API_CUT_SECONDS:  # the test's own view of the cluster is not cut
            assert [replicas(cluster, namespace, n) for n in POOLS] == [expected] * len(POOLS)
            if first_error is None and _api_errors(op.log_path.read_text()[log_mark:]):
                first_error = time.time() - start
            time.sleep(1)
        decided_during = sum(1 for d in op.decisions() if d.get("pool") in POOLS
                             and _ts(d) > start + 2 * INTERVAL and _ts(d) < time.time())
    finally:
        partition.restore(b["api"])
    back = time.time()

    def decided_again():
        now = {n: get_pool(cluster, namespace, n) for n in POOLS}
        return now if all(_history_count(now[n]) > _history_count(before[n]) + 1 for n in POOLS) else None

    after = cluster.wait_until(decided_again, timeout=180, desc="every pool decided after the restore")
    recovered = time.time() - back
    for n in POOLS:
        assert after[n]["metadata"]["uid"] == before[n]["metadata"]["uid"], n
        assert set(conditions(before[n])) <= set(conditions(after[n])), n
        assert conditions(after[n])["MetricsAvailable"]["status"] == "True", n
        assert after[n]["status"]["desiredReplicas"] == expected and replicas(cluster, namespace, n) == expected, n
    time.sleep(2 * INTERVAL)
    assert [replicas(cluster, namespace, n) for n in POOLS] == [expected] * len(POOLS)
    assert sum(1 for n in POOLS for e in pool_events(cluster, namespace, n)
               if e["reason"] in ("ScaledUp", "ScaledDown")) == scaled, "a scale happened across the partition"
    # the watches came back too: a hand edit is seen (from a watch, or by a tick reading the index) and put back
    edited = time.time()
    cluster.kubectl("-n", namespace, "scale", "deployment", POOLS[0], "--replicas=5")
    cluster.wait_until(lambda: replicas(cluster, namespace, POOLS[0]) == expected, timeout=120,
                       desc="a hand edit after the partition put back (the Deployment watch alive again)")
    put_back = time.time() - edited
    assert event_seen(cluster, namespace, POOLS[0], lambda e: e["reason"] == "ReplicasRestored" and "set to 5" in e["message"])
    assert op.proc.poll() is None, "the operator exited"
    log = op.log_path.read_text()[log_mark:]
    escalated = [line for line in log.splitlines() if "escalating" in line and "/events ->" not in line]
    assert not escalated, escalated[:3]
    assert "Traceback" not in log
    report("apiserver_link_cut", {"cut_s": round(back - start, 1),
                                   "first_api_error_logged_s": None if first_error is None else round(first_error, 1),
                                   "api_errors_logged": len(_api_errors(log)),
                                   "decisions_logged_while_cut": decided_during,
                                   "every_pool_decided_after_restore_s": round(recovered, 1),
                                   "hand_edit_put_back_s": round(put_back, 1)})


def _api_errors(log: str) -> list[str]:
    words = ("will retry", "timeout", "Timeout", "Connection", "escalating")
    return [line for line in log.splitlines() if any(w in line for w in words)]


def _ts(decision: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(decision["timestamp"].replace("Z", "+00:00")).timestamp()


