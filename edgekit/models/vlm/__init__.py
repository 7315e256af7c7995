"""Small vision-language models (groundwork for the VLM recipe): three ONNX graphs and a greedy loop over them."""
