"""PyTorch -> ONNX export and its numerical check against PyTorch."""

from edgekit.export.onnx_export import ExportCheck, check_against_torch, export_module, export_onnx, fuse_batchnorm

__all__ = ["ExportCheck", "check_against_torch", "export_module", "export_onnx", "fuse_batchnorm"]
