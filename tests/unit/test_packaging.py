"""The wheel the images install holds every package of the source tree: pyproject.toml lists packages by name,
and one left out imports from a checkout (editable install, the integration tests' operator) but not in a pod."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_python_package_of_the_source_tree_is_in_the_wheel():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in project["package-dir"].items():
        base = ROOT / folder
        found |= {".".join([name, *init.parent.relative_to(base).parts]) for init in base.rglob("__init__.py")
                  if "__pycache__" not in init.parts}
    assert found == set(project["packages"]), (
        f"missing from pyproject.toml [tool.setuptools] packages: {sorted(found - set(project['packages']))}; "
        f"listed but absent: {sorted(set(project['packages']) - found)}")
