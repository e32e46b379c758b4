"""A Net flattened into one ``torch.fx`` graph of plain torch calls: the basis of every exporter.

``net._graph_module`` calls one module per Caffe layer. ``flatten`` traces it with a tracer that
steps *into* those modules, so the graph holds ``torch``/``F`` calls on ``get_attr`` nodes for the
parameters and buffers. Every proxy carries the concrete value the call produced on example
inputs, so a layer's Python code that reads shapes (``x.shape``, ``int(...)``, ``len``) runs as
written: the result is specialised to the traced input shapes, as a Caffe deploy net's ``Input``
shapes fix them. What cannot be expressed as such a graph is refused with an error naming the
layer and the reason:

* control flow on tensor *values* (``if x.max() > 0``, ``.item()``, ``.tolist()``, numpy);
* in-place changes to *part* of a parameter or buffer.

A custom ``torch.autograd.Function`` is traced through its ``forward`` (its hand-written backward
has no place in an inference graph); one whose forward does any of the above is refused.

A layer that updates a whole parameter or buffer in place during forward is exported in
functional form: the graph computes the updated value from the stored one and uses it where the
layer reads it, but never writes it back (``FlatNet.state_updates`` lists these). For
``InnerProduct { normalize: true }`` and ``InnerDistance { normalize: true }`` (weights
normalized in place, as Caffe does) and ``Scale`` with ``min_value``/``max_value`` this gives
exactly Caffe's outputs, which come from the normalized/clamped blob; for BatchNorm with batch
statistics the running statistics are not accumulated (its outputs use the batch's, as in Caffe).

A layer class may define ``export_forward(*bottoms)`` (plain torch, same tops) to be traced
instead of its ``forward``. With ``onnx_pooling`` Caffe's pooling geometry is written out
explicitly (``F.pad`` then unpadded floor pooling, and a constant divisor correction for AVE),
because ONNX runtimes disagree with Caffe (and PyTorch) on ceil-mode windows, and ArgMax ranks
with ``topk`` (ONNX has no stable sort).
"""

from __future__ import annotations

import keyword
import math
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from caffe_compat.export.errors import ExportError
from caffe_compat.layers.base import CaffeLayer
from caffe_compat.layers.pooling import NEG_FLT_MAX, Pooling
from caffe_compat.layers.shape import ArgMax
from caffe_compat.net.net import Net

_IDENTIFIER = re.compile(r"\W")
_INPLACE_FUNCTIONS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv}


class _DataDependent(Exception):
    """Raised inside a trace when Python code needs a tensor's value."""


@dataclass
class FlatNet:
    """A net as one flat graph.

    Attributes:
        module: ``forward(*inputs)`` (in ``input_names`` order) -> dict of outputs by blob name;
            its parameters and buffers are the source net's tensors (shared, not copied).
        input_names: Caffe blob names of the inputs the outputs depend on.
        arg_names: the Python parameter name of each input in ``module.forward``.
        input_shapes: the shapes the graph was traced for.
        output_names: Caffe blob names of the outputs (the net's outputs, Caffe's order).
        layer_of: node name -> the Caffe layer whose code produced it.
        layer_types: Caffe layer name -> its type.
        dropped_inputs: net inputs no output depends on (left out of the graph).
        state_updates: layer -> parameters/buffers its forward updates in place, computed
            functionally in the graph (and not written back).
        dynamic_batch: the graph reads the batch size from its first input (``x.size(0)``)
            instead of holding the traced one, so it runs at any batch size (see
            :func:`flatten_any_batch`); ``input_shapes`` then hold one traced batch size.
        output_shapes: the traced shape of each output.
        batch_inputs, batch_outputs: with ``dynamic_batch``, the inputs and outputs whose first
            axis is the batch (dynamic axes in ONNX).
    """

    module: fx.GraphModule
    input_names: list[str]
    arg_names: list[str]
    input_shapes: dict[str, tuple[int, ...]]
    output_names: list[str]
    layer_of: dict[str, str] = field(default_factory=dict)
    layer_types: dict[str, str] = field(default_factory=dict)
    dropped_inputs: list[str] = field(default_factory=list)
    state_updates: dict[str, list[str]] = field(default_factory=dict)
    output_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dynamic_batch: bool = False
    batch_inputs: list[str] = field(default_factory=list)
    batch_outputs: list[str] = field(default_factory=list)

    def shape_spec(self) -> dict[str, list[int | None]]:
        """The input shapes, with None for a batch axis that takes any size."""
        return {
            name: [
                None if self.dynamic_batch and axis == 0 and name in self.batch_inputs else int(d)
                for axis, d in enumerate(shape)
            ]
            for name, shape in self.input_shapes.items()
        }


def _identifier(name: str, taken: set[str]) -> str:
    base = _IDENTIFIER.sub("_", name) or "blob"
    if base[0].isdigit() or keyword.iskeyword(base) or base in {"self", "torch", "inf", "nan"}:
        base = f"blob_{base}"
    candidate, index = base, 1
    while candidate in taken:
        candidate = f"{base}_{index}"
        index += 1
    taken.add(candidate)
    return candidate


def outputs_graph(net: Net) -> tuple[fx.GraphModule, dict[str, str]]:
    """The net's layer graph returning only its outputs (each intermediate blob is freed after its
    last use), with identifier placeholder names: ``(module, blob name -> argument name)``. It calls
    the net's own layer modules, so their hooks fire."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    arg_of: dict[str, str] = {}
    taken: set[str] = set()
    for node in net.graph.nodes:
        if node.op == "placeholder":
            arg = _identifier(str(node.target), taken)
            arg_of[str(node.target)] = arg
            env[node] = graph.placeholder(arg)
        elif node.op == "output":
            blobs = node.args[0]
            graph.output({name: env[blobs[name]] for name in net.output_names})
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    module = fx.GraphModule(net, graph, class_name="CaffeOutputs")
    module.graph.eliminate_dead_code()
    module.recompile()
    return module, arg_of


class _ValueProxy(fx.Proxy):
    """A proxy whose tensor metadata (shape, dtype, ...) is concrete, read from its traced value."""

    @property
    def value(self) -> Any:
        return self.tracer.values[self.node]  # type: ignore[attr-defined]

    def _tensor(self, what: str) -> torch.Tensor:
        value = self.value
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"'{what}' of a {type(value).__name__}")
        return value

    @property
    def shape(self) -> torch.Size:
        return self._tensor("shape").shape

    @property
    def ndim(self) -> int:
        return self._tensor("ndim").dim()

    @property
    def dtype(self) -> torch.dtype:
        return self._tensor("dtype").dtype

    @property
    def device(self) -> torch.device:
        return self._tensor("device").device

    @property
    def requires_grad(self) -> bool:
        return self._tensor("requires_grad").requires_grad

    @property
    def is_cuda(self) -> bool:
        return self._tensor("is_cuda").is_cuda

    def size(self, dim: int | None = None) -> torch.Size | int:
        tensor = self._tensor("size")
        return tensor.size() if dim is None else tensor.size(dim)

    def dim(self) -> int:
        return self._tensor("dim").dim()

    def numel(self) -> int:
        return self._tensor("numel").numel()

    def is_floating_point(self) -> bool:
        return self._tensor("is_floating_point").is_floating_point()

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self) -> Iterator[fx.Proxy]:
        for index in range(len(self.value)):
            yield self[index]

    def __bool__(self) -> bool:
        raise _DataDependent("Python control flow on a tensor value (bool of a tensor)")

    def __int__(self) -> int:
        raise _DataDependent("a tensor value converted to a Python int")

    def __float__(self) -> float:
        raise _DataDependent("a tensor value converted to a Python float")

    def __index__(self) -> int:
        raise _DataDependent("a tensor value used as an index")

    def item(self) -> Any:
        raise _DataDependent("a tensor value read with .item()")

    def tolist(self) -> Any:
        raise _DataDependent("a tensor value read with .tolist()")

    def numpy(self) -> Any:
        raise _DataDependent("a tensor converted to numpy")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = self.tracer.values.get(self.node)  # type: ignore[attr-defined]
        if value is not None and not callable(getattr(value, name, None)):
            return self.tracer.create_proxy("call_function", getattr, (self, name), {})
        return super().__getattr__(name)


def get_attribute(root: nn.Module, qualified: str) -> Any:
    """A submodule's parameter, buffer or attribute, read without ``nn.Module.__getattr__`` (which the
    tracer patches while it runs)."""
    value: Any = root
    for part in qualified.split("."):
        if isinstance(value, nn.Module):
            for table in (value._modules, value._parameters, value._buffers, value.__dict__):
                if part in table:
                    value = table[part]
                    break
            else:
                raise AttributeError(f"no attribute '{part}' in '{qualified}'")
        else:
            value = getattr(value, part)
    return value


def _is_inplace_method(name: str) -> bool:
    return name.endswith("_") and not name.startswith("_")


class _ValueTracer(fx.Tracer):
    """Traces into every module, recording the concrete value of each node as it goes.

    An in-place update of a whole parameter or buffer (``w.view(n, -1).mul_(s)``) is recorded in
    its out-of-place form, and later reads of that tensor in the trace see the new value: the
    graph computes from the stored state and never writes it back.
    """

    def __init__(self, example_inputs: dict[str, torch.Tensor], onnx_pooling: bool) -> None:
        super().__init__(autowrap_modules=(), autowrap_functions=())
        self.proxy_buffer_attributes = True
        self.example_inputs = example_inputs
        self.onnx_pooling = onnx_pooling
        self.values: dict[fx.Node, Any] = {}
        self.layer: CaffeLayer | None = None
        self.state_storages: set[int] = set()
        self.state_nodes: dict[int, fx.Node] = {}  # data_ptr of a parameter/buffer -> its get_attr node
        self.replaced: dict[fx.Node, fx.Node] = {}  # node -> the node holding its value after an update
        self.updates: dict[str, list[str]] = {}  # layer -> state it updates in place (not exported)

    # -- values -----------------------------------------------------------------------------
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def current(self, node: fx.Node) -> fx.Node:
        while node in self.replaced:
            node = self.replaced[node]
        return node

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, fx.Proxy):
            return self.current(a.node)
        return super().create_arg(a)

    def _unwrap(self, value: Any) -> Any:
        return fx.node.map_aggregate(
            value, lambda v: self.values[self.current(v.node)] if isinstance(v, fx.Proxy) else v
        )

    def _is_state(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in self.state_storages

    def _evaluate(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "placeholder":
            return self.example_inputs[target]
        if kind == "get_attr":
            return get_attribute(self.root, str(target))
        args, kwargs = self._unwrap(args), self._unwrap(kwargs)
        if kind == "call_function":
            if target in _INPLACE_FUNCTIONS and args and self._is_state(args[0]):
                raise _DataDependent(
                    f"it assigns into a parameter or buffer during forward ({target.__name__})"
                )
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_module":
            return self.root.get_submodule(target)(*args, **kwargs)
        return None

    def _functional_update(self, method: str, args: tuple, kwargs: dict) -> fx.Proxy:
        """Record ``state.<method>_(...)`` out of place and make later reads of the state see it."""
        target_proxy = args[0]
        value = self._unwrap(target_proxy)
        state_node = self.state_nodes.get(value.data_ptr())
        state = self.values.get(state_node) if state_node is not None else None
        whole = state is not None and value.numel() == state.numel() and value.is_contiguous()
        if not whole or method == "__setitem__":
            raise _DataDependent(
                f"it changes part of a parameter or buffer in place during forward (.{method}()); give "
                "the layer "
                "class an export_forward"
            )
        if method == "copy_":
            source = args[1]
            if not isinstance(source, fx.Proxy):
                raise _DataDependent("it copies a constant into a parameter or buffer during forward")
            new = source.to(value.dtype).expand(tuple(value.shape)).clone()
        else:
            plain = method[:-1]
            if not hasattr(torch.Tensor, plain):
                raise _DataDependent(
                    f"it changes a parameter or buffer in place during forward (.{method}())"
                )
            new = getattr(target_proxy, plain)(*args[1:], **kwargs)
        if target_proxy.node is not state_node:
            self.replaced[target_proxy.node] = new.node
            new_state = new.reshape(tuple(state.shape))
        else:
            new_state = new
        self.replaced[state_node] = new_state.node
        layer = self.layer.caffe_name if self.layer is not None else "?"
        names = self.updates.setdefault(layer, [])
        if str(state_node.target) not in names:
            names.append(str(state_node.target))
        return new

    def create_proxy(
        self,
        kind: str,
        target: Any,
        args: tuple,
        kwargs: dict,
        name: str | None = None,
        type_expr: Any | None = None,
        proxy_factory_fn: Callable[[fx.Node], fx.Proxy] | None = None,
    ) -> fx.Proxy:
        if kind == "call_method" and (_is_inplace_method(target) or target == "__setitem__"):
            if self._is_state(self._unwrap(args[0])):
                return self._functional_update(target, args, kwargs)
        value = self._evaluate(kind, target, args, kwargs) if kind != "output" else None
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self.values[proxy.node] = value
        if kind == "get_attr" and isinstance(value, torch.Tensor):
            self.state_nodes.setdefault(value.data_ptr(), proxy.node)
        if self.layer is not None:
            proxy.node.meta["caffe_layer"] = self.layer.caffe_name
        return proxy

    # -- modules ----------------------------------------------------------------------------
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return False

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if not isinstance(m, CaffeLayer) or self.layer is not None:
            return super().call_module(m, forward, args, kwargs)
        self.layer = m
        try:
            return super().call_module(m, _export_form(m, forward, self.onnx_pooling), args, kwargs)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001  (any failure inside a layer's code is reported as that layer's)
            raise ExportError(
                f"layer '{m.caffe_name}' ({m.caffe_type}) cannot be exported as plain torch code: "
                f"{_reason(exc)}"
            ) from None
        finally:
            self.layer = None


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, _DataDependent):
        return text
    if "save_for_backward" in text or "autograd.Function" in text or "mark_non_differentiable" in text:
        return (
            "its forward is a custom torch.autograd.Function, which has no plain-torch graph form; give the "
            "layer class an export_forward"
        )
    return f"its forward cannot be traced ({type(exc).__name__}: {text})"


# -- export forms of layers that mutate their blobs or whose geometry ONNX cannot express --------


def _export_form(layer: CaffeLayer, forward: Callable[..., Any], onnx_pooling: bool) -> Callable[..., Any]:
    custom = getattr(layer, "export_forward", None)
    if custom is not None:
        return custom
    if isinstance(layer, Pooling) and onnx_pooling and not layer.mask_top and layer.method in ("MAX", "AVE"):
        return lambda x: _explicit_pooling(layer, x)
    if isinstance(layer, ArgMax) and onnx_pooling:
        return lambda x: _with_topk(layer, forward, x)
    return forward


def _with_topk(layer: ArgMax, forward: Callable[..., Any], x: Any) -> Any:
    """ArgMax's forward ranking with ``topk`` (ONNX ``TopK``, whose ties go to the lower index of
    the reversed axis, i.e. Caffe's larger index) instead of a stable sort ONNX cannot express."""

    def ranked(values: Any, dim: int) -> tuple[Any, Any]:
        size = int(values.shape[dim])
        if not 1 <= layer.top_k <= size:
            raise ValueError(f"top_k {layer.top_k} must be between 1 and the {size} values ranked")
        best, order = torch.topk(values.flip(dim), layer.top_k, dim=dim, largest=True, sorted=True)
        return best, ((size - 1) - order).to(values.dtype)

    layer._ranked = ranked  # type: ignore[method-assign]
    try:
        return forward(x)
    finally:
        del layer._ranked


def _explicit_pooling(layer: Pooling, x: Any) -> Any:
    """Caffe's pooling windows as explicit padding plus unpadded floor pooling."""
    height, width = int(x.shape[2]), int(x.shape[3])
    out = layer.output_size(height, width)
    if layer.kernel is None and layer.method == "AVE":
        return x.mean(dim=(2, 3), keepdim=True)
    kernel = layer._kernel_for(height, width)
    (sh, sw), (ph, pw) = layer.stride, layer.pad
    right_h = (out[0] - 1) * sh + kernel[0] - (height + ph)
    right_w = (out[1] - 1) * sw + kernel[1] - (width + pw)
    pads = (pw, right_w, ph, right_h)
    if layer.method == "MAX":
        padded = F.pad(x, pads, value=-math.inf) if any(pads) else x
        top = F.max_pool2d(padded, kernel, (sh, sw))
        empty = any(
            (o - 1) * s - p >= size
            for o, s, p, size in zip(out, (sh, sw), (ph, pw), (height, width), strict=True)
        )
        return top.clamp_min(NEG_FLT_MAX) if empty else top
    padded = F.pad(x, pads) if any(pads) else x
    top = F.avg_pool2d(padded, kernel, (sh, sw))
    divisor = layer._divisor(height, width, out, torch.empty(0))
    factor = (kernel[0] * kernel[1]) / divisor
    if bool(torch.all(factor == 1.0)):
        return top
    return top * factor


# -- graph clean-up ------------------------------------------------------------------------------


def _is_inplace_node(node: fx.Node) -> bool:
    if node.op == "call_method":
        return _is_inplace_method(str(node.target)) or node.target == "__setitem__"
    return node.op == "call_function" and node.target in _INPLACE_FUNCTIONS


def _is_removable(node: fx.Node) -> bool:
    """Unused, and either pure or an in-place update of a temporary nobody reads afterwards."""
    if node.users or node.op not in ("get_attr", "call_function", "call_method"):
        return False
    if not _is_inplace_node(node):
        return node.op != "call_function" or not node.is_impure()
    updated = node.args[0] if node.args else None
    if not isinstance(updated, fx.Node) or updated.op in ("placeholder", "get_attr"):
        return False
    return all(_is_inplace_node(user) and not user.users for user in updated.users)


def _eliminate_dead_code(graph: fx.Graph) -> None:
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph.nodes)):
            if _is_removable(node):
                graph.erase_node(node)
                changed = True


def _portable_devices(graph: fx.Graph) -> None:
    """Replace device constants baked in by the trace with the first input's device."""
    first = next((n for n in graph.nodes if n.op == "placeholder"), None)
    if first is None:
        return
    device_node: list[fx.Node] = []

    def replace(value: Any) -> Any:
        if isinstance(value, torch.device):
            if not device_node:
                with graph.inserting_after(first):
                    device_node.append(graph.call_function(getattr, (first, "device")))
            return device_node[0]
        return value

    for node in list(graph.nodes):
        if node.op in ("call_function", "call_method") and not (device_node and node is device_node[0]):
            node.args = fx.node.map_aggregate(node.args, replace)
            node.kwargs = fx.node.map_aggregate(node.kwargs, replace)
    if device_node:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        placeholders[-1].append(device_node[0])


def example_inputs(
    input_shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Reproducible standard-normal inputs of the given shapes (verification and tracing)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shape, generator=generator, dtype=dtype) for name, shape in input_shapes.items()
    }


def net_input_shapes(net: Net, batch: int | None = None) -> dict[str, tuple[int, ...]]:
    """The shapes of the net's inputs (from its Input layers), with the first axis set to ``batch``."""
    shapes = {}
    for name in net.input_names:
        shape = tuple(net.blob_shapes[name])
        if batch is not None and shape:
            shape = (int(batch), *shape[1:])
        shapes[name] = shape
    return shapes


def flatten(
    net: Net,
    inputs: dict[str, torch.Tensor] | None = None,
    onnx_pooling: bool = False,
) -> FlatNet:
    """Trace ``net`` into a :class:`FlatNet` of plain torch calls.

    Args:
        net: the source net (its layers are traced, their tensors shared).
        inputs: example inputs by blob name (default: random inputs of the net's input shapes).
        onnx_pooling: write Caffe's pooling geometry out explicitly (for ONNX runtimes).
    """
    inputs = inputs if inputs is not None else example_inputs(net_input_shapes(net))
    missing = [name for name in net.input_names if name not in inputs]
    if missing:
        raise ExportError(f"no example input for {missing}; the net's inputs are {net.input_names}")
    outputs_module, arg_of = outputs_graph(net)
    by_arg = {arg_of[name]: inputs[name].clone() for name in net.input_names}
    tracer = _ValueTracer(by_arg, onnx_pooling)
    tracer.state_storages = {
        t.untyped_storage().data_ptr() for t in [*outputs_module.parameters(), *outputs_module.buffers()]
    }
    with torch.no_grad():
        try:
            graph = tracer.trace(outputs_module)
        except _DataDependent as exc:  # outside any layer (should not happen)
            raise ExportError(f"the net cannot be exported as plain torch code: {exc}") from None
    _eliminate_dead_code(graph)
    dropped = []
    for node in list(graph.nodes):
        if node.op == "placeholder" and not node.users:
            dropped.append(node.target)
            graph.erase_node(node)
    _portable_devices(graph)
    layer_of = {n.name: n.meta["caffe_layer"] for n in graph.nodes if "caffe_layer" in n.meta}
    output_node = next(n for n in graph.nodes if n.op == "output")
    output_shapes = {
        name: tuple(value.shape)
        for name, node in output_node.args[0].items()
        if isinstance(value := tracer.values.get(node), torch.Tensor)
    }
    module = fx.GraphModule(tracer.root, graph, class_name="CaffeExport")
    blob_of = {arg: blob for blob, arg in arg_of.items()}
    used = [n.target for n in graph.nodes if n.op == "placeholder"]
    input_names = [blob_of[arg] for arg in used]
    return FlatNet(
        module=module,
        input_names=input_names,
        arg_names=list(used),
        input_shapes={name: tuple(inputs[name].shape) for name in input_names},
        output_names=list(net.output_names),
        layer_of=layer_of,
        layer_types={name: param.type for name, param in net.layer_params.items()},
        dropped_inputs=[blob_of[arg] for arg in dropped],
        state_updates=dict(tracer.updates),
        output_shapes=output_shapes,
    )


# -- any batch size ------------------------------------------------------------------------------

#: The batch sizes a net is traced at to tell the integers that follow the batch size from the others.
TRACE_BATCHES = (2, 3, 5)


class BatchFixed(Exception):
    """The net cannot be written for any batch size; the message says why."""


def batch_inputs(inputs: dict[str, torch.Tensor]) -> list[str]:
    """The inputs whose first axis is the batch: those whose first size is the first input's."""
    tensors = [(name, t) for name, t in inputs.items() if t.dim() > 0]
    if not tensors:
        return []
    batch = int(tensors[0][1].shape[0])
    return [name for name, t in tensors if int(t.shape[0]) == batch]


def resample_batch(
    inputs: dict[str, torch.Tensor], batch: int, names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """``inputs`` with ``batch`` rows along the first axis (rows taken cyclically) for the inputs
    in ``names`` (default: :func:`batch_inputs`); the other inputs are kept as they are."""
    names = batch_inputs(inputs) if names is None else names
    out = {}
    for name, tensor in inputs.items():
        if name in names and int(tensor.shape[0]) != batch:
            rows = torch.arange(batch) % int(tensor.shape[0])
            tensor = tensor[rows].clone()
        out[name] = tensor
    return out


def flatten_any_batch(net: Net, inputs: dict[str, torch.Tensor], onnx_pooling: bool = False) -> FlatNet:
    """Trace ``net`` into a :class:`FlatNet` that runs at any batch size.

    The net is traced at each of :data:`TRACE_BATCHES` (``inputs`` resampled along the batch axis).
    The graphs must be the same but for integer arguments that follow the batch size linearly
    (``reshape((N, 3, 112, 96))``, ``reshape((2 * N, -1))``, split sizes): those become
    expressions of the first batch input's ``size(0)``, so no batch size is baked in. The graph
    of the smallest batch is kept, and the traces hold small activations only.

    Raises:
        BatchFixed: the net does not run at these batch sizes, or its graph depends on the batch
            size in another way (a different graph, a constant tensor, a float or a non-linear
            integer that changes with it); the message names the layer.
        ExportError: the net cannot be exported at all.
    """
    names = batch_inputs({name: inputs[name] for name in net.input_names if name in inputs})
    if not names:
        raise BatchFixed("the net has no input with a batch axis")
    flats = []
    for batch in TRACE_BATCHES:
        try:
            flats.append(flatten(net, resample_batch(inputs, batch, names), onnx_pooling))
        except ExportError as exc:
            raise BatchFixed(f"at batch size {batch}: {exc}") from None
    return _generalise(flats, [name for name in flats[0].input_names if name in names])


def _linear(values: list[int], where: str) -> tuple[int, int]:
    """(a, c) with ``value == a * batch + c`` at every traced batch size."""
    (b0, b1), (v0, v1) = TRACE_BATCHES[:2], values[:2]
    if (v1 - v0) % (b1 - b0):
        raise BatchFixed(f"{where} computes {values} at batch sizes {list(TRACE_BATCHES)}")
    a = (v1 - v0) // (b1 - b0)
    c = v0 - a * b0
    if any(v != a * b + c for v, b in zip(values, TRACE_BATCHES, strict=True)):
        raise BatchFixed(f"{where} computes {values} at batch sizes {list(TRACE_BATCHES)}")
    return a, c


class _BatchExpressions:
    """Nodes computing ``a * N + c`` from the batch size N of one placeholder of ``graph``."""

    def __init__(self, graph: fx.Graph, source: fx.Node | None) -> None:
        self.graph = graph
        self.source = source
        self.size: fx.Node | None = None
        self.made: dict[tuple[int, int], fx.Node] = {}
        self.new_nodes: list[fx.Node] = []

    def node(self, a: int, c: int, before: fx.Node, where: str) -> fx.Node:
        if self.source is None:
            raise BatchFixed(f"{where} depends on the batch size, but no input of the graph has a batch axis")
        if (a, c) in self.made:
            return self.made[(a, c)]
        if self.size is None:
            last = [n for n in self.graph.nodes if n.op == "placeholder"][-1]
            with self.graph.inserting_after(last):
                self.size = self.graph.call_method("size", (self.source, 0))
            self.made[(1, 0)] = self.size
            if (a, c) == (1, 0):
                return self.size
        value = self.size
        with self.graph.inserting_before(before):
            if a != 1:
                value = self.graph.call_function(operator.mul, (value, a))
                self.new_nodes.append(value)
            if c:
                value = self.graph.call_function(operator.add, (value, c))
                self.new_nodes.append(value)
        if "caffe_layer" in before.meta:
            for node in self.new_nodes:
                node.meta.setdefault("caffe_layer", before.meta["caffe_layer"])
        self.made[(a, c)] = value
        return value


_PLAIN = (str, bytes, torch.dtype, torch.device, torch.layout, torch.memory_format, type(None), bool)


def _merge(
    values: list[Any], positions: list[dict[fx.Node, int]], make: Callable[[int, int], fx.Node], where: str
) -> Any:
    """One argument of the traces' aligned nodes, batch-dependent integers made expressions."""
    first = values[0]
    if isinstance(first, fx.Node):
        if (
            not all(isinstance(v, fx.Node) for v in values)
            or len({p.get(v) for p, v in zip(positions, values, strict=True)}) != 1
        ):
            raise BatchFixed(f"{where}: its graph changes with the batch size")
        return first
    if isinstance(first, _PLAIN) or not isinstance(first, (int, float, tuple, list, dict, slice)):
        if not all(type(v) is type(first) and v == first for v in values):
            raise BatchFixed(f"{where} uses {first!r} at one batch size and {values[1]!r} at another")
        return first
    if isinstance(first, int):
        if not all(type(v) is int for v in values):
            raise BatchFixed(f"{where}: its graph changes with the batch size")
        if all(v == first for v in values):
            return first
        return make(*_linear(values, where))
    if isinstance(first, float):
        same = all(
            isinstance(v, float) and (v == first or (math.isnan(v) and math.isnan(first))) for v in values
        )
        if not same:
            raise BatchFixed(f"{where} uses the number {first!r}, which changes with the batch size")
        return first
    if isinstance(first, slice):
        parts = (
            [
                _merge([getattr(v, part) for v in values], positions, make, where)
                for part in ("start", "stop", "step")
            ]
            if all(isinstance(v, slice) for v in values)
            else None
        )
        if parts is None:
            raise BatchFixed(f"{where}: its graph changes with the batch size")
        return slice(*parts)
    if isinstance(first, dict):
        if not all(isinstance(v, dict) and v.keys() == first.keys() for v in values):
            raise BatchFixed(f"{where}: its graph changes with the batch size")
        return {key: _merge([v[key] for v in values], positions, make, where) for key in first}
    if not all(isinstance(v, (tuple, list)) and len(v) == len(first) for v in values):
        raise BatchFixed(f"{where}: its graph changes with the batch size")
    items = [_merge([v[i] for v in values], positions, make, where) for i in range(len(first))]
    return list(items) if isinstance(first, list) else tuple(items)


def _generalise(flats: list[FlatNet], names: list[str]) -> FlatNet:
    """The first trace with the integers that follow the batch size written as expressions."""
    base = flats[0]
    graph = base.module.graph
    node_lists = [list(flat.module.graph.nodes) for flat in flats]
    if len({len(nodes) for nodes in node_lists}) != 1:
        raise BatchFixed("the net's graph changes with the batch size")
    positions = [{node: i for i, node in enumerate(nodes)} for nodes in node_lists]
    source = None
    if names:
        arg = base.arg_names[base.input_names.index(names[0])]
        source = next(n for n in node_lists[0] if n.op == "placeholder" and n.target == arg)
    expressions = _BatchExpressions(graph, source)
    for aligned in zip(*node_lists, strict=True):
        node = aligned[0]
        layer = node.meta.get("caffe_layer")
        where = (
            f"layer '{layer}' ({base.layer_types.get(layer, '?')})"
            if layer is not None
            else f"node '{node.name}'"
        )
        if any(n.op != node.op or n.target != node.target for n in aligned):
            raise BatchFixed(f"{where}: its graph changes with the batch size")
        if node.op == "get_attr":
            tensors = [get_attribute(flat.module, str(node.target)) for flat in flats]
            if isinstance(tensors[0], torch.Tensor) and not all(
                t is tensors[0]
                or (
                    isinstance(t, torch.Tensor) and t.shape == tensors[0].shape and torch.equal(t, tensors[0])
                )
                for t in tensors
            ):
                raise BatchFixed(f"{where} holds a constant tensor that changes with the batch size")
            continue

        def make(a: int, c: int, before: fx.Node = node, where: str = where) -> fx.Node:
            return expressions.node(a, c, before, where)

        node.args = _merge([n.args for n in aligned], positions, make, where)
        node.kwargs = _merge([n.kwargs for n in aligned], positions, make, where)
    for node in expressions.new_nodes + ([expressions.size] if expressions.size is not None else []):
        if "caffe_layer" in node.meta:
            base.layer_of[node.name] = node.meta["caffe_layer"]
    graph.lint()
    base.module.recompile()
    base.dynamic_batch = True
    base.batch_inputs = list(names)
    base.batch_outputs = [
        name
        for name in base.output_names
        if all(
            len(flat.output_shapes.get(name, ())) > 0 and flat.output_shapes[name][0] == batch
            for flat, batch in zip(flats, TRACE_BATCHES, strict=True)
        )
    ]
    return base
