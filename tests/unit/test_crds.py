"""The pydantic models are the single source of the CRDs."""
from __future__ import annotations

from pathlib import Path

import yaml

from modelloop.api import ModelDeployment, ModelTraining, DriftMonitor
from modelloop.api.crd import render_all
from modelloop.api.generate import differences

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_generator_output():
    assert differences() == [], "run `make crds` and commit the result"


def test_every_schema_field_has_a_description():
    def walk(node, path):
        for name, prop in node.get("properties", {}).items():
            if path and name not in ("apiVersion", "kind", "metadata"):
                assert prop.get("description"), f"{path}.{name} has no description"
            walk(prop, f"{path}.{name}" if path else name)
        if "items" in node:
            walk(node["items"], path + "[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], path + "{}")

    for name, crd in render_all().items():
        walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], crd["spec"]["names"]["kind"])


def test_examples_validate_against_the_models():
    models = {"ModelTraining": ModelTraining, "ModelDeployment": ModelDeployment, "DriftMonitor": DriftMonitor}
    seen = set()
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in models:
                models[doc["kind"]].model_validate({"spec": doc["spec"]})
                seen.add(doc["kind"])
    assert seen == set(models)


def test_conditions_are_a_list_map_keyed_by_type():
    for crd in render_all().values():
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        conditions = status["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["required"]) == {"type", "status", "reason", "lastTransitionTime"}
