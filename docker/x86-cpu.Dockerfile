# edgekit on an x86-64 CPU host: export, calibrate, and build + measure the ONNX Runtime, OpenVINO and LiteRT
# targets. TensorRT targets are written (Q/DQ ONNX, build config, trtexec command) and reported "not built".
#
#   docker build -f docker/x86-cpu.Dockerfile -t edgekit:x86 .
#   docker run --rm -v /path/to/assets:/assets:ro -v "$PWD/runs:/runs" edgekit:x86 \
#       export recipes/yolov5n_edge.yaml --out /runs/yolov5n
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EDGEKIT_ASSETS=/assets \
    EDGEKIT_CACHE=/cache \
    EDGEKIT_PROGRESS=0

# libgomp: OpenVINO and ONNX Runtime thread pools
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/edgekit
# torch first, CPU build, and pinned for every later install: a dependency asking for torch must not pull CUDA.
COPY docker/constraints.txt /opt/edgekit/docker/constraints.txt
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md /opt/edgekit/
COPY edgekit /opt/edgekit/edgekit
COPY recipes /opt/edgekit/recipes
# no torchvision anywhere: edgekit does not need it
RUN pip install -c docker/constraints.txt -e ".[yolo,openvino,tflite]" \
    && python -c "import torch, edgekit; assert torch.__version__.startswith('2.13.0')" \
    && ! python -c "import torchvision" 2>/dev/null

VOLUME ["/assets", "/runs", "/cache"]
ENTRYPOINT ["edgekit"]
CMD ["--help"]
