"""The Triton preprocessing kernels against their PyTorch references and OpenCV, on CPU.

Triton's interpreter (TRITON_INTERPRET=1, read when a kernel is defined) runs the kernels
here with no GPU; it is slow, so outputs are small (the cost grows with output pixels, not
with frame size, so real frames are used at full size). Tolerances, in 0..255 units:
- letterbox: equal to its reference and, shrinking, to OpenCV's INTER_AREA bit for bit
  (same weights, order and rounding); enlarging, within a level of OpenCV's fixed point;
- warp: equal to its reference and to cv2.warpAffine bit for bit (the same fixed point).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch", reason="PyTorch is not installed (kernels need torch and triton)")
pytest.importorskip("triton", reason="Triton-lang is not installed (kernels need torch and triton)")

from portrait.kernels import pack_frames  # noqa: E402
from portrait.kernels.letterbox import letterbox_normalise, letterbox_reference  # noqa: E402
from portrait.kernels.warp import warp_affine, warp_affine_reference  # noqa: E402
from portrait.stages import align, detect  # noqa: E402


def _random_frames(shapes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator) for h, w in shapes]


@pytest.fixture(scope="module")
def real_frames(testdata) -> list[np.ndarray]:
    """Two real photos at full size (1868x1382 and 512x512), BGR."""
    names = ["images/deepface/img1.jpg", "images/astronaut.png"]
    return [cv2.imread(str(testdata / name), cv2.IMREAD_COLOR) for name in names]


def _similarities(frames: list[np.ndarray], size: int, seed: int) -> tuple[list[int], np.ndarray]:
    """Two alignment-like similarity transforms per frame onto a size x size crop: the
    template's five points placed near the frame centre, rotated, one crop partly outside
    the frame so the zero border is exercised."""
    rng = np.random.default_rng(seed)
    index, matrices = [], []
    template = align.TEMPLATE_112 - align.TEMPLATE_112.mean(0)
    for i, frame in enumerate(frames):
        height, width = frame.shape[:2]
        for centre in ((0.5, 0.45), (0.05, 0.9)):
            angle = np.deg2rad(rng.uniform(-25, 25))
            rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            points = template @ rotation.T * (min(height, width) / 250) + np.multiply(centre, (width, height))
            matrix = align.similarity_transforms(points[None].astype(np.float32))[0]
            matrix[:, :] *= size / 112
            index.append(i)
            matrices.append(matrix)
    return index, np.stack(matrices)


def test_letterbox_matches_reference_on_mixed_sizes():
    # Landscape, portrait, square, upscaled, 1-pixel-high after scaling: one launch.
    frames = _random_frames([(48, 64), (64, 40), (10, 13), (30, 30), (3, 200)])
    out, scales = letterbox_normalise(frames, 64)
    ref, ref_scales = letterbox_reference(frames, 64)
    assert out.shape == (5, 3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, ref)
    assert torch.equal(scales, ref_scales)
    assert scales.tolist() == pytest.approx([64 / max(f.shape[:2]) for f in frames])
    # Padding is exact zeros: the 3x200 frame fills one row.
    assert out[4, :, 1:].abs().max().item() == 0 and out[4, :, 0].abs().max().item() > 0


def _opencv_letterbox(frames: list[np.ndarray], size: int) -> np.ndarray:
    return detect.letterbox(np.stack(frames), size)[0]


def test_letterbox_is_opencvs_when_shrinking(real_frames):
    """The CPU path's detector input, bit for bit: a photo to 48 (39x down: the general area
    weights), 4x, exactly 2x on both axes (OpenCV's half-up path), 3x, and a 3:2 clip frame
    as the service keeps it (640 x 427, whose first 426 rows go to 320 x 213 on a 224 x 320 canvas)."""
    generator = np.random.default_rng(3)
    cases = [([real_frames[0]], 48), ([real_frames[1][::2, ::2].copy()], 64),
             ([generator.integers(0, 256, (96, 64, 3), np.uint8)], 48),
             ([generator.integers(0, 256, (90, 63, 3), np.uint8)] * 2, 30),
             ([cv2.resize(real_frames[0], (640, 427), interpolation=cv2.INTER_AREA)], 320)]
    for frames, size in cases:
        tensors = [torch.from_numpy(f) for f in frames]
        out, scales = letterbox_normalise(tensors, size)
        ref, _ = letterbox_reference(tensors, size)
        opencv = _opencv_letterbox(frames, size)
        assert torch.equal(out, ref)
        assert out.shape[2:] == opencv.shape[2:], "the CPU path's canvas, not a square"
        assert np.array_equal(out.numpy(), opencv), (frames[0].shape, size)
        assert scales[0].item() == pytest.approx(size / max(frames[0].shape[:2]))


def test_letterbox_is_within_a_level_of_opencv_when_enlarging():
    """OpenCV enlarges in fixed point; the kernel uses its coefficients in float."""
    frames = _random_frames([(30, 40), (17, 11)], seed=4)
    for frame in frames:
        out, _ = letterbox_normalise([frame], 64)
        opencv = _opencv_letterbox([frame.numpy()], 64)
        assert out.shape[2:] == opencv.shape[2:]
        difference = np.abs(out.numpy() - opencv)
        assert difference.max() <= 1 and difference.mean() < 0.1


def test_warp_is_opencvs_on_random_frames():
    frames = _random_frames([(40, 56), (33, 17)], seed=1)
    index = [0, 1, 0, 1]
    matrices = torch.tensor([
        [[0.9, 0.2, -3.0], [-0.2, 0.9, 4.0]],  # rotation, partly outside
        [[1.7, 0.0, 1.5], [0.0, 1.7, -2.25]],  # upscale
        [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]],  # downscale
        [[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]],  # singular: OpenCV inverts it to zeros
    ], dtype=torch.float32)
    out = warp_affine(frames, index, matrices, 24)
    ref = warp_affine_reference(frames, index, matrices, 24)
    opencv = np.stack([cv2.warpAffine(frames[i].numpy(), m, (24, 24), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT) for i, m in zip(index, matrices.numpy())])
    assert out.shape == (4, 24, 24, 3) and out.dtype == torch.uint8
    assert torch.equal(out, ref)
    assert np.array_equal(out.numpy(), opencv)


def test_warp_is_opencvs_on_real_faces(real_frames):
    """Alignment-like crops of real photos, shrunk up to 10x (as PAD crops are): OpenCV's
    fixed point, bit for bit."""
    packed = pack_frames([torch.from_numpy(f) for f in real_frames])
    for size in (112, 64):
        index, matrices = _similarities(real_frames, size, seed=size)
        out = warp_affine(packed, index, torch.from_numpy(matrices), size).numpy()
        ref = warp_affine_reference(packed, index, torch.from_numpy(matrices), size).numpy()
        opencv = np.stack([
            cv2.warpAffine(real_frames[i], m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            for i, m in zip(index, matrices)
        ])
        assert np.array_equal(out, opencv), (size, np.abs(out.astype(int) - opencv).max())
        assert np.array_equal(ref, opencv)
        assert (opencv == 0).all(-1).any(), "a crop should reach past the frame edge"


def test_packed_and_listed_frames_give_the_same_crops():
    frames = _random_frames([(20, 30), (25, 15)], seed=2)
    matrices = torch.tensor([[[1.0, 0.0, -2.0], [0.0, 1.0, -3.0]]] * 2)
    listed = warp_affine(frames, [1, 0], matrices, 16)
    packed = warp_affine(pack_frames(frames), torch.tensor([1, 0]), matrices, 16)
    assert torch.equal(listed, packed)
    assert torch.equal(pack_frames(frames).frame(1), frames[1])


def test_bad_inputs_are_refused():
    frames = _random_frames([(8, 8)])
    with pytest.raises(ValueError, match="uint8"):
        letterbox_normalise([frames[0].to(torch.float32)], 16)
    with pytest.raises(ValueError, match="one \\[2,3\\] matrix per crop"):
        warp_affine(frames, [0, 0], torch.zeros(1, 2, 3), 8)
