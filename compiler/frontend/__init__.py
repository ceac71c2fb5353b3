"""edgec.compiler.frontend: ONNX, PyTorch and Hugging Face sources to one normalized ONNX model."""

from edgec.compiler.frontend.load import LoadedModel, load_model, parse_input_shapes

__all__ = ["LoadedModel", "load_model", "parse_input_shapes"]
