"""pycaffe's ``caffe.Net`` over ``caffe_compat.Net``: the same layer modules, run layer by layer.

``caffe.Net`` builds a ``caffe_compat.Net`` (``net.cc_net``: same modules, parameters and weights,
so numbers equal the native API's) and runs its layer modules one at a time between pycaffe
``Blob`` objects, as Caffe's ``Net`` runs its layers between its blobs:

- ``forward(start, end)`` (``ForwardFromTo``): each layer reads its bottom blobs' data and writes
  its tops' data; Input layers do nothing (their blobs hold what the caller wrote), data layers
  fetch their next batch (a constant ``DummyData`` top is written once, as Caffe's ``refill_``
  says, so values written into it stay), Python layers get ``reshape`` then ``forward`` with the
  net's own blobs;
- ``backward(start, end)`` (``BackwardFromTo``): each layer that needs backward (Caffe's rules:
  parameters with ``lr_mult != 0``, bottoms that need a gradient, contribution to a loss,
  ``propagate_down``, ``force_backward``) reads its tops' diffs and writes its bottoms' diffs
  and *adds* to its parameters' diffs. A gradient is the vector-Jacobian product of the autograd
  graph its forward recorded (so Dropout's mask and the like are the forward's); a blob read by
  several layers gets the sum of their diffs, as Caffe's Split layers sum them; a loss top's diff
  is its loss weight from construction on (``SetLossWeights``).

Deliberate deviations: no ``*_split_*`` blobs or Split layers appear in ``blobs``/``layers``
(fan-out is summed without them); computation runs on the CPU (the numpy views need CPU memory);
a backward pass through a layer whose forward has not run yet runs its forward first (on the
blobs' current data).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from itertools import zip_longest
from typing import Any

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.net import Net as NativeNet
from caffe_compat.proto import caffe_pb2
from caffe_compat.pycaffe.blob import Blob, BlobVec, ParamBlob
from caffe_compat.pycaffe.python_layer import PythonLayer
from caffe_compat.solver import snapshot as snap


class PycaffeError(CaffeCompatError, RuntimeError):
    """An error pycaffe reports as a Python ``RuntimeError`` (Caffe's ``std::runtime_error``)."""


_INPUT, _DATA, _PYTHON, _MODULE = "input", "data", "python", "module"


class LayerView:
    """One layer as ``net.layers[i]`` shows it (``caffe.Layer``): ``type`` and ``blobs``.

    ``module`` is the torch module that computes it. A Python layer is shown as the user's own
    object instead, as in Caffe.
    """

    def __init__(self, layer_param: caffe_pb2.LayerParameter, module: torch.nn.Module) -> None:
        self.layer_param = layer_param
        self.module = module
        self.blobs = BlobVec([ParamBlob(module, spec.name) for spec in module.present_blob_specs()])

    @property
    def type(self) -> str:
        return self.layer_param.type

    def __repr__(self) -> str:
        return f"<caffe.Layer '{self.layer_param.name}' ({self.type})>"


def _allow_force_backward(module: torch.nn.Module, layer_type: str, bottom: int) -> bool:
    """Caffe's ``AllowForceBackward``: loss layers refuse their label bottom (index 1), except
    EuclideanLoss (both) and ContrastiveLoss (its third bottom)."""
    if not getattr(module, "is_loss", False) or layer_type == "EuclideanLoss":
        return True
    if layer_type == "ContrastiveLoss":
        return bottom != 2
    return bottom != 1


def _parse_args(args: tuple, kwargs: dict) -> tuple[int, str | None, int, list[str]]:
    """Caffe's two constructors: ``Net(file, phase, level=0, stages=None, weights=None)`` and the
    legacy ``Net(file, pretrained_file, phase)``."""
    unknown = set(kwargs) - {"phase", "level", "stages", "weights"}
    if unknown:
        raise TypeError(f"Net() got unexpected keyword arguments {sorted(unknown)}")
    if len(args) >= 2 and isinstance(args[0], (str, os.PathLike)):
        if len(args) != 2 or kwargs:
            raise TypeError("the legacy constructor is Net(network_file, pretrained_file, phase)")
        warnings.warn(
            "DEPRECATION WARNING - deprecated use of Python interface; use "
            f"Net(network_file, {args[1]!r}, weights={os.fspath(args[0])!r}) instead",
            DeprecationWarning,
            stacklevel=3,
        )
        return int(args[1]), os.fspath(args[0]), 0, []
    names = ("phase", "level", "stages", "weights")
    if len(args) > len(names):
        raise TypeError(f"Net() takes at most {len(names) + 1} positional arguments")
    values = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name in values:
            raise TypeError(f"Net() got multiple values for argument '{name}'")
        values[name] = value
    if "phase" not in values:
        raise TypeError("Net() needs a phase: Net(network_file, caffe.TRAIN or caffe.TEST, ...)")
    weights = values.get("weights")
    stages = values.get("stages")
    return (
        int(values["phase"]),
        os.fspath(weights) if weights is not None else None,
        int(values.get("level", 0)),
        [str(s) for s in stages] if stages is not None else [],
    )


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise PycaffeError(f"Could not open file {os.fspath(path)}")


class Net:
    """A Caffe net with pycaffe's interface (``caffe.Net``).

    ``Net(network_file, phase, level=0, stages=None, weights=None)`` or the legacy
    ``Net(network_file, pretrained_file, phase)``. Python layers are allowed (pycaffe's opt-in).
    ``cc_net`` is the ``caffe_compat.Net`` whose modules and parameters it runs.
    """

    def __init__(self, network_file: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        phase, weights, level, stages = _parse_args(args, kwargs)
        _check_file(network_file)
        native = NativeNet(
            os.fspath(network_file), phase=phase, level=level, stages=stages, allow_python_layers=True
        )
        self._attach(native)
        if weights is not None:
            _check_file(weights)
            self.copy_from(weights)

    @classmethod
    def wrap(cls, native: NativeNet) -> Net:
        """The pycaffe view of an existing ``caffe_compat.Net`` (the solver's nets)."""
        net = cls.__new__(cls)
        net._attach(native)
        return net

    # -- set-up --------------------------------------------------------------------------------
    def _attach(self, native: NativeNet) -> None:
        self.cc_net = native
        keys = list(native.layers)
        self._keys = keys
        self._params_of = [native.layer_params[key] for key in keys]
        self._modules = [native.layers[key] for key in keys]
        self._kinds = []
        for module in self._modules:
            if getattr(module, "is_input", False):
                self._kinds.append(_INPUT)
            elif getattr(module, "is_data", False):
                self._kinds.append(_DATA)
            elif isinstance(module, PythonLayer):
                self._kinds.append(_PYTHON)
            else:
                self._kinds.append(_MODULE)
        self._blobs = OrderedDict((name, Blob(shape)) for name, shape in native.blob_shapes.items())
        self._layer_list = [
            module.impl if kind == _PYTHON else LayerView(param, module)
            for param, module, kind in zip(self._params_of, self._modules, self._kinds, strict=True)
        ]
        self._top_weights = [self._layer_loss_weights(param, module) for param, module in self._layers()]
        self._loss_weight_of = {name: 0.0 for name in self._blobs}
        for weights, param in zip(self._top_weights, self._params_of, strict=True):
            for top, weight in zip(param.top, weights, strict=True):
                if weight:
                    self._loss_weight_of[top] = weight
                    self._blobs[top].diff[...] = weight  # Caffe's SetLossWeights
        self._analyse_backward()
        self._records: dict[int, tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]] = {}
        self._last_batch: dict[int, tuple[torch.Tensor, ...]] = {}
        self._callbacks: dict[str, list[Callable[[int], None]]] = {
            "before_forward": [],
            "after_forward": [],
            "before_backward": [],
            "after_backward": [],
        }

    def _layers(self) -> Iterator[tuple[caffe_pb2.LayerParameter, torch.nn.Module]]:
        return zip(self._params_of, self._modules, strict=True)

    @staticmethod
    def _layer_loss_weights(param: caffe_pb2.LayerParameter, module: torch.nn.Module) -> list[float]:
        if param.loss_weight:
            return [float(w) for w in param.loss_weight]
        default = float(module.default_loss_weight) if getattr(module, "is_loss", False) else 0.0
        return [default if index == 0 else 0.0 for index in range(len(param.top))]

    def _analyse_backward(self) -> None:
        """Caffe's ``Net::Init`` bookkeeping of which layers, bottoms and params need backward,
        and the blob version each bottom reads (for summing the diffs of fan-out)."""
        force = bool(self.cc_net.net_param.force_backward)
        blob_need: dict[str, bool] = {}
        version: dict[str, int] = {}
        layer_need: list[bool] = []
        bottom_need: list[list[bool]] = []
        param_need: list[list[bool]] = []
        self._bottom_versions: list[list[tuple[str, int]]] = []
        for index, (param, module) in enumerate(self._layers()):
            need = False
            needs = []
            for position, bottom in enumerate(param.bottom):
                wanted = blob_need.get(bottom, False)
                need |= wanted
                if param.propagate_down:
                    wanted = bool(param.propagate_down[position])
                needs.append(wanted)
            self._bottom_versions.append([(bottom, version.get(bottom, -1)) for bottom in param.bottom])
            for top in param.top:
                blob_need.setdefault(top, False)
                version[top] = index
            specs = module.param_specs(param, len(module.caffe_blob_tensors()))
            params = [spec.lr_mult != 0 for spec in specs]
            need |= any(params)
            layer_need.append(need)
            bottom_need.append(needs)
            param_need.append(params)
            if need:
                for top in param.top:
                    blob_need[top] = True
        # backwards: which layers contribute to a loss, and which can skip propagation. A blob read
        # by several layers is under the loss if any reader is, and skipped only if all skip it.
        under_loss: dict[str, bool] = {}
        needed_by_reader: dict[str, bool] = {}
        for index in range(len(self._keys) - 1, -1, -1):
            param = self._params_of[index]
            contributes = False
            skip = True
            for top, weight in zip(param.top, self._top_weights[index], strict=True):
                if weight or under_loss.get(top, False):
                    contributes = True
                if top not in needed_by_reader or needed_by_reader[top]:
                    skip = False
            for top in param.top:  # the versions this layer produced are done with
                under_loss.pop(top, None)
                needed_by_reader.pop(top, None)
            if layer_need[index] and skip:
                layer_need[index] = False
                bottom_need[index] = [False] * len(param.bottom)
            if not contributes:
                layer_need[index] = False
            for position, bottom in enumerate(param.bottom):
                if contributes:
                    under_loss[bottom] = True
                else:
                    bottom_need[index][position] = False
                needed_by_reader[bottom] = needed_by_reader.get(bottom, False) or bottom_need[index][position]
        if force:
            for index, (param, module) in enumerate(self._layers()):
                layer_need[index] = True
                bottom_need[index] = [
                    wanted or _allow_force_backward(module, param.type, position)
                    for position, wanted in enumerate(bottom_need[index])
                ]
                param_need[index] = [True] * len(param_need[index])
        self._layer_need, self._bottom_need, self._param_need = layer_need, bottom_need, param_need

    # -- pycaffe's properties ------------------------------------------------------------------
    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        """Blob name -> Blob, in the order the net creates them (inputs first)."""
        return self._blobs

    @property
    def layers(self) -> list:
        """The layers in order: ``type``, ``blobs`` (the user's object for a Python layer)."""
        return self._layer_list

    @property
    def _layer_names(self) -> list[str]:
        return [param.name for param in self._params_of]

    @property
    def _blob_names(self) -> list[str]:
        return list(self._blobs)

    @property
    def _blob_loss_weights(self) -> list[float]:
        return list(self._loss_weight_of.values())

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        """Blob name -> its loss weight (0 for a blob that is no loss)."""
        return OrderedDict(self._loss_weight_of)

    @property
    def layer_dict(self) -> OrderedDict[str, Any]:
        """Layer name -> layer (a repeated name reaches the last layer of that name)."""
        return OrderedDict(zip(self._layer_names, self.layers, strict=True))

    @property
    def params(self) -> OrderedDict[str, BlobVec]:
        """Layer name -> its parameter blobs, for the layers that have any."""
        return OrderedDict(
            (name, layer.blobs)
            for name, layer in zip(self._layer_names, self.layers, strict=True)
            if len(layer.blobs)
        )

    @property
    def _inputs(self) -> list[int]:
        names = self._blob_names
        return [
            names.index(top)
            for param, kind in zip(self._params_of, self._kinds, strict=True)
            if kind == _INPUT
            for top in param.top
        ]

    @property
    def _outputs(self) -> list[int]:
        names = self._blob_names
        return [names.index(name) for name in self.cc_net.output_names]

    @property
    def inputs(self) -> list[str]:
        """The tops of the Input layers (data layers' tops are not inputs, as in Caffe)."""
        return [self._blob_names[i] for i in self._inputs]

    @property
    def outputs(self) -> list[str]:
        """The blobs no layer reads, alphabetically (Caffe's std::set order)."""
        return list(self.cc_net.output_names)

    def _top_ids(self, index: int) -> list[int]:
        names = self._blob_names
        return [names.index(top) for top in self._params_of[index].top]

    def _bottom_ids(self, index: int) -> list[int]:
        names = self._blob_names
        return [names.index(bottom) for bottom in self._params_of[index].bottom]

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((param.name, list(param.top)) for param in self._params_of)

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((param.name, list(param.bottom)) for param in self._params_of)

    # -- running one layer ---------------------------------------------------------------------
    def _forward_layer(self, index: int, record: bool = True) -> None:
        for callback in self._callbacks["before_forward"]:
            callback(index)
        param, module, kind = self._params_of[index], self._modules[index], self._kinds[index]
        tops = [self._blobs[top] for top in param.top]
        if kind == _DATA:
            batch = module.next_batch()
            batch = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
            previous = self._last_batch.get(index, ())
            for position, (blob, value) in enumerate(zip(tops, batch, strict=True)):
                if position < len(previous) and previous[position] is value:
                    continue  # a constant top Caffe fills once (DummyData's refill_ false)
                blob.set_data(value)
            self._last_batch[index] = batch
        elif kind == _PYTHON:
            bottoms = [self._blobs[bottom] for bottom in param.bottom]
            module.call("reshape", bottoms, tops)
            module.call("forward", bottoms, tops)
        elif kind == _MODULE:
            record = record and self._layer_need[index]
            inputs = self._layer_inputs(index, record)
            with torch.set_grad_enabled(record):
                result = module(*inputs)
            outputs = tuple(result) if isinstance(result, (tuple, list)) else (result,)
            for blob, value in zip(tops, outputs, strict=True):
                blob.set_data(value)
            if record:
                self._records[index] = (inputs, outputs)
            else:
                self._records.pop(index, None)
        for callback in self._callbacks["after_forward"]:
            callback(index)

    def _layer_inputs(self, index: int, record: bool) -> list[torch.Tensor]:
        inputs = []
        for position, bottom in enumerate(self._params_of[index].bottom):
            value = self._blobs[bottom].data_tensor()
            if record:  # a copy: the blob may be overwritten (in place) before backward reads it
                value = value.clone().requires_grad_(self._bottom_need[index][position])
            inputs.append(value)
        return inputs

    def _record_for_backward(self, index: int) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        record = self._records.get(index)
        if record is None:  # backward before any forward: run the layer on the blobs' data
            inputs = self._layer_inputs(index, True)
            with torch.enable_grad():
                result = self._modules[index](*inputs)
            record = (inputs, tuple(result) if isinstance(result, (tuple, list)) else (result,))
            self._records[index] = record
        return record

    def _write_bottom_diff(self, index: int, position: int, grad: torch.Tensor | None, written: set) -> None:
        blob = self._blobs[self._params_of[index].bottom[position]]
        key = self._bottom_versions[index][position]
        diff = blob.diff_tensor()
        with torch.no_grad():
            if key in written:
                if grad is not None:
                    diff.add_(grad.reshape(diff.shape))
            elif grad is None:
                diff.zero_()
            else:
                diff.copy_(grad.reshape(diff.shape))
        written.add(key)

    def _backward_layer(self, index: int, written: set) -> None:
        for callback in self._callbacks["before_backward"]:
            callback(index)
        if self._layer_need[index]:
            kind = self._kinds[index]
            if kind == _PYTHON:
                self._backward_python(index, written)
            elif kind == _MODULE:
                self._backward_module(index, written)
        for callback in self._callbacks["after_backward"]:
            callback(index)

    def _backward_python(self, index: int, written: set) -> None:
        param, module = self._params_of[index], self._modules[index]
        tops = [self._blobs[top] for top in param.top]
        need = list(self._bottom_need[index])
        bottoms: list[Blob] = []
        summed: list[tuple[int, Blob]] = []
        for position, name in enumerate(param.bottom):
            blob = self._blobs[name]
            if need[position] and self._bottom_versions[index][position] in written:
                proxy = Blob(blob.shape)  # its own diff, added to the blob's afterwards
                proxy.set_data(blob.data_tensor())
                summed.append((position, proxy))
                bottoms.append(proxy)
            else:
                bottoms.append(blob)
        module.call("backward", tops, need, bottoms)
        for position, proxy in summed:
            self._write_bottom_diff(index, position, proxy.diff_tensor(), written)
        for position, wanted in enumerate(need):
            if wanted:
                written.add(self._bottom_versions[index][position])

    def _backward_module(self, index: int, written: set) -> None:
        module = self._modules[index]
        inputs, outputs = self._record_for_backward(index)
        tops = self._params_of[index].top
        pairs = [
            (value, self._blobs[top].diff_tensor())
            for top, value in zip(tops, outputs, strict=True)
            if isinstance(value, torch.Tensor) and value.requires_grad
        ]
        bottoms = [position for position, value in enumerate(inputs) if value.requires_grad]
        tensors = module.caffe_blob_tensors()
        params = [
            tensor
            for tensor, wanted in zip(tensors, self._param_need[index], strict=True)
            if wanted and isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad
        ]
        targets = [inputs[position] for position in bottoms] + params
        grads: Sequence[torch.Tensor | None] = [None] * len(targets)
        if pairs and targets:
            grads = torch.autograd.grad(
                [value for value, _ in pairs],
                targets,
                [diff.reshape(value.shape) for value, diff in pairs],
                retain_graph=True,
                allow_unused=True,
            )
        for position, grad in zip(bottoms, grads[: len(bottoms)], strict=True):
            self._write_bottom_diff(index, position, grad, written)
        with torch.no_grad():
            for tensor, grad in zip(params, grads[len(bottoms) :], strict=True):
                if grad is not None:
                    if tensor.grad is None:
                        tensor.grad = torch.zeros_like(tensor)
                    tensor.grad.add_(grad)

    def _layer_index(self, name: str) -> int:
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise PycaffeError(f"the net has no layer named '{name}'") from None

    # -- Caffe's Net methods -------------------------------------------------------------------
    def _forward(self, start: int, end: int, record: bool = True) -> float:
        """``ForwardFromTo(start, end)``; returns the loss of the layers run. ``record=False``
        keeps no autograd graph (a pass no backward follows: the solver's tests)."""
        if not (0 <= start and end < len(self._keys)):
            raise PycaffeError(
                f"forward range [{start}, {end}] is outside the net's {len(self._keys)} layers"
            )
        loss = 0.0
        for index in range(start, end + 1):
            self._forward_layer(index, record)
            for top, weight in zip(self._params_of[index].top, self._top_weights[index], strict=True):
                if weight:
                    loss += float(self._blobs[top].data_tensor().sum() * weight)
        self.cc_net.blobs = {name: blob.data_tensor() for name, blob in self._blobs.items()}
        return loss

    def _backward(self, start: int, end: int) -> None:
        """``BackwardFromTo(start, end)``: layers ``start`` down to ``end``."""
        if not (end >= 0 and start < len(self._keys)):
            raise PycaffeError(
                f"backward range [{start}, {end}] is outside the net's {len(self._keys)} layers"
            )
        written: set = set()
        for index in range(start, end - 1, -1):
            self._backward_layer(index, written)

    def forward(
        self,
        blobs: Sequence[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Set the inputs given by name, run layers ``start``..``end`` (names, inclusive) and return
        ``{blob: data}`` for the outputs (or ``end``'s tops) and ``blobs``."""
        blobs = list(blobs or [])
        start_index = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_index = self._layer_index(end)
            wanted = set(self.top_names[end] + blobs)
        else:
            end_index = len(self._keys) - 1
            wanted = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise PycaffeError("Input blob arguments do not match net inputs.")
            for name, value in kwargs.items():
                if np.shape(value)[0] != self._blobs[name].shape[0]:
                    raise PycaffeError("Input is not batch sized")
                self._blobs[name].data[...] = value
        self._forward(start_index, end_index)
        return {name: self._blobs[name].data for name in wanted}

    def backward(
        self,
        diffs: Sequence[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Set the output diffs given by name, run layers ``start`` down to ``end`` and return
        ``{blob: diff}`` for the inputs (or ``end``'s bottoms) and ``diffs``."""
        diffs = list(diffs or [])
        start_index = self._layer_index(start) if start is not None else len(self._keys) - 1
        if end is not None:
            end_index = self._layer_index(end)
            wanted = set(self.bottom_names[end] + diffs)
        else:
            end_index = 0
            wanted = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise PycaffeError("Top diff arguments do not match net outputs.")
            for name, value in kwargs.items():
                if np.shape(value)[0] != self._blobs[name].shape[0]:
                    raise PycaffeError("Diff is not batch sized")
                self._blobs[name].diff[...] = value
        self._backward(start_index, end_index)
        return {name: self._blobs[name].diff for name in wanted}

    def _batch(self, arrays: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Split arrays into the net's batch size; the last batch is padded with zeros."""
        count = len(next(iter(arrays.values())))
        batch = next(iter(self._blobs.values())).shape[0]
        for begin in range(0, count - count % batch, batch):
            yield {name: value[begin : begin + batch] for name, value in arrays.items()}
        rest = count % batch
        if rest:
            padded = {}
            for name, value in arrays.items():
                value = np.asarray(value)
                padding = np.zeros((batch - rest,) + value.shape[1:])
                padded[name] = np.concatenate([value[-rest:], padding])
            yield padded

    def forward_all(self, blobs: Sequence[str] | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        """Forward the inputs in batches; returns ``{blob: array}`` over all items."""
        collected: dict[str, list] = {name: [] for name in set(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                collected[name].extend(value.copy())
        result = {name: np.asarray(values) for name, values in collected.items()}
        pad = len(next(iter(result.values()))) - len(next(iter(kwargs.values())))
        if pad:
            result = {name: value[:-pad] for name, value in result.items()}
        return result

    def forward_backward_all(
        self, blobs: Sequence[str] | None = None, diffs: Sequence[str] | None = None, **kwargs: Any
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Forward and backward in batches; inputs and output diffs given by name."""
        outs: dict[str, list] = {name: [] for name in set(self.outputs + list(blobs or []))}
        grads: dict[str, list] = {name: [] for name in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({name: kwargs[name] for name in self.inputs if name in kwargs})
        backward_batches = self._batch({name: kwargs[name] for name in self.outputs if name in kwargs})
        for forward_batch, backward_batch in zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, value in self.forward(blobs=blobs, **forward_batch).items():
                outs[name].extend(value.copy())
            for name, value in self.backward(diffs=diffs, **backward_batch).items():
                grads[name].extend(value.copy())
        all_outs = {name: np.asarray(values) for name, values in outs.items()}
        all_diffs = {name: np.asarray(values) for name, values in grads.items()}
        pad = len(next(iter(all_outs.values()))) - len(next(iter(kwargs.values())))
        if pad:
            all_outs = {name: value[:-pad] for name, value in all_outs.items()}
            all_diffs = {name: value[:-pad] for name, value in all_diffs.items()}
        return all_outs, all_diffs

    def reshape(self) -> None:
        """Caffe's ``Net::Reshape``: propagate the input blobs' shapes through every layer."""
        for param, module, kind in zip(self._params_of, self._modules, self._kinds, strict=True):
            tops = [self._blobs[top] for top in param.top]
            bottoms = [self._blobs[bottom] for bottom in param.bottom]
            if kind == _INPUT:
                continue
            if kind == _PYTHON:
                module.call("reshape", bottoms, tops)
                continue
            shapes = module.top_shapes([blob.shape for blob in bottoms])
            for blob, shape in zip(tops, shapes, strict=True):
                if tuple(shape) != blob.shape:
                    blob.reshape(*shape)

    def clear_param_diffs(self) -> None:
        """Zero every parameter diff in place (held diff arrays stay valid)."""
        for layer in self.layers:
            for blob in layer.blobs:
                blob.diff_tensor().zero_()

    def copy_from(self, filename: str | os.PathLike) -> None:
        """Copy weights by layer name from a ``.caffemodel`` (or ``.h5``) file."""
        _check_file(filename)
        snap.load_weights(self.cc_net, filename)

    def share_with(self, other: Net) -> None:
        """Share every parameter blob with the same-named layer of ``other``
        (``ShareTrainedLayersWith``; a repeated name reaches the last layer of that name)."""
        theirs = dict(zip(other._layer_names, other._modules, strict=True))
        for name, module in zip(self._layer_names, self._modules, strict=True):
            source = theirs.get(name)
            if source is None:
                continue
            mine, their_specs = module.present_blob_specs(), source.present_blob_specs()
            if len(mine) != len(their_specs):
                raise PycaffeError(
                    f"layer '{name}': incompatible number of blobs ({len(their_specs)} vs {len(mine)})"
                )
            for spec, their_spec in zip(mine, their_specs, strict=True):
                value = getattr(source, their_spec.name)
                if tuple(value.shape) != tuple(getattr(module, spec.name).shape):
                    raise PycaffeError(f"layer '{name}': cannot share blob '{spec.name}': shapes differ")
                module.set_blob(spec.name, value)

    def save(self, filename: str | os.PathLike) -> None:
        """Write the weights as a binary caffemodel (atomically)."""
        self.cc_net.save_caffemodel(filename)

    def save_hdf5(self, filename: str | os.PathLike) -> None:
        """Write the weights in Caffe's HDF5 layout (``data/<layer>/<i>``)."""
        snap.write_net_snapshot(self.cc_net, filename, hdf5=True)

    def load_hdf5(self, filename: str | os.PathLike) -> None:
        """Copy weights from Caffe's HDF5 layout, whatever the file's name."""
        _check_file(filename)
        self.cc_net.copy_from(snap.read_hdf5_weights(filename))

    def _set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        module = self._modules[0] if self._modules else None
        if module is None or self._params_of[0].type != "MemoryData":
            raise PycaffeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        store = module.store
        for name, array, dims in (
            ("data array", data, (store.channels, store.height, store.width)),
            ("labels array", labels, (1, 1, 1)),
        ):
            if not isinstance(array, np.ndarray) or not array.flags["C_CONTIGUOUS"]:
                raise PycaffeError(f"{name} must be C contiguous")
            if array.ndim != 4:
                raise PycaffeError(f"{name} must be 4-d")
            if array.dtype != np.float32:
                raise PycaffeError(f"{name} must be float32")
            for axis, what in zip(range(1, 4), ("number of channels", "height", "width"), strict=True):
                if array.shape[axis] != dims[axis - 1]:
                    raise PycaffeError(f"{name} has wrong {what}")
        if data.shape[0] != labels.shape[0]:
            raise PycaffeError("data and labels must have the same first dimension")
        if data.shape[0] % store.batch_size != 0:
            raise PycaffeError("first dimensions of input arrays must be a multiple of batch size")
        module.reset(data, labels.reshape(-1))

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Hand arrays to the net's first layer, a MemoryData layer (used untransformed)."""
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        self._set_input_arrays(data, labels)

    # -- callbacks (``Net::add_before_forward`` ...): ``run(layer_index)`` ----------------------
    def _add_callback(self, when: str, run: Callable[[int], None]) -> None:
        if type(run).__name__ == "NCCL":  # Caffe's NCCL hook; a no-op without NCCL
            return
        self._callbacks[when].append(run)

    def before_forward(self, run: Callable[[int], None]) -> None:
        self._add_callback("before_forward", run)

    def after_forward(self, run: Callable[[int], None]) -> None:
        self._add_callback("after_forward", run)

    def before_backward(self, run: Callable[[int], None]) -> None:
        self._add_callback("before_backward", run)

    def after_backward(self, run: Callable[[int], None]) -> None:
        self._add_callback("after_backward", run)
