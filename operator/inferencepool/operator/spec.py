"""Read an InferencePool's spec into the decision's PoolSpec and what the workload needs.

The CRD schema rejects most bad manifests at `kubectl apply`; this parser is the second line: a pool the
operator cannot use is reported in its status (Ready=False, reason InvalidSpec) with an error that names
the field and the fix, and never crashes the operator. Defaults here match the CRD's schema defaults
(tests/test_spec.py checks that they agree), so objects stored before a default existed read the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from inferencepool.core import schedule as floors
from inferencepool.core.policy import PoolSpec

GROUP = "autoscaling.inferencepool.dev"
VERSION = "v1alpha1"
PLURAL = "inferencepools"
KIND = "InferencePool"

# The vLLM release the default image runs (the newest on PyPI when set); workload.py decides from the
# image's version which vLLM flags it may pass.
VLLM_VERSION = "0.33.0"
DEFAULT_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"

SLO_METRICS = {"QueueWait": "wait", "TimeToFirstToken": "ttft"}
MEASURED = "Measured"

DEFAULTS = {
    "engine.image": DEFAULT_IMAGE,
    "engine.port": 8000,
    # Per replica. vLLM's Kubernetes guide requests 2 CPUs / 6G and limits 20G; the weights pass through
    # host memory while loading and /dev/shm (a memory emptyDir) counts against the limit, so more here.
    "engine.resources.cpu": "4",
    "engine.resources.memory": "32Gi",
    "engine.resources.memoryLimit": "64Gi",
    "engine.resources.sharedMemory": "8Gi",
    "drain.gracePeriodSeconds": 600,
    "drain.deregisterSeconds": 15,
    "gpu.perReplica": 1,
    "slo.metric": "QueueWait",
    "slo.percentile": 0.99,
    "slo.window": "60s",
    "slo.period": "7d",
    "minReplicas": 1,
    "scaleDown.stabilizationWindowSeconds": 300,
    "scaleDown.maxStep": 1,
    "prediction.enabled": True,
    "prediction.horizon": MEASURED,
    "prediction.coldStartSeconds": 180,
    "prediction.quantile": 0.9,
    "prediction.ramp": True,
    "metrics.maxAgeSeconds": 120,
    "headroom.hindsightFloor.windowSeconds": 3600,
    "headroom.hindsightFloor.scaleWithHeadroom": False,
    "cost.gpuHourPrice": "0",
    "cost.currency": "USD",
    "mode": "Active",
}
MODES = ("Active", "Advisory")  # Advisory: decide and report, never set the Deployment's replicas
_REQUIRED = object()

# `vllm serve` flags the operator sets itself or relies on: (flag, pattern, what to do instead). The CRD
# refuses each with the same pattern (a CEL rule per flag; tests/test_spec.py checks they agree), and
# parse() refuses them too. vLLM reads `--max_num_seqs` as `--max-num-seqs` and keeps the *last* of two
# copies of a flag (vllm/utils/argparse_utils.py, FlexibleArgumentParser), so a duplicate silently wins.
OWNED_ARGS = (
    ("--host", r"^--host(=|$)", "the operator sets it to 0.0.0.0 so the probes and the Service reach vLLM"),
    ("--port", r"^--port(=|$)", "the operator sets it: use spec.engine.port"),
    ("--served-model-name", r"^--served[-_]model[-_]name(=|$)", "the operator sets it: use spec.model.name"),
    ("--model", r"^--model(=|$)", "the operator passes the model: use spec.model.source"),
    ("--max-num-seqs", r"^--max[-_]num[-_]seqs(=|$)", "the operator sets it: use spec.slotsPerReplica"),
    ("--tensor-parallel-size", r"^(--tensor[-_]parallel[-_]size|-tp)(=|$)", "the operator sets it: use spec.gpu.perReplica"),
    ("--disable-log-stats", r"^--disable[-_]log[-_]stats(=|$)",
     "the operator sizes the pool from the engine metrics it turns off"),
    ("--shutdown-timeout", r"^--shutdown[-_]timeout(=|$)", "the operator sets it: use spec.drain.gracePeriodSeconds"),
)
# Kubernetes resource.Quantity, without a sign (apimachinery's quantity pattern).
QUANTITY = re.compile(r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


class SpecError(ValueError):
    """A spec field the operator cannot use; str() reads `spec.<field>: <what is wrong, and the fix>`."""

    def __init__(self, field: str, message: str):
        super().__init__(f"spec.{field}: {message}")
        self.field = field


class NameError(SpecError):  # noqa: A001 - a SpecError about metadata.name, not the builtin
    """The pool's name cannot name its Service; str() reads `metadata.name: <why, and the fix>`."""

    def __init__(self, message: str):
        ValueError.__init__(self, f"metadata.name: {message}")
        self.field = "metadata.name"


# A Service name is an RFC 1035 label; a node label value is at most 63 of [A-Za-z0-9_.-], alphanumeric at
# both ends (k8s.io/apimachinery/pkg/util/validation: IsDNS1035Label, IsValidLabelValue).
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def check_name(name: str | None) -> None:
    """Issue 15: `llama-3.1-8b` was accepted, but its Service could never be created."""
    if not name or len(name) > 63 or not DNS_1035.match(name):
        raise NameError(f"{name!r} cannot name the pool's Service: use at most 63 lowercase letters, digits and "
                        "'-', starting with a letter (e.g. llama-3-1-8b, not llama-3.1-8b)")


@dataclass(frozen=True)
class PoolConfig:
    """One pool as the operator uses it: the scaling policy plus the vLLM workload and its metrics."""

    policy: PoolSpec
    model_name: str  # the name clients ask for (vLLM --served-model-name)
    model_source: str  # what vLLM loads: a Hugging Face id or a path inside the pod
    model_pvc: str | None  # a PersistentVolumeClaim mounted read-only at MODEL_MOUNT
    cache_pvc: str | None  # a PersistentVolumeClaim for HF_HOME and vLLM's cache, shared by the replicas
    image: str
    port: int
    extra_args: tuple[str, ...]
    env: tuple[dict, ...]  # container env entries, passed through as written
    cpu: str  # container request
    memory: str  # container request
    memory_limit: str
    shared_memory: str  # sizeLimit of the /dev/shm memory emptyDir
    grace_period_seconds: int  # the pod's terminationGracePeriodSeconds: covers the longest request
    deregister_seconds: int  # preStop sleep, so endpoints and routers drop the pod before it drains
    gpu_product: str | None  # node label nvidia.com/gpu.product
    tolerations: tuple[dict, ...]  # extra pod tolerations, passed through as written
    node_selector: dict  # extra node labels the pods need
    prometheus_url: str | None  # None: the operator's --prometheus-url
    matchers: str  # extra PromQL label matchers, e.g. 'cluster="eu-1"'
    arrival_query: str | None  # PromQL giving the pool's arrival rate (a gateway's counter); wins when set
    currency: str
    slo_window: str = "60s"  # the SLO scoring window, a PromQL duration
    slo_period: str = "7d"  # the period attainment is measured over
    mode: str = "Active"  # Advisory: decide and report only (operator/modes.py)

    @property
    def slots(self) -> int:
        return self.policy.slots_per_replica

    @property
    def gpus_per_replica(self) -> int:
        return self.policy.gpus_per_replica


def _lookup(spec: Mapping, path: str, default=_REQUIRED):
    node, parts = spec, path.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping):
            raise SpecError(".".join(parts[:depth]), f"must be an object, got {node!r}")
        node = node.get(part)
        if node is None:
            break
    if node is None:
        default = DEFAULTS.get(path, default)
        if default is _REQUIRED:
            raise SpecError(path, "is required")
        return default
    return node


def _integer(spec: Mapping, path: str, low: int, high: int | None = None, default=_REQUIRED) -> int | None:
    value = _lookup(spec, path, default)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise SpecError(path, f"must be {bounds}, got {value}")
    return value


def _number(spec: Mapping, path: str, check, expected: str, default=_REQUIRED) -> float:
    value = _lookup(spec, path, default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SpecError(path, f"must be {expected}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not check(value):
        raise SpecError(path, f"must be {expected}, got {value!r}")
    return float(value)


def _text(spec: Mapping, path: str, default=_REQUIRED) -> str | None:
    value = _lookup(spec, path, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _list(spec: Mapping, path: str, item_type: type) -> tuple:
    value = _lookup(spec, path, [])
    if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
        raise SpecError(path, f"must be a list of {item_type.__name__}s")
    return tuple(value)


def _extra_args(spec: Mapping) -> tuple[str, ...]:
    args = _list(spec, "engine.extraArgs", str)
    for arg in args:
        for flag, pattern, fix in OWNED_ARGS:
            if re.search(pattern, arg.strip()):
                raise SpecError("engine.extraArgs", f"must not set {flag}: {fix}")
    return args


def _quantity(spec: Mapping, path: str) -> str:
    value = _lookup(spec, path)
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not QUANTITY.match(text) or _bytes(text) <= 0:
        raise SpecError(path, f'must be a Kubernetes quantity > 0 such as "4", "500m" or "32Gi", got {value!r}')
    return text


def _bytes(quantity: str) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(quantity))


def _horizon(spec: Mapping) -> float | None:
    value = _lookup(spec, "prediction.horizon")
    if value == MEASURED:
        return None
    if isinstance(value, str) and re.fullmatch(r"\d+s?", value.strip()):
        value = int(value.strip().rstrip("s"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SpecError("prediction.horizon", f"must be Measured or a number of seconds > 0 such as 120, got {value!r}")
    return float(value)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MIN_SLO_WINDOW_SECONDS = 4  # the CRD's floor: 4 scrapes at a 1 s interval; the real floor is 4 scrape intervals
MAX_SLO_WINDOWS = 20160  # windows per period (7 d of 30 s), so one attainment query stays cheap for Prometheus


def _duration(spec: Mapping, path: str, minimum: int) -> tuple[str, int]:
    """A one-unit duration such as 60s or 7d, as written (PromQL reads it) and in seconds."""
    value = _lookup(spec, path)
    match = re.fullmatch(r"([1-9][0-9]*)([smhdw])", value.strip()) if isinstance(value, str) else None
    if not match:
        raise SpecError(path, f"must be a whole number with one unit (s, m, h, d or w) such as 60s or 7d, got {value!r}")
    seconds = int(match[1]) * _DURATION_UNITS[match[2]]
    if seconds < minimum:
        raise SpecError(path, f"must be at least {minimum}s, got {value!r}")
    return match[0], seconds


def _slo_windows(spec: Mapping) -> tuple[float | None, str, str]:
    """(objective, window, period); the period must hold a whole number of windows, and not too many."""
    objective = _lookup(spec, "slo.objective", None)
    if objective is not None:
        objective = _number(spec, "slo.objective", lambda o: 0 < o < 1,
                            "a number strictly between 0 and 1 such as 0.99 (99% of windows), or unset")
    window, window_s = _duration(spec, "slo.window", MIN_SLO_WINDOW_SECONDS)
    period, period_s = _duration(spec, "slo.period", 1)
    if period_s < window_s or period_s % window_s:
        raise SpecError("slo.period", f"must be a whole number of windows (slo.window {window}), got {period}: "
                        f"e.g. {max(period_s // window_s, 1) * window_s}s")
    if period_s // window_s > MAX_SLO_WINDOWS:
        raise SpecError("slo.period", f"holds {period_s // window_s} windows of {window}, more than {MAX_SLO_WINDOWS}: "
                        "lengthen slo.window or shorten slo.period")
    return objective, window, period


def _headroom(spec: Mapping) -> dict:
    """spec.headroom: the rules beyond Erlang-C's steady state (PoolSpec's backlog drain, burst memory and
    hindsight floor), each off while unset, with the CRD's bounds (6 hours at most: one History entry per
    minute lives in status)."""
    drain = _integer(spec, "headroom.backlogDrainSeconds", 1, 3600, default=None)
    memory = _integer(spec, "headroom.burstMemorySeconds", 60, 21600, default=None)
    window = _integer(spec, "headroom.hindsightFloor.windowSeconds", 600, 21600)
    quantile = None
    if _lookup(spec, "headroom.hindsightFloor", None) is not None:
        quantile = _number(spec, "headroom.hindsightFloor.quantile", lambda q: 0.5 <= q < 1,
                           "a number in [0.5, 1) such as 0.97")
    scaled = _lookup(spec, "headroom.hindsightFloor.scaleWithHeadroom")
    if not isinstance(scaled, bool):
        raise SpecError("headroom.hindsightFloor.scaleWithHeadroom", f"must be true or false, not {scaled!r}")
    return dict(backlog_drain_seconds=None if drain is None else float(drain),
                burst_memory_seconds=None if memory is None else float(memory),
                hindsight_quantile=quantile, hindsight_seconds=float(window), hindsight_feedback=scaled)


ZERO_NEEDS = ("needs spec.metrics.arrivalRateQuery: with no replica vLLM exports no metrics, so only an upstream "
              "counter (a gateway or router) can see the first request; set it or use minReplicas >= 1")


def _schedule(spec: Mapping, min_replicas: int, max_replicas: int, gpus: int, max_gpus: int | None):
    """spec.schedule (core/schedule.py), and the floors at 0 that need an upstream arrival signal."""
    try:
        schedule = floors.parse(spec.get("schedule"), max_replicas)
    except floors.ScheduleError as error:
        raise SpecError(error.field, str(error)) from None
    has_query = _text(spec, "metrics.arrivalRateQuery", None) is not None
    if min_replicas == 0 and not has_query:
        raise SpecError("minReplicas", f"0 {ZERO_NEEDS}")
    for i, window in enumerate(schedule.windows if schedule else ()):
        if window.min_replicas == 0 and not has_query:
            raise SpecError(f"schedule.windows[{i}].minReplicas", f"0 {ZERO_NEEDS}")
        if max_gpus is not None and window.min_replicas * gpus > max_gpus:
            raise SpecError(f"schedule.windows[{i}].minReplicas", f"x gpu.perReplica ({window.min_replicas * gpus}) "
                            f"must fit maxGPUs ({max_gpus}): lower the window's floor or raise maxGPUs")
    return schedule


def _gpu_product(spec: Mapping) -> str | None:
    """Issue 15: a product that is no valid label value (100 characters, an emoji) was accepted, but the
    Deployment selecting nodes by it never was."""
    product = _text(spec, "gpu.product", None)
    if product and (len(product) > 63 or not LABEL_VALUE.match(product)):
        raise SpecError("gpu.product", f"{product[:80]!r} is not a valid node label value, as nvidia.com/gpu.product "
                        "is: at most 63 of A-Z a-z 0-9 - _ ., alphanumeric at both ends (e.g. NVIDIA-H100-80GB-HBM3)")
    return product


def parse(spec: Mapping) -> PoolConfig:
    """The pool's config, or SpecError naming the first field that cannot be used."""
    if not isinstance(spec, Mapping):
        raise SpecError("", "must be an object")
    metric = _lookup(spec, "slo.metric")
    if metric not in SLO_METRICS:
        raise SpecError("slo.metric", f"must be one of {', '.join(SLO_METRICS)}, got {metric!r}")
    percentile = _number(spec, "slo.percentile", lambda p: 0 < p < 1, "a number strictly between 0 and 1, e.g. 0.99")
    target = _number(spec, "slo.targetSeconds", lambda t: t > 0, "a number of seconds > 0, e.g. 10")
    gpus = _integer(spec, "gpu.perReplica", 1, 64)
    min_replicas = _integer(spec, "minReplicas", 0, 10000)  # 0 only with an upstream arrival signal (_schedule)
    max_replicas = _integer(spec, "maxReplicas", 1, 10000)
    if min_replicas > max_replicas:
        raise SpecError(
            "minReplicas", f"must not exceed maxReplicas ({min_replicas} > {max_replicas}); raise maxReplicas or lower minReplicas"
        )
    max_gpus = _integer(spec, "maxGPUs", 1, default=None)
    if max_gpus is not None and max_gpus < min_replicas * gpus:
        raise SpecError(
            "maxGPUs",
            f"must be at least minReplicas x gpu.perReplica = {min_replicas * gpus} so the warm floor fits, got {max_gpus}",
        )
    schedule = _schedule(spec, min_replicas, max_replicas, gpus, max_gpus)
    objective, slo_window, slo_period = _slo_windows(spec)
    token_time = _lookup(spec, "slo.maxTokenTimeSeconds", None)
    if token_time is not None:
        token_time = _number(spec, "slo.maxTokenTimeSeconds", lambda t: 0 < t <= 60,
                             "a number of seconds per output token in (0, 60] such as 0.05, or unset")
    price = _number(spec, "cost.gpuHourPrice", lambda p: p >= 0, 'a price >= 0 such as "2.50"')
    policy = PoolSpec(
        slo_metric=SLO_METRICS[metric],
        slo_percentile=percentile,
        slo_target_seconds=target,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        max_gpus=max_gpus,
        gpus_per_replica=gpus,
        slots_per_replica=_integer(spec, "slotsPerReplica", 1, 4096),
        scale_down_window_seconds=float(_integer(spec, "scaleDown.stabilizationWindowSeconds", 0, 86400)),
        scale_down_max_step=_integer(spec, "scaleDown.maxStep", 1, 10000),
        prediction=bool(_lookup(spec, "prediction.enabled")),
        prediction_horizon_seconds=_horizon(spec),
        default_cold_start_seconds=float(_integer(spec, "prediction.coldStartSeconds", 1, 86400)),
        forecast_quantile=_number(spec, "prediction.quantile", lambda q: 0.5 <= q < 1, "a number in [0.5, 1), e.g. 0.9"),
        ramp_detection=bool(_lookup(spec, "prediction.ramp")),
        max_metrics_age_seconds=float(_integer(spec, "metrics.maxAgeSeconds", 1, 86400)),
        gpu_hour_price=price,
        slo_objective=objective,
        schedule=schedule,
        max_token_time_seconds=token_time,
        **_headroom(spec),
    )
    name = _text(spec, "model.name")
    memory, memory_limit = _quantity(spec, "engine.resources.memory"), _quantity(spec, "engine.resources.memoryLimit")
    shared_memory = _quantity(spec, "engine.resources.sharedMemory")
    if _bytes(memory) > _bytes(memory_limit):
        raise SpecError("engine.resources.memory", f"must not exceed engine.resources.memoryLimit ({memory} > {memory_limit})")
    if _bytes(shared_memory) >= _bytes(memory_limit):
        raise SpecError(
            "engine.resources.sharedMemory",
            f"must be below engine.resources.memoryLimit ({shared_memory} >= {memory_limit}): /dev/shm is memory the limit counts",
        )
    grace = _integer(spec, "drain.gracePeriodSeconds", 60, 86400)
    deregister = _integer(spec, "drain.deregisterSeconds", 0, 600)
    if grace < deregister + 60:
        raise SpecError(
            "drain.gracePeriodSeconds",
            f"must be at least drain.deregisterSeconds + 60 ({deregister + 60}) to leave time to drain, got {grace}",
        )
    node_selector = _lookup(spec, "scheduling.nodeSelector", {})
    if not isinstance(node_selector, Mapping) or not all(isinstance(v, str) for v in node_selector.values()):
        raise SpecError("scheduling.nodeSelector", "must map label names to string values")
    mode = _lookup(spec, "mode")
    if mode not in MODES:
        raise SpecError("mode", f"must be Active or Advisory, got {mode!r}")
    return PoolConfig(
        mode=mode,
        policy=policy,
        model_name=name,
        model_source=_text(spec, "model.source", name),
        model_pvc=_text(spec, "model.pvcName", None),
        cache_pvc=_text(spec, "model.cachePVCName", None),
        image=_text(spec, "engine.image"),
        port=_integer(spec, "engine.port", 1, 65535),
        extra_args=_extra_args(spec),
        env=_list(spec, "engine.env", dict),
        cpu=_quantity(spec, "engine.resources.cpu"),
        memory=memory,
        memory_limit=memory_limit,
        shared_memory=shared_memory,
        grace_period_seconds=grace,
        deregister_seconds=deregister,
        gpu_product=_gpu_product(spec),
        tolerations=_list(spec, "scheduling.tolerations", dict),
        node_selector=dict(node_selector),
        prometheus_url=_text(spec, "metrics.prometheusURL", None),
        matchers=(_lookup(spec, "metrics.matchers", "") or "").strip(),
        arrival_query=_text(spec, "metrics.arrivalRateQuery", None),
        currency=_text(spec, "cost.currency"),
        slo_window=slo_window,
        slo_period=slo_period,
    )
