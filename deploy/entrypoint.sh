#!/usr/bin/env bash
# One image, two containers of a pod (or of a compose project): this script picks the role.
#
#   portrait-entrypoint [ROLE] [ARGS...]
#
# ROLE (else $PORTRAIT_ROLE, else "service"):
#   service        the HTTP front door: `portrait serve` on $PORTRAIT_HOST:$PORTRAIT_PORT. With
#                  PORTRAIT_BACKEND=triton it first waits (up to $PORTRAIT_TRITON_WAIT_S seconds)
#                  until Triton at $PORTRAIT_TRITON_URL is ready, since the backend registers
#                  its shared-memory regions with Triton at start-up.
#   triton         NVIDIA Triton on the baked model repository (/models) with the GPU configs
#                  (--model-config-name=$PORTRAIT_TRITON_CONFIG, default "gpu": ONNX Runtime with
#                  the TensorRT accelerator, FP16). PORTRAIT_TRITON_CONFIG=tensorrt first builds
#                  native TensorRT engines with build_trt_engines.sh into $PORTRAIT_TRT_ENGINE_DIR
#                  (skipped when engines built for this GPU and TensorRT version are already there)
#                  and serves those.
#   build-engines  only build the TensorRT engines (ARGS go to build_trt_engines.sh), then exit.
#   health         exit 0 when this container's role answers ready (the image's HEALTHCHECK).
#   anything else  run as a command (`docker run IMAGE bash`).
#
# Secrets: PORTRAIT_CHALLENGE_SECRET and PORTRAIT_REDIS_URL may instead be given as files
# (Docker or Kubernetes secrets) with PORTRAIT_CHALLENGE_SECRET_FILE / PORTRAIT_REDIS_URL_FILE;
# the API keys and the receipt key are files already (PORTRAIT_API_KEYS_FILE,
# PORTRAIT_RECEIPT_KEY_FILE).
set -euo pipefail

PY=${PORTRAIT_PYTHON:-/opt/portrait/bin/python}
PORTRAIT=${PORTRAIT_BIN:-/opt/portrait/bin/portrait}
BUILD_ENGINES=${PORTRAIT_BUILD_ENGINES_BIN:-/usr/local/bin/portrait-build-trt-engines}

log() { printf '%s portrait-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

role=${PORTRAIT_ROLE:-service}
if [ $# -gt 0 ]; then
  case "$1" in
    service|triton|build-engines|health) role=$1; shift ;;
    *) exec "$@" ;;
  esac
fi

# VAR_FILE -> VAR for the two secrets that are plain settings (never echoed).
for name in PORTRAIT_CHALLENGE_SECRET PORTRAIT_REDIS_URL; do
  file_var="${name}_FILE"
  if [ -n "${!file_var:-}" ]; then
    [ -z "${!name:-}" ] || die "set $name or $file_var, not both"
    [ -r "${!file_var}" ] || die "$file_var: cannot read ${!file_var}"
    value=$(<"${!file_var}")
    export "$name=${value%$'\n'}"
    unset "$file_var"
  fi
done

triton_http_port=${PORTRAIT_TRITON_HTTP_PORT:-8000}
triton_grpc_port=${PORTRAIT_TRITON_GRPC_PORT:-8001}
triton_metrics_port=${PORTRAIT_TRITON_METRICS_PORT:-8002}

http_ok() {  # URL -> exit status 0 when it answers 2xx within 3 s
  "$PY" -c 'import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception:
    sys.exit(1)' "$1"
}

wait_for_triton() {
  local url=${PORTRAIT_TRITON_URL:-127.0.0.1:8001} limit=${PORTRAIT_TRITON_WAIT_S:-600}
  log "waiting up to ${limit}s for Triton at $url (gRPC) to be ready"
  "$PY" - "$url" "$limit" <<'EOF' || die "Triton at ${PORTRAIT_TRITON_URL:-127.0.0.1:8001} was not ready in time"
import sys, time
import tritonclient.grpc as grpcclient
url, limit = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + limit
client = grpcclient.InferenceServerClient(url)
while True:
    try:
        if client.is_server_ready(client_timeout=3):
            sys.exit(0)
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(2)
EOF
  log "Triton is ready"
}

case "$role" in
  service)
    if [ "${PORTRAIT_BACKEND:-embedded}" = "triton" ] && [ "${PORTRAIT_TRITON_WAIT_S:-600}" != "0" ]; then
      wait_for_triton
    fi
    exec "$PORTRAIT" serve "$@"
    ;;

  triton)
    repository=${PORTRAIT_TRITON_MODEL_REPOSITORY:-/models}
    config=${PORTRAIT_TRITON_CONFIG:-gpu}
    case "$config" in
      gpu) ;;
      tensorrt)
        engines=${PORTRAIT_TRT_ENGINE_DIR:-/var/lib/portrait/engines}
        log "building (or reusing) TensorRT engines in $engines"
        "$BUILD_ENGINES" --repository "$repository" --output "$engines"
        repository=$engines
        ;;
      *) die "PORTRAIT_TRITON_CONFIG must be gpu or tensorrt, not '$config'" ;;
    esac
    # Extra flags for tritonserver, split on spaces (e.g. "--log-verbose=1").
    read -r -a extra <<<"${PORTRAIT_TRITON_ARGS:-}"
    exec tritonserver \
      --model-repository="$repository" \
      --model-config-name="$config" \
      --strict-readiness=true \
      --exit-on-error=true \
      --http-port="$triton_http_port" \
      --grpc-port="$triton_grpc_port" \
      --metrics-port="$triton_metrics_port" \
      --allow-metrics=true \
      --allow-gpu-metrics=true \
      "${extra[@]}" "$@"
    ;;

  build-engines)
    exec "$BUILD_ENGINES" "$@"
    ;;

  health)
    case "${PORTRAIT_ROLE:-service}" in
      service) http_ok "http://127.0.0.1:${PORTRAIT_PORT:-8080}/readyz" ;;
      triton) http_ok "http://127.0.0.1:${triton_http_port}/v2/health/ready" ;;
      *) exit 0 ;;
    esac
    ;;

  *)
    die "unknown PORTRAIT_ROLE '$role' (service, triton, build-engines, health)"
    ;;
esac
