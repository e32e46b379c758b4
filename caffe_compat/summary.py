"""Human-readable summaries of Caffe files, for ``caffe-compat inspect``.

The kind is recognised from the content: binary files are tried as caffemodel, solverstate and
mean blob (by extension first); text files as a net and as a solver prototxt.
"""

from __future__ import annotations

import math
from pathlib import Path

from caffe_compat.errors import CaffeCompatError, PrototxtError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.convert import is_binary_file
from caffe_compat.proto.io import (
    blob_shape,
    format_text,
    parse_text,
    read_blobproto,
    read_caffemodel,
    read_net,
    read_solver,
    read_solverstate,
    similar_files_hint,
)

Shape = tuple[int, ...]


def _count(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def summarize_caffemodel(path: str | Path) -> str:
    net = read_caffemodel(path)
    rows, total = [], 0
    for layer in net.layer:
        shapes = [blob_shape(b) for b in layer.blobs]
        total += sum(_count(s) for s in shapes)
        rows.append((layer.name, layer.type, " ".join(str(list(s)) for s in shapes) or "-"))
    head = f"caffemodel {path}: net '{net.name}', {len(net.layer)} layers, {total:,} parameters"
    return head + "\n" + _table(rows, ("layer", "type", "blob shapes"))


def _data_tops(layers: list[caffe_pb2.LayerParameter], given: dict[str, Shape]) -> dict[str, Shape]:
    """``given`` plus the label tops of data layers whose data top is given: ``(N,)``, as Caffe's."""
    shapes = dict(given)
    for layer in layers:
        if not _is_data(layer) or not layer.top or layer.top[0] not in given:
            continue
        batch = given[layer.top[0]][0] if given[layer.top[0]] else 1
        for top in layer.top[1:]:
            shapes.setdefault(top, (batch,))
    return shapes


def _is_data(layer: caffe_pb2.LayerParameter) -> bool:
    from caffe_compat.export.deploy import DATA_TYPES
    from caffe_compat.layers.registry import registered_types

    cls = registered_types().get(layer.type)
    return layer.type in DATA_TYPES or bool(cls is not None and cls.is_data)


def _build_for_shapes(net_param, phase, level, stages, input_shapes, net_dir):  # noqa: ANN001, ANN202
    """The Net, built without allocating its blobs where the layers allow."""
    import torch

    from caffe_compat.net.net import Net

    def build() -> Net:
        return Net(
            net_param, phase=phase, level=level, stages=stages, input_shapes=input_shapes, source_dir=net_dir
        )

    try:
        with torch.device("meta"):
            return build()
    except CaffeCompatError:
        raise
    except Exception:  # noqa: BLE001  (a layer whose set-up needs real values: build normally)
        return build()


def summarize_net(
    path: str | Path,
    phase: str = "TEST",
    level: int = 0,
    stages: tuple[str, ...] | list[str] = (),
    input_shapes: dict[str, Shape] | None = None,
) -> str:
    """The layers a net has in ``phase`` (with ``level`` and ``stages``: Caffe's FilterNet), their
    top shapes and blob shapes, and the parameter count.

    Shapes need the data layers' shapes: read from their sources when these are at hand, from
    their parameters where those fix them (crop_size, new_height/new_width, DummyData, ...), or
    given in ``input_shapes`` (``{"data": (32, 3, 112, 96)}``; a data layer's label tops get
    ``(N,)``).

    Raises:
        CaffeCompatError: the file is not a net, or has no layers in that phase.
    """
    from caffe_compat.export.deploy import data_shape
    from caffe_compat.net.filter import filter_net, make_state

    path = Path(path)
    phase = phase.upper()
    if phase not in ("TRAIN", "TEST"):
        raise CaffeCompatError(f"the phase must be TRAIN or TEST, got '{phase}'")
    stages = [s for s in stages if s]
    net_param = read_net(path)
    if not net_param.layer:
        raise CaffeCompatError(f"{path}: the net has no layers")
    state = make_state(net_param.state if net_param.HasField("state") else None, phase, level, stages)
    layers = list(filter_net(net_param, state).layer)
    state_text = (
        f"phase {phase}"
        + (f", level {level}" if level else "")
        + (f", stages {','.join(stages)}" if stages else "")
    )
    if not layers:
        raise CaffeCompatError(f"{path}: none of its {len(net_param.layer)} layers is in {state_text}")
    net_dir = path.resolve().parent
    given = dict(input_shapes or {})
    unknown = sorted(set(given) - {top for layer in layers for top in layer.top} - set(net_param.input))
    if unknown:
        raise CaffeCompatError(f"--input-shape names {unknown}, which no layer in {state_text} produces")
    shapes: dict[str, tuple[int, ...]] = {}
    params: dict[str, list[tuple[int, ...]]] = {}
    note = ""
    try:
        net = _build_for_shapes(net_param, phase, level, stages, _data_tops(layers, given) or None, net_dir)
    except CaffeCompatError as exc:
        derived = {}
        unshaped = []
        for layer in layers:
            if _is_data(layer) and layer.top and layer.top[0] not in given:
                try:
                    derived[layer.top[0]] = data_shape(layer, {}, net_dir)
                except CaffeCompatError:
                    unshaped.append(layer)
        net = None
        if derived and not unshaped:
            try:
                net = _build_for_shapes(
                    net_param, phase, level, stages, _data_tops(layers, {**derived, **given}), net_dir
                )
            except CaffeCompatError:
                net = None
        if net is None and unshaped:
            named = ", ".join(f"'{layer.name}' ({layer.type})" for layer in unshaped)
            example = " ".join(f"--input-shape {layer.top[0]}=N,C,H,W" for layer in unshaped)
            note = (
                f"\n(no blob shapes or parameter counts: the data layer {named} cannot be read here and its "
                f"parameters do not fix its shape; give {example})"
            )
        elif net is None:
            note = f"\n(no blob shapes or parameter counts: {exc})"
    if net is not None:
        shapes = net.blob_shapes
        params = {name: [tuple(t.shape) for t in blobs] for name, blobs in net.params.items()}
    rows = []
    for layer in layers:
        tops = ", ".join(f"{t} {list(shapes[t])}" if t in shapes else t for t in layer.top)
        blob_text = " ".join(str(list(s)) for s in params.get(layer.name, [])) or "-"
        rows.append((layer.name, layer.type, ", ".join(layer.bottom) or "-", tops or "-", blob_text))
    total = sum(_count(s) for blobs in params.values() for s in blobs)
    left_out = len(net_param.layer) - len(layers)
    head = f"net {path}: '{net_param.name}', {len(layers)} layers in {state_text}"
    head += f" ({left_out} more in other phases or states)" if left_out else ""
    head += f", {total:,} parameters" if net is not None else ""
    return head + "\n" + _table(rows, ("layer", "type", "bottoms", "tops (shape)", "blob shapes")) + note


def summarize_solver(path: str | Path) -> str:
    solver = read_solver(path)
    return f"solver {path}:\n" + format_text(solver).rstrip()


def summarize_solverstate(path: str | Path) -> str:
    state = read_solverstate(path)
    shapes = [str(list(blob_shape(b))) for b in state.history]
    return (
        f"solverstate {path}: iter {state.iter}, current_step {state.current_step}, "
        f"learned_net '{state.learned_net}', {len(state.history)} history blobs\n  " + " ".join(shapes)
    )


def summarize_blobproto(path: str | Path) -> str:
    array = read_blobproto(path)
    return (
        f"blob {path}: shape {list(array.shape)}, {array.dtype}, "
        f"min {array.min():.6g}, max {array.max():.6g}, mean {array.mean():.6g}"
    )


def _text_kind(path: Path) -> str:
    """'net' or 'solver': whichever message the text parses as."""
    text = path.read_text(encoding="utf-8")
    errors = {}
    for kind, message in (("net", caffe_pb2.NetParameter()), ("solver", caffe_pb2.SolverParameter())):
        try:
            parse_text(text, message, str(path))
            return kind
        except PrototxtError as exc:
            errors[kind] = exc
    solverish = "solver" in path.name.lower()
    raise errors["solver" if solverish else "net"]


def summarize(
    path: str | Path,
    phase: str = "TEST",
    level: int = 0,
    stages: tuple[str, ...] | list[str] = (),
    input_shapes: dict[str, Shape] | None = None,
) -> str:
    """Summarize any Caffe file: layers, types, blob shapes and parameter count (nets: see
    :func:`summarize_net` for ``phase``, ``level``, ``stages`` and ``input_shapes``)."""
    path = Path(path)
    if not path.is_file():
        raise CaffeCompatError(f"file not found: {path}{similar_files_hint(path)}")
    if path.stat().st_size == 0:
        raise CaffeCompatError(
            f"{path}: the file is empty (0 bytes): not a net or solver prototxt, caffemodel, solverstate or "
            "mean file"
        )
    if not is_binary_file(path):
        if _text_kind(path) == "net":
            return summarize_net(path, phase, level, stages, input_shapes)
        return summarize_solver(path)
    readers = [summarize_caffemodel, summarize_solverstate, summarize_blobproto]
    suffix = path.suffix.lower()
    if suffix == ".solverstate":
        readers.insert(0, readers.pop(1))
    elif suffix == ".binaryproto":
        readers.insert(0, readers.pop(2))
    first_error = None
    for reader in readers:
        try:
            return reader(path)
        except CaffeCompatError as exc:
            first_error = first_error or exc
    raise first_error
