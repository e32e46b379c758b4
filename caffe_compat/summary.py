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
)


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


def summarize_net(path: str | Path, phase: str = "TEST") -> str:
    net_param = read_net(path)
    shapes: dict[str, tuple[int, ...]] = {}
    params: dict[str, list[tuple[int, ...]]] = {}
    note = ""
    try:
        from caffe_compat.net.net import Net

        net = Net(net_param, phase=phase)
        shapes = net.blob_shapes
        params = {name: [tuple(t.shape) for t in blobs] for name, blobs in net.params.items()}
        layers = [net.layer_params[name] for name in net.layers]
    except CaffeCompatError as exc:
        note = f"\n(shapes unavailable: {exc})"
        layers = list(net_param.layer)
    rows = []
    for layer in layers:
        tops = ", ".join(f"{t} {list(shapes[t])}" if t in shapes else t for t in layer.top)
        blob_text = " ".join(str(list(s)) for s in params.get(layer.name, [])) or "-"
        rows.append((layer.name, layer.type, ", ".join(layer.bottom) or "-", tops or "-", blob_text))
    total = sum(_count(s) for blobs in params.values() for s in blobs)
    head = f"net {path}: '{net_param.name}', {len(layers)} layers in phase {phase}"
    head += f", {total:,} parameters" if params else ""
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


def summarize(path: str | Path, phase: str = "TEST") -> str:
    """Summarize any Caffe file: layers, types, blob shapes and parameter count."""
    path = Path(path)
    if not path.is_file():
        raise CaffeCompatError(f"file not found: {path}")
    if not is_binary_file(path) and path.stat().st_size > 0:
        return summarize_net(path, phase) if _text_kind(path) == "net" else summarize_solver(path)
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
