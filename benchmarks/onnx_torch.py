"""ONNX graphs run as PyTorch modules: the models of the repository on a GPU without
TensorRT or ONNX Runtime's CUDA build (neither can be installed on the GPU machine lent to
this project), for `gpu_check.py` and `gpu_verify.py`.

A small converter that covers exactly the ops these seven models use (onnx2torch 1.5.15
lacks Resize-19 and Constant-21 and imports torchvision); `tests/test_gpu_check.py` checks
every converted model against ONNX Runtime on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

Op = Callable[[list[Any], dict[str, Any]], torch.Tensor]


def _conv_padding(x: torch.Tensor, pads: list[int], value: float) -> tuple[torch.Tensor, tuple[int, ...]]:
    """ONNX pads [begin..., end...] -> (input, padding for the torch op); TFLite's SAME
    padding with stride 2 is asymmetric, which torch's ops cannot take, so pad explicitly."""
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return x, tuple(begin)
    flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
    return F.pad(x, flat, value=value), (0,) * rank


def _conv(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    x, padding = _conv_padding(x, attrs.get("pads", [0] * 2 * (weight.dim() - 2)), 0.0)
    return F.conv2d(x, weight, bias, attrs.get("strides", 1), padding, attrs.get("dilations", 1),
                    attrs.get("group", 1))


def _max_pool(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    kernel = attrs["kernel_shape"]
    pads = [0] * 2 * len(kernel) if attrs.get("auto_pad") == "VALID" else attrs.get("pads", [0] * 2 * len(kernel))
    x, padding = _conv_padding(inputs[0], pads, float("-inf"))
    return F.max_pool2d(x, kernel, attrs.get("strides", kernel), padding, ceil_mode=bool(attrs.get("ceil_mode", 0)))


def _prelu(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, slope = inputs
    if slope.numel() != x.shape[1] or slope.shape[-(x.dim() - 1):] != (x.shape[1],) + (1,) * (x.dim() - 2):
        raise NotImplementedError(f"PRelu slope {tuple(slope.shape)} is not per channel of {tuple(x.shape)}")
    return F.prelu(x, slope.reshape(-1))


def _pad(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    if attrs.get("mode", "constant") != "constant":
        raise NotImplementedError(f"Pad mode {attrs['mode']}")
    x, pads = inputs[0], inputs[1].tolist()
    value = float(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else 0.0
    rank = x.dim()
    flat = [p for d in reversed(range(rank)) for p in (pads[d], pads[d + rank])]
    return F.pad(x, flat, value=value)


def _resize(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    setting = (attrs.get("mode"), attrs.get("coordinate_transformation_mode"), attrs.get("nearest_mode"))
    if setting != ("nearest", "asymmetric", "floor") or len(inputs) < 3 or inputs[2] is None:
        raise NotImplementedError(f"Resize {setting} (only nearest/asymmetric/floor with scales)")
    scales = inputs[2].tolist()
    if scales[:2] != [1.0, 1.0]:
        raise NotImplementedError("Resize over batch or channels")
    # torch's nearest is floor(dst / scale): ONNX's asymmetric + floor.
    return F.interpolate(inputs[0], scale_factor=scales[2:], mode="nearest")


def _reshape(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, shape = inputs[0], inputs[1].tolist()
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _gemm(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    a, b = inputs[0], inputs[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    return out + attrs.get("beta", 1.0) * inputs[2] if len(inputs) > 2 else out


def _unsqueeze(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x = inputs[0]
    axes = inputs[1].tolist() if len(inputs) > 1 else attrs["axes"]
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _gather(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    data, index = inputs
    return data[(slice(None),) * attrs.get("axis", 0) + (index,)]


def _torch_dtype(onnx_type: int) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(onnx_type))).dtype


def _constant_of_shape(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    return torch.from_numpy(np.full(inputs[0].tolist(), value.reshape(-1)[0], value.dtype))


def _slice(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    """Slices of shape arithmetic (dlib's exported padding: host integers, negative steps);
    data tensors only with positive steps."""
    x, starts, ends = inputs[0], inputs[1].tolist(), inputs[2].tolist()
    axes = inputs[3].tolist() if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = inputs[4].tolist() if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = slice(start, end, step)
    if x.device.type == "cpu" and not x.is_floating_point():
        return torch.from_numpy(np.ascontiguousarray(x.numpy()[tuple(index)]))
    if any(step < 0 for step in steps):
        raise NotImplementedError("Slice with a negative step on a data tensor")
    return x[tuple(index)]


def _average_pool(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    kernel = attrs["kernel_shape"]
    x, padding = _conv_padding(inputs[0], attrs.get("pads", [0] * 2 * len(kernel)), 0.0)
    return F.avg_pool2d(x, kernel, attrs.get("strides", kernel), padding, ceil_mode=bool(attrs.get("ceil_mode", 0)),
                        count_include_pad=bool(attrs.get("count_include_pad", 0)))


def _flatten(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, axis = inputs[0], attrs.get("axis", 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


OPS: dict[str, Op] = {
    "Conv": _conv,
    "MaxPool": _max_pool,
    "PRelu": _prelu,
    "Pad": _pad,
    "Resize": _resize,
    "Reshape": _reshape,
    "Gemm": _gemm,
    "Unsqueeze": _unsqueeze,
    "Gather": _gather,
    "Flatten": _flatten,
    "Relu": lambda i, a: F.relu(i[0]),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "Add": lambda i, a: i[0] + i[1],
    "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "MatMul": lambda i, a: torch.matmul(i[0], i[1]),
    "Transpose": lambda i, a: i[0].permute(a["perm"]),
    "Concat": lambda i, a: torch.cat(i, a["axis"]),
    "GlobalAveragePool": lambda i, a: i[0].mean(tuple(range(2, i[0].dim())), keepdim=True),
    "BatchNormalization": lambda i, a: F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5)),
    "Shape": lambda i, a: torch.tensor(i[0].shape, dtype=torch.int64),
    "Dropout": lambda i, a: i[0],  # inference: identity
    "Div": lambda i, a: i[0] / i[1],
    "Cast": lambda i, a: i[0].to(_torch_dtype(a["to"])),
    "ConstantOfShape": _constant_of_shape,
    "Slice": _slice,
    "AveragePool": _average_pool,
    "ReduceMean": lambda i, a: i[0].mean(tuple(a["axes"]), keepdim=bool(a.get("keepdims", 1))),
}
# Inputs that are sizes, axes or indices, not data: they stay on the host as CPU tensors, so
# reading them never syncs with the GPU and CUDA graphs can capture the forward pass.
HOST_INPUTS: dict[str, tuple[int, ...]] = {
    "Pad": (1, 2, 3), "Resize": (1, 2, 3), "Reshape": (1,), "Unsqueeze": (1,), "Gather": (1,), "Dropout": (1, 2),
    "Slice": (1, 2, 3, 4), "ConstantOfShape": (0,),
}


def _attribute(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class OnnxModule(torch.nn.Module):
    """An ONNX graph run node by node with torch ops. Float weights are buffers (so `.to()`
    and `.half()` move and cast them); integer and host-side constants stay on the CPU."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        graph = onnx.load(str(path)).graph
        host = {node.input[i] for node in graph.node for i in HOST_INPUTS.get(node.op_type, ()) if i < len(node.input)}
        self._buffers_by_name: dict[str, str] = {}
        self._host: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            self._add_constant(init.name, numpy_helper.to_array(init), init.name in host)
        self._nodes: list[tuple[Op, list[str], str, dict[str, Any]]] = []
        for node in graph.node:
            attrs = {a.name: _attribute(helper.get_attribute_value(a)) for a in node.attribute}
            if node.op_type == "Constant":
                self._add_constant(node.output[0], numpy_helper.to_array(attrs["value"]), node.output[0] in host)
            elif node.op_type in OPS:
                self._nodes.append((OPS[node.op_type], list(node.input), node.output[0], attrs))
            else:
                raise NotImplementedError(f"{path}: ONNX op {node.op_type} is not converted")
        known = {init.name for init in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in known]
        self.output_names = [o.name for o in graph.output]

    def _add_constant(self, name: str, array: np.ndarray, on_host: bool) -> None:
        tensor = torch.from_numpy(np.array(array))
        if on_host or not tensor.is_floating_point():
            self._host[name] = tensor
        else:
            key = f"constant_{len(self._buffers_by_name)}"
            self.register_buffer(key, tensor)
            self._buffers_by_name[name] = key

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, Any] = {name: getattr(self, key) for name, key in self._buffers_by_name.items()}
        values.update(self._host)
        values.update(zip(self.input_names, inputs))
        for op, names, output, attrs in self._nodes:
            values[output] = op([values[n] if n else None for n in names], attrs)
        return tuple(values[name] for name in self.output_names)
