"""``caffe_compat.Net``: a Caffe net as a PyTorch module.

``Net("net.prototxt", weights="w.caffemodel", phase="TRAIN")`` filters the prototxt for the phase
(Caffe's FilterNet), builds one native module per layer, wires them in a ``torch.fx`` graph and
loads the weights by layer name (Caffe's CopyTrainedLayersFrom). Calling the net returns a dict of
its outputs (the blobs no layer consumes, alphabetically ordered as Caffe's std::set orders them);
``net.blobs`` holds every blob after the call, ``net.loss(outs)`` is Caffe's weighted loss.

The phase is fixed at build time, as in Caffe: ``.train()``/``.eval()`` do not switch Dropout or
BatchNorm behaviour; build a TEST net (sharing blobs with ``share_from=train_net``) instead.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import fx, nn

from caffe_compat.errors import CaffeCompatError, name_file
from caffe_compat.net.budget import within_budget
from caffe_compat.net.builder import ParamEntry, build, graph_module, graph_returning
from caffe_compat.net.filter import filter_net, make_state
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import read_net, write_caffemodel
from caffe_compat.weights import copy_trained_layers, tensors_to_blobs

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


def _net_dir(net: object) -> Path | None:
    if isinstance(net, os.PathLike) or (isinstance(net, str) and os.path.isfile(net)):
        return Path(net).resolve().parent
    return None


def _naming_the_file(init: Callable) -> Callable:
    """Errors raised while a Net is built from a prototxt file name that file."""

    @functools.wraps(init)
    def wrapper(self: nn.Module, net: object, *args: object, **kwargs: object) -> None:
        try:
            init(self, net, *args, **kwargs)
        except CaffeCompatError as exc:
            if _net_dir(net) is not None:
                name_file(exc, os.fspath(net))
            raise

    return wrapper


class Net(nn.Module):
    """A Caffe net (prototxt path, prototxt text or NetParameter) as an ``nn.Module``.

    Args:
        net: the net definition.
        weights: a ``.caffemodel`` path (or NetParameter) to copy blobs from, by layer name.
        phase: ``"TRAIN"``/``"TEST"`` or ``caffe_compat.TRAIN``/``TEST``.
        level, stages: the NetState level and stages used by include/exclude rules.
        input_shapes: shapes for inputs whose shape the prototxt cannot give (data layers).
        share_from: another Net (the solver's train net) whose same-named layers' blobs are shared.
        source_dir: the folder relative data paths fall back to (default: the prototxt's folder).
        allow_python_layers: run Caffe's ``Python`` layers (they import and run the module the
            prototxt names); refused by default.
        keep_blobs: what ``net.blobs`` holds after a forward: True (default) every blob, as
            Caffe's net does; False only the inputs and outputs; a set of names those plus these
            blobs. Blobs not kept are freed as soon as no later layer needs them, which bounds a
            forward's memory by the few live activations rather than the sum of all blobs (the
            attribute may be changed at any time).
    """

    @_naming_the_file
    @within_budget
    def __init__(
        self,
        net: str | os.PathLike | caffe_pb2.NetParameter,
        weights: str | os.PathLike | caffe_pb2.NetParameter | None = None,
        phase: int | str = TRAIN,
        level: int | None = None,
        stages: Iterable[str] = (),
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        share_from: Net | None = None,
        source_dir: str | os.PathLike | None = None,
        allow_python_layers: bool = False,
        keep_blobs: bool | Iterable[str] = True,
    ) -> None:
        super().__init__()
        param = read_net(net)
        self.net_dir = Path(source_dir) if source_dir is not None else _net_dir(net)
        state = make_state(param.state if param.HasField("state") else None, phase, level, stages)
        self.net_param = filter_net(param, state)
        self.phase = state.phase
        reserved = (
            set(dir(type(self))) | set(vars(self)) | {"net_param", "net_dir", "phase", "blobs", "layers"}
        )
        built = build(
            self.net_param,
            net_dir=self.net_dir,
            input_shapes=input_shapes,
            share_from=share_from.layers if share_from is not None else None,
            reserved_names=reserved,
            allow_python_layers=allow_python_layers,
        )
        for name, module in built.modules.items():
            self.add_module(built.module_names[name], module)
        self.layers: OrderedDict[str, nn.Module] = OrderedDict(built.modules)
        self.layer_params = built.layer_params
        self.module_names = built.module_names
        self.input_names = list(built.input_names)
        self.data_layer_names = list(built.data_layers)
        self.output_names = list(built.flow.outputs)
        self.loss_weights = dict(built.flow.loss_weights)
        self.blob_shapes = dict(built.blob_shapes)
        self.param_entries: list[ParamEntry] = built.params
        self.graph: fx.Graph = built.graph
        # The generated code references this Net's own layer modules; kept out of the module tree
        # so parameters are registered once.
        object.__setattr__(self, "_graph_module", graph_module(self, built.graph))
        self.blobs: dict[str, torch.Tensor] = {}
        self.keep_blobs = keep_blobs if isinstance(keep_blobs, bool) else frozenset(keep_blobs)
        self._pruned: dict[frozenset[str], fx.GraphModule] = {}
        if weights is not None:
            self.copy_from(weights)

    # -- running -------------------------------------------------------------------------------
    @property
    def code(self) -> str:
        """The generated forward code of the graph (plain PyTorch)."""
        return self._graph_module.code

    def _device(self) -> torch.device:
        for tensor in [*self.parameters(), *self.buffers()]:
            return tensor.device
        return torch.device("cpu")

    def forward(self, *args: torch.Tensor, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the net. Inputs by blob name (or positionally, in ``input_names`` order); data
        layers whose tops are not given read their next batch, as Caffe's Forward does."""
        if len(args) > len(self.input_names):
            raise CaffeCompatError(
                f"the net takes {len(self.input_names)} inputs, got {len(args)} positional"
            )
        given = dict(zip(self.input_names, args, strict=False))  # fewer args than inputs is fine
        duplicated = set(given) & set(inputs)
        if duplicated:
            raise CaffeCompatError(f"inputs given twice: {sorted(duplicated)}")
        given.update(inputs)
        unknown = sorted(set(given) - set(self.input_names))
        if unknown:
            raise CaffeCompatError(f"unknown inputs {unknown}; the net's inputs are {self.input_names}")
        device = None
        for layer_name in self.data_layer_names:
            layer = self.layers[layer_name]
            tops = list(self.layer_params[layer_name].top)
            if all(top in given for top in tops):
                continue
            if any(top in given for top in tops):
                raise CaffeCompatError(f"data layer '{layer_name}': give all of its tops {tops} or none")
            device = device or self._device()
            batch = layer.next_batch()
            batch = (batch,) if isinstance(batch, torch.Tensor) else batch
            given.update({top: value.to(device) for top, value in zip(tops, batch, strict=True)})
        missing = [name for name in self.input_names if name not in given]
        if missing:
            raise CaffeCompatError(f"missing inputs {missing}; the net's inputs are {self.input_names}")
        if not torch.compiler.is_compiling():
            self.blobs = {}  # the previous pass's blobs are freed before this pass allocates its own
        blobs = self._runner()(*[given[name] for name in self.input_names])
        if not torch.compiler.is_compiling():  # tracing (export, compile) must not record state
            self.blobs = {**{name: given[name] for name in self.input_names}, **blobs}
        return {name: blobs[name] if name in blobs else given[name] for name in self.output_names}

    def _runner(self) -> fx.GraphModule:
        """The generated module returning the blobs ``keep_blobs`` asks for."""
        if self.keep_blobs is True:
            return self._graph_module
        extra = frozenset() if self.keep_blobs is False else frozenset(self.keep_blobs)
        kept = frozenset(self.output_names) | extra
        unknown = sorted(kept - set(self.blob_shapes))
        if unknown:
            raise CaffeCompatError(f"keep_blobs names unknown blobs {unknown}")
        if kept not in self._pruned:
            self._pruned[kept] = graph_module(self, graph_returning(self.graph, set(kept)))
        return self._pruned[kept]

    def loss(self, outputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Caffe's objective: the sum over loss tops of ``loss_weight * top.sum()``."""
        if not self.loss_weights:
            raise CaffeCompatError("the net has no loss (no top with a nonzero loss_weight)")
        outputs = outputs or {}
        total = None
        for name, weight in self.loss_weights.items():
            value = outputs[name] if name in outputs else self.blobs.get(name)
            if value is None:
                raise CaffeCompatError(f"loss top '{name}' has no value: run the net first")
            term = value.sum() * weight
            total = term if total is None else total + term
        return total

    # -- blobs and weights ---------------------------------------------------------------------
    @property
    def params(self) -> OrderedDict[str, list[torch.Tensor]]:
        """Layer key -> all of its blobs in Caffe order (Parameters and statistics buffers).

        Keys are layer names; where several layers share a name, the name is the last of them
        (as Caffe resolves names) and the earlier ones are ``name#0``, ``name#1``, ...
        (``caffe_compat.net.naming.layer_keys``)."""
        return OrderedDict((name, layer.caffe_blob_tensors()) for name, layer in self.layers.items())

    def learnable_params(self) -> list[ParamEntry]:
        """Caffe's ``learnable_params_``: each owned blob once, with its lr_mult and decay_mult."""
        return [entry for entry in self.param_entries if entry.owner is None]

    def copy_from(self, weights: str | os.PathLike | caffe_pb2.NetParameter) -> list[str]:
        """Copy blobs from a caffemodel by layer name; returns the source layers skipped."""
        return copy_trained_layers(self.params, weights)

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The net with its current blobs, as Caffe's ``Net::ToProto`` writes a caffemodel."""
        proto = caffe_pb2.NetParameter()
        proto.CopyFrom(self.net_param)
        for layer, module in zip(proto.layer, self.layers.values(), strict=True):
            del layer.blobs[:]
            layer.blobs.extend(tensors_to_blobs(module.caffe_blob_tensors()))
        return proto

    def save_caffemodel(self, path: str | os.PathLike) -> None:
        """Write the net's blobs as a binary caffemodel (atomically)."""
        write_caffemodel(self.to_proto(), path)
