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


def test_storage_uris_are_checked_the_same_way_by_the_models_as_by_the_schema():
    from pydantic import ValidationError

    from modelloop.api.common import STORAGE_URI_RULE, URI_PATTERN, check_storage_uri, uri_path_problem

    training = yaml.safe_load((ROOT / "examples" / "training.yaml").read_text().split("---")[1])["spec"]
    for bad in ("s3://bucket/a/../b.csv", "s3://bucket//b.csv", "pvc://claim/./x", "file:///data/..",
                "s3://bucket/x.csv#frag", "s3://bucket/x\ny.csv"):
        try:
            ModelTraining.model_validate({"spec": {**training, "dataset": {**training["dataset"], "uri": bad}}})
        except ValidationError as e:
            assert e.errors()[0]["loc"][:3] == ("spec", "dataset", "uri")
        else:
            raise AssertionError(f"{bad!r} accepted")
        try:
            check_storage_uri(bad, "annotation x")
        except ValueError as e:
            assert str(e).startswith("annotation x ")
        else:
            raise AssertionError(f"{bad!r} accepted")
    for good in ("s3://bucket/a/b.csv", "s3://bucket/models/", "file:///data/x..y.csv", "pvc://claim/.hidden"):
        assert uri_path_problem(good) is None and check_storage_uri(good, "f") == good
    # The CRD carries the pattern and the same segment rule, for every storage URI field.
    crds = {c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for c in render_all().values()}
    uri = crds["ModelTraining"]["properties"]["spec"]["properties"]["dataset"]["properties"]["uri"]
    assert uri["pattern"] == URI_PATTERN and uri["x-kubernetes-validations"] == [STORAGE_URI_RULE]
