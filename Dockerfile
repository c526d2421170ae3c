# First draft of the GPU image (the GPU issue completes it): NVIDIA's Triton image, the
# portrait package, and a model repository built at image build time from pinned sources.
# The model mirror (MiniFASNet files) is passed as a build context:
#   docker build --build-context mirror=../shared/models -t portrait .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE} AS models
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY model_repository ./model_repository
COPY --from=mirror . /mirror
RUN python3 -m pip install --no-cache-dir . \
 && PORTRAIT_MODEL_MIRROR=/mirror PORTRAIT_MODEL_REPOSITORY=/src/model_repository portrait models build

FROM ${TRITON_IMAGE}
RUN useradd --create-home --uid 10001 portrait
COPY --from=models --chown=portrait /src/model_repository /models
USER portrait
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s CMD curl -fsS localhost:8000/v2/health/ready || exit 1
CMD ["tritonserver", "--model-repository=/models", "--model-config-name=gpu", "--strict-readiness=true"]
