"""The ``onnx`` format: the deploy net exported with PyTorch's TorchScript-based ONNX exporter.

The flat graph (:mod:`caffe_compat.export.trace`, built with Caffe's pooling geometry written out:
explicit ``Pad`` then unpadded floor pooling, so every ONNX runtime computes Caffe's windows, ceil
mode included) is exported with ``torch.onnx.export(..., dynamo=False)``: the ``torch.export``-based
exporter needs ``onnxscript``, which is not a dependency. The weights (and what is computed from
weights alone, e.g. ``w.reshape(n, k)``, evaluated once in torch) are passed to the exporter as
extra graph inputs, so it neither copies nor constant-folds them, and the file is then written
with them as initializers (named by their state_dict keys) straight from the tensors' memory: the
conversion holds no serialized copy of the model, and runtimes have nothing left to fold. Input
and output names are the Caffe blob names; the batch axis is dynamic (named ``N``) when the flat
graph was made for any batch size, and every other axis has its traced size. The opset is the
newest both the exporter and the installed ``onnx`` package support, unless one is asked for.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from caffe_compat.export.caffemodel import progress_bar
from caffe_compat.export.errors import ExportError
from caffe_compat.export.trace import FlatNet, get_attribute
from caffe_compat.proto.io import length_delimited_header

#: The name of the batch axis of a dynamic-batch export's inputs and outputs.
BATCH_AXIS = "N"
#: Used when the exporter does not say which opsets it supports.
FALLBACK_OPSET = 17


class DynamicBatchError(ExportError):
    """The exporter failed on a graph with a dynamic batch axis (it may succeed with a fixed one)."""


def default_opset() -> int:
    """The newest opset the TorchScript-based exporter and the ``onnx`` package both support."""
    try:
        from torch.onnx import _constants

        newest = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", FALLBACK_OPSET))
    except ImportError:  # pragma: no cover - depends on the torch version
        newest = FALLBACK_OPSET
    try:
        import onnx

        newest = min(newest, int(onnx.defs.onnx_opset_version()))
    except ImportError:  # pragma: no cover - onnx is a dependency
        pass
    return newest


def _weight_values(flat: FlatNet) -> dict[fx.Node, torch.Tensor]:
    """Evaluate, in torch, every node that depends on weights alone (``w.reshape(n, k)``, a
    normalized weight, BatchNorm's ``mean_sum / factor``): those values become the initializers, so
    no ONNX runtime constant-folds (and copies) them at load time. A result larger than the weights
    it comes from is not folded (an ``expand`` stays in the graph)."""
    values: dict[fx.Node, torch.Tensor] = {}
    sizes: dict[fx.Node, int] = {}
    for node in flat.module.graph.nodes:
        if node.op == "get_attr":
            value = get_attribute(flat.module, str(node.target)).detach()
            values[node], sizes[node] = value, value.numel()
            continue
        if node.op not in ("call_function", "call_method"):
            continue
        inputs = node.all_input_nodes
        if not inputs or any(n not in values for n in inputs):
            continue
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
        with torch.no_grad():
            if node.op == "call_function":
                value = node.target(*args, **kwargs)
            else:
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
        if not isinstance(value, torch.Tensor) or value.numel() > max(sizes[n] for n in inputs):
            continue
        values[node], sizes[node] = value.detach(), max(sizes[n] for n in inputs)
    return values


def _initializer_name(flat: FlatNet, node: fx.Node, values: dict[fx.Node, torch.Tensor]) -> str:
    """The state_dict name of the weight a value views (``w.reshape(n, k)`` is ``fc.weight``), else
    ``layer/node``."""
    origin = node
    while origin.op != "get_attr" and origin.all_input_nodes:
        origin = origin.all_input_nodes[0]
    same = (
        origin.op == "get_attr"
        and values[origin].untyped_storage().data_ptr() == values[node].untyped_storage().data_ptr()
        and values[origin].numel() == values[node].numel()
    )
    if same:
        return str(origin.target)
    return f"{flat.layer_of.get(node.name, 'graph')}/{node.name}"


def _weights_as_inputs(flat: FlatNet) -> tuple[fx.GraphModule, list[str], list[torch.Tensor]]:
    """The flat graph with its weights (see ``_weight_values``) read as extra inputs after the
    data inputs, returning the outputs as a tuple: exported, it holds no weights at all."""
    values = _weight_values(flat)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    by_view: dict[tuple, fx.Node] = {}
    nodes = list(flat.module.graph.nodes)
    for node in nodes:
        if node.op == "placeholder":
            env[node] = graph.placeholder(node.name)
    frontier = [n for n in values if any(user not in values for user in n.users)]
    for node in frontier:
        tensor = values[node]
        key = (
            tensor.untyped_storage().data_ptr(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.storage_offset(),
        )
        if key in by_view:  # one initializer for a tensor several layers share
            env[node] = by_view[key]
            continue
        env[node] = by_view[key] = graph.placeholder(f"w{len(names)}")
        names.append(_initializer_name(flat, node, values))
        tensors.append(tensor)
    for node in nodes:
        if node.op == "placeholder" or node in values:
            continue
        if node.op == "output":
            outputs = node.args[0]
            graph.output(tuple(env[outputs[name]] for name in flat.output_names))
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    return fx.GraphModule(nn.Module(), graph, class_name="CaffeOnnx"), names, tensors


_ONNX_DTYPES = {
    torch.float32: 1,
    torch.uint8: 2,
    torch.int8: 3,
    torch.int32: 6,
    torch.int64: 7,
    torch.bool: 9,
    torch.float16: 10,
    torch.float64: 11,
}
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
PROTOBUF_LIMIT = 2**31 - 1


_field = length_delimited_header


def _restore_input_names(graph: Any, wanted: list[str]) -> None:
    """Give the graph inputs their Caffe names back. Where a top has the name of an input (an
    in-place layer on an input blob), the exporter may rename the *input* (``x`` -> ``x.1``); the
    two names are swapped everywhere so that inputs keep the names users feed."""
    swap: dict[str, str] = {}
    for value, want in zip(graph.input, wanted, strict=False):
        if value.name != want:
            swap[value.name], swap[want] = want, value.name
    if not swap:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = swap.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [swap.get(name, name) for name in node.input]
        node.output[:] = [swap.get(name, name) for name in node.output]


def _stream_model(
    skeleton: bytes,
    names: list[str],
    tensors: list[torch.Tensor],
    path: Path,
    progress: bool = False,
    input_names: list[str] | None = None,
) -> None:
    """Write the exported skeleton with the weights as initializers named by their state_dict keys,
    each written from the tensor's own memory (no serialized copy of the model is built)."""
    import onnx

    model = onnx.load_model_from_string(skeleton)
    graph = model.graph
    renamed = {f"w{i}": name for i, name in enumerate(names)}
    kept = [value for value in graph.input if value.name not in renamed]
    del graph.input[:]
    graph.input.extend(kept)
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    _restore_input_names(graph, list(input_names or []))
    graph_bytes = graph.SerializeToString()
    model.ClearField("graph")
    head = model.SerializeToString()
    entries = []
    for name, tensor in zip(names, tensors, strict=True):
        if tensor.dtype not in _ONNX_DTYPES:
            raise ExportError(f"weight '{name}' has dtype {tensor.dtype}, which the ONNX writer cannot store")
        array = tensor.detach().cpu().contiguous().numpy()
        header = onnx.TensorProto(name=name, dims=list(array.shape), data_type=_ONNX_DTYPES[tensor.dtype])
        entries.append((header.SerializeToString() + _field(_TENSOR_RAW_DATA, array.nbytes), array))
    sizes = [len(header) + array.nbytes for header, array in entries]
    graph_size = len(graph_bytes) + sum(len(_field(_GRAPH_INITIALIZER, size)) + size for size in sizes)
    if graph_size + len(head) > PROTOBUF_LIMIT:
        raise ExportError(
            f"the ONNX model would be {graph_size / 2**30:.1f} GiB, over protobuf's 2 GiB limit "
            "(ONNX external "
            "data is not supported)"
        )
    total = sum(array.nbytes for _, array in entries)
    with open(path, "wb") as handle, progress_bar(progress, total, "writing ONNX") as bar:
        handle.write(head)
        handle.write(_field(_MODEL_GRAPH, graph_size))
        handle.write(graph_bytes)
        for (header, array), size in zip(entries, sizes, strict=True):
            handle.write(_field(_GRAPH_INITIALIZER, size) + header)
            if array.nbytes:
                handle.write(memoryview(array.reshape(-1)).cast("B"))
            bar.update(array.nbytes)


def write(
    flat: FlatNet,
    path: Path,
    inputs: dict[str, torch.Tensor],
    opset: int | None = None,
    progress: bool = False,
) -> int:
    """Export the flat net to ``path``; returns the opset used.

    The graph is exported with its weights as extra inputs, so the exporter never copies them,
    then written with those inputs turned into initializers (see ``_stream_model``).
    """
    opset = opset or default_opset()
    module, names, tensors = _weights_as_inputs(flat)
    args = tuple(inputs[name] for name in flat.input_names) + tuple(tensors)
    skeleton = io.BytesIO()
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                skeleton,
                input_names=list(flat.input_names) + [f"w{i}" for i in range(len(names))],
                output_names=list(flat.output_names),
                dynamic_axes=dynamic_axes(flat) or None,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=False,
            )
        except Exception as exc:  # noqa: BLE001  (the exporter raises many kinds for unsupported ops)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            kind = DynamicBatchError if flat.dynamic_batch else ExportError
            raise kind(f"the ONNX exporter failed (opset {opset}){_culprits(flat, first)}: {first}") from None
    _stream_model(skeleton.getvalue(), names, tensors, path, progress, list(flat.input_names))
    return opset


def dynamic_axes(flat: FlatNet) -> dict[str, dict[int, str]]:
    """The exporter's ``dynamic_axes``: axis 0, named ``N``, of the batch inputs and outputs."""
    if not flat.dynamic_batch:
        return {}
    return {name: {0: BATCH_AXIS} for name in [*flat.batch_inputs, *flat.batch_outputs]}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter, which prints its TorchScript graph from C++ when it fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _culprits(flat: FlatNet, message: str) -> str:
    """`` in layer 'x' (Type)`` for the layers whose graph calls the operator an error names."""
    match = re.search(r"operator:?\s*'?([A-Za-z_:.]+)", message)
    if not match:
        return ""
    operator = match.group(1).split("::")[-1].split(".")[-1].lower()
    layers = []
    for node in flat.module.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target)).lower()
        layer = flat.layer_of.get(node.name)
        if layer is not None and name == operator and layer not in layers:
            layers.append(layer)
    if not layers:
        return ""
    described = ", ".join(f"'{name}' ({flat.layer_types.get(name, '?')})" for name in layers)
    return f" in layer {described}"


def _caffe_input_name(name: str, inputs: dict[str, torch.Tensor]) -> str:
    """The Caffe blob an ONNX input feeds: the exporter renames an input that is also an output
    (an in-place layer on an input blob: ``data`` -> ``data.1``)."""
    if name in inputs:
        return name
    base, dot, suffix = name.rpartition(".")
    if dot and suffix.isdigit() and base in inputs:
        return base
    raise ExportError(f"the ONNX file has an input '{name}' that the net does not have")


def run(
    path: Path, inputs: dict[str, torch.Tensor], output_names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Run the ONNX file with onnxruntime (CPU) on ``inputs`` (by blob name).

    ``output_names`` (the Caffe names, in export order) name the outputs, because the exporter
    renames an output that is also an input (``label`` -> ``label.1``)."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "onnxruntime is not installed: cannot verify the ONNX file (install it, or --no-verify)"
        ) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {
        i.name: inputs[_caffe_input_name(i.name, inputs)].detach().cpu().numpy() for i in session.get_inputs()
    }
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    if output_names is not None and len(output_names) == len(names):
        names = list(output_names)
    return {name: torch.from_numpy(np.asarray(value)) for name, value in zip(names, results, strict=True)}
