#!/usr/bin/env bash
# On the lent GPU machine, with the parts `benchmarks/gpu_carry.py` wrote:
#   stage DIR    copy one carried part (.gpu/pN) to the stage, which outlives the call while
#                the machine stays warm
#   join         join the staged pieces and check every file's sha256
#   run [OPTS]   join, install the wheels, and run benchmarks/gpu_verify.py (OPTS are its
#                options); its output also lands in $OUT
set -euo pipefail
STAGE=${PORTRAIT_GPU_STAGE:-/tmp/portrait-gpu}
cd "$(dirname "$0")/.."

join() {
  python3 - "$STAGE" <<'PY'
import hashlib, json, sys
from pathlib import Path

stage = Path(sys.argv[1])
for name, entry in json.loads((stage / "plan.json").read_text()).items():
    target, pieces = stage / name, [stage / p for p in entry["pieces"]]
    if len(pieces) > 1 and all(p.is_file() for p in pieces):
        with target.open("wb") as out:
            for piece in pieces:
                out.write(piece.read_bytes())
                piece.unlink()
    if not target.is_file():
        print(f"not staged: {name}")
    elif hashlib.sha256(target.read_bytes()).hexdigest() != entry["sha256"]:
        target.unlink()
        print(f"removed, sha256 differs: {name}")
PY
}

case "${1:-}" in
  stage)
    mkdir -p "$STAGE"
    cp -r "$2"/. "$STAGE"/
    echo "staged $2; the stage holds $(du -sh "$STAGE" | cut -f1)"
    ;;
  join)
    join
    ;;
  run)
    shift
    join
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$STAGE"/wheels/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 benchmarks/gpu_verify.py --models "$STAGE/models" --id-image "$STAGE/workload/id.jpg" \
      --video "$STAGE/workload/clip.mp4" "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_verify.txt"
    ;;
  *)
    echo "usage: $0 stage DIR | join | run [gpu_verify.py options]" >&2
    exit 2
    ;;
esac
