"""Graph edits that turn the published files into servable ONNX models.

Each edit is exact: folding evaluates the same arithmetic the runtime would, and the
batch edits change only shapes. The build validates the result against the source.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from portrait.modelrepo.specs import ModelSpec

# Ops allowed to follow a DequantizeLinear in a weight chain (all shape/type only).
_WEIGHT_CHAIN_OPS = {"DequantizeLinear", "Reshape", "Transpose", "Cast", "Identity", "Squeeze", "Unsqueeze"}


def prune_inputs(model: onnx.ModelProto) -> None:
    """Old exporters list weights (and weights no node reads) as graph inputs; runtimes then
    cannot treat them as constants and callers would have to feed them."""
    initializers = {t.name for t in model.graph.initializer}
    consumed = {name for node in model.graph.node for name in node.input}
    keep = [i for i in model.graph.input if i.name not in initializers and i.name in consumed]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def fold_weight_chains(model: onnx.ModelProto) -> int:
    """Replace DequantizeLinear weight chains by fp32 initializers; return how many nodes went."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    folded: list[onnx.NodeProto] = []
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node in folded or node.op_type not in _WEIGHT_CHAIN_OPS:
                continue
            if not all(name == "" or name in constants for name in node.input):
                continue
            if node.op_type != "DequantizeLinear" and not _fed_by_dequantize(node, folded):
                continue
            values = _evaluate(node, constants, opset)
            constants.update(zip(node.output, values))
            folded.append(node)
            changed = True
    for node in folded:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = {t.name for t in graph.initializer if t.name in used}
    fresh = [
        numpy_helper.from_array(np.asarray(value), name)
        for name, value in constants.items()
        if name in used and name not in kept
    ]
    survivors = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(survivors + fresh)
    return len(folded)


def _fed_by_dequantize(node: onnx.NodeProto, folded: list[onnx.NodeProto]) -> bool:
    outputs = {name for done in folded for name in done.output}
    return any(name in outputs for name in node.input)


def _evaluate(node: onnx.NodeProto, constants: dict[str, np.ndarray], opset) -> list[np.ndarray]:
    inputs = [n for n in node.input if n]
    single = onnx.helper.make_model(
        onnx.helper.make_graph(
            [node],
            "fold",
            [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in inputs],
            [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output],
        ),
        opset_imports=list(opset),
    )
    return ReferenceEvaluator(single).run(None, {n: constants[n] for n in inputs})


def make_batch_dynamic(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Give every input and output a symbolic batch (and H/W where the spec says -1)."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[0] in constants:
            continue
        target = constants.get(node.input[1])
        if target is None:
            continue
        shape = numpy_helper.to_array(target)
        if shape.ndim == 1 and shape.size >= 2 and shape[0] == 1:
            shape = shape.copy()
            shape[0] = 0  # 0 copies the incoming batch dimension
            target.CopyFrom(numpy_helper.from_array(shape, target.name))
    declared = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for value in (*graph.input, *graph.output):
        tensor = declared.get(value.name)
        if tensor is None:
            raise ValueError(f"{spec.name}: graph tensor {value.name!r} is not in the model description")
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "N"
        for axis, size in enumerate(tensor.dims):
            if size == -1:
                dims.add().dim_param = f"{value.name}_d{axis + 1}"
            else:
                dims.add().dim_value = size
    del graph.value_info[:]


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)
