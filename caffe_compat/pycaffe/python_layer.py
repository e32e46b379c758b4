"""Caffe's ``Python`` layer type: a user class (``caffe.Layer``) run as a layer of the net.

Rules followed (``python_layer.hpp``, ``layer_factory.cpp``, ``_caffe.cpp``): the prototxt's
``python_param { module layer param_str }`` names a module, imported as Python imports it (it must
be on ``sys.path``), and a class in it, constructed with the LayerParameter; before ``setup``
the object gets ``param_str`` and ``phase`` (0 TRAIN, 1 TEST); every forward pass calls
``reshape(bottom, top)`` and then ``forward(bottom, top)``; backward calls
``backward(top, propagate_down, bottom)``. ``bottom``/``top`` are lists of ``caffe.Blob``;
``self.blobs`` holds the layer's parameter blobs (``self.blobs.add_blob(*shape)`` in ``setup``),
which are saved to and loaded from caffemodels, shared and updated by the solver like any
layer's. A user exception propagates unchanged, with a note naming the layer.

Importing and running code a prototxt names is an explicit opt-in: pycaffe's API allows it (its
users expect it); ``caffe_compat.Net``/``Solver`` and the CLI refuse the type unless given
``allow_python_layers=True`` / ``--allow-python-layers``.

Two ways the class runs: pycaffe's ``caffe.Net`` calls it layer by layer with the net's own blobs
(exactly Caffe's calls); inside the ``torch.fx`` graph of ``caffe_compat.Net`` it runs through an
autograd Function that hands it blobs holding the bottoms and the incoming gradients. ``setup`` and
the first ``reshape`` see blobs holding zeros of the bottom shapes (the net's blobs do not exist
yet when the module is built).
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from torch import nn

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import Blob as BlobSpec
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.proto import caffe_pb2
from caffe_compat.pycaffe.blob import Blob, BlobVec, ParamBlob


class Layer:
    """Base of Python layers (``caffe.Layer``): subclass it and define ``setup``, ``reshape``,
    ``forward`` and ``backward``.

    Attributes set by the net: ``param_str`` (``python_param.param_str``), ``phase``
    (``caffe.TRAIN``/``caffe.TEST``), ``blobs`` (the parameter blobs).
    """

    def __init__(self, layer_param: caffe_pb2.LayerParameter | None = None) -> None:
        self.layer_param = layer_param
        self.blobs: BlobVec = BlobVec()
        self.param_str = ""
        self.phase = caffe_pb2.TRAIN

    @property
    def type(self) -> str:
        return "Python"

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Check parameters and create ``self.blobs`` (called once)."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Reshape the tops to what ``forward`` writes (called before every forward)."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no forward")

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no backward")


def _note(exc: BaseException, where: str) -> BaseException:
    """The user's exception with a note naming the layer (Python 3.11+; unchanged before)."""
    if hasattr(exc, "add_note"):
        exc.add_note(f"(raised in {where})")
    return exc


class PythonLayer(CaffeLayer):
    """The module that runs a user's ``caffe.Layer`` subclass (Caffe's ``PythonLayer``).

    Args:
        impl: the user's layer object (already set up).
        num_bottoms, num_tops: the layer's blob counts.
        where: a label for errors (``layer 'x' (Python: module.Class)``).
    """

    family = "python"
    user_code: ClassVar[bool] = True  # the builder passes the user's exceptions through unchanged
    caffe_type = "Python"

    def __init__(self, impl: Any, num_bottoms: int, num_tops: int, where: str) -> None:
        super().__init__()
        self.impl = impl
        self.num_bottoms = num_bottoms
        self.num_tops = num_tops
        self.where = where
        self.caffe_blobs: tuple[BlobSpec, ...] = ()
        self._top_shapes: list[Shape] | None = None

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> PythonLayer:
        param = layer.python_param
        if not param.module or not param.layer:
            raise ctx.error("python_param needs both 'module' and 'layer'")
        where = f"layer '{layer.name}' (Python: {param.module}.{param.layer})"
        try:
            module = importlib.import_module(param.module)
        except ImportError as exc:
            raise ctx.error(
                f"cannot import module '{param.module}' (is its folder on PYTHONPATH?): {exc}"
            ) from None
        klass = getattr(module, param.layer, None)
        if klass is None:
            raise ctx.error(f"module '{param.module}' has no class '{param.layer}'")
        try:
            impl = klass(layer)
        except Exception as exc:
            raise _note(exc, f"{where}.__init__") from None
        result = cls(impl, len(layer.bottom), len(layer.top), where)
        impl.blobs = BlobVec(add=result._add_blob)
        impl.param_str = param.param_str
        impl.phase = int(ctx.phase)
        bottoms = [Blob(shape) for shape in ctx.bottom_shapes]
        tops = [Blob() for _ in layer.top]
        try:
            impl.setup(bottoms, tops)
            impl.reshape(bottoms, tops)
        except Exception as exc:
            raise _note(exc, f"{where}.setup") from None
        result._top_shapes = [top.shape for top in tops]
        return result

    def _add_blob(self, shape: Shape) -> ParamBlob:
        name = f"blob{len(self.caffe_blobs)}"
        self.caffe_blobs = (*self.caffe_blobs, BlobSpec(name))
        self.register_parameter(name, nn.Parameter(torch.zeros(shape, dtype=torch.float32)))
        return ParamBlob(self, name)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if self._top_shapes is not None and len(self._top_shapes) == self.num_tops:
            return list(self._top_shapes)
        bottoms = [Blob(shape) for shape in bottom_shapes]
        tops = [Blob() for _ in range(self.num_tops)]
        self.call("reshape", bottoms, tops)
        return [top.shape for top in tops]

    def call(self, method: str, *args: Any) -> None:
        """Call one of the user's methods; its exceptions get a note naming the layer."""
        try:
            getattr(self.impl, method)(*args)
        except Exception as exc:
            raise _note(exc, f"{self.where}.{method}") from None

    def param_tensors(self) -> list[torch.Tensor]:
        return self.caffe_blob_tensors()

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(bottoms) != self.num_bottoms:
            raise LayerError(f"{self.where}: expects {self.num_bottoms} bottoms, got {len(bottoms)}")
        if self.num_tops == 0:
            blobs = [_blob_holding(b) for b in bottoms]
            self.call("reshape", blobs, [])
            self.call("forward", blobs, [])
            return ()
        tops = _PythonFunction.apply(self, *bottoms, *self.param_tensors())
        return tops[0] if self.num_tops == 1 else tuple(tops)


def _blob_holding(tensor: torch.Tensor) -> Blob:
    blob = Blob(tuple(tensor.shape))
    blob.set_data(tensor.detach().to("cpu", torch.float32))
    return blob


class _PythonFunction(torch.autograd.Function):
    """Forward and backward of a Python layer inside an autograd graph.

    The parameters are inputs so the graph reaches the layer even when no bottom needs a
    gradient; the user's ``backward`` writes their diffs itself (into ``.grad``), as in Caffe.
    """

    @staticmethod
    def forward(ctx: Any, layer: PythonLayer, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bottoms_in = inputs[: layer.num_bottoms]
        device = bottoms_in[0].device if bottoms_in else torch.device("cpu")
        bottoms = [_blob_holding(t) for t in bottoms_in]
        tops = [Blob(shape) for shape in (layer._top_shapes or [()] * layer.num_tops)]
        layer.call("reshape", bottoms, tops)
        layer.call("forward", bottoms, tops)
        layer._top_shapes = [top.shape for top in tops]
        ctx.layer, ctx.bottoms, ctx.tops = layer, bottoms, tops
        ctx.device = device
        return tuple(top.data_tensor().clone().to(device) for top in tops)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        layer: PythonLayer = ctx.layer
        for top, grad in zip(ctx.tops, grads, strict=True):
            diff = top.diff_tensor()
            if grad is None:
                diff.zero_()
            else:
                diff.copy_(grad.detach().to("cpu", torch.float32).reshape(diff.shape))
        for bottom in ctx.bottoms:
            bottom.diff_tensor().zero_()
        propagate = [bool(x) for x in ctx.needs_input_grad[1 : 1 + layer.num_bottoms]]
        layer.call("backward", ctx.tops, propagate, ctx.bottoms)
        bottom_grads = [
            bottom.diff_tensor().clone().to(ctx.device) if wanted else None
            for bottom, wanted in zip(ctx.bottoms, propagate, strict=True)
        ]
        params = len(ctx.needs_input_grad) - 1 - layer.num_bottoms
        return (None, *bottom_grads, *([None] * params))
