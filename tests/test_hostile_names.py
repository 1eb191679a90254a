"""Issue 15: names the cluster cannot use are refused up front, and kopf's failure lines keep the pool."""

from __future__ import annotations

import io
import json
import logging

import pytest

from inferencepool.operator import logs, spec as pool_spec

SPEC = {"model": {"name": "llama"}, "gpu": {"product": "NVIDIA-L4", "perReplica": 1},
        "slo": {"targetSeconds": 2, "percentile": 0.99}, "maxReplicas": 4, "slotsPerReplica": 4}


@pytest.mark.parametrize("name", ["llama-3.1-8b", "Llama", "8b-llama", "llama-", "a" * 64, "", None, "l_lama"])
def test_a_name_that_cannot_name_a_service_is_refused_naming_the_field(name):
    with pytest.raises(pool_spec.SpecError, match=r"^metadata.name: .*cannot name the pool's Service.*llama-3-1-8b"):
        pool_spec.check_name(name)


@pytest.mark.parametrize("name", ["llama-3-1-8b", "a", "a" * 63, "x1"])
def test_service_names_pass(name):
    pool_spec.check_name(name)


@pytest.mark.parametrize("product", ["x" * 64, "NVIDIA 🚀", "-H100", "H100-", "a/b", "NVIDIA H100"])
def test_a_gpu_product_that_is_no_label_value_is_refused(product):
    with pytest.raises(pool_spec.SpecError, match=r"^spec.gpu.product: .*not a valid node label value"):
        pool_spec.parse({**SPEC, "gpu": {"product": product, "perReplica": 1}})


@pytest.mark.parametrize("product", ["NVIDIA-H100-80GB-HBM3", "a", "A_b.c-d", "x" * 63])
def test_label_values_pass(product):
    assert pool_spec.parse({**SPEC, "gpu": {"product": product, "perReplica": 1}}).gpu_product == product


REF = {"apiVersion": "autoscaling.inferencepool.dev/v1alpha1", "kind": "InferencePool", "name": "llama",
       "namespace": "serving", "uid": "u-1"}


@pytest.fixture
def json_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure("json", "info")
    yield stream
    logging.getLogger().handlers[:] = []


def test_kopfs_object_lines_keep_the_pool_under_structlog(json_lines):
    logging.getLogger("kopf.objects").error("Handler 'create-workload' failed with an exception. Will retry.",
                                            extra={"k8s_ref": REF})
    line = json.loads(json_lines.getvalue().strip().splitlines()[-1])
    assert (line["pool"], line["namespace"], line["level"]) == ("llama", "serving", "error")
    assert "failed with an exception" in line["event"]


def test_handler_failures_become_one_warning_event_per_quiet_period(monkeypatch):
    posted, now = [], [0.0]
    monkeypatch.setattr("kopf.warn", lambda body, reason, message: posted.append((body, reason, message)))
    handler = logs.FailureEvents(quiet=60, clock=lambda: now[0])
    log = logging.getLogger("test.failures")
    log.handlers[:] = [handler]
    log.propagate = False
    failure = "Handler 'create-workload' failed with an exception. Will retry."
    for _ in range(3):
        log.error(failure, extra={"k8s_ref": REF})
    log.error("Request attempt #2/9 failed; will retry: PATCH ...", extra={"k8s_ref": REF})  # not a handler's
    log.error(failure)  # no object
    assert len(posted) == 1
    body, reason, message = posted[0]
    assert reason == "HandlerFailed" and message == failure
    assert body["metadata"] == {"name": "llama", "namespace": "serving", "uid": "u-1"} and body["kind"] == "InferencePool"
    now[0] = 61.0
    log.error(failure, extra={"k8s_ref": REF})
    assert len(posted) == 2
