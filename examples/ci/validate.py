#!/usr/bin/env python3
"""Validate modelloop manifests against the CRDs' OpenAPI schemas, offline (no cluster).

    python validate.py --crds path/to/modelloop/crds manifests/ [more files or folders]

Every YAML document whose apiVersion belongs to a CRD's group is checked against that CRD's
openAPIV3Schema as the API server checks it: types, enums, patterns, bounds, required fields and unknown
fields (which the API server refuses under strict field validation), duplicates in list-type set and map
fields. Other documents (Secrets, Kustomize
files) are skipped. Each error names the file, the object and the field:

    manifests/deployment.yaml: ModelDeployment/churn: spec.replicas: -2 is less than the minimum of 0

Not checked here: the CRDs' CEL rules (x-kubernetes-validations: cross-field rules, durations,
quantities, path segments of storage URIs). A server-side dry run checks those, and everything else the
API server checks (`kubectl apply --dry-run=server`; the CI templates' second job).

Needs PyYAML and jsonschema only, so a model repository's CI can run it without installing modelloop.
Exit status: 0 when every manifest is valid, 1 otherwise, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml
from jsonschema import Draft4Validator, ValidationError, validators


def _list_map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-type: map: no two items with the same keys (e.g. two env entries named A)."""
    if not isinstance(instance, list):
        return
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                yield ValidationError(f"duplicate entries with {', '.join(f'{k}={v!r}' for k, v in zip(keys, key))}")
            seen.add(key)


# Draft 4 (OpenAPI 3.0's boolean exclusiveMinimum/Maximum), plus the list-map uniqueness of structural schemas.
Validator = validators.extend(Draft4Validator, {"listMapKeys": _list_map_keys})


def load_crds(paths: list[Path]) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the JSON schema of each served version of each CRD under `paths`."""
    schemas = {}
    for path in paths:
        for file in sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]:
            for doc in yaml.safe_load_all(file.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    if version.get("served", True):
                        schema = json_schema(version["schema"]["openAPIV3Schema"])
                        schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return schemas


def json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A structural schema as JSON Schema draft 4 (OpenAPI 3.0's boolean exclusiveMinimum/Maximum):
    objects with properties refuse unknown fields unless x-kubernetes-preserve-unknown-fields says
    otherwise; list types become uniqueness checks; CEL rules and the other x-kubernetes-* extensions are
    dropped."""
    list_type = node.get("x-kubernetes-list-type")
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    map_keys = node.get("x-kubernetes-list-map-keys")
    node = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if list_type == "set":
        node["uniqueItems"] = True
    elif list_type == "map" and map_keys:
        node["listMapKeys"] = map_keys
    if "properties" in node:
        node["properties"] = {k: json_schema(v) for k, v in node["properties"].items()}
        node.setdefault("additionalProperties", bool(preserve))
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = json_schema(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = json_schema(node["items"])
    return node


def field_path(error) -> str:
    """`spec.dataset.features[1]`; for a missing or unknown field, the field itself."""
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if error.validator == "required":
        missing = error.message.split("'")[1]
        path = f"{path}.{missing}" if path else missing
    elif error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        path = ", ".join(f"{path}.{e}" if path else e for e in extra)
    return path or "(object)"


def documents(paths: list[Path]) -> Iterator[tuple[Path, int, Any]]:
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
        for file in files:
            try:
                for i, doc in enumerate(yaml.safe_load_all(file.read_text())):
                    if doc is not None:
                        yield file, i, doc
            except yaml.YAMLError as e:
                yield file, -1, e


def validate(paths: list[Path], schemas: dict[tuple[str, str], dict]) -> tuple[list[str], list[dict]]:
    """(errors, the modelloop objects checked)."""
    groups = {api.split("/")[0] for api, _ in schemas}
    errors, checked = [], []
    for file, index, doc in documents(paths):
        if isinstance(doc, yaml.YAMLError):
            errors.append(f"{file}: not valid YAML: {doc}")
            continue
        if not isinstance(doc, dict) or str(doc.get("apiVersion", "")).split("/")[0] not in groups:
            continue
        name = (doc.get("metadata") or {}).get("name") or f"document {index + 1}"
        where = f"{file}: {doc.get('kind')}/{name}"
        schema = schemas.get((doc["apiVersion"], doc.get("kind")))
        if schema is None:
            known = sorted({f"{k} ({a})" for a, k in schemas})
            errors.append(f"{where}: apiVersion {doc['apiVersion']} has no kind {doc.get('kind')!r}; known: {', '.join(known)}")
            continue
        checked.append(doc)
        obj = copy.deepcopy(doc)
        obj.pop("status", None)  # written by the operator; the API server ignores it on apply
        if not (obj.get("metadata") or {}).get("name") and not (obj.get("metadata") or {}).get("generateName"):
            errors.append(f"{where}: metadata.name: required")
        for error in sorted(Validator(schema).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            errors.append(f"{where}: {field_path(error)}: {error.message}")
    return errors, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crds", type=Path, action="append", required=True,
                        help="a CRD file or a folder of them (modelloop's crds/); repeatable")
    parser.add_argument("paths", type=Path, nargs="+", help="manifest files or folders (*.yaml, *.yml)")
    parser.add_argument("--select", action="store_true", help=(
        "print the modelloop objects (valid ones only, none on error) as a YAML stream on stdout, e.g. for "
        "`kubectl apply --dry-run=server -f -`; the summary goes to stderr"))
    args = parser.parse_args(argv)
    for p in [*args.crds, *args.paths]:
        if not p.exists():
            parser.error(f"{p} does not exist")
    schemas = load_crds(args.crds)
    if not schemas:
        parser.error(f"no CustomResourceDefinition found in {', '.join(map(str, args.crds))}")
    errors, checked = validate(args.paths, schemas)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"{len(checked)} modelloop manifest(s) checked against {len(schemas)} CRD schema(s): "
          + (f"{len(errors)} error(s)" if errors else "valid"), file=sys.stderr if args.select else sys.stdout)
    if args.select and not errors:
        print(yaml.safe_dump_all(checked, sort_keys=False), end="")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
