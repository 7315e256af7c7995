"""Model families behind one contract (``edgekit.families.base.Family``): yolo, clip, vlm, onnx; see ``edgekit.registry``."""
