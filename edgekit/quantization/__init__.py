"""Quantization, written once over the ONNX graph: observers and cached calibration (ranges), the spec and the
per-backend placements (ORT, TensorRT, transformer), Q/DQ insertion and PTQ, dynamic / weight-only (MatMulNBits) /
embedding-table int8, SmoothQuant and the static int8 of transformer graphs."""
