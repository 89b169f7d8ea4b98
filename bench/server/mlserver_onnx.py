"""An onnxruntime runtime for MLServer, written as an MLServer user would write one (its `MLModel` API and
codecs), for comparison (b) of bench/server/run.py: modelloop-serve and MLServer on the same runtime.

MLServer imports it by model-settings.json's `implementation` ("mlserver_onnx.OnnxModel"), from the model
folder where run.py copies it; `parameters.uri` names the model.onnx modelloop's trainer wrote. It runs in
MLServer's venv (bench/.venv-mlserver), never in modelloop's.

The graph is the one modelloop-serve loads: one input per feature, named after it, shape [n, 1]; outputs
`predict` and, for classifiers, `predict_proba`. A request carries one [n, features] tensor (decoded with
MLServer's NumpyRequestCodec, as its scikit-learn runtime does); its columns feed the graph's inputs in the
graph's order. Like modelloop-serve and MLServer's scikit-learn runtime, the answer holds `predict` unless
the request names its `outputs`. The session runs on the calling thread (one intra-op thread), as
modelloop-serve's does: each server in the benchmark has one CPU.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

PREDICT = "predict"


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


class OnnxModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        self._session = ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"])
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        wanted = [o.name for o in payload.outputs or []] or [PREDICT]
        unknown = [name for name in wanted if name not in self._output_names]
        if unknown:
            raise InferenceError(f"unknown output(s) {unknown}; this model has {self._output_names}")
        rows = np.asarray(self.decode_request(payload, default_codec=NumpyRequestCodec), dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(self._input_names):
            raise InferenceError(f"expected one tensor of shape [rows, {len(self._input_names)}], "
                                 f"got shape {list(rows.shape)}")
        feed = {name: rows[:, j:j + 1] for j, name in enumerate(self._input_names)}
        results = self._session.run(wanted, feed)
        outputs = [NumpyCodec.encode_output(name, result.reshape(-1) if name == PREDICT else result)
                   for name, result in zip(wanted, results)]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
