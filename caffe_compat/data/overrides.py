"""Overriding data paths and other layer fields without editing the prototxt.

``apply_overrides(net_param, sets, data_root, phase)`` returns a changed copy:

- ``--data-root OLD=NEW`` replaces the prefix ``OLD`` of every data path (``source``,
  ``root_folder`` and ``mean_file`` of the data parameters and ``transform_param``), e.g.
  ``C:/datasets=/home/me/data``. Backslashes count as slashes, the prefix must end at a path
  separator, and a Windows drive letter matches in any case. A mapping that matches no path is
  an error (it is surely misspelt).
- ``-set KEY=VALUE`` sets one field: ``KEY`` is ``[PHASE:]layer.field.path``, e.g.
  ``TRAIN:data.image_data_param.source=/data/train.txt``. The layer is named by its ``name``; a
  phase qualifier picks the layer whose include/exclude rules admit that phase (the AM-Softmax
  prototxt names both data layers ``data``). A key matching several layers without a qualifier,
  or no layer, is an error. Field paths follow the protobuf message (``name[i]`` picks an element
  of a repeated message); a repeated scalar takes a comma-separated list (``mean_value=104,117,123``);
  enums take their name or number; bools ``true/false/1/0``.

The ``-set`` values are applied after ``--data-root``, so an explicit value wins.

``check_data_paths`` (run by the command-line tools after the overrides) refuses a net whose
data layers name a file that is not there, before any layer reads it, with the fix: a
Windows path of the original config (``C:/datasets/...``) is named as such, with the
``--data-root OLD=NEW`` command that maps it to the user's copy of the data.
When ``phase`` is given (the net will be built in that phase only), unqualified keys consider
only the layers of that phase.

Phase membership looks at the phase of the rules only (not at levels or stages): a layer with
include rules is in a phase when one of them names that phase or none; a layer with exclude
rules is in it unless one of them names that phase.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from google.protobuf import descriptor
from google.protobuf.message import Message

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2

_PATH_FIELDS = {
    "image_data_param": ("source", "root_folder", "mean_file"),
    "data_param": ("source", "mean_file"),
    "hdf5_data_param": ("source",),
    "window_data_param": ("source", "mean_file"),
    "transform_param": ("mean_file",),
}
_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}
_INDEXED = re.compile(r"^(\w+)\[(\d+)\]$")
_DRIVE = re.compile(r"^[A-Za-z]:/")
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[/\\]|^\\\\")  # C:/, C:\ or \\server
# The fields naming a file or folder that must exist (root_folder is a prefix, not a path).
_MUST_EXIST = {
    "image_data_param": ("source", "mean_file"),
    "data_param": ("source", "mean_file"),
    "hdf5_data_param": ("source",),
    "window_data_param": ("source", "mean_file"),
    "transform_param": ("mean_file",),
}


def _in_phase(layer: caffe_pb2.LayerParameter, phase: int) -> bool:
    if layer.include:
        return any(not rule.HasField("phase") or rule.phase == phase for rule in layer.include)
    return not any(rule.HasField("phase") and rule.phase == phase for rule in layer.exclude)


def _normalized(path: str) -> str:
    return path.replace("\\", "/")


def _map_prefix(path: str, old: str, new: str) -> str | None:
    """``path`` with its prefix ``old`` replaced by ``new``, or None when it does not start with it."""
    text, prefix = _normalized(path), _normalized(old).rstrip("/")
    compare_text, compare_prefix = text, prefix
    if _DRIVE.match(prefix + "/"):
        compare_text, compare_prefix = text.lower(), prefix.lower()
    if compare_text == compare_prefix:
        return new
    if compare_text.startswith(compare_prefix + "/"):
        rest = text[len(prefix) + 1 :]
        return new.rstrip("/\\") + "/" + rest if rest else new.rstrip("/\\") + "/"
    return None


def _apply_data_root(net: caffe_pb2.NetParameter, mapping: str) -> None:
    old, equals, new = mapping.partition("=")
    if not equals or not old or not new:
        raise CaffeCompatError(f"--data-root takes OLD=NEW (e.g. C:/datasets=/home/me/data), got {mapping!r}")
    seen: list[str] = []
    changed = 0
    for layer in net.layer:
        for param_name, fields in _PATH_FIELDS.items():
            if not layer.HasField(param_name):
                continue
            param = getattr(layer, param_name)
            for field_name in fields:
                if not param.HasField(field_name) or not getattr(param, field_name):
                    continue
                value = getattr(param, field_name)
                seen.append(value)
                mapped = _map_prefix(value, old, new)
                if mapped is not None:
                    setattr(param, field_name, mapped)
                    changed += 1
    if not changed:
        listed = ", ".join(repr(p) for p in seen) or "none"
        raise CaffeCompatError(
            f"--data-root {mapping!r}: '{old}' starts none of the net's data paths ({listed})"
        )


def _parse_scalar(field: descriptor.FieldDescriptor, text: str, key: str) -> str | bytes | bool | int | float:
    kind = field.cpp_type
    unsigned = kind in (descriptor.FieldDescriptor.CPPTYPE_UINT32, descriptor.FieldDescriptor.CPPTYPE_UINT64)
    try:
        if kind == descriptor.FieldDescriptor.CPPTYPE_STRING:
            return text.encode("utf-8") if field.type == descriptor.FieldDescriptor.TYPE_BYTES else text
        if kind == descriptor.FieldDescriptor.CPPTYPE_BOOL:
            lowered = text.strip().lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
            raise ValueError
        if kind == descriptor.FieldDescriptor.CPPTYPE_ENUM:
            names = {value.name: value.number for value in field.enum_type.values}
            if text.strip() in names:
                return names[text.strip()]
            number = int(text)
            if number not in names.values():
                raise ValueError
            return number
        if kind in (descriptor.FieldDescriptor.CPPTYPE_FLOAT, descriptor.FieldDescriptor.CPPTYPE_DOUBLE):
            return float(text)
        if kind == descriptor.FieldDescriptor.CPPTYPE_MESSAGE:
            raise CaffeCompatError(f"-set {key}: '{field.name}' is a message; name one of its fields")
        value = int(text)
        if unsigned and value < 0:
            raise ValueError
        return value
    except ValueError:
        expected = {
            descriptor.FieldDescriptor.CPPTYPE_BOOL: "true or false",
            descriptor.FieldDescriptor.CPPTYPE_ENUM: "one of "
            + (", ".join(v.name for v in field.enum_type.values) if field.enum_type else ""),
            descriptor.FieldDescriptor.CPPTYPE_FLOAT: "a number",
            descriptor.FieldDescriptor.CPPTYPE_DOUBLE: "a number",
        }.get(kind, "a non-negative integer" if unsigned else "an integer")
        raise CaffeCompatError(
            f"-set {key}: {text!r} is not a valid value for '{field.name}' ({expected})"
        ) from None


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    checker = getattr(field, "is_repeated", None)
    if checker is not None:
        return checker() if callable(checker) else bool(checker)
    return field.label == descriptor.FieldDescriptor.LABEL_REPEATED


def _field(message: Message, name: str, key: str) -> descriptor.FieldDescriptor:
    fields = message.DESCRIPTOR.fields_by_name
    if name not in fields:
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CaffeCompatError(f"-set {key}: {message.DESCRIPTOR.name} has no field '{name}'{hint}")
    return fields[name]


def _set_field(layer: caffe_pb2.LayerParameter, path: str, value: str, key: str) -> None:
    message = layer
    parts = path.split(".")
    for depth, part in enumerate(parts):
        match = _INDEXED.match(part)
        name, index = (match.group(1), int(match.group(2))) if match else (part, None)
        field = _field(message, name, key)
        last = depth == len(parts) - 1
        repeated = _is_repeated(field)
        if field.cpp_type == descriptor.FieldDescriptor.CPPTYPE_MESSAGE:
            if last:
                raise CaffeCompatError(f"-set {key}: '{name}' is a message; name one of its fields")
            if repeated:
                container = getattr(message, name)
                if index is None:
                    raise CaffeCompatError(f"-set {key}: '{name}' is repeated: pick one with {name}[i]")
                if index > len(container):
                    raise CaffeCompatError(
                        f"-set {key}: '{name}' has {len(container)} entries; {name}[{index}] does not exist"
                    )
                message = container[index] if index < len(container) else container.add()
            else:
                if index is not None:
                    raise CaffeCompatError(f"-set {key}: '{name}' is not repeated")
                message = getattr(message, name)
            continue
        if not last:
            raise CaffeCompatError(f"-set {key}: '{name}' is a value, it has no field '{parts[depth + 1]}'")
        if repeated:
            values = [_parse_scalar(field, item, key) for item in value.split(",")] if value else []
            container = getattr(message, name)
            if index is not None:
                if index >= len(container) or len(values) != 1:
                    raise CaffeCompatError(
                        f"-set {key}: '{name}' has {len(container)} values; cannot set [{index}]"
                    )
                container[index] = values[0]
            else:
                del container[:]
                container.extend(values)
        else:
            if index is not None:
                raise CaffeCompatError(f"-set {key}: '{name}' is not repeated")
            setattr(message, name, _parse_scalar(field, value, key))


def _apply_set(net: caffe_pb2.NetParameter, assignment: str, phase: int | None) -> None:
    key, equals, value = assignment.partition("=")
    key = key.strip()
    if not equals or not key:
        raise CaffeCompatError(f"-set takes [PHASE:]layer.field=value, got {assignment!r}")
    qualifier = None
    head, colon, rest = key.partition(":")
    if colon and head.upper() in _PHASES:
        qualifier, key = _PHASES[head.upper()], rest
    names = {layer.name for layer in net.layer}
    owners = sorted((n for n in names if key.startswith(n + ".")), key=len, reverse=True)
    if not owners:
        layer_name = key.split(".", 1)[0]
        close = difflib.get_close_matches(layer_name, sorted(names), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CaffeCompatError(
            f"-set {assignment}: no layer named '{layer_name}'{hint}; keys are [TRAIN:|TEST:]layer.field.path"
        )
    layer_name = owners[0]
    path = key[len(layer_name) + 1 :]
    wanted = qualifier if qualifier is not None else phase
    candidates = [layer for layer in net.layer if layer.name == layer_name]
    if wanted is not None:
        candidates = [layer for layer in candidates if _in_phase(layer, wanted)]
    if not candidates:
        phase_name = "TRAIN" if wanted == caffe_pb2.TRAIN else "TEST"
        raise CaffeCompatError(f"-set {assignment}: no layer '{layer_name}' is in the {phase_name} phase")
    if len(candidates) > 1:
        raise CaffeCompatError(
            f"-set {assignment}: {len(candidates)} layers are named '{layer_name}'; qualify the key with the "
            f"phase, e.g. TRAIN:{key}=... or TEST:{key}=..."
        )
    _set_field(candidates[0], path, value, assignment)


def apply_overrides(
    net_param: caffe_pb2.NetParameter,
    sets: Sequence[str] = (),
    data_root: str | None = None,
    phase: str | int | None = None,
) -> caffe_pb2.NetParameter:
    """A copy of ``net_param`` with ``--data-root`` and ``-set`` overrides applied (see the module
    docstring); ``net_param`` itself is not changed."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    if isinstance(phase, str):
        if phase.upper() not in _PHASES:
            raise CaffeCompatError(f"phase must be TRAIN or TEST, got {phase!r}")
        phase = _PHASES[phase.upper()]
    if data_root:
        _apply_data_root(net, data_root)
    for assignment in sets:
        _apply_set(net, assignment, phase)
    return net


def net_transform(
    sets: Sequence[str] = (), data_root: str | None = None
) -> Callable[[caffe_pb2.NetParameter, int], caffe_pb2.NetParameter] | None:
    """A ``(net_param, phase) -> net_param`` function applying the overrides to each net a solver
    or tool reads, before the net is filtered for its phase: keys are resolved against the whole
    prototxt, so a key naming layers of both phases must be qualified (the AM-Softmax ``data``
    layers). None when nothing is set."""
    if not sets and not data_root:
        return None
    sets = list(sets)

    def transform(net_param: caffe_pb2.NetParameter, phase: int) -> caffe_pb2.NetParameter:
        return apply_overrides(net_param, sets, data_root)

    return transform


def is_windows_path(path: str) -> bool:
    """A Windows drive or UNC path (``C:/data``, ``C:\\data``, ``\\\\server\\share``)."""
    return _WINDOWS_PATH.match(path) is not None


def _exists(path: str, net_dir: Path | None) -> bool:
    """Whether ``path`` exists as the data layers resolve it (working directory, then the net's
    folder). A symbolic link counts as present even when broken or looping: the layer's reader
    then says exactly what is wrong with it."""

    def present(candidate: Path) -> bool:
        return candidate.exists() or candidate.is_symlink()

    candidate = Path(path)
    if present(candidate):
        return True
    return not candidate.is_absolute() and net_dir is not None and present(net_dir / candidate)


def _line_of(text: str | None, value: str) -> int | None:
    """The 1-based line of the prototxt text where ``value`` is written in quotes."""
    if not text:
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if f'"{value}"' in line or f"'{value}'" in line:
            return number
    return None


def _folder_of(path: str) -> str:
    """The folder part of a path written with / or \\ (the data set's root, for --data-root)."""
    normalized = _normalized(path).rstrip("/")
    head, _, _ = normalized.rpartition("/")
    return head or normalized


def check_data_paths(
    net_param: caffe_pb2.NetParameter,
    layers: Sequence[caffe_pb2.LayerParameter],
    net_file: str | os.PathLike | None = None,
    command: str = "caffe-compat train -solver SOLVER",
    phase_name: str = "",
) -> None:
    """Refuse data layers naming a file that does not exist, with the command line that fixes it.

    Args:
        net_param: the net as it will be built (overrides applied).
        layers: the layers of ``net_param`` that will be built (after FilterNet).
        net_file: the prototxt the net was read from (relative paths; named with the line when
            the path is written in it).
        command: the user's command line, shown with the ``--data-root``/``-set`` option added.
        phase_name: ``TRAIN``/``TEST``, for the ``-set`` key the message suggests.

    Raises:
        CaffeCompatError: one line naming the file, line, layer, field and path, and the fix.
    """
    path = Path(net_file) if net_file is not None else None
    net_dir = path.resolve().parent if path is not None else None
    try:
        text = path.read_text(encoding="utf-8", errors="replace") if path is not None else None
    except OSError:
        text = None
    names = [layer.name for layer in net_param.layer]
    for layer in layers:
        for param_name, fields in _MUST_EXIST.items():
            if not layer.HasField(param_name):
                continue
            param = getattr(layer, param_name)
            for field_name in fields:
                value = getattr(param, field_name) if param.HasField(field_name) else ""
                if not value or _exists(value, net_dir):
                    continue
                line = _line_of(text, value)
                where = f"{path}:{line}: " if line else ""
                what = f"{where}layer '{layer.name}' ({layer.type}"
                what += f", {phase_name})" if phase_name else ")"
                qualifier = f"{phase_name}:" if phase_name and names.count(layer.name) > 1 else ""
                key = f"{qualifier}{layer.name}.{param_name}.{field_name}"
                if is_windows_path(value) and os.name != "nt":
                    old = _folder_of(value)
                    new = f"/path/to/{old.rsplit('/', 1)[-1] or 'data'}"
                    raise CaffeCompatError(
                        f"{what}: {param_name}.{field_name} is '{value}', a Windows path written in the "
                        f"original config, and it does not exist here; map it to your copy of the data "
                        f"without editing the file: {command} --data-root {old}={new}"
                    )
                raise CaffeCompatError(
                    f"{what}: {param_name}.{field_name} '{value}' does not exist; point it at your data "
                    f"with --data-root OLD=NEW (replaces a path prefix) or -set {key}=PATH, e.g. "
                    f"{command} -set {key}=/path/to/{Path(_normalized(value)).name}"
                )
