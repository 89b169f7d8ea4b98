"""Model files built to run code through names that look allowed (numpy, sklearn, scipy, builtins).

Each attack's payload writes a marker file. The control test shows the payloads are real: loaded with
skops trusting what `get_untrusted_types` reports (the review skops asks for), predicting runs them.
load_model refuses every one before skops rebuilds a single object, naming the type, even though each
version's metadata.json lists every type of its file in `trustedTypes`.
"""
from __future__ import annotations

import functools
import json
import operator
import pickle
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import numpy.testing
import pandas as pd
import pytest
import scipy.special
import skops.io
import sklearn.utils._testing
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from modelloop.artifacts import UntrustedTypeError, deserialize_model, load_model, open_store, serialize_model

FRAME = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
LABELS = ["no", "no", "yes", "yes"]


def as_string(text: str) -> list[tuple[str, Any]]:
    """Steps turning any input into `text` (a numpy str), through functions numpy exports."""
    return [("fill", FunctionTransformer(np.full_like, kw_args={"fill_value": text, "dtype": "O", "shape": ()})),
            ("text", FunctionTransformer(np.str_))]


def ahead_of_a_classifier(*steps: tuple[str, Any]) -> Pipeline:
    return Pipeline([*steps, ("model", DummyClassifier().fit(FRAME, LABELS))])


class RunsOnUnpickle:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@dataclass(frozen=True)
class Attack:
    refused: tuple[str, ...]  # what the error must name
    build: Callable[[str, Path], Any]  # (payload code, scratch dir) -> the model object
    runs: bool = True  # the payload runs when skops trusts what it reports (checked by the control test)


def _pickle_at(tmp: Path, code: str) -> str:
    path = tmp / "model.pkl"
    path.write_bytes(pickle.dumps(RunsOnUnpickle(code)))
    return str(path)


ATTACKS = {
    # The issue's proof: numpy's test helper runstring() calls exec on its first argument.
    "numpy-function-calling-exec": Attack(
        ("numpy.testing._private.utils.runstring (function)", "numpy.full_like (function)"),
        lambda code, tmp: ahead_of_a_classifier(
            *as_string(code), ("run", FunctionTransformer(numpy.testing.runstring, kw_args={"dict": {}})))),
    "builtins-exec": Attack(
        ("builtins.exec (TypeNode)",),
        lambda code, tmp: ahead_of_a_classifier(*as_string(code), ("run", FunctionTransformer(exec)))),
    "builtins-eval": Attack(
        ("builtins.eval (TypeNode)",),
        lambda code, tmp: ahead_of_a_classifier(*as_string(code), ("run", FunctionTransformer(eval)))),
    "builtins-getattr": Attack(
        ("builtins.getattr (TypeNode)",),
        lambda code, tmp: ahead_of_a_classifier(("get", FunctionTransformer(getattr, kw_args={}))), runs=False),
    "functools-partial": Attack(
        ("functools.partial (PartialNode)", "numpy.testing._private.utils.runstring (function)"),
        lambda code, tmp: ahead_of_a_classifier(
            *as_string(code), ("run", FunctionTransformer(functools.partial(numpy.testing.runstring, dict={}))))),
    "operator-attrgetter": Attack(
        ("operator.attrgetter (OperatorFuncNode)",),
        lambda code, tmp: ahead_of_a_classifier(
            ("get", FunctionTransformer(operator.attrgetter("__class__.__init__.__globals__")))), runs=False),
    "numpy-load-allow-pickle": Attack(
        ("numpy.load (function)",),
        lambda code, tmp: ahead_of_a_classifier(
            *as_string(_pickle_at(tmp, code)),
            ("load", FunctionTransformer(np.load, kw_args={"allow_pickle": True})))),
    "joblib-load": Attack(
        ("joblib.numpy_pickle.load (function)",),
        lambda code, tmp: ahead_of_a_classifier(
            *as_string(_pickle_at(tmp, code)), ("load", FunctionTransformer(joblib.load)))),
    "sklearn-utility-running-a-script": Attack(
        ("sklearn.utils._testing.assert_run_python_script_without_output (function)",),
        lambda code, tmp: ahead_of_a_classifier(
            *as_string(code),
            ("run", FunctionTransformer(sklearn.utils._testing.assert_run_python_script_without_output)))),
    # skops trusts every scipy.special function by default; a model file may name none.
    "scipy-function": Attack(
        ("scipy.special.", "expit (function)"),
        lambda code, tmp: ahead_of_a_classifier(("squash", FunctionTransformer(scipy.special.expit))), runs=False),
    "bound-method-of-an-allowed-class": Attack(
        ("sklearn.dummy.DummyClassifier (MethodNode)",),
        lambda code, tmp: ahead_of_a_classifier(
            ("predict", FunctionTransformer(DummyClassifier().fit(FRAME, LABELS).predict))), runs=False),
}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


def payload(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


def forge_version(tmp_path: Path, data: bytes, make_metadata) -> str:
    """Commit `data` as v1 with a metadata.json that trusts every type skops reports in it."""
    output = f"file://{tmp_path}/store"
    forged = skops.io.get_untrusted_types(data=data)
    return open_store(output).commit_version(1, {"model.skops": data}, make_metadata(1, data, forged))


@pytest.mark.parametrize("name", [name for name, attack in ATTACKS.items() if attack.runs])
def test_each_payload_runs_when_skops_trusts_what_it_reports(name: str, tmp_path: Path, marker: Path) -> None:
    data = skops.io.dumps(ATTACKS[name].build(payload(marker), tmp_path))
    model = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    try:
        model.predict(FRAME)
    except Exception:  # noqa: BLE001 - the payload's return value is no valid input for what follows
        pass
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("name", ATTACKS)
def test_each_attack_is_refused_before_anything_is_built(name: str, tmp_path: Path, marker: Path,
                                                         make_metadata) -> None:
    attack = ATTACKS[name]
    data = skops.io.dumps(attack.build(payload(marker), tmp_path))
    uri = forge_version(tmp_path, data, make_metadata)

    with pytest.raises(UntrustedTypeError, match="outside modelloop's exact allow-list") as refused:
        load_model(uri)
    for type_name in attack.refused:
        assert type_name in str(refused.value)
    with pytest.raises(UntrustedTypeError):
        deserialize_model(data)
    with pytest.raises(UntrustedTypeError, match="choose other params or another estimator"):
        serialize_model(attack.build(payload(marker), tmp_path))
    assert not marker.exists()


def test_the_issue_chain_passes_the_old_prefix_allow_list_and_is_refused_before_skops_reads_it(
        tmp_path: Path, marker: Path, make_metadata, monkeypatch: pytest.MonkeyPatch) -> None:
    data = skops.io.dumps(ATTACKS["numpy-function-calling-exec"].build(payload(marker), tmp_path))
    uri = forge_version(tmp_path, data, make_metadata)
    forged = json.loads((tmp_path / "store" / "v1" / "metadata.json").read_text())["model"]["trustedTypes"]
    assert forged and all(t.startswith(("sklearn.", "numpy.", "scipy.", "builtins.")) for t in forged)

    def must_not_run(*args, **kwargs):
        raise AssertionError("skops parsed a file that names an untrusted type")
    monkeypatch.setattr(skops.io, "loads", must_not_run)
    monkeypatch.setattr(skops.io, "load", must_not_run)
    with pytest.raises(UntrustedTypeError, match="numpy.testing._private.utils.runstring"):
        load_model(uri)
    assert not marker.exists()


def _rewrite_schema(data: bytes, edit: Callable[[dict], None]) -> bytes:
    """The skops file with its schema.json edited, as an attacker with write access to the store would."""
    out = BytesIO()
    with zipfile.ZipFile(BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == "schema.json":
                schema = json.loads(content)
                edit(schema)
                content = json.dumps(schema).encode()
            target.writestr(item, content)
    return out.getvalue()


def _find(state: Any, loader: str) -> dict:
    if isinstance(state, dict):
        if state.get("__loader__") == loader:
            return state
        values = list(state.values())
    elif isinstance(state, list):
        values = state
    else:
        values = []
    for value in values:
        try:
            return _find(value, loader)
        except LookupError:
            pass
    raise LookupError(loader)


def test_an_older_skops_protocol_is_refused(tmp_path: Path, make_metadata) -> None:
    # Protocol 0 rebuilds a random Generator from any numpy.random name, without skops' later checks.
    data, _ = serialize_model(DummyClassifier().fit(FRAME, LABELS))
    edited = _rewrite_schema(data, lambda schema: schema.update(protocol=0))
    with pytest.raises(UntrustedTypeError, match=r"skops protocol 0 \(trusted: 2\)"):
        load_model(forge_version(tmp_path, edited, make_metadata))


def test_a_random_generator_naming_another_numpy_random_callable_is_refused(tmp_path: Path, make_metadata) -> None:
    data, _ = serialize_model(HistGradientBoostingClassifier(max_iter=2).fit(FRAME, LABELS))

    def swap(schema: dict) -> None:
        node = _find(schema, "RandomGeneratorNode")
        node["content"]["bit_generator"]["content"]["bit_generator"]["content"] = json.dumps("seed")
    edited = _rewrite_schema(data, swap)
    with pytest.raises(UntrustedTypeError, match=r"numpy.random.seed \(random bit generator\)"):
        load_model(forge_version(tmp_path, edited, make_metadata))


def test_an_allowed_name_under_another_node_kind_is_refused(tmp_path: Path, make_metadata) -> None:
    # The lists are per node kind: builtins.str is fine as JSON text, not as a function to call.
    data, _ = serialize_model(DummyClassifier().fit(FRAME, LABELS))

    def retype(schema: dict) -> None:
        node = _find(schema, "JsonNode")
        node.update({"__loader__": "FunctionNode", "__module__": "builtins", "__class__": "str"})
    edited = _rewrite_schema(data, retype)
    with pytest.raises(UntrustedTypeError, match=r"builtins.str \(function\)"):
        load_model(forge_version(tmp_path, edited, make_metadata))
