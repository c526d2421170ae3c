"""`portrait_onnxruntime`: a Python-based Triton backend that runs `1/model.onnx` in ONNX Runtime.

The Triton build that runs on CPU here ships only the Python backend, so every model of the
repository is served through this one file. Triton's dynamic batcher hands `execute` several
requests at once; they run as one ONNX Runtime call and are split back per request.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        threads = int(parameters.get("intra_op_threads", {}).get("string_value", "1"))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests):
        inputs = [
            [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names]
            for r in requests
        ]
        sizes = [arrays[0].shape[0] for arrays in inputs]
        shapes = {tuple(a.shape[1:] for a in arrays) for arrays in inputs}
        if len(shapes) == 1:
            feed = {n: np.concatenate([a[i] for a in inputs]) for i, n in enumerate(self.input_names)}
            outputs = self.session.run(self.output_names, feed)
            bounds = np.cumsum(sizes)[:-1]
            per_request = zip(*(np.split(o, bounds) for o in outputs))
        else:
            per_request = (
                self.session.run(self.output_names, dict(zip(self.input_names, arrays)))
                for arrays in inputs
            )
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor(n, np.ascontiguousarray(o)) for n, o in zip(self.output_names, outs)]
            )
            for outs in per_request
        ]
