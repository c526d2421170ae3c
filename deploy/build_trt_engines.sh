#!/usr/bin/env bash
# Build native TensorRT engines (FP16, or FP32 where the model's gpu config says so) for the GPU this runs on, from the ONNX files of a Portrait
# model repository, and write each model's configs/tensorrt.pbtxt (platform tensorrt_plan) beside
# configs/gpu.pbtxt. Serve them with `tritonserver --model-config-name=tensorrt`.
#
# STATUS: written for trtexec from TensorRT 10 (the nvcr.io/nvidia/tritonserver:24.10-py3 image)
# and NOT RUN YET on a GPU: only --dry-run (which prints the commands) and runs with a stub
# trtexec have been run, on a CPU box.
#
# Engines are specific to the GPU model (compute capability) and the TensorRT version: build them
# on the node that serves them, with the same image as Triton. Each engine gets a stamp (ONNX
# sha256, TensorRT version, GPU, shapes, precision); a later run skips a model whose stamp
# matches, so this is cheap to call at every container start.
#
# Shapes: every model gets one optimisation profile covering batch 1..max_batch_size (read from
# the model's config), tuned at an "opt" batch (the middle preferred_batch_size, or
# $PORTRAIT_TRT_OPT_BATCH). Dimensions the config leaves dynamic (-1) come from the table in
# dynamic_dims() below.
#
# Usage: build_trt_engines.sh [--repository DIR] [--output DIR] [--models "yunet sface"]
#                             [--workspace-mib N] [--device N] [--force] [--dry-run]
#   --repository DIR   repository with <model>/1/model.onnx and <model>/configs/gpu.pbtxt
#                      (default: $PORTRAIT_MODEL_REPOSITORY, else /models)
#   --output DIR       write <model>/1/model.plan and <model>/configs/tensorrt.pbtxt here
#                      (default: into the repository itself); a separate DIR is a complete
#                      Triton repository for --model-config-name=tensorrt
#   --models LIST      only these models (default: every folder with a gpu or cpu config)
#   --workspace-mib N  TensorRT builder workspace pool (default 2048, as in gpu.pbtxt)
#   --device N         CUDA device index (default 0)
#   --force            rebuild even when the stamp matches
#   --dry-run          print what would run; needs neither a GPU nor trtexec
# Environment: TRTEXEC (path to trtexec), PORTRAIT_TRT_OPT_BATCH (opt batch for every model).
set -euo pipefail

repository=${PORTRAIT_MODEL_REPOSITORY:-/models}
output=""
models=""
workspace_mib=2048
device=0
force=0
dry_run=0

log() { printf '%s build_trt_engines: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --repository) repository=${2:?--repository needs a folder}; shift 2 ;;
    --output) output=${2:?--output needs a folder}; shift 2 ;;
    --models) models=${2:?--models needs a list}; shift 2 ;;
    --workspace-mib) workspace_mib=${2:?}; shift 2 ;;
    --device) device=${2:?}; shift 2 ;;
    --force) force=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    *) log "unknown argument: $1"; usage 2 ;;
  esac
done
output=${output:-$repository}
[ -d "$repository" ] || die "no model repository at $repository (run \`portrait models build\`)"

# Shapes of the dimensions a config leaves dynamic (-1), per model/input: "MIN OPT MAX", each the
# dynamic dims in order joined by "x". YuNet sees a canvas fitted to the letterboxed frame, each
# side rounded up to its coarsest stride (server/portrait/stages/detect.py, canvas): 224x320 for
# a 3:2 clip, 320x192 for a 9:16 one, up to 640x640 for still images
# (PipelineConfig.video_detector_size / image_detector_size in server/portrait/pipeline.py), and
# as little as 32 on the short side of a very wide frame. Keep this table in step with those.
dynamic_dims() {
  case "$1/$2" in
    yunet/input) echo "32x32 320x320 640x640" ;;
    *) return 1 ;;
  esac
}

# ---- reading a config.pbtxt as `portrait models build` writes it (one tensor per line) ----

config_of() {  # model -> the config to derive from: configs/gpu.pbtxt, else config.pbtxt
  local dir=$repository/$1
  if [ -f "$dir/configs/gpu.pbtxt" ]; then echo "$dir/configs/gpu.pbtxt"
  elif [ -f "$dir/config.pbtxt" ]; then echo "$dir/config.pbtxt"
  else return 1; fi
}

precision_of() {  # config -> fp16 or fp32, as its TensorRT accelerator's precision_mode says (default fp16)
  if grep -q 'key: "precision_mode" value: "FP32"' "$1"; then echo fp32; else echo fp16; fi
}

max_batch_size() { sed -n 's/^max_batch_size: *\([0-9][0-9]*\).*/\1/p' "$1" | head -n1; }

preferred_batch_sizes() {  # -> "8 16 32" (may be empty)
  sed -n 's/.*preferred_batch_size: *\[\([^]]*\)\].*/\1/p' "$1" | head -n1 | tr ',' ' '
}

inputs_of() {  # config -> lines "NAME DIMS" with DIMS like 3,-1,-1 (batch dimension excluded)
  awk '
    /^input *\[/ { inside = 1; next }
    inside && /^\]/ { inside = 0 }
    inside && /name:/ {
      name = $0; sub(/.*name: *"/, "", name); sub(/".*/, "", name)
      dims = $0; sub(/.*dims: *\[/, "", dims); sub(/\].*/, "", dims); gsub(/ /, "", dims)
      print name, dims
    }' "$1"
}

shape_of() {  # BATCH DIMS DYNAMIC -> e.g. 8x3x320x320; DYNAMIC fills the -1 dims in order
  local batch=$1 dims=$2 dynamic=$3 shape
  local -a fill parts
  IFS=x read -r -a fill <<<"$dynamic"
  IFS=, read -r -a parts <<<"$dims"
  local i=0 d
  shape=$batch
  for d in "${parts[@]}"; do
    if [ "$d" = "-1" ]; then
      [ "$i" -lt "${#fill[@]}" ] || return 1
      d=${fill[$i]}; i=$((i + 1))
    fi
    shape="${shape}x${d}"
  done
  echo "$shape"
}

tensorrt_config() {  # gpu config -> the same model as a native TensorRT plan
  awk '
    NR == 1 && /^#/ {
      print "# Written by deploy/build_trt_engines.sh from configs/gpu.pbtxt; do not edit."
      print "# Native TensorRT engine built for one GPU model and TensorRT version."
      next
    }
    /^platform:/ { print "platform: \"tensorrt_plan\""; next }
    /^backend:/ { print "platform: \"tensorrt_plan\""; next }
    /^optimization *\{/ { skipping = 1; depth = 0 }
    skipping {
      depth += gsub(/\{/, "{"); depth -= gsub(/\}/, "}")
      if (depth <= 0) skipping = 0
      next
    }
    /^parameters:/ { next }
    /^instance_group/ { print "instance_group [ { kind: KIND_GPU count: 1 } ]"; next }
    /^name:/ { print; print "default_model_filename: \"model.plan\""; next }
    { print }' "$1"
}

# ---- what the engine depends on ----

find_trtexec() {
  if [ -n "${TRTEXEC:-}" ]; then echo "$TRTEXEC"; return; fi
  if command -v trtexec >/dev/null 2>&1; then command -v trtexec; return; fi
  if [ -x /usr/src/tensorrt/bin/trtexec ]; then echo /usr/src/tensorrt/bin/trtexec; return; fi
  return 1
}

tensorrt_version() {
  local lib
  lib=$(ldconfig -p 2>/dev/null | awk '/libnvinfer\.so\.[0-9]+ /{print $NF; exit}') || true
  if [ -n "$lib" ]; then
    readlink -f "$lib" | sed -n 's/.*libnvinfer\.so\.\([0-9.]*\)$/\1/p'
    return
  fi
  echo unknown
}

gpu_identity() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader -i "$device" 2>/dev/null \
      || nvidia-smi --query-gpu=name --format=csv,noheader -i "$device" 2>/dev/null \
      || echo unknown
  else
    echo unknown
  fi
}

# ---- main ----

if [ -z "$models" ]; then
  for dir in "$repository"/*/; do
    name=$(basename "$dir")
    if config_of "$name" >/dev/null; then models="$models $name"; fi
  done
fi
[ -n "${models// /}" ] || die "no models found under $repository"

if [ "$dry_run" = 1 ]; then
  trtexec=$(find_trtexec || echo trtexec)
  trt_version="(dry run)"
  gpu="(dry run)"
else
  trtexec=$(find_trtexec) || die "trtexec not found: set TRTEXEC, or run inside the Triton image \
(/usr/src/tensorrt/bin/trtexec) or nvcr.io/nvidia/tensorrt with the same release tag as Triton"
  trt_version=$(tensorrt_version)
  gpu=$(gpu_identity)
  mkdir -p "$output"
  # Two containers sharing one engine folder build one at a time.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$output/.build_trt_engines.lock"
    flock 9
  fi
fi
log "repository $repository -> $output; TensorRT $trt_version; GPU $gpu; trtexec $trtexec"

built=0 kept=0
for model in $models; do
  config=$(config_of "$model") || die "$model: no config under $repository/$model"
  onnx=$repository/$model/1/model.onnx
  [ -f "$onnx" ] || [ "$dry_run" = 1 ] || die "$model: $onnx is missing (run \`portrait models build\`)"
  max_batch=$(max_batch_size "$config")
  if [ -z "$max_batch" ] || [ "$max_batch" -lt 1 ]; then die "$model: no max_batch_size in $config"; fi
  read -r -a preferred <<<"$(preferred_batch_sizes "$config")"
  if [ -n "${PORTRAIT_TRT_OPT_BATCH:-}" ]; then opt_batch=$PORTRAIT_TRT_OPT_BATCH
  elif [ "${#preferred[@]}" -gt 0 ]; then opt_batch=${preferred[$(( ${#preferred[@]} / 2 ))]}
  else opt_batch=$max_batch; fi
  [ "$opt_batch" -le "$max_batch" ] || opt_batch=$max_batch

  min_shapes="" opt_shapes="" max_shapes=""
  while read -r name dims; do
    [ -n "$name" ] || continue
    dynamic="" ; dmin="" ; dopt="" ; dmax=""
    if [[ ",$dims," == *",-1,"* ]]; then
      dynamic=$(dynamic_dims "$model" "$name") \
        || die "$model: input $name has dynamic dims ($dims); add it to dynamic_dims() in $0"
      read -r dmin dopt dmax <<<"$dynamic"
    fi
    min_shapes+="${min_shapes:+,}$name:$(shape_of 1 "$dims" "$dmin")"
    opt_shapes+="${opt_shapes:+,}$name:$(shape_of "$opt_batch" "$dims" "$dopt")"
    max_shapes+="${max_shapes:+,}$name:$(shape_of "$max_batch" "$dims" "$dmax")"
  done < <(inputs_of "$config")
  [ -n "$min_shapes" ] || die "$model: no inputs found in $config"

  plan_dir=$output/$model/1
  plan=$plan_dir/model.plan
  stamp_file=$plan.stamp
  if [ "$dry_run" = 1 ]; then onnx_sha="(dry run)"; else onnx_sha=$(sha256sum "$onnx" | cut -d' ' -f1); fi
  precision=$(precision_of "$config")
  stamp="onnx_sha256=$onnx_sha tensorrt=$trt_version gpu=$gpu precision=$precision workspace_mib=$workspace_mib"
  stamp+=" min=$min_shapes opt=$opt_shapes max=$max_shapes"

  command=("$trtexec" "--onnx=$onnx" "--saveEngine=$plan.tmp")
  if [ "$precision" = fp16 ]; then command+=(--fp16); fi
  command+=("--minShapes=$min_shapes" "--optShapes=$opt_shapes" "--maxShapes=$max_shapes"
           "--memPoolSize=workspace:$workspace_mib" "--device=$device"
           "--timingCacheFile=$output/.trt_timing.cache" --skipInference)

  if [ "$dry_run" = 1 ]; then
    printf '%s:' "$model"; printf ' %q' "${command[@]}"; printf '\n'
    printf '%s: would write %s and %s\n' "$model" "$plan" "$output/$model/configs/tensorrt.pbtxt"
    continue
  fi

  mkdir -p "$plan_dir" "$output/$model/configs"
  tensorrt_config "$config" >"$output/$model/configs/tensorrt.pbtxt.tmp"
  mv "$output/$model/configs/tensorrt.pbtxt.tmp" "$output/$model/configs/tensorrt.pbtxt"
  if [ "$trt_version" = unknown ] || [ "$gpu" = unknown ]; then
    log "$model: cannot tell the GPU or TensorRT version, so an existing engine is not trusted"
  elif [ "$force" = 0 ] && [ -f "$plan" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    log "$model: engine up to date ($plan)"
    kept=$((kept + 1))
    continue
  fi
  log "$model: building $precision engine, batch 1..$max_batch (opt $opt_batch): $max_shapes"
  started=$(date +%s)
  if ! "${command[@]}" >"$plan_dir/trtexec.log" 2>&1; then
    rm -f "$plan.tmp"
    tail -n 30 "$plan_dir/trtexec.log" >&2 || true
    die "$model: trtexec failed; full log in $plan_dir/trtexec.log (PORTRAIT_TRITON_CONFIG=gpu serves \
the ONNX files with ONNX Runtime's TensorRT accelerator instead)"
  fi
  mv "$plan.tmp" "$plan"
  printf '%s' "$stamp" >"$stamp_file"
  log "$model: built in $(( $(date +%s) - started ))s ($(du -h "$plan" | cut -f1))"
  built=$((built + 1))
done
[ "$dry_run" = 1 ] || log "done: $built built, $kept up to date, in $output"
