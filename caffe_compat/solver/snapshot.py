"""Snapshot files: Caffe's ``.caffemodel``/``.solverstate`` (binary or HDF5) and our side file.

Rules followed (solver.cpp ``Snapshot``/``SnapshotFilename``, sgd_solver.cpp
``SnapshotSolverStateTo*``/``RestoreSolverStateFrom*``, net.cpp ``ToHDF5``/``CopyTrainedLayersFromHDF5``):

- names are ``<prefix>_iter_<iter>.caffemodel`` and ``.solverstate`` (HDF5: ``.caffemodel.h5`` and
  ``.solverstate.h5``);
- a SolverState holds ``iter``, ``learned_net`` (the caffemodel's name as written), ``current_step``
  and one history blob per learnable blob in ``learnable_params_`` order, then the second set of
  AdaDelta/Adam;
- the HDF5 solverstate holds ``iter``/``current_step`` (1-element int32), ``learned_net`` (a
  nul-terminated string) and a group ``history`` with datasets ``0``, ``1``, ...; the HDF5 net holds
  ``data/<layer>/<i>`` for each blob the layer owns (``diff/<layer>/<i>`` with ``snapshot_diff``).

Everything is written atomically (a temporary file in the same folder, then a rename).

What a SolverState has no place for goes into a side file ``<prefix>_iter_<iter>.caffe_compat.pt``
(``torch.save``): module buffers that are not Caffe blobs (layer counters such as SphereFace's
iteration), each data layer's read cursor, the torch RNG states and the smoothed-loss window, so
that resuming from our own snapshot continues the very same trajectory.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError, SolverError
from caffe_compat.net.net import Net
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import (
    array_to_blob,
    atomic_output,
    blob_to_array,
    read_solverstate,
    write_bytes_atomic,
    write_solverstate,
)

SIDE_SUFFIX = ".caffe_compat.pt"
SIDE_VERSION = 1


@dataclass
class SolverStateData:
    """A solverstate's content, whatever its format."""

    iter: int
    learned_net: str
    current_step: int
    history: list[np.ndarray] = field(default_factory=list)


def snapshot_filename(prefix: str, iteration: int, extension: str) -> str:
    """Caffe's ``SnapshotFilename``: ``<prefix>_iter_<iter><extension>``."""
    return f"{prefix}_iter_{iteration}{extension}"


def side_file_for(state_path: str | os.PathLike) -> Path:
    """The side file that goes with a solverstate (``x.solverstate[.h5]`` -> ``x.caffe_compat.pt``)."""
    path = Path(state_path)
    name = path.name
    for suffix in (".solverstate.h5", ".solverstate"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + SIDE_SUFFIX)
    return path.with_name(name + SIDE_SUFFIX)


# --------------------------------------------------------------------------------------------
# atomic HDF5


def _write_h5_atomic(path: str | os.PathLike, fill: Callable[[object], None]) -> None:
    import h5py

    with atomic_output(path) as tmp, h5py.File(tmp, "w") as handle:
        fill(handle)


def _h5_string(text: str) -> np.ndarray:
    raw = text.encode("utf-8") + b"\0"
    return np.array(raw, dtype=f"S{len(raw)}")


def _h5_int(handle: object, name: str, source: str) -> int:
    if name not in handle:
        raise SolverError(f"{source}: HDF5 solverstate has no '{name}' dataset")
    return int(np.asarray(handle[name][()]).reshape(-1)[0])


# --------------------------------------------------------------------------------------------
# weights


def _owned_blobs(net: Net) -> dict[str, list[tuple[int, torch.Tensor]]]:
    shared = {(e.layer, e.index) for e in net.param_entries if e.owner is not None}
    return {
        name: [(i, t) for i, t in enumerate(tensors) if (name, i) not in shared]
        for name, tensors in net.params.items()
    }


def write_net_snapshot(
    net: Net, path: str | os.PathLike, hdf5: bool = False, write_diff: bool = False
) -> None:
    """Write the net's blobs as Caffe does (``Net::ToProto`` or ``Net::ToHDF5``), atomically."""
    if not hdf5:
        proto = net.to_proto()
        if write_diff:
            for layer in proto.layer:
                for blob, tensor in zip(
                    layer.blobs, net.layers[layer.name].caffe_blob_tensors(), strict=True
                ):
                    grad = tensor.grad if isinstance(tensor, torch.nn.Parameter) else None
                    values = (
                        np.zeros(tensor.shape, np.float32) if grad is None else grad.detach().cpu().numpy()
                    )
                    blob.diff.extend(values.astype(np.float32).reshape(-1).tolist())
        write_bytes_atomic(path, proto.SerializeToString())
        return

    owned = _owned_blobs(net)

    def fill(handle: object) -> None:
        data = handle.create_group("data")
        diff = handle.create_group("diff") if write_diff else None
        for name, tensors in net.params.items():
            group = data.create_group(name)
            diff_group = diff.create_group(name) if diff is not None else None
            for index, tensor in owned[name]:
                group.create_dataset(str(index), data=tensor.detach().cpu().to(torch.float32).numpy())
            if diff_group is not None:
                for index, tensor in enumerate(tensors):
                    grad = tensor.grad if isinstance(tensor, torch.nn.Parameter) else None
                    values = torch.zeros_like(tensor) if grad is None else grad
                    diff_group.create_dataset(
                        str(index), data=values.detach().cpu().to(torch.float32).numpy()
                    )

    _write_h5_atomic(path, fill)


def read_hdf5_weights(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Read a ``.caffemodel.h5`` (``data/<layer>/<i>``) as a NetParameter holding the blobs."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise CaffeCompatError(f"cannot open HDF5 weights {path}: {exc}") from None
    net = caffe_pb2.NetParameter()
    with handle:
        if "data" not in handle:
            raise CaffeCompatError(f"{path}: not a Caffe HDF5 net (no 'data' group)")
        for layer_name, group in handle["data"].items():
            layer = net.layer.add(name=layer_name)
            indices = sorted(int(k) for k in group.keys() if k.isdigit())
            if indices != list(range(len(indices))):
                raise CaffeCompatError(f"{path}: layer '{layer_name}' has blobs {indices}, expected 0..n-1")
            for index in indices:
                layer.blobs.append(array_to_blob(np.asarray(group[str(index)][()], dtype=np.float32)))
    return net


def load_weights(net: Net, path: str | os.PathLike) -> list[str]:
    """Copy weights into a net from a ``.caffemodel`` or a ``.caffemodel.h5`` (by file name, as
    Caffe's ``CopyTrainedLayersFrom`` chooses)."""
    if str(path).endswith(".h5"):
        return net.copy_from(read_hdf5_weights(path))
    return net.copy_from(path)


# --------------------------------------------------------------------------------------------
# solver state


def write_state(
    path: str | os.PathLike,
    state: SolverStateData,
    hdf5: bool = False,
) -> None:
    """Write a solverstate (binary SolverState or Caffe's HDF5 layout), atomically."""
    if not hdf5:
        proto = caffe_pb2.SolverState(
            iter=state.iter, learned_net=state.learned_net, current_step=state.current_step
        )
        for array in state.history:
            array_to_blob(np.asarray(array, dtype=np.float32), proto.history.add())
        write_solverstate(proto, path)
        return

    def fill(handle: object) -> None:
        handle.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
        handle.create_dataset("learned_net", data=_h5_string(state.learned_net))
        handle.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
        group = handle.create_group("history")
        for index, array in enumerate(state.history):
            group.create_dataset(str(index), data=np.asarray(array, dtype=np.float32))

    _write_h5_atomic(path, fill)


def read_state(path: str | os.PathLike) -> SolverStateData:
    """Read a solverstate; a name ending in ``.h5`` is read as HDF5 (Caffe's ``Restore``)."""
    source = str(path)
    if source.endswith(".h5"):
        import h5py

        if not Path(path).is_file():
            raise CaffeCompatError(f"solverstate file not found: {path}")
        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise CaffeCompatError(f"cannot open HDF5 solverstate {path}: {exc}") from None
        with handle:
            iteration = _h5_int(handle, "iter", source)
            current_step = _h5_int(handle, "current_step", source) if "current_step" in handle else 0
            learned_net = ""
            if "learned_net" in handle:
                raw = np.asarray(handle["learned_net"][()]).reshape(-1)[0]
                learned_net = (raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)).rstrip("\0")
            if "history" not in handle:
                raise SolverError(f"{source}: HDF5 solverstate has no 'history' group")
            group = handle["history"]
            history = [np.asarray(group[str(i)][()], dtype=np.float32) for i in range(len(group))]
        return SolverStateData(iteration, learned_net, current_step, history)
    proto = read_solverstate(path)
    history = [blob_to_array(blob, f"{source}: history blob {i}") for i, blob in enumerate(proto.history)]
    return SolverStateData(proto.iter, proto.learned_net, proto.current_step, history)


# --------------------------------------------------------------------------------------------
# side file


def layer_extra_state(net: Net) -> dict[str, dict[str, torch.Tensor]]:
    """Module buffers and parameters that are not Caffe blobs (counters), per layer."""
    result: dict[str, dict[str, torch.Tensor]] = {}
    for name, module in net.layers.items():
        blob_ids = {id(t) for t in module.caffe_blob_tensors()}
        extra = {
            key: value.detach().cpu().clone()
            for key, value in [*module.named_parameters(), *module.named_buffers()]
            if id(value) not in blob_ids
        }
        if extra:
            result[name] = extra
    return result


def load_layer_extra_state(net: Net, state: dict[str, dict[str, torch.Tensor]], source: str) -> None:
    """Put saved counters back (``layer_extra_state``'s inverse)."""
    for layer_name, values in state.items():
        module = net.layers.get(layer_name)
        if module is None:
            raise SolverError(
                f"{source}: the side file has state for layer '{layer_name}' which the net lacks"
            )
        own = dict([*module.named_parameters(), *module.named_buffers()])
        for key, value in values.items():
            if key not in own or own[key].shape != value.shape:
                raise SolverError(
                    f"{source}: layer '{layer_name}' has no state '{key}' of shape {list(value.shape)}"
                )
            with torch.no_grad():
                own[key].copy_(value.to(own[key].device))


def data_states(net: Net) -> dict[str, dict]:
    """Each data layer's read cursor (``data_state()``)."""
    states = {}
    for name in net.data_layer_names:
        layer = net.layers[name]
        if hasattr(layer, "data_state"):
            states[name] = layer.data_state()
    return states


def load_data_states(net: Net, states: dict[str, dict], source: str) -> None:
    for name, state in states.items():
        layer = net.layers.get(name)
        if layer is None or not hasattr(layer, "load_data_state"):
            raise SolverError(
                f"{source}: the side file has a cursor for data layer '{name}' which the net lacks"
            )
        layer.load_data_state(state)


def write_side_file(path: str | os.PathLike, content: dict) -> None:
    """``torch.save`` into a buffer, then an atomic write."""
    buffer = io.BytesIO()
    torch.save({"version": SIDE_VERSION, **content}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def read_side_file(path: str | os.PathLike) -> dict:
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise SolverError(f"{path}: cannot read the caffe-compat side file: {exc}") from None
    if not isinstance(content, dict) or content.get("version") != SIDE_VERSION:
        raise SolverError(f"{path}: not a caffe-compat side file of version {SIDE_VERSION}")
    return content
