"""Exporting nets: PyTorch state dicts, standalone code, TorchScript and ONNX."""
