"""Tiny example models: builders (onnx + numpy only) and the bundled example repository."""
