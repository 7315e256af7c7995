"""Small models the contract tests (and tests/test_onnx_family.py) build in the test: no downloads."""

from __future__ import annotations

import warnings
from pathlib import Path


def conv_matmul_module():
    """``images`` (1, 3, 16, 16) -> Conv 3x3 (8) -> ReLU -> mean over H, W -> MatMul (8x10) + bias -> ``logits``
    (1, 10): a PyTorch module with seeded weights (so converting backends get it too)."""
    import torch

    class ConvMatMul(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.randn(8, 3, 3, 3, generator=generator) * 0.3)
                self.conv.bias.copy_(torch.randn(8, generator=generator) * 0.1)
            self.weight = torch.nn.Parameter(torch.randn(8, 10, generator=generator) * 0.5)
            self.bias = torch.nn.Parameter(torch.randn(10, generator=generator) * 0.1)

        def forward(self, images):
            x = torch.relu(self.conv(images)).mean(dim=(2, 3))
            return torch.matmul(x, self.weight) + self.bias

    return ConvMatMul().eval()


def conv_matmul_onnx(path: Path, opset: int = 17):
    """``(path, module)``: :func:`conv_matmul_module` exported to ONNX (TorchScript exporter: Conv, Relu,
    ReduceMean, MatMul, Add), input ``images``, output ``logits``."""
    import onnx
    import torch

    module = conv_matmul_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["logits"])
    onnx.checker.check_model(str(path), full_check=True)
    return path, module


def small_cnn_onnx(path: Path, size: int = 64, classes: int = 16, seed: int = 0) -> Path:
    """A small CNN (Conv-BN-ReLU x3, global pool, Linear to ``classes``) with seeded weights and non-trivial BN
    statistics, exported with BatchNormalization kept (so edgekit's passes fold it), input ``image`` (1, 3, S, S)."""
    import torch

    torch.manual_seed(seed)
    layers, channels = [], 3
    for out in (16, 32, 64):
        layers += [torch.nn.Conv2d(channels, out, 3, stride=2, padding=1), torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
        channels = out
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, classes)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], do_constant_folding=False)
    return path


def torch_source(module, channels_last: bool):
    """The module as a converting backend (LiteRT) gets it: NHWC images (as every family gives images), or NCHW."""
    import torch

    from edgekit.backends.base import TorchSource

    if not channels_last:
        return TorchSource(module, {"images": torch.zeros(1, 3, 16, 16)}, ("images",), ("logits",))

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, images):
            return self.inner(images.permute(0, 3, 1, 2))

    return TorchSource(ChannelsLast().eval(), {"images": torch.zeros(1, 16, 16, 3)}, ("images",), ("logits",), channels_last=("images",))
