"""``caffe.draw``: a NetParameter as a Graphviz graph (BVLC's ``python/caffe/draw.py``).

Layers are boxes (coloured by type: convolutions red, pooling orange, inner products purple, an
in-place layer green), blobs are grey octagons, edges go bottom -> layer -> top and are labelled
with the batch size of a Data layer or the ``num_output`` of a convolution or inner product.
``phase`` keeps only the layers a NetState of that phase includes (by the layers' phase rules).

Needs the optional ``pydot`` package (``pip install 'caffe-compat[draw]'``); rendering an image
(``draw_net``, ``draw_net_to_file`` with ``.png``, ``.svg``, ``.pdf`` ...) also needs Graphviz's
``dot`` program. ``draw_net_to_file(net, 'x.raw')`` writes the DOT text and needs no Graphviz.
"""

from __future__ import annotations

import os

from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import write_bytes_atomic

try:
    import pydotplus as pydot  # what BVLC tries first
except ImportError:
    try:
        import pydot
    except ImportError:
        raise ImportError(
            "caffe.draw needs pydot: pip install 'caffe-compat[draw]' (and Graphviz's dot program to "
            "render images)"
        ) from None

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name (0 -> 'MAX', ...)."""
    return {
        value.number: name
        for name, value in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()
    }


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """The label of a layer's edges to its tops."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The weight and bias ``lr_mult`` of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in ("Convolution", "Deconvolution", "InnerProduct"):
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    specs = list(layer.param)
    if len(specs) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    mults = [spec.lr_mult for spec in specs] + [1.0] * (2 - len(specs))
    return mults[0], mults[1]


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool = False) -> str:
    """A layer's node label: name, type, the kernel/stride/pad of spatial layers and, with
    ``display_lrm``, the lr multipliers; words on separate lines unless the graph is vertical."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        parts.append(f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            param = layer.pooling_param
            kernel, stride, pad = param.kernel_size, param.stride, param.pad
        else:
            param = layer.convolution_param
            kernel = param.kernel_size[0] if len(param.kernel_size) else 1
            stride = param.stride[0] if len(param.stride) else 1
            pad = param.pad[0] if len(param.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        weight_mult, bias_mult = get_layer_lr_mult(layer)
        if weight_mult or bias_mult:
            parts.append(f"lr mult: {weight_mult:.1f}, {bias_mult:.1f}")
    return '"' + separator.join(parts) + '"'


def choose_color_by_layertype(layertype: str) -> str:
    return {
        "Convolution": "#FF5050",
        "Deconvolution": "#FF5050",
        "Pooling": "#FF9900",
        "InnerProduct": "#CC33FF",
    }.get(layertype, "#6495ED")


def _included(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    if layer.include and layer.exclude:
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    included = not layer.include or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def get_pydot_graph(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    label_edges: bool = True,
    phase: int | None = None,
    display_lrm: bool = False,
):
    """The net as a ``pydot.Dot`` graph."""
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, object] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in caffe_net.layer:
        if phase is not None and not _included(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        node = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        if in_place:
            nodes[node] = pydot.Node(label, **NEURON_LAYER_STYLE)
        else:
            nodes[node] = pydot.Node(
                label, **{**LAYER_STYLE_DEFAULT, "fillcolor": choose_color_by_layertype(layer.type)}
            )
        for bottom in layer.bottom:
            nodes[f"{bottom}_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((f"{bottom}_blob", node, '""'))
        for top in layer.top:
            nodes[f"{top}_blob"] = pydot.Node(top)
            edges.append((node, f"{top}_blob", get_edge_label(layer) if label_edges else '""'))
    for value in nodes.values():
        graph.add_node(value)
    for source, target, label in edges:
        graph.add_edge(pydot.Edge(nodes[source], nodes[target], label=label))
    return graph


def draw_net(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    ext: str = "png",
    phase: int | None = None,
    display_lrm: bool = False,
) -> bytes:
    """The net rendered by Graphviz in format ``ext`` (``'raw'``: the DOT text)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext == "raw":
        return graph.to_string().encode()
    return graph.create(format=ext)


def draw_net_to_file(
    caffe_net: caffe_pb2.NetParameter,
    filename: str | os.PathLike,
    rankdir: str = "LR",
    phase: int | None = None,
    display_lrm: bool = False,
) -> None:
    """Draw the net into ``filename`` in the format its extension names (atomically)."""
    name = os.fspath(filename)
    ext = name[name.rfind(".") + 1 :]
    write_bytes_atomic(name, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
