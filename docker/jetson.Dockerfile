# edgekit on an NVIDIA Jetson (JetPack 6, L4T r36): builds and measures TensorRT engines on the device.
#
# Typical flow: run `edgekit export` with tensorrt targets on an x86 host (or here); the run folder holds
# tensorrt/model_int8_qdq.onnx, build_int8.json and the trtexec command. An engine only runs on the GPU and
# TensorRT version that built it, so the build happens here, on the Jetson:
#
#   docker build -f docker/jetson.Dockerfile -t edgekit:jetson .        # on the Jetson (arm64)
#   docker run --rm --runtime nvidia -v /path/to/assets:/assets:ro -v "$PWD/runs:/runs" edgekit:jetson \
#       export recipes/yolov5n_edge.yaml --out /runs/yolov5n-orin
#
# The base image carries CUDA, cuDNN, TensorRT (Python bindings and /usr/src/tensorrt/bin/trtexec).
FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EDGEKIT_ASSETS=/assets \
    EDGEKIT_CACHE=/cache \
    EDGEKIT_PROGRESS=0 \
    PATH=/usr/src/tensorrt/bin:$PATH

RUN apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv python3-libnvinfer \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/edgekit
# PyTorch for Jetson comes from NVIDIA's wheel index for JetPack 6 (export and LiteRT conversion need it); pin it
# for every later install so no dependency replaces it with a generic wheel.
ARG TORCH_WHEEL_INDEX=https://pypi.jetson-ai-lab.dev/jp6/cu126
RUN pip3 install --extra-index-url ${TORCH_WHEEL_INDEX} torch \
    && python3 -c "import torch; print(torch.__version__)" | sed 's/^/torch==/' > /opt/edgekit/torch-constraint.txt

COPY pyproject.toml README.md /opt/edgekit/
COPY edgekit /opt/edgekit/edgekit
COPY recipes /opt/edgekit/recipes
# tensorrt comes from JetPack (python3-libnvinfer), not from PyPI: install the [tensorrt] extra's cuda-python only.
RUN pip3 install -c torch-constraint.txt -e ".[yolo]" "cuda-python>=12" \
    && python3 -c "import tensorrt; print('TensorRT', tensorrt.__version__)" \
    && trtexec --help > /dev/null

VOLUME ["/assets", "/runs", "/cache"]
ENTRYPOINT ["edgekit"]
CMD ["--help"]
