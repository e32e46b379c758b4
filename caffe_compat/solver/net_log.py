"""The net-related lines ``caffe train`` logs: set-up (net.cpp ``Init``) and ``debug_info``.

Set-up lines follow ``Net::Init``: ``Creating Layer``, ``<-``/``->`` (``(in-place)``), ``Setting up``,
``Top shape: ...``, ``with loss weight``, ``This network produces output``, ``Network initialization
done.``. Caffe's auto-inserted Split layers and its memory estimate are not reproduced (this port
needs no Split layers).

``DebugInfo`` reproduces ``Net::ForwardDebugInfo``/``BackwardDebugInfo`` (mean absolute value of
each top's data, each parameter blob's data, each bottom's diff and each parameter blob's diff, per
layer) and the ``[Backward] All net params`` norms, using forward hooks on the layer modules and
``retain_grad`` on their inputs. Bottoms are the tensors each layer received, so an in-place
layer's bottom diff is the one flowing into it, as in Caffe.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from caffe_compat.log.glog import GlogWriter, format_number
from caffe_compat.net.net import Net
from caffe_compat.proto.io import format_text
from caffe_compat.solver.param_groups import LearnableParam

_WHOLE_FLOAT = re.compile(r"^(\s*\w+: -?\d+)\.0$", re.MULTILINE)


def debug_string(message: object) -> str:
    """A message as protobuf's C++ ``DebugString`` prints it (whole floats without ``.0``), without
    the final newline."""
    return _WHOLE_FLOAT.sub(r"\1", format_text(message)).rstrip("\n")


def shape_string(shape: tuple[int, ...]) -> str:
    """Caffe's ``Blob::shape_string``: ``8 3 2 2 (96)``; a scalar is ``(1)``."""
    count = math.prod(shape) if shape else 1
    return "".join(f"{d} " for d in shape) + f"({count})"


def log_net_setup(log: GlogWriter, net: Net) -> None:
    """Log the lines Caffe's ``Net::Init`` logs for a net (without Split layers)."""
    log.info("Initializing net from parameters: \n" + debug_string(net.net_param), "net.cpp:51")
    for name, layer in net.layer_params.items():
        log.info(f"Creating Layer {name}", "net.cpp:84")
        for bottom in layer.bottom:
            log.info(f"{name} <- {bottom}", "net.cpp:406")
        for top in layer.top:
            if top in layer.bottom:
                log.info(f"{name} -> {top} (in-place)", "net.cpp:367")
            else:
                log.info(f"{name} -> {top}", "net.cpp:380")
        log.info(f"Setting up {name}", "net.cpp:122")
        for top in layer.top:
            log.info(f"Top shape: {shape_string(tuple(net.blob_shapes.get(top, ())))}", "net.cpp:129")
            weight = net.loss_weights.get(top, 0)
            if weight:
                log.info(f"    with loss weight {format_number(np.float32(weight))}", "net.cpp:132")
    for output in net.output_names:
        log.info(f"This network produces output {output}", "net.cpp:242")
    log.info("Network initialization done.", "net.cpp:255")


def _finite(tensor: object) -> bool:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        return True
    return bool(torch.isfinite(tensor.detach()).all())


def first_nonfinite(net: Net) -> str:
    """Where the last forward pass first produced a NaN or an infinity, in net order: an input
    blob, a layer's non-finite parameter blob, or a layer's top (an in-place top is named with the
    layers that rewrote it, since only its last value is kept)."""
    for name in net.input_names:
        if not _finite(net.blobs.get(name)):
            return f"input blob '{name}' holds NaN or infinite values"
    seen: set[str] = set()
    for name, layer in net.layer_params.items():
        for index, blob in enumerate(net.layers[name].caffe_blob_tensors()):
            if not _finite(blob):
                return f"parameter blob {index} of layer '{name}' ({layer.type}) holds NaN or infinite values"
        for top in layer.top:
            if top in seen or top in layer.bottom:
                continue
            seen.add(top)
            if not _finite(net.blobs.get(top)):
                rewriters = [
                    f"'{other}' ({param.type})"
                    for other, param in net.layer_params.items()
                    if other != name and top in param.top and top in param.bottom
                ]
                then = f", rewritten in place by {', '.join(rewriters)}" if rewriters else ""
                return f"the first non-finite blob is '{top}', top of layer '{name}' ({layer.type}){then}"
    return "no blob of the last forward pass is non-finite"


def _abs_mean(tensor: torch.Tensor) -> np.float32:
    values = tensor.detach().to(torch.float32)
    return np.float32(values.abs().sum().item()) / np.float32(max(values.numel(), 1))


class DebugInfo:
    """Caffe's ``debug_info`` lines for one forward (and backward) pass of a net.

    Use: ``with DebugInfo(net, log) as info: outs = net(); loss.backward()`` then
    ``info.log_forward()`` and ``info.log_backward(params)``.
    """

    def __init__(self, net: Net, log: GlogWriter) -> None:
        self.net = net
        self.log = log
        self.records: list[tuple[str, list[torch.Tensor]]] = []
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> DebugInfo:
        for name, module in self.net.layers.items():
            if name in self.net.data_layer_names:
                continue
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, name: str):
        def hook(module: torch.nn.Module, inputs: tuple, output: object) -> None:
            kept = []
            for value in inputs:
                if isinstance(value, torch.Tensor) and value.requires_grad and torch.is_grad_enabled():
                    if not value.is_leaf:
                        value.retain_grad()
                    kept.append(value)
                elif isinstance(value, torch.Tensor):
                    kept.append(value)
            self.records.append((name, kept))
            tops = output if isinstance(output, (tuple, list)) else (output,)
            # the values as the layer produced them (an in-place successor has not run yet)
            self.outputs[name] = [t.detach().clone() for t in tops if isinstance(t, torch.Tensor)]

        return hook

    def log_forward(self) -> None:
        """``[Forward] Layer L, top blob B data: m`` and ``param blob i data: m`` per layer."""
        blobs = self.net.blobs
        for name, layer in self.net.layer_params.items():
            produced = self.outputs.get(name)
            for index, top in enumerate(layer.top):
                tensor = produced[index] if produced is not None and index < len(produced) else blobs.get(top)
                if tensor is not None:
                    value = format_number(_abs_mean(tensor))
                    self.log.info(f"    [Forward] Layer {name}, top blob {top} data: {value}", "net.cpp:593")
            for index, tensor in enumerate(self.net.layers[name].caffe_blob_tensors()):
                spec = (
                    layer.param[index].name
                    if index < len(layer.param) and layer.param[index].name
                    else str(index)
                )
                value = format_number(_abs_mean(tensor))
                self.log.info(f"    [Forward] Layer {name}, param blob {spec} data: {value}", "net.cpp:604")

    def log_backward(self, params: list[LearnableParam]) -> None:
        """``[Backward]`` lines per layer (in reverse order) and the all-params norms."""
        records = {name: inputs for name, inputs in self.records}
        for name in reversed(list(self.net.layer_params)):
            layer = self.net.layer_params[name]
            for bottom, value in zip(layer.bottom, records.get(name, []), strict=False):
                if value.requires_grad and value.grad is not None:
                    mean = format_number(_abs_mean(value.grad))
                    self.log.info(
                        f"    [Backward] Layer {name}, bottom blob {bottom} diff: {mean}", "net.cpp:621"
                    )
            for index, tensor in enumerate(self.net.layers[name].caffe_blob_tensors()):
                grad = tensor.grad if isinstance(tensor, torch.nn.Parameter) else None
                if grad is not None:
                    mean = format_number(_abs_mean(grad))
                    self.log.info(
                        f"    [Backward] Layer {name}, param blob {index} diff: {mean}", "net.cpp:632"
                    )
        asum_data = asum_diff = sumsq_data = sumsq_diff = np.float32(0)
        for param in params:
            data, diff = param.tensor.detach().float(), param.diff()
            asum_data += np.float32(data.abs().sum().item())
            asum_diff += np.float32(diff.abs().sum().item())
            sumsq_data += np.float32((data * data).sum().item())
            sumsq_diff += np.float32((diff * diff).sum().item())
        self.log.error(
            "    [Backward] All net params (data, diff): "
            f"L1 norm = ({format_number(asum_data)}, {format_number(asum_diff)}); "
            f"L2 norm = ({format_number(np.sqrt(sumsq_data))}, {format_number(np.sqrt(sumsq_diff))})",
            "net.cpp:719",
        )
