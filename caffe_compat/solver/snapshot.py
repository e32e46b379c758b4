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

Everything is written atomically (a temporary file in the same folder, flushed to disk, then a
rename), and a snapshot set in this order: the caffemodel, the side file, the solverstate last. A
process killed at any moment therefore leaves every earlier set intact, and a solverstate present
means its set is complete (``latest_snapshot`` finds the newest complete set of a prefix).

What a SolverState has no place for goes into a side file ``<prefix>_iter_<iter>.caffe_compat.pt``
(``torch.save``): module buffers that are not Caffe blobs (layer counters such as SphereFace's
iteration), each data layer's read cursor, the torch RNG states and the smoothed-loss window, so
that resuming from our own snapshot continues the very same trajectory. It holds tensors and
plain values only and is read with ``torch.load(weights_only=True)``, its layout checked
(``check_side_content``): a crafted file cannot run code, and a malformed one is a one-line error.

Sizes the files declare (HDF5 datasets, the side file's archive members) are checked against the
memory budget (``caffe_compat.net.budget``) before they are read.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError, SolverError, summary_line
from caffe_compat.net.budget import check_bytes
from caffe_compat.net.net import Net
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import (
    array_to_blob,
    atomic_output,
    blob_to_array,
    check_zip_members,
    checked_file,
    read_solverstate,
    write_bytes_atomic,
    write_solverstate,
)

SIDE_SUFFIX = ".caffe_compat.pt"
SIDE_VERSION = 1
#: What a solverstate's ``learned_net`` may name (Caffe's snapshot weights).
LEARNED_NET_SUFFIXES = (".caffemodel", ".caffemodel.h5")


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
    dataset = handle[name]
    if not hasattr(dataset, "shape") or dataset.dtype.kind not in "iu" or dataset.size != 1:
        raise SolverError(f"{source}: HDF5 solverstate's '{name}' is not one integer")
    return int(np.asarray(dataset[()]).reshape(-1)[0])


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


def _h5_array(dataset: object, what: str) -> np.ndarray:
    """A numeric HDF5 dataset's values as float32, its declared size checked first."""
    kind = getattr(getattr(dataset, "dtype", None), "kind", "")
    if not hasattr(dataset, "shape") or kind not in "fiu" or not kind:
        raise CaffeCompatError(f"{what}: is not a numeric dataset")
    check_bytes(int(dataset.size) * (dataset.dtype.itemsize + 4), f"{what} (shape {list(dataset.shape)})")
    return np.asarray(dataset[()], dtype=np.float32)


def read_hdf5_weights(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Read a ``.caffemodel.h5`` (``data/<layer>/<i>``) as a NetParameter holding the blobs."""
    import h5py

    checked_file(path, "HDF5 weights")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise CaffeCompatError(f"cannot open HDF5 weights {path}: {exc}") from None
    net = caffe_pb2.NetParameter()
    with handle:
        if "data" not in handle:
            raise CaffeCompatError(f"{path}: not a Caffe HDF5 net (no 'data' group)")
        for layer_name, group in handle["data"].items():
            if not hasattr(group, "keys"):
                raise CaffeCompatError(f"{path}: 'data/{layer_name}' is not a group of blobs")
            layer = net.layer.add(name=layer_name)
            indices = sorted(int(k) for k in group.keys() if k.isdigit())
            if indices != list(range(len(indices))):
                raise CaffeCompatError(f"{path}: layer '{layer_name}' has blobs {indices}, expected 0..n-1")
            for index in indices:
                values = _h5_array(group[str(index)], f"{path}: layer '{layer_name}' blob {index}")
                layer.blobs.append(array_to_blob(values))
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

        checked_file(path, "solverstate")
        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise CaffeCompatError(f"cannot open HDF5 solverstate {path}: {exc}") from None
        with handle:
            iteration = _h5_int(handle, "iter", source)
            current_step = _h5_int(handle, "current_step", source) if "current_step" in handle else 0
            learned_net = ""
            if "learned_net" in handle:
                dataset = handle["learned_net"]
                if not hasattr(dataset, "shape") or dataset.dtype.kind not in "SUO" or dataset.size != 1:
                    raise SolverError(f"{source}: HDF5 solverstate's 'learned_net' is not one string")
                raw = np.asarray(dataset[()]).reshape(-1)[0]
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                learned_net = text.rstrip("\0")
            if "history" not in handle:
                raise SolverError(f"{source}: HDF5 solverstate has no 'history' group")
            group = handle["history"]
            if not hasattr(group, "keys"):
                raise SolverError(f"{source}: 'history' is not a group of datasets")
            history = []
            for i in range(len(group)):
                if str(i) not in group:
                    raise SolverError(f"{source}: HDF5 solverstate's history has no dataset '{i}'")
                history.append(_h5_array(group[str(i)], f"{source}: history blob {i}"))
        return _checked_state(SolverStateData(iteration, learned_net, current_step, history), source)
    proto = read_solverstate(path)
    if isinstance(proto.learned_net, bytes):  # protobuf hands back a string that is not UTF-8 as bytes
        raise SolverError(f"{source}: learned_net is not UTF-8 text: {proto.learned_net[:80]!r}")
    history = [blob_to_array(blob, f"{source}: history blob {i}") for i, blob in enumerate(proto.history)]
    return _checked_state(SolverStateData(proto.iter, proto.learned_net, proto.current_step, history), source)


def _checked_state(state: SolverStateData, source: str) -> SolverStateData:
    if state.iter < 0:
        raise SolverError(f"{source}: iteration {state.iter} is negative")
    if state.current_step < 0:
        raise SolverError(f"{source}: current_step {state.current_step} is negative")
    if state.learned_net and not state.learned_net.endswith(LEARNED_NET_SUFFIXES):
        raise SolverError(
            f"{source}: learned_net '{state.learned_net}' is not a snapshot's weights file (Caffe writes "
            "<prefix>_iter_<N>.caffemodel or .caffemodel.h5); refusing to read it"
        )
    return state


def learned_net_path(state_path: str | os.PathLike, learned_net: str) -> Path:
    """Where a solverstate's ``learned_net`` is. Caffe reads the name relative to the working
    directory, but writes it next to the solverstate (both names come from one prefix), so the
    caffemodel of that name beside the solverstate comes first; then the name as written
    (relative to the working directory, then to the solverstate's folder); the name as written if
    none exists."""
    given = Path(learned_net)
    if given.is_absolute():
        return given
    folder = Path(state_path).resolve().parent
    for candidate in (folder / given.name, given, folder / given):
        if candidate.exists():
            return candidate
    return given


def latest_snapshot(prefix: str | os.PathLike) -> Path | None:
    """The solverstate of the newest complete snapshot set of ``prefix`` (None if there is none).

    A set is complete when its solverstate reads and the weights it names (``learned_net``) are a
    file beside it (or at its absolute path); a side file present must belong to the same
    iteration. Sets are written solverstate last, so a run killed while snapshotting leaves an
    incomplete set that is skipped here.
    """
    prefix = Path(prefix)
    folder = prefix.parent if str(prefix.parent) else Path(".")
    pattern = re.compile(re.escape(prefix.name) + r"_iter_(\d+)\.solverstate(\.h5)?$")
    found = []
    if folder.is_dir():
        for candidate in folder.iterdir():
            match = pattern.match(candidate.name)
            if match:
                found.append((int(match.group(1)), candidate))
    for _, candidate in sorted(found, key=lambda item: item[0], reverse=True):
        try:
            state = read_state(candidate)
            if state.learned_net:  # a set's caffemodel lies beside its solverstate
                learned = Path(state.learned_net)
                if not learned.is_absolute():
                    learned = candidate.parent / learned.name
                checked_file(learned, "caffemodel")
            side = side_file_for(candidate)
            if side.exists() and read_side_file(side)["iter"] != state.iter:
                continue
        except CaffeCompatError:
            continue
        return candidate
    return None


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
        try:
            layer.load_data_state(state)
        except CaffeCompatError as exc:
            raise SolverError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise SolverError(
                f"{source}: the cursor of data layer '{name}' does not fit the layer "
                f"({type(exc).__name__}: {summary_line(exc)})"
            ) from None


def write_side_file(path: str | os.PathLike, content: dict) -> None:
    """``torch.save`` into a buffer, then an atomic write."""
    content = {"version": SIDE_VERSION, **content}
    check_side_content(content, str(path))
    buffer = io.BytesIO()
    torch.save(content, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _is_plain(value: object, depth: int = 0) -> bool:
    """None, bool, int, float, str, a tensor, or lists/tuples/dicts (string keys) of them."""
    if depth > 16:
        return False
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def check_side_content(content: object, source: str) -> dict:
    """Check a side file's layout: tensors and plain values only, in the places the solver reads."""

    def bad(what: str) -> SolverError:
        return SolverError(f"{source}: not a valid caffe-compat side file: {what}")

    if not isinstance(content, dict):
        raise bad(f"it holds a {type(content).__name__}, not a dict")
    if content.get("version") != SIDE_VERSION:
        raise SolverError(f"{source}: not a caffe-compat side file of version {SIDE_VERSION}")
    missing = [key for key in ("iter", "layers", "data", "rng", "losses") if key not in content]
    if missing:
        raise bad(f"it lacks {missing}")
    if not _is_plain(content):
        raise bad("it holds values other than tensors, numbers, strings, lists and dicts")
    if not isinstance(content["iter"], int) or isinstance(content["iter"], bool) or content["iter"] < 0:
        raise bad(f"'iter' is {content['iter']!r}, not an iteration number")
    for key in ("layers", "data"):
        nets = content[key]
        if not isinstance(nets, dict) or not all(isinstance(v, dict) for v in nets.values()):
            raise bad(f"'{key}' is not a dict of nets")
        for net_name, layers in nets.items():
            for layer_name, values in layers.items():
                if not isinstance(values, dict):
                    raise bad(f"'{key}' of net '{net_name}', layer '{layer_name}' is not a dict")
                if key == "layers" and not all(isinstance(v, torch.Tensor) for v in values.values()):
                    raise bad(f"the state of layer '{layer_name}' of net '{net_name}' is not all tensors")
    rng = content["rng"]
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        raise bad("'rng' lacks the torch generator state")
    if rng["torch"].dtype != torch.uint8 or rng["torch"].dim() != 1:
        state = rng["torch"]
        raise bad(f"the torch generator state is a {state.dtype} tensor of shape {list(state.shape)}")
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, (list, tuple)) or not all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda
    ):
        raise bad("the CUDA generator states are not byte tensors")
    losses = content["losses"]
    if (
        not isinstance(losses, dict)
        or not isinstance(losses.get("values"), list)
        or not all(isinstance(v, (int, float)) for v in losses["values"])
        or not isinstance(losses.get("smoothed"), (int, float))
        or not isinstance(losses.get("start_iter"), int)
    ):
        raise bad("'losses' is not {values: [numbers], smoothed: number, start_iter: int}")
    return content


def read_side_file(path: str | os.PathLike) -> dict:
    """Read a side file: tensors and plain values only (``weights_only``), layout checked."""
    checked_file(path, "side file")
    try:
        check_zip_members(path, "a caffe-compat side file")
    except CaffeCompatError as exc:
        raise SolverError(str(exc)) from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SolverError(
            f"{path}: refusing to load the side file: it holds more than tensors and plain values "
            f"({summary_line(exc)})"
        ) from None
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds for corrupt archives)
        raise SolverError(f"{path}: cannot read the caffe-compat side file: {summary_line(exc)}") from None
    return check_side_content(content, str(path))
