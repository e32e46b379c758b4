"""A training prototxt in deploy form: what Caffe users write by hand as ``deploy.prototxt``.

The net is filtered for the TEST phase (Caffe's ``FilterNet``), then, in layer order:

* a data layer (``Data``, ``ImageData``, ``HDF5Data``, ... any layer the registry marks as data)
  becomes an ``Input`` layer of the same name giving its first top the data shape; its other
  tops (labels) are dropped;
* loss layers, ``Accuracy``, ``HDF5Output`` and the label-driven margin layers
  (``LabelSpecificAdd``, ``MarginInnerProduct``, ``LargeMarginInnerProduct``, ``GlobalLSEMargin``,
  caffe-compat's ``MarginHead``) are dropped;
* a layer consuming a blob that no longer exists (a label, or a dropped layer's top) is dropped,
  and so, in turn, are its consumers. A dropped in-place layer leaves its blob as it was before.

Every change is reported as a note. The data shape comes from ``input_shapes`` when given, else
from building the data layer (HDF5Data, DummyData read their shapes), else from the layer's
parameters (``ImageData`` with ``crop_size`` or ``new_height``/``new_width``, ``MemoryData``);
otherwise it must be given. ``batch`` replaces the first axis of every input.
"""

from __future__ import annotations

from pathlib import Path

from caffe_compat.errors import CaffeCompatError, LayerError
from caffe_compat.export.errors import ExportError
from caffe_compat.layers.base import BuildContext
from caffe_compat.layers.registry import registered_types
from caffe_compat.net.filter import filter_net, make_state
from caffe_compat.proto import caffe_pb2

Shape = tuple[int, ...]

#: Caffe's data layer types (recognised even where caffe-compat does not implement them).
DATA_TYPES = frozenset(
    {"Data", "ImageData", "HDF5Data", "DummyData", "MemoryData", "WindowData", "Python", "AnnotatedData"}
)
#: Label-driven margin layers: the identity or meaningless without labels, dropped from deploy nets.
MARGIN_TYPES = frozenset(
    {"LabelSpecificAdd", "MarginInnerProduct", "LargeMarginInnerProduct", "MarginHead", "GlobalLSEMargin"}
)
#: Layers that only make sense with labels or in training (HDF5Output writes a file as it runs).
TRAINING_TYPES = frozenset({"Accuracy", "HDF5Output"}) | MARGIN_TYPES


def _is_data(layer: caffe_pb2.LayerParameter) -> bool:
    cls = registered_types().get(layer.type)
    return layer.type in DATA_TYPES or (cls is not None and cls.is_data)


def _is_loss(layer: caffe_pb2.LayerParameter) -> bool:
    cls = registered_types().get(layer.type)
    if cls is not None:
        return cls.is_loss
    return layer.type.endswith("Loss")


def _built_shape(layer: caffe_pb2.LayerParameter, net_dir: Path | None) -> Shape | None:
    cls = registered_types().get(layer.type)
    if cls is None:
        return None
    ctx = BuildContext(layer=layer, bottom_shapes=[], phase=caffe_pb2.TEST, net_dir=net_dir)
    ctx.extra["input_shapes"] = {}
    try:
        module = cls.from_caffe(layer, ctx)
        shapes = module.top_shapes([])
    except (CaffeCompatError, OSError, ValueError, RuntimeError, TypeError, IndexError, KeyError):
        return None
    return tuple(int(d) for d in shapes[0]) if shapes else None


def _parameter_shape(layer: caffe_pb2.LayerParameter) -> Shape | None:
    """The data shape from the layer's parameters alone, where they determine it."""
    if layer.type == "ImageData":
        p = layer.image_data_param
        channels = 3 if p.is_color else 1
        crop = layer.transform_param.crop_size
        if crop:
            return (p.batch_size, channels, crop, crop)
        if p.new_height and p.new_width:
            return (p.batch_size, channels, p.new_height, p.new_width)
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        return (p.batch_size, p.channels, p.height, p.width)
    if layer.type == "DummyData" and layer.dummy_data_param.shape:
        return tuple(int(d) for d in layer.dummy_data_param.shape[0].dim)
    return None


def data_shape(
    layer: caffe_pb2.LayerParameter, input_shapes: dict[str, Shape], net_dir: Path | None
) -> Shape:
    """The shape of a data layer's first top (see the module docstring for the sources tried)."""
    top = layer.top[0]
    if top in input_shapes:
        return tuple(input_shapes[top])
    shape = _built_shape(layer, net_dir) or _parameter_shape(layer)
    if shape is None:
        raise ExportError(
            f"layer '{layer.name}' ({layer.type}): cannot tell the shape of its top '{top}' without reading "
            f"its source; give it, e.g. --input-shape {top}=1,3,112,96"
        )
    return shape


def apply_input_shapes(
    net: caffe_pb2.NetParameter, input_shapes: dict[str, Shape], batch: int | None
) -> list[str]:
    """Set the shapes of ``Input`` layers' tops in place (``input_shapes``, then ``batch``); notes."""
    notes = []
    for layer in net.layer:
        if layer.type != "Input":
            continue
        shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
        if len(shapes) == 1 and len(layer.top) > 1:
            shapes = shapes * len(layer.top)
        changed = False
        for index, top in enumerate(layer.top):
            new = tuple(input_shapes.get(top, shapes[index] if index < len(shapes) else ()))
            if batch is not None and new:
                new = (int(batch), *new[1:])
            if index < len(shapes) and new == shapes[index]:
                continue
            if not new:
                raise ExportError(
                    f"layer '{layer.name}' (Input): no shape for top '{top}'; give --input-shape"
                )
            while len(shapes) <= index:
                shapes.append(())
            shapes[index] = new
            changed = True
            notes.append(f"input '{top}' has shape {list(new)}")
        if changed:
            del layer.input_param.shape[:]
            for shape in shapes:
                layer.input_param.shape.add().dim.extend(shape)
    return notes


def _drop_unread_inputs(deploy: caffe_pb2.NetParameter, read_by_dropped: set[str], notes: list[str]) -> None:
    """Remove Input tops (labels) that only dropped layers read."""
    read = {bottom for layer in deploy.layer for bottom in layer.bottom}
    for layer in list(deploy.layer):
        if layer.type != "Input":
            continue
        unread = [top for top in layer.top if top in read_by_dropped and top not in read]
        if not unread:
            continue
        shapes = list(layer.input_param.shape)
        keep = [i for i, top in enumerate(layer.top) if top not in unread]
        notes.append(f"input {unread} of layer '{layer.name}' dropped: only dropped layers read it")
        if not keep:
            deploy.layer.remove(layer)
            continue
        tops = [layer.top[i] for i in keep]
        kept_shapes = [shapes[i] for i in keep] if len(shapes) == len(layer.top) else shapes
        del layer.top[:]
        layer.top.extend(tops)
        del layer.input_param.shape[:]
        layer.input_param.shape.extend(kept_shapes)


def deploy_net(
    net: caffe_pb2.NetParameter,
    input_shapes: dict[str, Shape] | None = None,
    batch: int | None = None,
    net_dir: Path | None = None,
) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """The deploy form of ``net`` (already read and upgraded) and notes on what changed."""
    input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    state = make_state(net.state if net.HasField("state") else None, caffe_pb2.TEST)
    filtered = filter_net(net, state)
    deploy = caffe_pb2.NetParameter()
    deploy.CopyFrom(filtered)
    del deploy.layer[:]
    deploy.ClearField("state")
    notes: list[str] = []
    available: set[str] = set()
    read_by_dropped: set[str] = set()
    for layer in filtered.layer:
        if _is_data(layer):
            if not layer.top:
                raise LayerError(f"layer '{layer.name}' ({layer.type}): a data layer without tops")
            top = layer.top[0]
            shape = data_shape(layer, input_shapes, net_dir)
            if batch is not None:
                shape = (int(batch), *shape[1:])
            new = deploy.layer.add(name=layer.name, type="Input", top=[top])
            new.input_param.shape.add().dim.extend(shape)
            available.add(top)
            dropped = f"; its top(s) {list(layer.top[1:])} dropped" if len(layer.top) > 1 else ""
            notes.append(
                f"data layer '{layer.name}' ({layer.type}) -> Input '{top}' of shape {list(shape)}{dropped}"
            )
            continue
        missing = [b for b in layer.bottom if b not in available]
        reason = ""
        if _is_loss(layer):
            reason = "a loss layer"
        elif layer.type in MARGIN_TYPES:
            reason = "a label-driven margin layer (training only)"
        elif layer.type in TRAINING_TYPES:
            reason = "a training-only layer"
        elif missing:
            reason = f"it consumes {missing} (a label or the top of a dropped layer)"
        if reason:
            notes.append(f"dropped layer '{layer.name}' ({layer.type}): {reason}")
            read_by_dropped.update(layer.bottom)
            for top in layer.top:
                if top not in layer.bottom:
                    available.discard(top)
            continue
        kept = deploy.layer.add()
        kept.CopyFrom(layer)
        del kept.include[:]
        del kept.exclude[:]
        available.update(layer.top)
    _drop_unread_inputs(deploy, read_by_dropped, notes)
    notes.extend(apply_input_shapes(deploy, input_shapes, batch))
    if not any(layer.type != "Input" for layer in deploy.layer):
        raise ExportError("the deploy form of the net has no layers left besides its inputs")
    return deploy, notes
