"""The ``pt`` format: a PyTorch ``state_dict`` of a Net plus the prototxt that rebuilds the Net.

``torch.save(net.state_dict())`` (loadable with ``torch.load(..., weights_only=True)``) is written
with the net definition it belongs to (the filtered NetParameter the Net was built from, as
prototxt text): ``Net(prototxt, phase="TEST")`` followed by ``load_state_dict`` restores the
module. The keys are the Net's module names (Caffe layer names made identifiers) and the blob
names of each layer (``conv1.weight``, ``bn1.mean_sum``), plus the layers' non-Caffe buffers
(iteration counters). ``safetensors`` is the same dict in that format, when the package is
installed. Loading a state dict into a Net lists every key or shape that does not fit.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from caffe_compat.errors import CaffeCompatError, WeightsError, summary_line
from caffe_compat.export.build import net_for_weights
from caffe_compat.export.caffemodel import MAX_LISTED, LoadReport
from caffe_compat.export.errors import ExportError
from caffe_compat.net.net import Net
from caffe_compat.proto.io import check_zip_members, checked_file, format_text

SAFETENSORS_HINT = "the safetensors package is not installed (pip install safetensors); use --to pt"


def _safetensors() -> object:
    try:
        import safetensors.torch
    except ImportError:
        raise ExportError(SAFETENSORS_HINT) from None
    return safetensors.torch


def write(net: Net, weights_path: Path, prototxt_path: Path, kind: str = "pt") -> None:
    """Write the Net's state dict (``kind`` "pt" or "safetensors") and its prototxt."""
    state = {key: value.detach() for key, value in net.state_dict().items()}
    if kind == "safetensors":
        module = _safetensors()
        seen: dict[int, str] = {}
        for key, value in list(state.items()):
            pointer = value.untyped_storage().data_ptr()
            if pointer in seen:  # safetensors refuses shared storage: store shared blobs twice
                state[key] = value.clone()
            seen[pointer] = key
        module.save_file({k: v.contiguous() for k, v in state.items()}, str(weights_path))  # type: ignore[attr-defined]
    else:
        torch.save(state, weights_path)
    prototxt_path.write_text(format_text(net.net_param), encoding="utf-8")


def read(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt`` (memory-mapped, weights only) or ``.safetensors`` file."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise WeightsError(f"weights file not found: {path}")
    checked_file(path, "weights")
    if path.suffix == ".safetensors":
        module = _safetensors()
        try:
            return dict(module.load_file(str(path)))  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001  (safetensors' errors for corrupt headers)
            raise WeightsError(f"{path}: not a safetensors file ({summary_line(exc)})") from None
    try:
        check_zip_members(path, "a PyTorch state dict saved with torch.save")
    except CaffeCompatError as exc:
        raise WeightsError(str(exc)) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refusing to load: it holds more than tensors and plain values ({summary_line(exc)})"
        ) from None
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds for foreign or corrupt files)
        raise WeightsError(
            f"{path}: not a PyTorch state dict saved with torch.save ({summary_line(exc)})"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def blob_keys(net: Net) -> dict[str, tuple[str, int]]:
    """State-dict key -> (Caffe layer, blob index) for every Caffe blob of the net."""
    keys = {}
    for name, layer in net.layers.items():
        attr = net.module_names[name]
        for index, spec in enumerate(layer.present_blob_specs()):
            keys[f"{attr}.{spec.name}"] = (name, index)
    return keys


def load_into(
    net: Net, state: Mapping[str, torch.Tensor], source: str, allow_missing: bool = False
) -> LoadReport:
    """Copy a state dict into the Net, raising one ``WeightsError`` that lists every misfit.

    Caffe blobs the state lacks are errors (unless ``allow_missing``); other buffers (counters)
    are optional; keys the net does not have are reported as ignored (standalone exports' constants
    are silently skipped).
    """
    own = net.state_dict(keep_vars=True)
    blobs = blob_keys(net)
    report = LoadReport()
    problems = []
    for key, (layer, index) in blobs.items():
        if key not in state:
            report.missing.append(f"{layer} (blob {index}, key '{key}')")
    for key, value in state.items():
        if key not in own:
            if not key.startswith("_tensor_constant"):
                report.ignored.append(key)
            continue
        target = own[key]
        if tuple(value.shape) != tuple(target.shape):
            where = f"layer '{blobs[key][0]}' blob {blobs[key][1]}" if key in blobs else "buffer"
            problems.append(
                f"{where} ('{key}'): stored shape {list(value.shape)}, the net's is {list(target.shape)}"
            )
    if report.missing and not allow_missing:
        problems.insert(0, f"the net's blobs {report.missing} have no weights in the file")
    if problems:
        if report.ignored:
            problems.append(f"keys in the file the net does not have: {report.ignored[:MAX_LISTED]}")
        shown = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise WeightsError(
            f"{source}: the weights do not fit the net (are they from a different net?): {shown}{more}"
        )
    with torch.no_grad():
        for key, value in state.items():
            if key in own:
                own[key].copy_(value.to(own[key].dtype))
    return report


def run(
    prototxt_path: Path,
    weights_path: Path,
    inputs: dict[str, torch.Tensor],
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Rebuild the Net from the written prototxt, load the written state dict and run it."""
    net = net_for_weights(prototxt_path, input_shapes)
    load_into(net, read(weights_path), str(weights_path))
    net.keep_blobs = False  # only the outputs are compared
    with torch.no_grad():
        return net(**inputs)
