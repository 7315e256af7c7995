"""Backend builders: per-backend Q/DQ placement, lint and engine build (TensorRT today; OpenVINO and LiteRT next)."""
