# edgekit on an x86-64 host with an NVIDIA GPU, on NVIDIA's TensorRT container (TensorRT 10.6, CUDA 12.6,
# Ubuntu 22.04, Python 3.10 in release 24.11; see NVIDIA's TensorRT container release notes). Builds and measures
# every target, TensorRT engines included (Python API, or trtexec).
#
#   docker build -f docker/x86-tensorrt.Dockerfile -t edgekit:x86-tensorrt .
#   docker run --rm --gpus all -v /path/to/assets:/assets:ro -v "$PWD/runs:/runs" edgekit:x86-tensorrt \
#       export recipes/yolov5n_edge.yaml --out /runs/yolov5n-gpu
ARG TRT_RELEASE=24.11-py3
FROM nvcr.io/nvidia/tensorrt:${TRT_RELEASE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EDGEKIT_ASSETS=/assets \
    EDGEKIT_CACHE=/cache \
    EDGEKIT_PROGRESS=0 \
    PATH=/opt/tensorrt/bin:$PATH

WORKDIR /opt/edgekit
# torch first (export only needs the CPU build), pinned for every later install; never torchvision.
COPY docker/constraints.txt /opt/edgekit/docker/constraints.txt
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md /opt/edgekit/
COPY edgekit /opt/edgekit/edgekit
COPY recipes /opt/edgekit/recipes
# The container ships the tensorrt Python package; the [tensorrt] extra adds cuda-python for the runner.
RUN pip install -c docker/constraints.txt -e ".[yolo,openvino,tflite]" "cuda-python>=12" \
    && python -c "import tensorrt, torch; print('TensorRT', tensorrt.__version__, 'torch', torch.__version__)" \
    && trtexec --help > /dev/null

VOLUME ["/assets", "/runs", "/cache"]
ENTRYPOINT ["edgekit"]
CMD ["--help"]
