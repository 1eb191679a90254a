"""The operator end to end on the real test bed: CRD validation, Erlang-C scaling, status, Events,
the hold without metrics, hand edits put back, GPU shortage, restart, and deletion cascading.

Each test runs its own operator (a subprocess of `python -m inferencepool.operator.run`) watching a fresh
namespace, a real Prometheus on 127.0.0.1 scraping e2e/vllm_exporter.py (one exporter per pool, labelled
with the pool's name and namespace by the static scrape config), with short windows so a test takes
about a minute: scrape 1s, operator interval 3s, rate window 30s.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from pathlib import Path

import pytest

from inferencepool.core.queueing import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from operators import INTERVAL, RATE_WINDOW, OperatorProcess, Operators, free_port  # noqa: E402,F401 - used by other e2e files
from vllm_exporter import VllmExporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "inferencepools.autoscaling.inferencepool.dev.yaml"
H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crd(cluster):
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/inferencepools.autoscaling.inferencepool.dev")
    return CRD


@pytest.fixture
def exporters():
    started = []

    def start(arrival_rate: float, service_time: float, exposition: str = "negotiate",
              rejection_rate: float = 0.0) -> VllmExporter:
        exporter = VllmExporter(exposition=exposition)
        exporter.set_load(arrival_rate, service_time, rejection_rate=rejection_rate)
        started.append(exporter.start())
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


@pytest.fixture
def operator(cluster, crd, namespace, tmp_path):
    """Factory: operator(prometheus_url, interval=...) starts one; pools are deleted before it stops (finalizers)."""
    with Operators(cluster, namespace, tmp_path / "operator.log") as start:
        yield start


def wait_for_full_window(prom, pool: str) -> None:
    """Until Prometheus holds a whole rate window of the pool's samples, rates read low (a series'
    first sample has no predecessor to count from); start deciding on full windows only."""
    prom.wait_for(" or ".join(f'count_over_time({p}num_requests_running{{pool="{pool}"}}[{RATE_WINDOW}]) >= 25'
                              for p in ("vllm:", "vllm_")), timeout=90)


def scrape_config(pool: str, namespace: str, *exporters: VllmExporter) -> dict:
    """One job per pool; each exporter is one of its pods."""
    return {"job_name": f"vllm-{pool}", "static_configs": [{
        "targets": [e.target], "labels": {"pool": pool, "namespace": namespace, "pod": f"{pool}-{i}"}}
        for i, e in enumerate(exporters)]}


# ---------------------------------------------------------------- helpers


def pool_manifest(name: str, product: str = H100, **spec) -> dict:
    base = {
        "model": {"name": "llama-8b", "source": "meta-llama/Llama-3.1-8B-Instruct"},
        "engine": {"image": "vllm/vllm-openai:fake"},
        "gpu": {"product": product, "perReplica": 1},
        "slo": {"metric": "QueueWait", "percentile": 0.99, "targetSeconds": 1},
        "minReplicas": 1,
        "maxReplicas": 8,
        "slotsPerReplica": 4,
        "scaleDown": {"stabilizationWindowSeconds": 15, "maxStep": 4},
        "prediction": {"enabled": False},
        "cost": {"gpuHourPrice": "2.50"},
    }
    base.update(spec)
    return {"apiVersion": "autoscaling.inferencepool.dev/v1alpha1", "kind": "InferencePool",
            "metadata": {"name": name}, "spec": base}


def get_pool(cluster, namespace: str, name: str) -> dict:
    return cluster.kubectl_json("-n", namespace, "get", "inferencepools.autoscaling.inferencepool.dev", name)


def conditions(pool: dict) -> dict:
    return {c["type"]: c for c in pool.get("status", {}).get("conditions", [])}


def replicas(cluster, namespace: str, name: str) -> int | None:
    r = cluster.kubectl("-n", namespace, "get", "deployment", name, "-o", "jsonpath={.spec.replicas}", check=False)
    return int(r.stdout) if r.returncode == 0 and r.stdout else None


def settled_status(cluster, namespace: str, name: str, accept, timeout: float, desc: str) -> dict:
    """The pool's status once the Deployment's replicas satisfy `accept` (a count or a predicate) and the
    status says the same: the rounds write a decision's status after its scale, on writer threads, so
    status read the moment the Deployment moved can still be the previous decision's."""
    ok = accept if callable(accept) else (lambda n: n == accept)

    def settled():
        n = replicas(cluster, namespace, name)
        if n is None or not ok(n):
            return None
        status = get_pool(cluster, namespace, name).get("status", {})
        return status if status.get("desiredReplicas") == n else None
    return cluster.wait_until(settled, timeout=timeout, desc=desc)


def event_seen(cluster, namespace: str, name: str, match, timeout: float = 30) -> dict:
    """The first Event on the pool that `match`es, waited for: Kopf posts Events from a queue of its own,
    so one can land after the status or replica change a test saw first."""
    return cluster.wait_until(lambda: next((e for e in pool_events(cluster, namespace, name) if match(e)), None),
                              timeout=timeout, desc=f"an Event on {name} that matches")


def pool_events(cluster, namespace: str, name: str) -> list[dict]:
    items = cluster.kubectl_json("-n", namespace, "get", "events", "--field-selector",
                                 f"involvedObject.kind=InferencePool,involvedObject.name={name}")["items"]
    return [{"type": e["type"], "reason": e["reason"], "message": e["message"]} for e in items]


def erlang_c_replicas(rate, service, slots, target, percentile, service_cv=1.0, arrival_cv=1.0) -> int:
    servers = Queue(rate, service, arrival_cv, service_cv).servers_for_wait_quantile(target, percentile)
    return math.ceil(servers / slots)


def robust_answer(rate, service, slots, target, percentile) -> int:
    """The Erlang-C replica count, checked to be the same for small errors in what is measured
    (rate and mean service time +-10%, service CV read as 0.95-1.25 from buckets, arrival CV 1-1.15)."""
    answers = {
        erlang_c_replicas(rate * fr, service * fs, slots, target, percentile, cs, ca)
        for fr, fs, cs, ca in itertools.product((0.9, 1, 1.1), (0.93, 1, 1.07), (0.95, 1.1, 1.25), (1.0, 1.15))
    }
    assert len(answers) == 1, f"test load is too close to a step of the answer: {answers}"
    return answers.pop()


# ---------------------------------------------------------------- tests


BAD_MANIFESTS = [
    ("slo", {"metric": "QueueWait", "percentile": 1.5, "targetSeconds": 1},
     ["spec.slo.percentile", "strictly between 0 and 1"]),
    ("slo", {"percentile": 0.99, "targetSeconds": 0}, ["spec.slo.targetSeconds", "must be > 0"]),
    ("slo", {"metric": "Latency", "targetSeconds": 1}, ["spec.slo.metric", "QueueWait", "TimeToFirstToken"]),
    ("slo", {"targetSeconds": 1, "maxTokenTimeSeconds": 0}, ["spec.slo.maxTokenTimeSeconds", "must be > 0"]),
    ("minReplicas", 9, ["spec.minReplicas", "must not exceed spec.maxReplicas"]),
    ("maxGPUs", 3, ["spec.maxGPUs", "warm floor"]),  # with minReplicas 2 x perReplica 2 below
    ("prediction", {"horizon": "soon"}, ["spec.prediction.horizon", "Measured or a whole number of seconds"]),
    ("cost", {"gpuHourPrice": "cheap"}, ["spec.cost.gpuHourPrice", "decimal price"]),
    ("slotsPerReplica", None, ["spec.slotsPerReplica", "Required value"]),
    ("headroom", {"hindsightFloor": {"quantile": 0.3}}, ["spec.headroom.hindsightFloor.quantile", "at least 0.5"]),
    ("headroom", {"backlogDrainSeconds": 0}, ["spec.headroom.backlogDrainSeconds", "greater than or equal to 1"]),
]


def test_crd_rejects_bad_manifests_naming_the_field(cluster, crd, namespace):
    for field, value, expected in BAD_MANIFESTS:
        manifest = pool_manifest("bad")
        if field == "maxGPUs":
            manifest["spec"].update(minReplicas=2, gpu={"product": H100, "perReplica": 2})
        if value is None:
            manifest["spec"].pop(field)
        else:
            manifest["spec"][field] = value
        r = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
        assert r.returncode != 0, f"{field}={value!r} was accepted"
        for text in expected:
            assert text in r.stderr, f"{field}={value!r}: {text!r} not in {r.stderr}"

    # a good one passes and comes back with the schema's defaults
    good = pool_manifest("good")
    for key in ("scaleDown", "prediction", "cost"):
        good["spec"].pop(key)
    cluster.apply(good, namespace=namespace)
    spec = get_pool(cluster, namespace, "good")["spec"]
    assert spec["scaleDown"] == {"stabilizationWindowSeconds": 300, "maxStep": 1}
    assert spec["prediction"] == {"enabled": True, "horizon": "Measured", "coldStartSeconds": 180, "quantile": 0.9, "ramp": True}
    assert spec["engine"]["port"] == 8000 and spec["cost"]["gpuHourPrice"] == "0"
    cluster.kubectl("-n", namespace, "delete", "ipool", "good")


def test_operator_sizes_the_pool_by_erlang_c(cluster, namespace, operator, prometheus, exporters):
    name, rate, service, slots, target, percentile = "llama", 4.0, 1.5, 4, 1.0, 0.99
    expected = robust_answer(rate, service, slots, target, percentile)
    assert expected >= 3
    exporter = exporters(rate, service)
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporter)])
    wait_for_full_window(prom, name)
    op = operator(prom.url)
    cluster.apply(pool_manifest(name), namespace=namespace)

    # The Deployment and Service appear, owned by the pool, and replicas go to the Erlang-C answer.
    cluster.wait_until(lambda: replicas(cluster, namespace, name) == expected, timeout=120,
                       desc=f"{expected} replicas (Erlang-C for {rate}/s x {service}s)")
    pool = get_pool(cluster, namespace, name)
    deployment = cluster.kubectl_json("-n", namespace, "get", "deployment", name)
    service_obj = cluster.kubectl_json("-n", namespace, "get", "service", name)
    for obj in (deployment, service_obj):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("InferencePool", name, pool["metadata"]["uid"], True)
    template = deployment["spec"]["template"]["spec"]
    assert template["containers"][0]["resources"] == {"requests": {"nvidia.com/gpu": "1", "cpu": "4", "memory": "32Gi"},
                                                      "limits": {"nvidia.com/gpu": "1", "memory": "64Gi"}}
    assert template["nodeSelector"] == {"nvidia.com/gpu.product": H100}

    # Pods land on H100 nodes and turn Ready after the bed's cold start; status says so.
    cluster.wait_until(lambda: get_pool(cluster, namespace, name)["status"].get("readyReplicas") == expected,
                       timeout=120, desc="all replicas Ready in status")
    status = get_pool(cluster, namespace, name)["status"]
    assert status["desiredReplicas"] == expected and status["constraint"] == "slo"
    assert status["arrivalRate"] == pytest.approx(rate, rel=0.15)
    assert status["serviceTimeSeconds"] == pytest.approx(service, rel=0.15)
    assert 0 < status["utilization"] < 1
    assert [w["replicas"] for w in status["waitExceedsTarget"]] == [expected - 1, expected, expected + 1]
    assert status["waitExceedsTarget"][1]["probability"] <= 1 - percentile
    assert status["predictedWait"].startswith("p99 wait ")
    assert status["costPerHour"] == f"{expected * 2.5:.2f} USD"
    assert status["coldStartSeconds"] >= cluster.cold_start_seconds("h100") - 1
    cond = conditions(get_pool(cluster, namespace, name))
    assert cond["MetricsAvailable"]["status"] == "True" and cond["Ready"]["status"] == "True"
    assert cond["Saturated"]["status"] == "False" and cond["ScalingLimited"]["status"] == "False"
    assert f"-> {expected}: {expected} replicas meet p99 wait <= 1s" in status["lastScaleReason"]

    # The scale has an Event with the reason in words; kubectl get ipool shows the numbers.
    events = pool_events(cluster, namespace, name)
    assert {"type": "Normal", "reason": "ScaledUp", "message": status["lastScaleReason"]} in events
    table = cluster.kubectl("-n", namespace, "get", "ipool", name).stdout
    assert "llama-8b" in table and H100 in table and "p99 wait" in table and "USD" in table
    # One decision log line with every field; the operator's own /metrics.
    decision = op.decisions()[-1]
    assert {"action", "replicas", "reason", "constraint", "p_wait_exceeds", "utilization", "predicted_wait"} <= set(decision)
    text = op.metrics_text()
    assert f'inferencepool_desired_replicas{{namespace="{namespace}",pool="{name}"}} {expected}.0' in text
    assert "inferencepool_decisions_total" in text and "inferencepool_reconcile_duration_seconds_count" in text

    # A hand edit of the replicas is put back, with an Event.
    cluster.kubectl("-n", namespace, "scale", "deployment", name, "--replicas=1")
    cluster.wait_until(lambda: any(e["reason"] == "ReplicasRestored" for e in pool_events(cluster, namespace, name)),
                       timeout=30, desc="ReplicasRestored event")
    cluster.wait_until(lambda: replicas(cluster, namespace, name) == expected, timeout=30, desc="replicas put back")

    # A restarted operator resumes from status: same answer, no new scale, the history goes on.
    before = json.loads(get_pool(cluster, namespace, name)["status"]["history"])
    op.stop()
    op = operator(prom.url)
    cluster.wait_until(
        lambda: json.loads(get_pool(cluster, namespace, name)["status"]["history"])["forecaster"]["count"]
        > before["forecaster"]["count"] + 1,
        timeout=60, desc="decisions from the restarted operator")
    after = get_pool(cluster, namespace, name)["status"]
    assert after["desiredReplicas"] == expected and replicas(cluster, namespace, name) == expected
    assert json.loads(after["history"])["last_scale_time"] == before["last_scale_time"]

    # The exporter stops: metrics go missing, the pool holds (never scales down) and says why.
    exporter.stop()
    cluster.wait_until(lambda: conditions(get_pool(cluster, namespace, name))["MetricsAvailable"]["status"] == "False",
                       timeout=60, desc="MetricsAvailable=False")
    held = conditions(get_pool(cluster, namespace, name))["MetricsAvailable"]
    assert held["reason"] in ("NoVllmSeries", "MetricsMissing", "MetricsStale") and "never scaling down" in held["message"]
    if held["reason"] == "NoVllmSeries":  # the exporter is gone: its target is down
        assert "fail to scrape (up=0)" in held["message"]
    time.sleep(3 * INTERVAL)
    assert replicas(cluster, namespace, name) == expected
    assert get_pool(cluster, namespace, name)["status"]["desiredReplicas"] == expected
    assert event_seen(cluster, namespace, name, lambda e: e["type"] == "Warning" and e["reason"] == held["reason"])

    # Deleting the pool deletes what it owns (the bed's garbage collector follows the owner refs).
    cluster.kubectl("-n", namespace, "delete", "ipool", name, "--wait=true", "--timeout=60s")
    cluster.wait_until(
        lambda: cluster.kubectl("-n", namespace, "get", "deployment,service,pods", "-o", "name").stdout.strip() == "",
        timeout=90, desc="Deployment, Service and pods garbage-collected")


def test_scale_up_stops_while_pods_wait_for_gpus(cluster, namespace, operator, prometheus, exporters):
    """The bed has 4 single-L4 nodes: a pool that needs more sees the rest Pending and stops there."""
    name, rate, service, slots, target = "mistral", 3.0, 1.5, 1, 1.0
    needed = erlang_c_replicas(rate, service, slots, target, 0.99)
    l4_gpus = sum(p["count"] * p["gpus"] for p in cluster.pools if p.get("gpuProduct") == L4)
    assert needed > l4_gpus
    exporter = exporters(rate, service)
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporter)])
    wait_for_full_window(prom, name)
    operator(prom.url)
    cluster.apply(pool_manifest(name, product=L4, slotsPerReplica=slots, maxReplicas=12), namespace=namespace)

    def limited():
        c = conditions(get_pool(cluster, namespace, name)).get("ScalingLimited", {})
        return c if c.get("status") == "True" and c.get("reason") == "InsufficientGPUs" else None

    message = cluster.wait_until(limited, timeout=120, desc="ScalingLimited=True InsufficientGPUs")["message"]
    assert "nvidia.com/gpu" in message
    status = get_pool(cluster, namespace, name)["status"]
    assert status["unschedulableReplicas"] >= 1
    at_limit = replicas(cluster, namespace, name)
    assert l4_gpus < at_limit <= needed
    time.sleep(3 * INTERVAL)
    assert replicas(cluster, namespace, name) == at_limit  # no further scale-up while pods are Pending
    assert event_seen(cluster, namespace, name, lambda e: e["reason"] == "InsufficientGPUs")


def test_one_batched_read_serves_many_pools(cluster, namespace, operator, prometheus, exporters):
    """Two pools, one Prometheus, one operator: each pool gets its own numbers from the shared queries."""
    loads = {"alpha": (2.0, 1.0), "beta": (6.0, 2.0)}
    started = {name: exporters(*load) for name, load in loads.items()}
    prom = prometheus(scrape_configs=[scrape_config(n, namespace, e) for n, e in started.items()])
    for name in loads:
        wait_for_full_window(prom, name)
    operator(prom.url)
    for name in loads:
        cluster.apply(pool_manifest(name), namespace=namespace)
    for name, (rate, service) in loads.items():
        cluster.wait_until(lambda: get_pool(cluster, namespace, name).get("status", {}).get("arrivalRate"),
                           timeout=90, desc=f"{name} arrival rate in status")
        status = get_pool(cluster, namespace, name)["status"]
        assert status["arrivalRate"] == pytest.approx(rate, rel=0.2)
        assert status["serviceTimeSeconds"] == pytest.approx(service, rel=0.2)


@pytest.mark.parametrize("expositions", [("negotiate",), ("unescaped",), ("negotiate", "unescaped")],
                         ids=["escaped", "unescaped", "both"])
def test_operator_reads_pools_whose_names_are_escaped_unescaped_or_both(cluster, namespace, operator, prometheus,
                                                                       exporters, expositions):
    """vLLM's own negotiation gives Prometheus 2.x vllm_*; older images give vllm:*; a rollout has both.
    Each pod carries its share of the load: the pool's sum is the load once, not twice. The unescaped
    pool refuses 1 of its 4 requests/s with a 503: they are demand too."""
    name, rate, service, slots, target, percentile = "qwen", 4.0, 1.5, 4, 1.0, 0.99
    expected = robust_answer(rate, service, slots, target, percentile)
    refused = 1.0 if expositions == ("unescaped",) else 0.0
    pods = [exporters((rate - refused) / len(expositions), service, e, refused) for e in expositions]
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, *pods)])
    wait_for_full_window(prom, name)
    spelled = {p for p in ("vllm:", "vllm_") if prom.query(f'{p}num_requests_running{{pool="{name}"}}')}
    assert spelled == {{"negotiate": "vllm_", "unescaped": "vllm:"}[e] for e in expositions}
    operator(prom.url)
    # the escaped pool reads its arrivals from its own query instead (as from a gateway's counter)
    query = f'sum(rate(vllm_request_success_total{{pool="{name}"}}[{RATE_WINDOW}]))' if expositions == ("negotiate",) else None
    cluster.apply(pool_manifest(name, **({"metrics": {"arrivalRateQuery": query}} if query else {})), namespace=namespace)
    status = settled_status(cluster, namespace, name, expected, timeout=120, desc=f"{expected} replicas")
    assert status["arrivalRateSource"] == ("spec.metrics.arrivalRateQuery" if query else "vLLM")
    assert status["arrivalRate"] == pytest.approx(rate, rel=0.15)
    assert status["rejectionRate"] == pytest.approx(refused, abs=0.15)
    assert status["serviceTimeSeconds"] == pytest.approx(service, rel=0.15)
    assert conditions(get_pool(cluster, namespace, name))["MetricsAvailable"]["status"] == "True"


def test_a_deployment_scaled_or_deleted_by_hand_is_put_back_from_the_watch(cluster, namespace, operator, prometheus):
    """Issue 14: the operator watches the pools' Deployments. With a 10-minute interval, the one decision
    made is the first (at creation); every put-back below comes from the watch event, which logs it."""
    name = "watched"
    prom = prometheus(scrape_configs=[])
    op = operator(prom.url, interval=600)
    cluster.apply(pool_manifest(name, minReplicas=2), namespace=namespace)
    cluster.wait_until(lambda: get_pool(cluster, namespace, name).get("status", {}).get("desiredReplicas") == 2,
                       timeout=60, desc="the first decision, at the warm floor")
    assert replicas(cluster, namespace, name) == 2

    cluster.kubectl("-n", namespace, "scale", "deployment", name, "--replicas=5")
    cluster.wait_until(lambda: op.decisions("workload restored"), timeout=60, desc="the hand edit seen from the watch")
    cluster.wait_until(lambda: replicas(cluster, namespace, name) == 2, timeout=30, desc="replicas put back")
    (restored,) = op.decisions("workload restored")
    assert (restored["trigger"], restored["replicas_set"], restored["replicas"]) == ("watch", 5, 2)
    assert restored["manager"].startswith("kubectl")
    assert event_seen(cluster, namespace, name, lambda e: e["reason"] == "ReplicasRestored" and "set to 5" in e["message"])

    uid = cluster.kubectl_json("-n", namespace, "get", "deployment", name)["metadata"]["uid"]
    cluster.kubectl("-n", namespace, "delete", "deployment", name, "--wait=true")
    cluster.wait_until(lambda: len(op.decisions("workload restored")) == 2, timeout=60, desc="the deletion seen")
    again = cluster.kubectl_json("-n", namespace, "get", "deployment", name)
    assert again["metadata"]["uid"] != uid and again["spec"]["replicas"] == 2  # at the last decision, not the default 1
    assert op.decisions("workload restored")[-1]["deleted"] is True
    assert event_seen(cluster, namespace, name, lambda e: e["reason"] == "DeploymentRestored")
    assert len(op.decisions()) == 1  # no decision did any of it


def test_a_shards_operator_is_sent_only_its_shards_pools(cluster, namespace, operator, prometheus, exporters):
    """Issue 14: `--selector` goes to the apiserver with the watch (Kopf's label_selectors), so another
    shard's pool never reaches this operator (no finalizer, no Deployment, no status), and its Prometheus
    read names its own pools (observe.scope_matcher, here on a real Prometheus). A pool relabelled into
    the shard arrives as an ADDED event and is decided on its own series; one relabelled out arrives as
    DELETED: it leaves the round and keeps its Deployment (the other shard's operator takes it from there)."""
    shard = "autoscaling.inferencepool.dev/shard"
    rates = {"mine": 2.0, "theirs": 3.0}
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporters(rate, 1.0)) for name, rate in rates.items()])
    for name in rates:
        wait_for_full_window(prom, name)
    op = operator(prom.url, extra_args=("--selector", f"{shard}=0"))

    def arrival(name):
        return get_pool(cluster, namespace, name).get("status", {}).get("arrivalRate")

    def labelled(name, value):
        manifest = pool_manifest(name, minReplicas=2)
        manifest["metadata"]["labels"] = {shard: value}
        return manifest

    def decided(name):
        return [d for d in op.decisions() if d.get("pool") == name]

    def relabel(name, value):
        cluster.kubectl("-n", namespace, "label", "ipool", name, f"{shard}={value}", "--overwrite")

    cluster.apply(labelled("mine", "0"), namespace=namespace)
    cluster.apply(labelled("theirs", "1"), namespace=namespace)
    cluster.wait_until(lambda: len(decided("mine")) >= 3, timeout=60, desc="the shard's pool decided every interval")
    cluster.wait_until(lambda: arrival("mine") is not None, timeout=60, desc="the shard's pool read from Prometheus")
    assert arrival("mine") == pytest.approx(rates["mine"], rel=0.15)
    theirs = get_pool(cluster, namespace, "theirs")
    assert "status" not in theirs and not theirs["metadata"].get("finalizers") and replicas(cluster, namespace, "theirs") is None
    assert not decided("theirs")

    relabel("theirs", "0")
    cluster.wait_until(lambda: get_pool(cluster, namespace, "theirs").get("status", {}).get("desiredReplicas") == 2,
                       timeout=60, desc="a pool relabelled into the shard decided")
    assert replicas(cluster, namespace, "theirs") == 2
    cluster.wait_until(lambda: arrival("theirs") is not None, timeout=60, desc="its series read once it joined")
    assert arrival("theirs") == pytest.approx(rates["theirs"], rel=0.15)

    relabel("mine", "1")
    time.sleep(2 * INTERVAL)  # a round already running may still decide it
    before = len(decided("mine"))
    time.sleep(4 * INTERVAL)
    assert len(decided("mine")) == before, "a pool relabelled out of the shard is still decided"
    assert len(decided("theirs")) > 2 and op.running()
    assert [e["pool"] for e in op.decisions("pool left this operator's selector")] == ["mine"]
    assert replicas(cluster, namespace, "mine") == 2  # left as it was, for the other shard's operator
    relabel("mine", "0")  # back, so that the fixture's cleanup (this operator) removes its finalizer
    cluster.wait_until(lambda: len(decided("mine")) > before, timeout=60, desc="the pool back in the shard decided")
