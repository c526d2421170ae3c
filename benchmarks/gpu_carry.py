"""Pack what `gpu_verify.py` needs on a GPU machine without network into parts that one
device call can carry each: the built models, the standard workload, and the wheels that
machine lacks (PyAV, pydantic-settings and, unless --no-dali, DALI for CUDA 13 with its
image codecs). Nothing here touches a GPU.

    python benchmarks/gpu_carry.py [--models model_repository] [--testdata ../shared/testdata]

Writes `.gpu/` (git-ignored): `p1/`, `p2/`, ... each at most --part-mib, essentials first
(models, workload, the wheels every run needs), files larger than a part split in pieces,
and `plan.json` in every part (each file's pieces and sha256). Prints the calls: one
`benchmarks/gpu_device.sh stage .gpu/pN` per part, carrying `.gpu/pN`, one right after
another while the machine is warm, then `benchmarks/gpu_device.sh run`, which joins and
checks the pieces, installs the wheels and runs the benchmark. A run left without the DALI
parts still runs, decoding on the CPU, and says so.

The test data is internal: `.gpu/` is never committed and only travels to the lent machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

# The GPU machine's Python and platform (the device library's KINDS.md: Python 3.12, x86-64).
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[arg for tag in ("manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
                              "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                              "manylinux2014_x86_64", "manylinux1_x86_64", "any") for arg in ("--platform", tag)]]
# Packages the machine has (KINDS.md's list): carrying a second version would shadow it.
ON_DEVICE = {"numpy", "packaging", "pyyaml", "six", "wheel", "setuptools", "protobuf"}
# What every run needs beyond the machine's packages, at the versions tested here.
ESSENTIAL = ("av", "pydantic", "pydantic-settings")
DALI = "nvidia-dali-cuda130"
DALI_VERSION_OF = "nvidia-dali-cuda120"  # the CPU build the tests use; the CUDA 13 one matches it
WORKLOAD = {"id.jpg": "images/compreface/004_A.jpg", "clip.mp4": "videos/replay_pair/real.mp4"}
MIB = 1 << 20


def download(requirements: list[str], into: Path) -> list[Path]:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", *PLATFORM, "-d", str(into), *requirements],
                   check=True)
    wheels = sorted(into.glob("*.whl"))
    return [w for w in wheels if w.name.split("-")[0].lower().replace("_", "-") not in ON_DEVICE]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def largest_first(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """First-fit packs tighter with the largest files first."""
    return sorted(files, key=lambda file: -file[0].stat().st_size)


def pack(files: list[tuple[Path, str]], part_bytes: int, piece_bytes: int) -> tuple[list[list[tuple[Path, str, int, int]]], dict]:
    """(source, name in the stage) in priority order -> parts of (source, piece name, offset,
    length), filled first-fit in that order (so what comes first lands in the first parts),
    and the plan: each name's pieces and sha256."""
    parts: list[list[tuple[Path, str, int, int]]] = []
    room: list[int] = []
    plan = {}
    for source, name in files:
        size = source.stat().st_size
        count = max(1, -(-size // piece_bytes)) if size > part_bytes else 1
        step = size if count == 1 else piece_bytes
        pieces = [name] if count == 1 else [f"{name}.piece{i:02d}" for i in range(count)]
        plan[name] = {"sha256": sha256(source), "pieces": pieces}
        for i, piece in enumerate(pieces):
            length = min(step, size - i * step)
            slot = next((k for k, free in enumerate(room) if free >= length), None)
            if slot is None:
                parts.append([])
                room.append(part_bytes)
                slot = len(parts) - 1
            parts[slot].append((source, piece, i * step, length))
            room[slot] -= length
    return parts, plan


def write_parts(parts, plan: dict, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for k, part in enumerate(parts, 1):
        folder = out / f"p{k}"
        for source, piece, offset, length in part:
            target = folder / piece
            target.parent.mkdir(parents=True, exist_ok=True)
            with source.open("rb") as f:
                f.seek(offset)
                target.write_bytes(f.read(length))
        (folder / "plan.json").write_text(json.dumps(plan, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("model_repository"))
    parser.add_argument("--testdata", type=Path, default=Path("../shared/testdata"))
    parser.add_argument("--out", type=Path, default=Path(".gpu"))
    parser.add_argument("--part-mib", type=int, default=60,
                        help="a part's size (a call's whole working tree is limited to 64 MiB)")
    parser.add_argument("--no-dali", action="store_true", help="no DALI: the clip is decoded on the CPU")
    args = parser.parse_args()
    models = sorted(args.models.glob("*/1/model.onnx"))
    if not models or not (args.models / "manifest.json").is_file():
        sys.exit(f"no built model repository at {args.models} (run `portrait models build`)")
    with tempfile.TemporaryDirectory() as temp:
        essential = download([f"{name}=={version(name)}" for name in ESSENTIAL], Path(temp) / "essential")
        dali = [] if args.no_dali else [
            w for w in download([f"{DALI}=={version(DALI_VERSION_OF)}"], Path(temp) / "dali")
            if w.name not in {e.name for e in essential}]
        needed = [(path, f"models/{path.relative_to(args.models)}") for path in models]
        needed += [(args.models / "manifest.json", "models/manifest.json")]
        needed += [(args.testdata / source, f"workload/{name}") for name, source in WORKLOAD.items()]
        needed += [(w, f"wheels/{w.name}") for w in essential]
        optional = [(w, f"wheels/{w.name}") for w in dali]
        part_bytes = args.part_mib * MIB
        parts, plan = pack(largest_first(needed) + largest_first(optional), part_bytes, part_bytes - 8 * MIB)
        write_parts(parts, plan, args.out)
    names = {name for _, name in needed}
    last_needed = max(k for k, part in enumerate(parts, 1) if any(p.split(".piece")[0] in names for _, p, _, _ in part))
    print(f"{len(parts)} parts in {args.out}/ ({sum(s for part in parts for *_, s in part) / MIB:.0f} MiB); "
          f"parts 1-{last_needed} hold what every run needs, the rest DALI")
    for k, part in enumerate(parts, 1):
        size = sum(length for *_, length in part) / MIB
        print(f"  run carry=['{args.out}/p{k}'] command='bash benchmarks/gpu_device.sh stage {args.out}/p{k}'"
              f"  # {size:.0f} MiB, {len(part)} files")
    print("  run command='bash benchmarks/gpu_device.sh run'  # joins, installs, runs gpu_verify.py")


if __name__ == "__main__":
    main()
