"""The CLIP model family: two towers (image, text) exported, quantized and measured as separate graphs."""
