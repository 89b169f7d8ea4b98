#!/usr/bin/env python3
"""Promote a model version in git: set the version a ModelDeployment serves, for Argo CD to sync.

    python promote.py deploy/churn.yaml --name churn --version 3            # pin: spec.model.version "3"
    python promote.py deploy/churn.yaml --name churn --version 3 --approve  # spec.promotion.approvedVersion 3

Pinning (`spec.model.version`, with `spec.model.fromTraining`) serves exactly that version, skipping the
metric gates; with `spec.promotion.policy: manual` the gates stay and `--approve` sets the version a human
approved. The file is edited in place as text, so comments and layout stay; the result is parsed back and
must differ from the original in that one field only, or nothing is written. Needs PyYAML.
Exit status: 0 when the file now says so (changed or already so), 1 when it cannot be edited.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml

SEPARATOR = re.compile(r"^---[ \t]*(#.*)?$", re.M)


class PromoteError(Exception):
    pass


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def set_scalar(lines: list[str], path: list[str], value: str) -> list[str]:
    """`lines` (one YAML document, block style) with the scalar at `path` set to `value` (YAML text);
    missing mappings on the way are inserted."""
    lines = list(lines)
    start, end, parent_indent = 0, len(lines), -1
    for depth, key in enumerate(path):
        child_indent = next((_indent(l) for l in lines[start:end] if _content(l)), parent_indent + 2)
        if child_indent <= parent_indent:
            child_indent = parent_indent + 2
        at = next((i for i in range(start, end) if _content(lines[i]) and _indent(lines[i]) == child_indent
                   and re.match(rf"\s*{re.escape(key)}\s*:(\s|$)", lines[i])), None)
        leaf = depth == len(path) - 1
        if at is None:  # insert the key (and, if it is not the leaf, an empty mapping under it)
            at = start
            lines.insert(at, " " * child_indent + f"{key}:" + (f" {value}" if leaf else ""))
            end += 1
            if leaf:
                return lines
        elif leaf:
            m = re.match(r"^(\s*[^:]+:\s*)([^#]*?)(\s+#.*)?$", lines[at])
            if not m or m.group(2).startswith(("{", "[", "|", ">")):
                raise PromoteError(f"{'.'.join(path)} is not a plain scalar here; edit it by hand")
            lines[at] = m.group(1) + value + (m.group(3) or "")
            return lines
        elif re.search(r":\s*\{", lines[at]):
            raise PromoteError(f"{'.'.join(path[:depth + 1])} is written in flow style ({{...}}); edit it by hand")
        block_end = next((i for i in range(at + 1, end) if _content(lines[i]) and _indent(lines[i]) <= child_indent),
                         end)
        start, end, parent_indent = at + 1, block_end, child_indent
    return lines


def promote(text: str, name: str, version: int, approve: bool) -> str:
    """The manifest text with the ModelDeployment `name` promoted to `version`."""
    # Split with the separators kept (a capturing group), so that joining gives the file back.
    chunks = re.split(r"(^---[ \t]*(?:#.*)?$)", text, flags=re.M)
    for i, chunk in enumerate(chunks):
        if SEPARATOR.fullmatch(chunk):
            continue
        doc = yaml.safe_load(chunk)
        if not (isinstance(doc, dict) and doc.get("kind") == "ModelDeployment"
                and (doc.get("metadata") or {}).get("name") == name):
            continue
        model = (doc.get("spec") or {}).get("model") or {}
        if approve:
            path, value, want = ["spec", "promotion", "approvedVersion"], str(version), version
            if (doc["spec"].get("promotion") or {}).get("policy") != "manual":
                raise PromoteError("--approve needs spec.promotion.policy manual; without it, pin the version")
        else:
            path, value, want = ["spec", "model", "version"], f'"{version}"', str(version)
            if "fromTraining" not in model:
                raise PromoteError("spec.model.version pins a version of spec.model.fromTraining; this deployment "
                                   "serves spec.model.uri: set it to <output>/v<N> instead")
        lines = chunk.split("\n")
        edited = "\n".join(set_scalar(lines, path, value))
        expected = copy.deepcopy(doc)
        node = expected
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = want
        if yaml.safe_load(edited) != expected:
            raise PromoteError(f"could not set {'.'.join(path)} by a text edit; edit it by hand")
        chunks[i] = edited
        return "".join(chunks)
    raise PromoteError(f"no ModelDeployment named {name!r} in the file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="the manifest file holding the ModelDeployment")
    parser.add_argument("--name", required=True, help="metadata.name of the ModelDeployment")
    parser.add_argument("--version", type=int, required=True, help="the model version to serve (>= 1)")
    parser.add_argument("--approve", action="store_true",
                        help="set spec.promotion.approvedVersion (policy manual) instead of pinning spec.model.version")
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error("--version must be 1 or more")
    text = args.file.read_text()
    try:
        new = promote(text, args.name, args.version, args.approve)
    except PromoteError as e:
        print(f"{args.file}: ModelDeployment/{args.name}: {e}", file=sys.stderr)
        return 1
    field = "spec.promotion.approvedVersion" if args.approve else "spec.model.version"
    if new == text:
        print(f"{args.file}: ModelDeployment/{args.name}: {field} is already {args.version}")
    else:
        args.file.write_text(new)
        print(f"{args.file}: ModelDeployment/{args.name}: {field} set to {args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
