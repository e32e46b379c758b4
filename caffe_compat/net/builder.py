"""NetParameter -> layer modules and a ``torch.fx`` graph that wires them as Caffe does.

Rules followed (``Net::Init``): layers are set up in prototxt order, each seeing its bottoms'
shapes; ``param { name }`` shares one blob between layers (STRICT: same shape, PERMISSIVE: same
count; an explicit ``lr_mult`` must agree with the owner's); ``propagate_down: false`` stops the
gradient into that bottom; Input and data layers have no compute in the graph: their tops are its
placeholders. Fan-out needs no Split layer (autograd sums the gradients).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.registry import layer_class
from caffe_compat.net.dataflow import Dataflow, analyse, layer_label
from caffe_compat.net.naming import layer_keys, python_name
from caffe_compat.proto import caffe_pb2


@dataclass
class ParamEntry:
    """One parameter blob as Caffe's solver sees it (an entry of ``Net::params_``)."""

    layer: str  # the layer's key (its name, or name#k for an earlier layer of a repeated name)
    index: int
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float
    owner: tuple[str, int] | None = None  # (layer, index) of the blob this one shares, if any


@dataclass
class BuiltNet:
    """Everything the builder derives from a filtered NetParameter."""

    modules: dict[str, CaffeLayer] = field(default_factory=dict)  # layer key -> module
    module_names: dict[str, str] = field(default_factory=dict)  # layer key -> attribute name
    layer_params: dict[str, caffe_pb2.LayerParameter] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)  # placeholders, in creation order
    data_layers: list[str] = field(default_factory=list)  # layers whose tops the net reads itself
    blob_shapes: dict[str, Shape] = field(default_factory=dict)
    flow: Dataflow = field(default_factory=Dataflow)
    params: list[ParamEntry] = field(default_factory=list)
    graph: fx.Graph | None = None


def _is_source(cls: type[CaffeLayer]) -> bool:
    return cls.is_data or getattr(cls, "is_input", False)


def _layer_class(layer: caffe_pb2.LayerParameter, allow_python_layers: bool = False) -> type[CaffeLayer]:
    """The module class of a layer. Caffe's ``Python`` type imports and runs code the prototxt
    names, so it is refused (a prototxt from a stranger must not run code) unless the caller opts
    in with ``allow_python_layers`` (pycaffe's API does)."""
    if layer.type == "Python":
        if not allow_python_layers:
            module, cls = layer.python_param.module or "?", layer.python_param.layer or "?"
            raise LayerError(
                f"{layer_label(layer)}: runs Python code (class '{cls}' of module '{module}'); Python "
                "layers are refused because a prototxt must not run code it names; pass "
                "allow_python_layers=True (CLI: --allow-python-layers) to run it"
            )
        from caffe_compat.pycaffe.python_layer import PythonLayer  # imported only on opt-in

        return PythonLayer
    return layer_class(layer.type, layer.name)


def _share_named_params(
    built: BuiltNet,
    key: str,
    layer: caffe_pb2.LayerParameter,
    module: CaffeLayer,
    owners: dict[str, ParamEntry],
) -> None:
    """Apply ``param { name }`` sharing and record every blob's ParamSpec (``Net::AppendParam``)."""
    specs = module.present_blob_specs()
    tensors = module.caffe_blob_tensors()
    param_specs = module.param_specs(layer, len(tensors))
    for index, (blob_spec, tensor, param_spec) in enumerate(zip(specs, tensors, param_specs, strict=True)):
        entry = ParamEntry(key, index, tensor, param_spec.lr_mult, param_spec.decay_mult)
        name = param_spec.name
        if name and name in owners:
            owner = owners[name]
            if param_spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
                if owner.tensor.numel() != tensor.numel():
                    raise LayerError(
                        f"{layer_label(layer)}: cannot share param '{name}' owned by layer '{owner.layer}': "
                        f"count mismatch, owner {list(owner.tensor.shape)} vs {list(tensor.shape)}"
                    )
            elif owner.tensor.shape != tensor.shape:
                raise LayerError(
                    f"{layer_label(layer)}: cannot share param '{name}' owned by layer '{owner.layer}': "
                    "shape "
                    f"mismatch, owner {list(owner.tensor.shape)} vs {list(tensor.shape)} (use share_mode: "
                    "PERMISSIVE to only check the count)"
                )
            if index < len(layer.param) and layer.param[index].HasField("lr_mult"):
                if owner.lr_mult != param_spec.lr_mult:
                    raise LayerError(f"{layer_label(layer)}: shared param '{name}' has mismatched lr_mult")
            shared = owner.tensor if owner.tensor.shape == tensor.shape else owner.tensor.view(tensor.shape)
            module.set_blob(blob_spec.name, shared)
            entry.tensor, entry.owner = shared, (owner.layer, owner.index)
            entry.lr_mult, entry.decay_mult = owner.lr_mult, owner.decay_mult
        elif name:
            owners[name] = entry
        built.params.append(entry)


def _share_with(module: CaffeLayer, other: CaffeLayer | None, layer: caffe_pb2.LayerParameter) -> None:
    """Share every blob with the same-named layer of another net (``ShareTrainedLayersWith``)."""
    if other is None:
        return
    mine, theirs = module.present_blob_specs(), other.present_blob_specs()
    if [b.name for b in mine] != [b.name for b in theirs]:
        raise LayerError(
            f"{layer_label(layer)}: cannot share blobs with the train net's layer of the same name"
        )
    for spec in mine:
        source = getattr(other, spec.name)
        if source.shape != getattr(module, spec.name).shape:
            raise LayerError(
                f"{layer_label(layer)}: blob '{spec.name}' has shape "
                f"{list(getattr(module, spec.name).shape)} "
                f"but the train net's has {list(source.shape)}"
            )
        module.set_blob(spec.name, source)


def build(
    net: caffe_pb2.NetParameter,
    net_dir: Path | None = None,
    input_shapes: dict[str, Shape] | None = None,
    share_from: dict[str, CaffeLayer] | None = None,
    reserved_names: set[str] = frozenset(),
    allow_python_layers: bool = False,
) -> BuiltNet:
    """Set up every layer of a filtered net and build the fx graph returning every blob.

    ``allow_python_layers`` opts in to Caffe's ``Python`` layers (they import and run the module
    the prototxt names); without it they are refused."""
    input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    built = BuiltNet()
    classes = [_layer_class(layer, allow_python_layers) for layer in net.layer]
    built.flow = analyse(net, [cls.default_loss_weight if cls.is_loss else 0.0 for cls in classes])
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    taken: set[str] = set()
    owners: dict[str, ParamEntry] = {}
    keys = layer_keys([layer.name for layer in net.layer])
    for key, layer, cls in zip(keys, net.layer, classes, strict=True):
        bottom_shapes = [built.blob_shapes[b] for b in layer.bottom]
        ctx = BuildContext(layer=layer, bottom_shapes=bottom_shapes, phase=net.state.phase, net_dir=net_dir)
        ctx.extra["input_shapes"] = input_shapes
        try:
            module = cls.from_caffe(layer, ctx)
        except LayerError:
            raise
        except (ValueError, RuntimeError, TypeError, IndexError) as exc:
            if getattr(cls, "user_code", False):  # a Python layer's own error, passed on unchanged
                raise
            raise ctx.error(f"cannot be built: {exc}") from None
        module.caffe_name = layer.name
        if key == layer.name:  # only the last layer of a name is reached by name (ShareTrainedLayersWith)
            _share_with(module, (share_from or {}).get(key), layer)
        _share_named_params(built, key, layer, module, owners)
        attr = python_name(layer.name, taken, reserved_names)
        built.modules[key] = module
        built.module_names[key] = attr
        built.layer_params[key] = layer
        if _is_source(cls) and layer.top and all(top in input_shapes for top in layer.top):
            top_shapes = [input_shapes[top] for top in layer.top]
        else:
            top_shapes = _top_shapes(module, layer, bottom_shapes)
        if len(top_shapes) != len(layer.top):
            raise LayerError(
                f"{layer_label(layer)}: produces {len(top_shapes)} tops but the prototxt names "
                f"{len(layer.top)}"
            )
        for top, shape in zip(layer.top, top_shapes, strict=True):
            built.blob_shapes[top] = tuple(shape)
        if _is_source(cls):
            if cls.is_data:
                built.data_layers.append(key)
            for top in layer.top:
                env[top] = graph.placeholder(top)
                built.input_names.append(top)
            continue
        args = []
        for index, bottom in enumerate(layer.bottom):
            node = env[bottom]
            if layer.propagate_down and not layer.propagate_down[index]:
                node = graph.call_method("detach", (node,))
            args.append(node)
        node = graph.call_module(attr, tuple(args))
        if len(layer.top) == 1:
            env[layer.top[0]] = node
        else:
            for index, top in enumerate(layer.top):
                env[top] = graph.call_function(operator.getitem, (node, index))
    graph.output({name: env[name] for name in built.flow.blob_order})
    built.graph = graph
    return built


def _top_shapes(
    module: CaffeLayer, layer: caffe_pb2.LayerParameter, bottom_shapes: list[Shape]
) -> list[Shape]:
    try:
        return [tuple(int(d) for d in s) for s in module.top_shapes(bottom_shapes)]
    except LayerError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        if getattr(module, "user_code", False):
            raise
        shapes = ", ".join(str(list(s)) for s in bottom_shapes)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayerError(f"{layer_label(layer)}: cannot run on bottoms of shape {shapes}: {first}") from None


def graph_module(root: nn.Module, graph: fx.Graph, class_name: str = "CaffeGraph") -> fx.GraphModule:
    """Compile the graph into plain generated code whose submodules are ``root``'s layers."""
    return fx.GraphModule(root, graph, class_name=class_name)


def graph_returning(graph: fx.Graph, names: set[str]) -> fx.Graph:
    """A copy of a built graph that returns only the blobs in ``names`` (every layer still runs).

    The generated code drops each other blob after its last use, so a forward keeps alive only
    what later layers (or autograd) still need instead of every blob of the net."""
    pruned = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    returned = pruned.graph_copy(graph, mapping)
    pruned.output({name: node for name, node in returned.items() if name in names})
    return pruned


def count_elements(shape: Shape) -> int:
    return math.prod(shape) if shape else 1
