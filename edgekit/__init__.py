"""edgekit: export, fuse, quantize, build, evaluate and gate models for edge targets."""

__version__ = "0.1.0"
