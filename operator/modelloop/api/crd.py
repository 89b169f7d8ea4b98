"""Turns the pydantic models of the resources into CustomResourceDefinitions.

The models are the single source of truth: `make crds` writes crds/*.yaml and the chart's CRDs from
here, and tests/unit/test_crds.py fails when the committed files differ from this output.

Pydantic emits JSON Schema (2020-12 flavour, with $ref, anyOf-null and numeric exclusive bounds);
Kubernetes wants a structural OpenAPI v3.0 schema. `structural` converts one into the other.
"""
from __future__ import annotations

import copy
from typing import Any

from . import deployment, drift, training
from .common import CATEGORY, GROUP, VERSION

KINDS = (training.KIND, deployment.KIND, drift.KIND)
_DROP = {"title"}


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Convert a pydantic JSON schema to a structural OpenAPI v3 schema (refs inlined)."""
    defs = schema.get("$defs", {})

    def convert(node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            ref = node.pop("$ref").rsplit("/", 1)[-1]
            target = convert(defs[ref])
            # Field-level description and extensions win over the referenced model's own.
            return {**target, **convert_keywords(node)}
        any_of = node.pop("anyOf", None)
        if any_of is not None:
            options = [o for o in any_of if o.get("type") != "null"]
            types = sorted(o.get("type") for o in options)
            if node.get("x-kubernetes-int-or-string") or types == ["integer", "string"]:
                node["x-kubernetes-int-or-string"] = True
                # The options' bounds apply to their own type only (OpenAPI), so they can sit side by side.
                for option in options:
                    node.update({k: v for k, v in option.items() if k != "type"})
            elif len(options) == 1:
                return convert({**options[0], **node})
            else:
                raise ValueError(f"unsupported union in CRD schema: {any_of}")
        return convert_keywords(node)

    def convert_keywords(node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP or key == "$defs":
                continue
            if key == "default" and value is None:
                continue
            if key == "properties":
                out[key] = {k: convert(v) for k, v in value.items()}
            elif key == "items":
                out[key] = convert(value)
            elif key == "additionalProperties":
                if value is True or value == {}:
                    out["x-kubernetes-preserve-unknown-fields"] = True
                elif isinstance(value, dict):
                    out[key] = convert(value)
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                out[bound] = value
                out[key] = True
            elif key == "format" and value == "date-time":
                out[key] = value
            else:
                out[key] = copy.deepcopy(value)
        return _settle_type(out)

    return convert(schema)


def _settle_type(out: dict[str, Any]) -> dict[str, Any]:
    """The `type` a structural schema wants once a node's keywords are converted: none for int-or-string, object for
    preserved unknown fields, string for an enum without one."""
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "default" in out and isinstance(out["default"], dict) and not out["default"]:
        out["default"] = {}
    return out


def _fill_object_defaults(schema: dict[str, Any]) -> None:
    """An optional object whose fields have defaults gets `default: {}`, so that the API server fills
    in the nested defaults even when the user omits the object (one source: the nested fields)."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        nested = prop.get("properties", {})
        if name not in required and not prop.get("required") and any("default" in p for p in nested.values()):
            prop["default"] = {}
        _fill_object_defaults(prop)
    if "items" in schema:
        _fill_object_defaults(schema["items"])


def kind_schema(kind: dict[str, Any]) -> dict[str, Any]:
    model = kind["model"]
    body = structural(model.model_json_schema(by_alias=True, mode="validation"))
    _fill_object_defaults(body)
    props = body["properties"]
    props["status"].pop("default", None)
    return {
        "type": "object",
        "description": body.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this representation of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": props["spec"],
            "status": props["status"],
        },
        **({"x-kubernetes-validations": body["x-kubernetes-validations"]} if "x-kubernetes-validations" in body else {}),
    }


def render_crd(kind: dict[str, Any]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    subresources: dict[str, Any] = {"status": {}}
    if kind["scale"]:
        subresources["scale"] = kind["scale"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind['plural']}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelloop"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind["kind"], "listKind": f"{kind['kind']}List", "plural": kind["plural"],
                "singular": kind["singular"], "shortNames": kind["short_names"], "categories": [CATEGORY],
            },
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": kind_schema(kind)},
                "subresources": subresources,
                "additionalPrinterColumns": kind["printer_columns"],
            }],
        },
    }


def render_all() -> dict[str, dict[str, Any]]:
    """File name → CRD, for every kind."""
    return {f"{GROUP}_{k['plural']}.yaml": render_crd(k) for k in KINDS}
