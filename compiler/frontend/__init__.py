"""edgec.compiler.frontend: ONNX, PyTorch and Hugging Face sources to one normalized ONNX model."""
