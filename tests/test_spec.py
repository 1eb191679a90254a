"""InferencePool spec -> PoolConfig: values, defaults (the same as the CRD's), and errors that name the field."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from inferencepool.operator import spec as pool_spec
from inferencepool.operator.spec import SpecError, parse

CRD = Path(__file__).resolve().parents[1] / "crds" / "inferencepools.autoscaling.inferencepool.dev.yaml"

MINIMAL = {
    "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
    "slo": {"targetSeconds": 10},
    "maxReplicas": 8,
    "slotsPerReplica": 16,
}

FULL = {
    "model": {"name": "llama-70b", "source": "/models/llama-3.1-70b", "pvcName": "weights", "cachePVCName": "hf"},
    "engine": {"image": "vllm/vllm-openai:v0.9.0", "port": 8080, "extraArgs": ["--max-model-len", "8192"],
               "env": [{"name": "HF_HOME", "value": "/cache"}],
               "resources": {"cpu": "500m", "memory": "100Gi", "memoryLimit": "200Gi", "sharedMemory": "20Gi"}},
    "drain": {"gracePeriodSeconds": 1200, "deregisterSeconds": 30},
    "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "perReplica": 4},
    "scheduling": {"nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "dedicated", "operator": "Exists"}]},
    "slo": {"metric": "TimeToFirstToken", "percentile": 0.95, "targetSeconds": 2.5},
    "minReplicas": 2,
    "maxReplicas": 10,
    "maxGPUs": 32,
    "slotsPerReplica": 64,
    "scaleDown": {"stabilizationWindowSeconds": 600, "maxStep": 2},
    "prediction": {"enabled": False, "horizon": 240, "coldStartSeconds": 400, "quantile": 0.95, "ramp": False},
    "metrics": {"prometheusURL": "http://prom:9090", "matchers": 'cluster="eu"', "maxAgeSeconds": 60},
    "cost": {"gpuHourPrice": "2.50", "currency": "EUR"},
}


def with_(base: dict, path: str, value) -> dict:
    spec = copy.deepcopy(base)
    node = spec
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return spec


def test_minimal_spec_gets_the_defaults():
    config = parse(MINIMAL)
    p = config.policy
    assert (p.slo_metric, p.slo_percentile, p.slo_target_seconds) == ("wait", 0.99, 10.0)
    assert (p.min_replicas, p.max_replicas, p.max_gpus, p.gpus_per_replica, p.slots_per_replica) == (1, 8, None, 1, 16)
    assert (p.scale_down_window_seconds, p.scale_down_max_step) == (300.0, 1)
    assert p.prediction and p.prediction_horizon_seconds is None and p.default_cold_start_seconds == 180.0
    assert (p.forecast_quantile, p.max_metrics_age_seconds, p.gpu_hour_price) == (0.9, 120.0, 0.0)
    assert p.ramp_detection  # spec.prediction.ramp defaults to true, as the CRD does
    assert config.model_source == config.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert (config.image, config.port, config.extra_args, config.gpu_product) == ("vllm/vllm-openai:v0.33.0", 8000, (), None)
    assert config.image == pool_spec.DEFAULT_IMAGE == f"vllm/vllm-openai:v{pool_spec.VLLM_VERSION}"
    assert (config.cpu, config.memory, config.memory_limit, config.shared_memory) == ("4", "32Gi", "64Gi", "8Gi")
    assert (config.grace_period_seconds, config.deregister_seconds, config.cache_pvc) == (600, 15, None)
    assert (config.prometheus_url, config.matchers, config.currency) == (None, "", "USD")


def test_full_spec_maps_every_field():
    config = parse(FULL)
    p = config.policy
    assert (p.slo_metric, p.slo_percentile, p.slo_target_seconds) == ("ttft", 0.95, 2.5)
    assert (p.min_replicas, p.max_replicas, p.max_gpus, p.gpus_per_replica, p.slots_per_replica) == (2, 10, 32, 4, 64)
    assert p.replica_cap == 8
    assert (p.scale_down_window_seconds, p.scale_down_max_step) == (600.0, 2)
    assert (p.prediction, p.prediction_horizon_seconds, p.default_cold_start_seconds, p.forecast_quantile) == (False, 240.0, 400.0, 0.95)
    assert not p.ramp_detection
    assert (p.max_metrics_age_seconds, p.gpu_hour_price) == (60.0, 2.5)
    assert (config.model_name, config.model_source, config.model_pvc) == ("llama-70b", "/models/llama-3.1-70b", "weights")
    assert (config.image, config.port, config.extra_args) == ("vllm/vllm-openai:v0.9.0", 8080, ("--max-model-len", "8192"))
    assert config.env == ({"name": "HF_HOME", "value": "/cache"},)
    assert (config.cpu, config.memory, config.memory_limit, config.shared_memory) == ("500m", "100Gi", "200Gi", "20Gi")
    assert (config.grace_period_seconds, config.deregister_seconds, config.cache_pvc) == (1200, 30, "hf")
    assert config.gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert config.node_selector == {"pool": "gpu"} and config.tolerations == ({"key": "dedicated", "operator": "Exists"},)
    assert (config.prometheus_url, config.matchers, config.currency) == ("http://prom:9090", 'cluster="eu"', "EUR")


@pytest.mark.parametrize("horizon, seconds", [("Measured", None), (300, 300.0), ("300", 300.0), ("300s", 300.0)])
def test_horizon_is_measured_or_seconds(horizon, seconds):
    assert parse(with_(MINIMAL, "prediction.horizon", horizon)).policy.prediction_horizon_seconds == seconds


@pytest.mark.parametrize("price", ["2.50", 2.5, "0"])
def test_price_as_string_or_number(price):
    assert parse(with_(MINIMAL, "cost.gpuHourPrice", price)).policy.gpu_hour_price == float(price)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("slo.percentile", 1.0, "spec.slo.percentile: must be a number strictly between 0 and 1, e.g. 0.99"),
        ("slo.percentile", 0, "spec.slo.percentile: must be a number strictly between 0 and 1"),
        ("slo.percentile", "p99", "spec.slo.percentile: must be a number strictly between 0 and 1"),
        ("slo.targetSeconds", 0, "spec.slo.targetSeconds: must be a number of seconds > 0"),
        ("slo.targetSeconds", None, "spec.slo.targetSeconds: is required"),
        ("slo.metric", "Latency", "spec.slo.metric: must be one of QueueWait, TimeToFirstToken"),
        ("model.name", "", "spec.model.name: must be a non-empty string"),
        ("minReplicas", 0, "spec.minReplicas: 0 needs spec.metrics.arrivalRateQuery"),
        ("minReplicas", -1, "spec.minReplicas: must be between 0 and 10000"),
        ("minReplicas", 9, "spec.minReplicas: must not exceed maxReplicas (9 > 8)"),
        ("maxReplicas", 2.5, "spec.maxReplicas: must be a whole number"),
        ("slotsPerReplica", None, "spec.slotsPerReplica: is required"),
        ("gpu.perReplica", 0, "spec.gpu.perReplica: must be between 1 and 64"),
        ("maxGPUs", 0, "spec.maxGPUs: must be >= 1"),
        ("prediction.horizon", "soon", "spec.prediction.horizon: must be Measured or a number of seconds > 0"),
        ("prediction.quantile", 0.3, "spec.prediction.quantile: must be a number in [0.5, 1)"),
        ("cost.gpuHourPrice", "cheap", 'spec.cost.gpuHourPrice: must be a price >= 0 such as "2.50"'),
        ("engine.extraArgs", "--x", "spec.engine.extraArgs: must be a list of strs"),
        ("scheduling.nodeSelector", {"a": 1}, "spec.scheduling.nodeSelector: must map label names to string values"),
        ("metrics.arrivalRateQuery", " ", "spec.metrics.arrivalRateQuery: must be a non-empty string"),
        ("engine.resources.cpu", "four", 'spec.engine.resources.cpu: must be a Kubernetes quantity > 0 such as "4"'),
        ("engine.resources.memory", "0", "spec.engine.resources.memory: must be a Kubernetes quantity > 0"),
        ("engine.resources.memory", "65Gi", "spec.engine.resources.memory: must not exceed engine.resources.memoryLimit (65Gi > 64Gi)"),
        ("engine.resources.sharedMemory", "64Gi", "spec.engine.resources.sharedMemory: must be below engine.resources.memoryLimit"),
        ("drain.gracePeriodSeconds", 30, "spec.drain.gracePeriodSeconds: must be between 60 and 86400"),
        ("drain.gracePeriodSeconds", 70, "spec.drain.gracePeriodSeconds: must be at least drain.deregisterSeconds + 60 (75)"),
        ("drain.deregisterSeconds", -1, "spec.drain.deregisterSeconds: must be between 0 and 600"),
        ("engine.extraArgs", ['--port=9000'], "spec.engine.extraArgs: must not set --port: the operator sets it: use spec.engine.port"),
        ("engine.extraArgs", ['--max_num_seqs'], "spec.engine.extraArgs: must not set --max-num-seqs: the operator sets it: use spec.slotsPerReplica"),
        ("engine.extraArgs", ['-tp'], "spec.engine.extraArgs: must not set --tensor-parallel-size: the operator sets it: use spec.gpu.perReplica"),
        ("engine.extraArgs", ['--disable-log-stats'], "spec.engine.extraArgs: must not set --disable-log-stats: the operator sizes the pool from the engine metrics"),
        ("engine.extraArgs", [' --served-model-name'], "spec.engine.extraArgs: must not set --served-model-name: the operator sets it: use spec.model.name"),
        ("engine.extraArgs", ['--shutdown-timeout=5'], "spec.engine.extraArgs: must not set --shutdown-timeout: the operator sets it: use spec.drain.gracePeriodSeconds"),
        ("slo.maxTokenTimeSeconds", 0, "spec.slo.maxTokenTimeSeconds: must be a number of seconds per output token in (0, 60]"),
        ("slo.maxTokenTimeSeconds", "fast", "spec.slo.maxTokenTimeSeconds: must be a number of seconds per output token"),
        ("slo.maxTokenTimeSeconds", 61, "spec.slo.maxTokenTimeSeconds: must be a number of seconds per output token in (0, 60]"),
        ("slo.objective", 1.0, "spec.slo.objective: must be a number strictly between 0 and 1"),
        ("headroom.backlogDrainSeconds", 0, "spec.headroom.backlogDrainSeconds: must be between 1 and 3600, got 0"),
        ("headroom.burstMemorySeconds", 86400, "spec.headroom.burstMemorySeconds: must be between 60 and 21600"),
        ("headroom.hindsightFloor.quantile", 1.0, "spec.headroom.hindsightFloor.quantile: must be a number in [0.5, 1)"),
        ("headroom.hindsightFloor.windowSeconds", 60, "spec.headroom.hindsightFloor.windowSeconds: must be between 600 and 21600"),
        ("slo.objective", 0, "spec.slo.objective: must be a number strictly between 0 and 1"),
        ("slo.window", "1 minute", "spec.slo.window: must be a whole number with one unit"),
        ("slo.window", 60, "spec.slo.window: must be a whole number with one unit"),
        ("slo.window", "3s", "spec.slo.window: must be at least 4s"),
        ("slo.period", "7days", "spec.slo.period: must be a whole number with one unit"),
        ("slo.period", "30s", "spec.slo.period: must be a whole number of windows (slo.window 60s)"),
        ("slo.period", "90s", "spec.slo.period: must be a whole number of windows (slo.window 60s), got 90s: e.g. 60s"),
        ("slo.period", "30d", "spec.slo.period: holds 43200 windows of 60s, more than 20160"),
    ],
)
def test_errors_name_the_field_and_the_fix(path, value, message):
    spec = with_(MINIMAL, path, value)
    if value is None:
        parent, _, leaf = path.rpartition(".")
        (spec[parent] if parent else spec).pop(leaf)
    with pytest.raises(SpecError) as caught:
        parse(spec)
    assert str(caught.value).startswith(message)
    assert caught.value.field == path


def test_extra_args_the_operator_does_not_own_pass_through():
    args = ["--max-model-len", "8192", "--port-offset", "1", "--disable-log-requests", "--model-impl", "vllm",
            "--pipeline-parallel-size", "2", "--served-model", "x"]
    assert parse(with_(MINIMAL, "engine.extraArgs", args)).extra_args == tuple(args)


def _crd_extra_args_rules() -> dict[str, tuple[str, str]]:
    """{message: (CEL regex, rule)} of the CRD's extraArgs rules."""
    crd = yaml.safe_load(CRD.read_text())
    engine = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["engine"]
    rules = engine["properties"]["extraArgs"]["x-kubernetes-validations"]
    return {r["message"]: (re.fullmatch(r"!self\.exists\(a, a\.trim\(\)\.matches\('(.*)'\)\)", r["rule"]).group(1), r["rule"])
            for r in rules}


def test_crd_refuses_the_same_flags_as_the_parser():
    rules = _crd_extra_args_rules()
    expected = {f"spec.engine.extraArgs must not set {flag}: {fix}": pattern
                for flag, pattern, fix in pool_spec.OWNED_ARGS}
    assert {message: pattern for message, (pattern, _) in rules.items()} == expected


def test_gpu_budget_must_fit_the_warm_floor():
    spec = {**MINIMAL, "minReplicas": 3, "gpu": {"perReplica": 2}, "maxGPUs": 5}
    with pytest.raises(SpecError, match=r"spec.maxGPUs: must be at least minReplicas x gpu.perReplica = 6"):
        parse(spec)


def test_a_spec_that_is_not_an_object_is_an_error_not_a_crash():
    with pytest.raises(SpecError):
        parse(["not", "a", "spec"])
    with pytest.raises(SpecError, match="spec.slo: must be an object"):
        parse({**MINIMAL, "slo": "p99 < 10s"})


def _crd_defaults(schema: dict, prefix: str = "") -> dict:
    found = {}
    for name, prop in (schema.get("properties") or {}).items():
        path = f"{prefix}{name}"
        if "default" in prop and prop.get("type") != "object":
            found[path] = prop["default"]
        found.update(_crd_defaults(prop, path + "."))
    return found


def test_crd_defaults_match_the_parser_defaults():
    crd = yaml.safe_load(CRD.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _crd_defaults(spec_schema) == pool_spec.DEFAULTS


def test_crd_names_and_required_fields():
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == pool_spec.GROUP
    assert crd["spec"]["names"]["kind"] == pool_spec.KIND
    assert crd["spec"]["names"]["plural"] == pool_spec.PLURAL
    assert crd["spec"]["names"]["shortNames"] == ["ipool"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == pool_spec.VERSION and version["subresources"] == {"status": {}}
    assert set(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"]) == {
        "model", "slo", "maxReplicas", "slotsPerReplica"
    }
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Model", "GPU", "Desired", "Ready", "Arrival/s", "Predicted", "Cost/h", "Age"} <= columns


def test_the_examples_parse():
    examples = sorted((CRD.parents[1] / "examples").glob("*.yaml"))
    pools = [doc for path in examples for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "InferencePool"]
    assert len(pools) >= 2
    for pool in pools:
        parse(pool["spec"])


def test_arrival_rate_query_is_optional_and_kept_as_written():
    assert parse(MINIMAL).arrival_query is None
    query = 'sum(rate(gateway_requests_total{route="llama"}[2m]))'
    assert parse(with_(MINIMAL, "metrics.arrivalRateQuery", query)).arrival_query == query


def test_slo_objective_window_and_period():
    config = parse(with_(with_(with_(MINIMAL, "slo.objective", 0.99), "slo.window", "5m"), "slo.period", "30d"))
    assert (config.policy.slo_objective, config.slo_window, config.slo_period) == (0.99, "5m", "30d")
    default = parse(MINIMAL)
    assert (default.policy.slo_objective, default.slo_window, default.slo_period) == (None, "60s", "7d")
    assert parse(with_(with_(MINIMAL, "slo.window", "4s"), "slo.period", "1h")).slo_window == "4s"


def test_max_token_time_is_optional_parsed_and_in_the_crd_with_the_same_bounds():
    assert parse(MINIMAL).policy.max_token_time_seconds is None
    assert parse(with_(MINIMAL, "slo.maxTokenTimeSeconds", 0.05)).policy.max_token_time_seconds == 0.05
    assert parse(with_(MINIMAL, "slo.maxTokenTimeSeconds", "0.05")).policy.max_token_time_seconds == 0.05
    crd = yaml.safe_load(CRD.read_text())
    slo = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["slo"]
    field = slo["properties"]["maxTokenTimeSeconds"]
    assert field["type"] == "number" and "maxTokenTimeSeconds" not in slo["required"] and "default" not in field
    (rule,) = field["x-kubernetes-validations"]
    assert rule["rule"] == "self > 0.0 && self <= 60.0"
    assert rule["message"].startswith("spec.slo.maxTokenTimeSeconds must be > 0 and at most 60")


def test_headroom_rules_are_off_unless_set_and_reach_the_policy():
    off = parse(MINIMAL).policy
    assert (off.backlog_drain_seconds, off.burst_memory_seconds, off.hindsight_quantile) == (None, None, None)
    on = parse(with_(MINIMAL, "headroom", {"backlogDrainSeconds": 10, "burstMemorySeconds": 1800,
                                           "hindsightFloor": {"quantile": "0.97", "windowSeconds": 1800}})).policy
    assert (on.backlog_drain_seconds, on.burst_memory_seconds, on.hindsight_quantile, on.hindsight_seconds) == (
        10.0, 1800.0, 0.97, 1800.0)
    assert parse(with_(MINIMAL, "headroom.hindsightFloor", {"quantile": 0.9})).policy.hindsight_seconds == 3600.0
    assert (on.hindsight_feedback, off.hindsight_feedback) == (False, False)
    scaled = parse(with_(MINIMAL, "headroom.hindsightFloor", {"quantile": 0.9, "scaleWithHeadroom": True})).policy
    assert scaled.hindsight_feedback is True
    with pytest.raises(SpecError, match=r"^spec.headroom.hindsightFloor.scaleWithHeadroom: must be true or false"):
        parse(with_(MINIMAL, "headroom.hindsightFloor", {"quantile": 0.9, "scaleWithHeadroom": "yes"}))
    with pytest.raises(SpecError, match=r"^spec.headroom.hindsightFloor.quantile: is required"):
        parse(with_(MINIMAL, "headroom.hindsightFloor", {"windowSeconds": 1800}))
    crd = yaml.safe_load(CRD.read_text())
    headroom = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["headroom"]
    drain, memory = headroom["properties"]["backlogDrainSeconds"], headroom["properties"]["burstMemorySeconds"]
    assert (drain["minimum"], drain["maximum"], memory["minimum"], memory["maximum"]) == (1, 3600, 60, 21600)
    floor = headroom["properties"]["hindsightFloor"]
    window = floor["properties"]["windowSeconds"]
    assert floor["required"] == ["quantile"] and (window["minimum"], window["maximum"], window["default"]) == (600, 21600, 3600)
    assert (floor["properties"]["scaleWithHeadroom"]["type"], floor["properties"]["scaleWithHeadroom"]["default"]) == ("boolean", False)
    (rule,) = floor["properties"]["quantile"]["x-kubernetes-validations"]
    assert rule["rule"] == "self >= 0.5 && self < 1.0"
