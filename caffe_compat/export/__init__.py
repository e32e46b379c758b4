"""Exporting nets: PyTorch state dicts, standalone code, TorchScript, ONNX, and back to caffemodels.

``caffe_compat.export.convert.convert`` is the entry point (``caffe-compat convert``). Modules:
``trace`` (a Net as one flat graph of plain torch calls), ``standalone`` (``py``), ``onnx``,
``torchscript``, ``state_dict`` (``pt``/``safetensors``), ``caffemodel`` (streamed caffemodel
reading and writing), ``deploy`` (the deploy form of a training prototxt), ``build`` (a Net built
for loading weights), ``verify`` (output comparison), ``files`` (staged, all-or-nothing outputs).
"""
