"""Parsing vLLM 0.33.0's own /metrics output (tests/data/vllm-0.33.0), shared by the unit and e2e tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from inferencepool.operator import observe

DATA = Path(__file__).resolve().parent / "data" / "vllm-0.33.0"
FILES = {"text": DATA / "metrics-0.33.0.txt", "escaped": DATA / "metrics-0.33.0.openmetrics-escaped.txt"}


def vllm_samples(path: Path) -> list[tuple[str, dict, float]]:
    """(name without the vllm: / vllm_ prefix, labels, value) of every vLLM sample.

    prometheus_client's text parser reads both files; its OpenMetrics parser refuses the escaped one
    ("Clashing name"), because the escaped samples no longer match their `# TYPE vllm:...` family.
    """
    out = []
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            prefix = next((p for p in observe.SPELLINGS if s.name.startswith(p)), None)
            if prefix:
                out.append((s.name[len(prefix):], s.labels, s.value))
    return out


def total(samples, name: str, **labels) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def cumulative(samples, histogram: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted((float(lab["le"]), v) for n, lab, v in samples if n == histogram + "_bucket")
    return np.array([b for b, _ in pairs]), np.array([c for _, c in pairs])


def midpoint_cv(bounds: np.ndarray, counts: np.ndarray, mean: float) -> float:
    """CV with each finite bucket's mass at its midpoint (the files put nothing in +Inf)."""
    finite = np.isfinite(bounds)
    assert counts[finite][-1] == counts[-1], "this derivation needs an empty +Inf bucket"
    edges = np.concatenate([[0.0], bounds[finite]])
    mass = np.diff(np.concatenate([[0.0], counts[finite]])) / counts[-1]
    middles = (edges[:-1] + edges[1:]) / 2
    return math.sqrt(max((mass * middles**2).sum() - (mass * middles).sum() ** 2, 0.0)) / mean
