"""Small vision-language models (LLaVA-style, SmolVLM/Idefics3): loading, the three ONNX graphs (vision + projector,
embedding, KV-cache decoder), greedy generation over them, and the run-folder runtime behind ``edgekit generate``."""
