# edgekit on an x86-64 CPU host: export, calibrate, quantize (Q/DQ ONNX), then build and measure the ONNX Runtime,
# OpenVINO and LiteRT targets. TensorRT targets are written (Q/DQ ONNX, build_<precision>.json, trtexec command)
# and reported as not built: build them on the device (see jetson.Dockerfile).
#
# Build context is the repository root (see docker/README.md):
#   docker build -f docker/x86.Dockerfile -t edgekit:x86 .
#   docker run --rm -v /path/to/assets:/assets:ro -v "$PWD/runs:/runs" edgekit:x86 \
#       export recipes/yolov5n_edge.yaml --out /runs/yolov5n
FROM python:3.11-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# EDGEKIT_ASSETS: where recipes find ${EDGEKIT_ASSETS} (weights, COCO images); mount it read-only.
# EDGEKIT_CACHE: calibration-range cache; mount a named volume there to reuse it across runs.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGEKIT_ASSETS=/assets \
    EDGEKIT_CACHE=/cache \
    EDGEKIT_PROGRESS=0

# libgomp1: OpenMP runtime used by the ONNX Runtime / OpenVINO / torch CPU wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /assets /runs /cache && chmod 1777 /runs /cache

WORKDIR /opt/edgekit

# 1. torch FIRST, the CPU wheel (edgekit does not list torch as a dependency, on purpose).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# 2. edgekit with its backend extras. constraints.txt pins torch==2.13.0, so a dependency that asks for another torch
#    fails the build instead of silently replacing the CPU wheel (e.g. with a CUDA one). Only what the package needs
#    is copied: no tests, runs, benchmarks or local venvs enter the image.
COPY docker/constraints.txt /opt/edgekit/docker/constraints.txt
COPY pyproject.toml README.md /opt/edgekit/
COPY edgekit /opt/edgekit/edgekit
COPY recipes /opt/edgekit/recipes
RUN pip install -c docker/constraints.txt -e ".[onnxruntime,export,coco,openvino,tflite]" \
    && python -c "import torch, edgekit; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__" \
    && if pip show torchvision > /dev/null 2>&1; then echo "torchvision must not be installed" >&2; exit 1; fi

VOLUME ["/assets"]
ENTRYPOINT ["edgekit"]
CMD ["--help"]
