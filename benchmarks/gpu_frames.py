"""The pipeline's pixel work for one verification on the GPU path (TorchFrames: Triton-lang
kernels on CUDA tensors) beside the host path (HostFrames: OpenCV), in the same run.

    python benchmarks/gpu_frames.py --video clip.mp4 --models model_repository [--repeats 20]

Decodes the clip with OpenCV (45 frames), finds the faces once with the detector in ONNX
Runtime, then times what each path does per verification: the detector's letterbox, every
crop (FaceMesh 192, two eyes 64, alignment 112, PAD 80) and the model input layouts, and
checks the two paths agree. Prints one table naming the card; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from portrait import ort  # noqa: E402
from portrait.frames import HostFrames, TorchFrames  # noqa: E402
from portrait.stages import align, detect, embed, landmarks, pad  # noqa: E402

FRAMES = 45


def read_frames(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < FRAMES:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    return np.stack(frames)


def faces_of(frames: np.ndarray, models: Path) -> np.ndarray:
    session = ort.session(models / "yunet" / "1" / "model.onnx")
    batch, scale = HostFrames().letterbox(frames, 320)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": batch})))
    return np.stack([detect.rescale(found, scale)[0] for found in detect.decode(outputs, batch.shape[2:])])


def pixel_work(ops, frames, faces: np.ndarray, sync) -> dict[str, object]:
    """What one verification asks of FrameOps, in the pipeline's order."""
    n = len(faces)
    prepared = ops.prepare(frames)
    out = {"letterbox": ops.letterbox(prepared, 320)[0]}
    crop_matrices = landmarks.crop_transforms(faces)
    mesh = ops.crops(prepared, range(n), crop_matrices, landmarks.CROP)
    out["facemesh"] = ops.model_input(mesh, landmarks.INPUT)
    points = np.tile(np.array([[96.0, 96.0, 0.0]], np.float32), (n, 468, 1))
    points[:, 33, :2], points[:, 133, :2] = (70, 90), (90, 90)
    points[:, 362, :2], points[:, 263, :2] = (102, 90), (122, 90)
    eyes = ops.crops(prepared, [*range(n), *range(n)], landmarks.eye_transforms(points, crop_matrices),
                     landmarks.EYE_CROP)
    out["eyes"] = ops.model_input(eyes, landmarks.INPUT)
    aligned = ops.crops(prepared, range(n), align.similarity_transforms(align.landmarks5(faces)), 112)
    out["sface"] = ops.model_input(aligned, embed.INPUT)
    chosen = list(range(min(4, n)))
    for model, scale in pad.SCALES.items():
        matrices = pad.crop_transforms(faces[chosen], tuple(frames.shape[1:3]), scale)
        out[model] = ops.model_input(ops.crops(prepared, chosen, matrices, pad.SIZE), pad.INPUT)
    sync()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("model_repository"))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark compares the GPU path with the host path")
    frames = read_frames(args.video)
    faces = faces_of(frames, args.models)
    host, gpu = HostFrames(), TorchFrames("cuda")
    on_device = torch.as_tensor(frames, device="cuda")
    runs = {
        "host (OpenCV, frames in RAM)": (host, frames, lambda: None),
        "gpu (kernels, frames on GPU)": (gpu, on_device, torch.cuda.synchronize),
        "gpu incl. upload of frames": (gpu, frames, torch.cuda.synchronize),
    }
    results, times = {}, {}
    for name, (ops, source, sync) in runs.items():
        pixel_work(ops, source, faces, sync)  # warm-up (kernel compilation on the GPU)
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[name] = pixel_work(ops, source, faces, sync)
            samples.append(time.perf_counter() - start)
        times[name] = statistics.median(samples) * 1000
    reference = results["host (OpenCV, frames in RAM)"]
    device = results["gpu (kernels, frames on GPU)"]
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {len(frames)} frames of "
          f"{frames.shape[2]}x{frames.shape[1]} | {len(faces)} faces")
    print(f"{'path':<32}{'median ms':>10}")
    for name, ms in times.items():
        print(f"{name:<32}{ms:>10.2f}")
    # The kernels are OpenCV's arithmetic: on a CPU they match bit for bit; a GPU may fuse a
    # multiply and an add in the letterbox, which can move a value sitting on a half by one level.
    print(f"{'output':<12}{'shape':<22}{'mean |gpu-host|':>16}{'max':>8}  (model-input units)")
    for key, value in reference.items():
        diff = np.abs(device[key].cpu().numpy() - value)
        print(f"{key:<12}{str(tuple(value.shape)):<22}{float(diff.mean()):>16.6f}{float(diff.max()):>8.4f}")


if __name__ == "__main__":
    main()
