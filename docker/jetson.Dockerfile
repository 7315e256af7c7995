# edgekit on an NVIDIA Jetson (JetPack 6, L4T r36, arm64): builds TensorRT engines on the device and measures them.
#
# Typical flow: export + quantize on an x86 host (x86.Dockerfile), which writes the run folder with
# tensorrt/model_int8_qdq.onnx and tensorrt/build_int8.json; copy that folder to the Jetson; build the engine here.
# An engine only runs on the GPU and TensorRT version that built it, so it must be built on the device that runs
# it (edgekit's engine manifest <engine>.json refuses engines built elsewhere). Commands: docker/README.md.
#
# The base image carries CUDA 12.6, cuDNN, TensorRT 10.3 with its Python bindings (apt: python3-libnvinfer) and
# /usr/src/tensorrt/bin/trtexec. Build and run on the Jetson itself, with the NVIDIA container runtime (if the
# `import tensorrt` check below fails during the build, set "default-runtime": "nvidia" in /etc/docker/daemon.json).
FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGEKIT_ASSETS=/assets \
    EDGEKIT_CACHE=/cache \
    EDGEKIT_PROGRESS=0 \
    PATH=/usr/src/tensorrt/bin:$PATH

# python3-libnvinfer: TensorRT's Python bindings from JetPack (already in the image; listed so `import tensorrt` is
# guaranteed). python3-dev: headers in case a dependency (e.g. pycocotools) has no arm64 wheel and compiles.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip python3-dev python3-libnvinfer \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /assets /runs /cache && chmod 1777 /runs /cache

WORKDIR /opt/edgekit

# Optional: PyTorch, only needed to run `edgekit export` (weights -> ONNX) on the Jetson itself. It must be NVIDIA's
# Jetson build (a PyPI torch has no Jetson CUDA support), e.g. from the Jetson AI Lab index for JetPack 6 / CUDA 12.6:
#   docker build --build-arg TORCH_INDEX_URL=<jp6/cu126 index> --build-arg EDGEKIT_EXTRAS=onnxruntime,coco,export ...
# The installed version is then pinned for every later install. Default: no torch.
ARG TORCH_INDEX_URL=""
ARG EDGEKIT_EXTRAS=onnxruntime,coco
RUN if [ -n "${TORCH_INDEX_URL}" ]; then pip3 install --index-url "${TORCH_INDEX_URL}" torch; fi \
    && { python3 -c "import torch; print('torch==' + torch.__version__.split('+')[0])" 2>/dev/null || true; } \
       > /opt/edgekit/constraints-jetson.txt

COPY pyproject.toml README.md /opt/edgekit/
COPY edgekit /opt/edgekit/edgekit
COPY recipes /opt/edgekit/recipes
# The [tensorrt] extra is NOT used: its `tensorrt>=10` would make pip fetch PyPI's tensorrt wheels (not built for
# Jetson) whenever the JetPack bindings carry no pip metadata. Its other half, cuda-python (device memory for the
# TensorRT runner), is installed directly, below 13: cuda-python 13 targets CUDA 13 drivers, JetPack 6 has CUDA 12.6.
RUN pip3 install -c constraints-jetson.txt -e ".[${EDGEKIT_EXTRAS}]" "cuda-python>=12.6,<13" \
    && python3 -c "import tensorrt, edgekit; print('TensorRT', tensorrt.__version__)" \
    && command -v trtexec

VOLUME ["/assets"]
ENTRYPOINT ["edgekit"]
CMD ["--help"]
