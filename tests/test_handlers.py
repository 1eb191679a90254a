"""The operator's glue driven without kopf or a cluster: fake Kubernetes, fake Prometheus, real decide()."""

from __future__ import annotations

import copy
import json
import math

import kopf
import pytest
from prometheus_client import CollectorRegistry

from inferencepool.operator import handlers, observe
from inferencepool.core import policy
from inferencepool.operator.metrics import OperatorMetrics
from inferencepool.core.queueing import Queue
from inferencepool.operator.spec import parse

SPEC = {
    "model": {"name": "llama"},
    "gpu": {"product": "NVIDIA-L4", "perReplica": 1},
    "slo": {"targetSeconds": 2, "percentile": 0.99},
    "minReplicas": 1,
    "maxReplicas": 10,
    "slotsPerReplica": 4,
    "prediction": {"enabled": False},
    "cost": {"gpuHourPrice": "1.50"},
}


class FakeKube:
    def __init__(self):
        self.deployments: dict[tuple, dict] = {}
        self.applied: list[str] = []
        self.scaled: list[int] = []
        self.pod_list: list[dict] = []
        self.calls: list[tuple] = []  # ("annotate", pod, annotations) and ("scale", replicas), in order

    def apply(self, manifest):
        """Server-side apply of the template manager, with its rule for spec.replicas: applying it makes
        the manager an owner; omitting it drops the manager's claim, and a field nobody owns is removed
        (the Deployment falls back to Kubernetes' default of 1)."""
        key = (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        self.applied.append(manifest["kind"])
        if manifest["kind"] == "Deployment":
            live = self.deployments.setdefault(key, {"spec": {"replicas": 1}, "status": {}, "metadata": {}})
            fields = [e for e in live["metadata"].get("managedFields", []) if e["manager"] != handlers.FIELD_MANAGER]
            if "replicas" in manifest["spec"]:
                live["spec"]["replicas"] = manifest["spec"]["replicas"]
                fields.append({"manager": handlers.FIELD_MANAGER, "fieldsV1": {"f:spec": {"f:replicas": {}}}})
            elif not handlers.replicas_managers({"metadata": {"managedFields": fields}}):
                live["spec"]["replicas"] = 1
            live["metadata"] = {**copy.deepcopy(manifest["metadata"]), "managedFields": fields}

    def deployment(self, namespace, name):
        return copy.deepcopy(self.deployments.get((namespace, name)))

    def pods(self, namespace, name):
        return self.pod_list

    def annotate_pod(self, namespace, name, annotations):
        self.calls.append(("annotate", name, dict(annotations)))
        for pod in self.pod_list:
            if pod["metadata"]["name"] == name:
                pod["metadata"].setdefault("annotations", {}).update(annotations)

    def own_replicas(self, namespace, name, replicas):
        live = self.deployments[(namespace, name)]
        assert live["spec"]["replicas"] == replicas  # a claim, not a change
        live["metadata"]["managedFields"].append(
            {"manager": handlers.SCALER_MANAGER, "fieldsV1": {"f:spec": {"f:replicas": {}}}})

    def scale(self, namespace, name, replicas, manager=handlers.SCALER_MANAGER):
        self.calls.append(("scale", replicas))
        live = self.deployments[(namespace, name)]
        live["spec"]["replicas"] = replicas
        live["metadata"]["managedFields"] = [{"manager": manager, "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
        if manager == handlers.SCALER_MANAGER:
            self.scaled.append(replicas)

    def set_ready(self, n):
        for live in self.deployments.values():
            live["status"]["readyReplicas"] = n


class FakeReader:
    def __init__(self):
        self.pools: dict | Exception = {}
        self.values: dict[str, tuple] = {}
        self.forgotten: list[tuple[str, str]] = []

    def read(self, url=None, matchers="", pool=None):
        if isinstance(self.pools, Exception):
            raise self.pools
        return self.pools

    def value(self, url, promql):
        return self.values[promql]

    def forget(self, namespace, name):
        self.forgotten.append((namespace, name))


class FakeRunning:
    """Per-pod running requests, as drain.RunningReader returns them."""

    def __init__(self):
        self.running: dict[str, float] = {}
        self.asked: list[tuple] = []
        self.last_error = None

    def read(self, url, namespace, pool, matchers=""):
        self.asked.append((url, namespace, pool, matchers))
        return dict(self.running)


class Pool:
    """A pool object whose status is updated from each tick's patch, as the API server would."""

    def __init__(self, spec=SPEC, name="llama", uid="uid-1"):
        self.raw = {
            "apiVersion": "autoscaling.inferencepool.dev/v1alpha1",
            "kind": "InferencePool",
            "metadata": {"name": name, "namespace": "serving", "uid": uid, "generation": 1},
            "spec": copy.deepcopy(spec),
            "status": {},
        }

    def tick(self, operator, handler="autoscale"):
        patch = kopf.Patch()
        getattr(operator, handler)(body=kopf.Body(self.raw), status=copy.deepcopy(self.raw["status"]), patch=patch)
        for key, value in (patch.get("status") or {}).items():
            if value is None:
                self.raw["status"].pop(key, None)
            else:
                self.raw["status"][key] = value
        return self.raw["status"]


@pytest.fixture
def events(monkeypatch):
    seen = []
    monkeypatch.setattr(kopf, "info", lambda body, reason, message: seen.append(("Normal", reason, message)))
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: seen.append(("Warning", reason, message)))
    return seen


@pytest.fixture
def world():
    kube, reader = FakeKube(), FakeReader()
    config = handlers.OperatorConfig(interval=3)
    operator = handlers.Operator(config, reader, kube, OperatorMetrics(CollectorRegistry()), running=FakeRunning())
    return operator, kube, reader


def metrics(rate, service=1.0, age=1.0, **extra):
    import time

    return {("serving", "llama"): observe.PoolMetrics(
        newest_sample_time=time.time() - age, arrival_rate=rate, completion_rate=rate, service_time=service, **extra
    )}


def erlang_c_replicas(rate, service, slots=4, target=2.0, p=0.99):
    return math.ceil(Queue(rate, service).servers_for_wait_quantile(target, p) / slots)


def condition(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_first_tick_creates_the_workload_and_scales_to_the_erlang_c_answer(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    status = Pool().tick(operator)
    expected = erlang_c_replicas(12.0, 1.5)
    assert expected > 1
    assert kube.applied == ["Deployment", "Service"]
    assert kube.scaled == [expected]
    assert status["desiredReplicas"] == expected and status["constraint"] == "slo"
    assert status["arrivalRate"] == 12.0 and status["serviceTimeSeconds"] == 1.5
    assert status["costPerHour"] == f"{expected * 1.5:.2f} USD"
    assert status["predictedWait"].startswith("p99 wait ")
    assert [w["replicas"] for w in status["waitExceedsTarget"]] == [expected - 1, expected, expected + 1]
    assert condition(status, "MetricsAvailable")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "NoReadyReplicas"
    assert json.loads(status["history"])["last_service_time"] == 1.5
    assert status["lastScaleReason"] == status["reason"]
    assert ("Normal", "ScaledUp", status["reason"]) in events


def test_second_tick_patches_nothing_when_nothing_changes(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    pool = Pool()
    pool.tick(operator)
    kube.set_ready(kube.scaled[-1])
    events.clear()
    status = pool.tick(operator)
    assert len(kube.scaled) == 1 and kube.applied == ["Deployment", "Service"]
    assert condition(status, "Ready")["status"] == "True"
    assert [e[1] for e in events] == ["Serving"]  # recovery noted once, no scale event


def test_missing_metrics_hold_and_say_why_once(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    pool = Pool()
    pool.tick(operator)
    scaled = kube.scaled[-1]
    reader.pools = {}
    events.clear()
    status = pool.tick(operator)
    assert kube.scaled == [scaled] and status["desiredReplicas"] == scaled
    metrics_condition = condition(status, "MetricsAvailable")
    assert (metrics_condition["status"], metrics_condition["reason"]) == ("False", "NoVllmSeries")
    assert "never scaling down without metrics" in metrics_condition["message"]
    assert 'no series vllm:num_requests_running nor vllm_num_requests_running with pool="llama"' in metrics_condition["message"]
    assert "examples/prometheus-scrape.yaml" in metrics_condition["message"]
    assert "arrivalRate" not in status
    assert [e[:2] for e in events] == [("Warning", "NoVllmSeries")]
    events.clear()
    pool.tick(operator)
    assert events == []  # not once per tick


def test_a_scraped_pool_without_vllm_series_says_to_check_port_and_path(world, events):
    operator, kube, reader = world
    reader.pools = observe.Pools({("serving", "llama"): observe.PoolMetrics(newest_sample_time=None, targets_up=1.0)})
    status = Pool().tick(operator)
    c = condition(status, "MetricsAvailable")
    assert c["reason"] == "NoVllmSeries" and "(up=1)" in c["message"] and "--disable-log-stats" in c["message"]
    reader.pools = observe.Pools({("serving", "llama"): observe.PoolMetrics(newest_sample_time=None, targets_up=0.0)})
    assert "fail to scrape (up=0)" in condition(Pool().tick(operator), "MetricsAvailable")["message"]


def test_series_without_an_arrival_rate_are_missing_metrics_not_missing_series(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=None, service=1.5)
    c = condition(Pool().tick(operator), "MetricsAvailable")
    assert (c["status"], c["reason"]) == ("False", "MetricsMissing")


def test_stale_metrics_and_prometheus_errors_hold_too(world, events):
    operator, kube, reader = world
    pool = Pool()
    reader.pools = metrics(rate=12.0, service=1.5)
    pool.tick(operator)
    reader.pools = metrics(rate=0.0, service=1.5, age=600)
    status = pool.tick(operator)
    assert condition(status, "MetricsAvailable")["reason"] == "MetricsStale" and len(kube.scaled) == 1
    reader.pools = observe.PrometheusUnavailable("Prometheus at http://x failed on waiting: refused")
    status = pool.tick(operator)
    assert condition(status, "MetricsAvailable")["reason"] == "PrometheusUnavailable" and len(kube.scaled) == 1


def test_a_hand_edit_is_put_back_with_an_event(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    pool = Pool()
    pool.tick(operator)
    desired = kube.scaled[-1]
    kube.scale("serving", "llama", 9, manager="kubectl")
    events.clear()
    status = pool.tick(operator)
    assert kube.scaled[-1] == desired and status["desiredReplicas"] == desired
    assert events[0][:2] == ("Warning", "ReplicasRestored") and "set to 9" in events[0][2]


def test_invalid_spec_is_reported_not_crashed_on(world, events):
    operator, kube, reader = world
    pool = Pool({**SPEC, "slo": {"targetSeconds": 2, "percentile": 1.5}})
    status = pool.tick(operator)
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith("spec.slo.percentile: must be a number strictly between 0 and 1")
    assert kube.applied == [] and kube.scaled == []
    assert [e[:2] for e in events] == [("Warning", "InvalidSpec")]
    pool.tick(operator, "ensure")
    assert len(events) == 1


def test_pending_pods_stop_further_scale_up(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=2.0, service=1.0)
    pool = Pool()
    current = pool.tick(operator)["desiredReplicas"]
    kube.pod_list = [{
        "metadata": {"name": "llama-x", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]},
    }]
    reader.pools = metrics(rate=30.0, service=1.0)
    status = pool.tick(operator)
    assert kube.deployments[("serving", "llama")]["spec"]["replicas"] == current
    assert status["constraint"] == "unschedulable" and status["desiredReplicas"] == current
    limited = condition(status, "ScalingLimited")
    assert (limited["status"], limited["reason"]) == ("True", "InsufficientGPUs")
    assert "Insufficient nvidia.com/gpu" in limited["message"]


def test_overload_goes_to_the_cap_and_says_saturated(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=100.0, service=1.0)  # 100 Erlangs > 10 replicas x 4 slots
    status = Pool().tick(operator)
    assert kube.scaled == [10] and status["constraint"] == "max_replicas"
    assert condition(status, "Saturated")["status"] == "True"
    assert condition(status, "ScalingLimited")["reason"] == "MaxReplicas"


def test_a_restarted_operator_resumes_from_status(world, events):
    operator, kube, reader = world
    spec = {**SPEC, "prediction": {"enabled": True, "horizon": 60}}
    reader.pools = metrics(rate=12.0, service=1.5)
    pool = Pool(spec)
    pool.tick(operator)
    pool.tick(operator)
    first = policy.History.from_dict(json.loads(pool.raw["status"]["history"]))
    assert first.forecaster is not None and first.forecaster.count >= 1
    # a brand-new Operator (a restart) picks the history up from status
    fresh = handlers.Operator(operator.config, reader, kube, OperatorMetrics(CollectorRegistry()))
    status = pool.tick(fresh)
    resumed = policy.History.from_dict(json.loads(status["history"]))
    assert resumed.forecaster.count == first.forecaster.count + 1 or resumed.forecaster.time > first.forecaster.time
    assert status["horizonSeconds"] == 60 and status["forecastRate"] is not None


def test_changed_template_is_reapplied(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=1.0, service=1.0)
    pool = Pool()
    pool.tick(operator)
    pool.raw["spec"]["engine"] = {"image": "vllm/vllm-openai:v0.11.0"}
    pool.tick(operator)
    assert kube.applied == ["Deployment", "Service", "Deployment", "Service"]


def test_replicas_manager_reads_managed_fields():
    d = {"metadata": {"managedFields": [
        {"manager": "inferencepool", "fieldsV1": {"f:spec": {"f:template": {}}}},
        {"manager": "kubectl", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
    ]}}
    assert handlers.replicas_manager(d) == "kubectl"
    assert handlers.replicas_manager({"metadata": {}}) is None


def test_parse_is_what_the_operator_uses():
    assert parse(SPEC).policy.slots_per_replica == 4


def test_conditions_keep_their_transition_time_until_they_change():
    from inferencepool.operator import status as pool_status

    before = [pool_status.condition("Ready", True, "Serving", "2 of 2", 1000.0, 1)]
    same = [pool_status.condition("Ready", True, "Serving", "3 of 3", 2000.0, 1)]
    flipped = [pool_status.condition("Ready", False, "NoReadyReplicas", "0 of 3", 3000.0, 1)]
    assert pool_status.merge_conditions(before, same)[0]["lastTransitionTime"] == pool_status.timestamp(1000.0)
    assert pool_status.merge_conditions(before, same)[0]["message"] == "3 of 3"
    assert pool_status.merge_conditions(before, flipped)[0]["lastTransitionTime"] == pool_status.timestamp(3000.0)
    assert pool_status.changed(before, same) == [] and pool_status.changed(before, flipped) == flipped


def test_status_numbers_are_rounded_and_unknowns_dropped():
    from inferencepool.operator.status import rounded

    assert rounded(3.14159265) == 3.142 and rounded(0.000123456) == 0.0001235 and rounded(12345.6) == 12350
    assert rounded(None) is None and rounded(math.inf) is None and rounded(0) == 0.0


def test_a_new_deployment_starts_at_the_warm_floor():
    kube = FakeKube()
    operator = handlers.Operator(handlers.OperatorConfig(), FakeReader(), kube, OperatorMetrics(CollectorRegistry()))
    pool = Pool({**SPEC, "minReplicas": 3})
    pool.tick(operator, handler="ensure")
    (live,) = kube.deployments.values()
    assert live["spec"]["replicas"] == 3  # not Kubernetes' default of 1
    kube.scale("serving", "llama", 5)
    pool.tick(operator, handler="ensure")  # a later apply leaves the count to the scaler
    assert live["spec"]["replicas"] == 5 and kube.applied == ["Deployment", "Service", "Deployment", "Service"]


def test_the_pools_arrival_rate_query_wins_over_vllms_counters(world, events):
    operator, kube, reader = world
    query = 'sum(rate(gateway_requests_total{route="llama"}[2m]))'
    spec = {**SPEC, "metrics": {"arrivalRateQuery": query}}
    reader.pools = metrics(rate=2.0, service=1.5)
    reader.values[query] = (12.0, None)
    status = Pool(spec).tick(operator)
    assert status["arrivalRate"] == 12.0 and status["arrivalRateSource"] == "spec.metrics.arrivalRateQuery"
    assert status["desiredReplicas"] == erlang_c_replicas(12.0, 1.5)
    reader.values[query] = (None, "returned no series")  # the gateway's counter is gone: hold, say why
    pool = Pool(spec)
    pool.raw["status"] = dict(status)
    held = pool.tick(operator)
    c = condition(held, "MetricsAvailable")
    assert (c["reason"], held["desiredReplicas"]) == ("MetricsMissing", status["desiredReplicas"])
    assert c["message"].startswith("spec.metrics.arrivalRateQuery returned no series; holding")
    assert Pool().tick(operator)["arrivalRateSource"] == "vLLM"


def test_measurement_limits_are_a_condition_with_what_was_done_instead(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    assert condition(Pool().tick(operator), "MeasurementLimited")["status"] == "False"

    short = {**SPEC, "slo": {"targetSeconds": 0.1, "percentile": 0.99}}
    reader.pools = observe.Pools(metrics(rate=12.0, service=1.5, queue_buckets=((0.3, 5.0), (math.inf, 5.0))))
    reader.pools.window_note, reader.pools.scrape_interval, reader.pools.rate_window = "windows raised", 15.0, "2m"
    status = Pool(short).tick(operator)
    c = condition(status, "MeasurementLimited")
    assert (c["status"], c["reason"]) == ("True", "BelowHistogramResolution")
    assert "slo.targetSeconds 0.1s is below vLLM's smallest queue-time bucket (0.3s)" in c["message"]
    assert c["message"].endswith("; windows raised")
    assert (status["scrapeIntervalSeconds"], status["rateWindow"]) == (15.0, "2m")
    assert ("Warning", "BelowHistogramResolution") in [e[:2] for e in events]


def test_negative_or_absurd_values_with_fresh_timestamps_never_scale_down(world, events):
    """Issue 15's probe: Prometheus answered negative values with a fresh timestamp and a pool went 5 -> 3."""
    import time

    operator, kube, reader = world
    spec = {**SPEC, "scaleDown": {"stabilizationWindowSeconds": 0, "maxStep": 10}}
    pool = Pool(spec)

    def read(completions, waiting=2.0):
        now = time.time()
        results = {
            "completion_rate": [{"metric": {"namespace": "serving", "pool": "llama"}, "value": [now, str(completions)]}],
            "waiting": [{"metric": {"namespace": "serving", "pool": "llama"}, "value": [now, str(waiting)]}],
            "newest_sample": [{"metric": {"namespace": "serving", "pool": "llama"}, "value": [now, str(now - 1)]}],
            "service_mean": [{"metric": {"namespace": "serving", "pool": "llama"}, "value": [now, "1.5"]}],
        }
        return observe.pool_metrics(results, observe.QuerySettings())

    reader.pools = read(12.0)
    pool.tick(operator)
    before = kube.scaled[-1]
    assert before == erlang_c_replicas(12.0, 1.5) > 1
    for completions, waiting, signal in ((-12.0, 2.0, "completion_rate"), (0.0, -5.0, "waiting"), (1e308, 2.0, "completion_rate")):
        reader.pools = read(completions, waiting)
        status = pool.tick(operator)
        assert kube.scaled[-1] == before and status["desiredReplicas"] == before
        c = condition(status, "MetricsAvailable")
        assert (c["status"], c["reason"]) == ("False", "InvalidMetrics") and signal in c["message"]
        assert "never scaling down" in c["message"]
    reader.pools = read(0.0)  # a real zero: now it may scale down
    pool.tick(operator)
    assert kube.scaled[-1] < before and condition(pool.raw["status"], "MetricsAvailable")["reason"] == "MetricsFresh"


def test_an_invalid_field_caught_by_decide_is_invalid_metrics_too(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=5e6, service=1.5)  # above decide()'s 1e6/s bound, below observe's 1e12
    c = condition(Pool().tick(operator), "MetricsAvailable")
    assert (c["status"], c["reason"]) == ("False", "InvalidMetrics") and "arrival_rate" in c["message"]


def test_a_spec_change_never_resets_the_replica_count():
    kube = FakeKube()
    operator = handlers.Operator(handlers.OperatorConfig(), FakeReader(), kube, OperatorMetrics(CollectorRegistry()))
    pool = Pool({**SPEC, "minReplicas": 3})
    pool.tick(operator, handler="ensure")
    (live,) = kube.deployments.values()
    assert handlers.replicas_managers(live) == {handlers.FIELD_MANAGER, handlers.SCALER_MANAGER}
    pool.raw["spec"]["slo"]["targetSeconds"] = 5  # any edit re-applies the template, which has no replicas
    pool.tick(operator, handler="ensure")
    assert live["spec"]["replicas"] == 3 and kube.scaled == []
    # a Deployment created before the scaler co-owned its count: the scaler claims it before the apply
    live["metadata"]["managedFields"] = [{"manager": handlers.FIELD_MANAGER, "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    pool.tick(operator, handler="ensure")
    assert live["spec"]["replicas"] == 3 and handlers.SCALER_MANAGER in handlers.replicas_managers(live)


def _pod(name, cost=None, terminating=False):
    meta = {"name": name, "annotations": {} if cost is None else {"controller.kubernetes.io/pod-deletion-cost": cost}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def _scaled_up_then_down(operator, kube, reader):
    """A pool scaled up whose load falls so that the next tick removes one replica."""
    pool = Pool({**SPEC, "scaleDown": {"stabilizationWindowSeconds": 0, "maxStep": 1}})
    reader.pools = metrics(rate=6.0, service=1.0)
    pool.tick(operator)
    up = kube.scaled[-1]
    kube.set_ready(up)
    kube.calls.clear()
    reader.pools = metrics(rate=0.5, service=1.0)
    pool.tick(operator)
    return up


def test_scale_down_first_marks_the_idlest_pods(world, events):
    operator, kube, reader = world
    kube.pod_list = [_pod("a"), _pod("b", cost="7"), _pod("c", cost="1"), _pod("d"), _pod("gone", terminating=True)]
    operator.running.running = {"a": 5.0, "b": 0.4, "c": 1.0, "gone": 0.0}  # d: no series
    up = _scaled_up_then_down(operator, kube, reader)
    assert up >= 2 and kube.scaled[-1] == up - 1
    # a and b change, c already right, d has no data and keeps its annotation, the terminating pod is left alone
    assert kube.calls == [
        ("annotate", "a", {"controller.kubernetes.io/pod-deletion-cost": "5"}),
        ("annotate", "b", {"controller.kubernetes.io/pod-deletion-cost": "0"}),
        ("scale", up - 1),
    ]
    assert operator.running.asked == [(None, "serving", "llama", "")]


def test_no_per_pod_data_leaves_the_annotations_and_still_scales_down(world, events):
    operator, kube, reader = world
    kube.pod_list = [_pod("a", cost="3"), _pod("b")]
    up = _scaled_up_then_down(operator, kube, reader)
    assert kube.calls == [("scale", up - 1)]
    assert kube.pod_list[0]["metadata"]["annotations"] == {"controller.kubernetes.io/pod-deletion-cost": "3"}


def test_scale_up_and_hold_read_no_per_pod_data(world, events):
    operator, kube, reader = world
    kube.pod_list = [_pod("a")]
    reader.pools = metrics(rate=12.0, service=1.5)
    pool = Pool()
    pool.tick(operator)
    pool.tick(operator)
    assert operator.running.asked == [] and not any(c[0] == "annotate" for c in kube.calls)


def test_an_objective_puts_measured_attainment_in_status_metrics_and_observations(world, events, monkeypatch):
    """The handler passes the last window's share to decide() and writes status.slo and the gauges."""
    operator, kube, reader = world
    asked = []

    def results_at(url, named, at):
        asked.append(at)
        sample = lambda v: [{"metric": {"namespace": "serving", "pool": "llama"}, "value": [at, str(v)]}]  # noqa: E731
        return {"attainment": sample(0.995), "windows": sample(100), "last_good": sample(0.97)}

    reader.results_at, reader.settings = results_at, observe.QuerySettings()
    pools = observe.Pools(metrics(rate=12.0, service=1.5, queue_buckets=((1.0, 5.0), (2.0, 9.0), (math.inf, 10.0))))
    pools.scrape_interval = 15.0
    reader.pools = pools
    seen = []
    real_decide = policy.decide
    monkeypatch.setattr(policy, "decide", lambda spec, obs, history: seen.append(obs) or real_decide(spec, obs, history))
    pool = Pool({**SPEC, "slo": {**SPEC["slo"], "objective": 0.99}})
    status = pool.tick(operator)
    assert status["slo"]["attainment"] == 0.995 and status["slo"]["errorBudgetRemaining"] == pytest.approx(0.5)
    assert status["slo"]["measuredWindows"] == 100 and status["slo"]["lastWindowGoodShare"] == 0.97
    assert seen[-1].slo_window_end == asked[-1] and asked[-1] % 60 == 0 and seen[-1].slo_window_good == 0.97
    registry = operator.metrics.registry
    labels = {"namespace": "serving", "pool": "llama"}
    assert registry.get_sample_value("inferencepool_error_budget_remaining", labels) == pytest.approx(0.5)
    operator.forget(body=kopf.Body(pool.raw))
    assert registry.get_sample_value("inferencepool_slo_attainment", labels) is None
    assert reader.forgotten == [("serving", "llama")]  # the reader drops its per-token-time history too


def test_the_wait_correction_is_fitted_from_the_queue_histogram_kept_in_status_and_logged(world, events, monkeypatch):
    """Each tick compares the model's P(wait > 2 s) at the Ready slots with the share of the 2 m window's
    requests over 2 s in vLLM's queue-time histogram; the sums live in status.history, so a restarted
    operator keeps the factor; status.waitCorrection and the reason show it."""
    import time

    operator, kube, reader = world
    rate, service = 6.0, 1.5  # 9 Erlangs on 3 x 4 slots
    heavy = min(1.0, 2.5 * Queue(rate, service).prob_wait_exceeds(12, 2.0))  # the real tail is 2.5x the model's
    buckets = ((0.3, rate * (1 - 3 * heavy)), (2.0, rate * (1 - heavy)), (math.inf, rate))  # bucket rates per s
    pool = Pool()
    for k in range(40):
        now = 1000.0 + 15.0 * k  # each tick 15 s apart, as the timer runs
        monkeypatch.setattr(time, "time", lambda: now)
        reader.pools = observe.Pools(metrics(rate=rate, service=service, queue_buckets=buckets))
        reader.pools.rate_window = "2m"
        status = pool.tick(operator)
        kube.scale("serving", "llama", 3, manager=handlers.FIELD_MANAGER)  # hold the pool at 3 Ready replicas
        kube.set_ready(3)
        pool.raw["status"]["desiredReplicas"] = 3
    assert status["observedWaitExceedsTarget"] == pytest.approx(heavy, rel=0.01)
    history = policy.History.from_dict(json.loads(status["history"]))
    assert history.tail_observed > history.tail_predicted > 0
    assert 1.5 < status["waitCorrection"] <= 3.0
    assert policy.correction_factor(history) == pytest.approx(status["waitCorrection"], rel=5e-3)
    assert "model tail x" in status["reason"]
