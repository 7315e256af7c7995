"""Quantization-aware training of the deployed Q/DQ graph, distilled from the FP32 model on unlabelled images."""
