"""The Helm chart's static files: the CRD it ships is the repository's, and its values are well-formed."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "inferencepool-operator"
CRD = "inferencepools.autoscaling.inferencepool.dev.yaml"


def test_chart_ships_the_same_inferencepool_crd():
    assert (CHART / "crds" / CRD).read_bytes() == (ROOT / "crds" / CRD).read_bytes(), (
        f"charts/inferencepool-operator/crds/{CRD} differs from crds/{CRD}: copy it over")


def test_chart_ships_kopf_peering_crds():
    names = {d["metadata"]["name"] for d in yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()) if d}
    assert names == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_default_values_satisfy_the_schema():
    jsonschema = __import__("pytest").importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    bad = dict(values, replicaCount=0)
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)
