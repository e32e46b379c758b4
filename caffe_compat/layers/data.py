"""Data layers that read no images: ``HDF5Data`` (hdf5_data_layer.cpp) and ``DummyData``
(dummy_data_layer.cpp).

A data layer has no bottoms; its tops are the net's inputs unless the caller feeds them. The
protocol the net and the solver use: ``is_data = True``; ``next_batch()`` returns one float32 CPU
tensor per top, in top order; ``top_shapes()`` gives the declared shapes; ``data_state()`` /
``load_data_state()`` snapshot and restore the read cursor (independent of ``state_dict``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError, LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.net.budget import check_bytes
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import checked_file

if TYPE_CHECKING:
    import h5py

_KNOWN_FILLERS = ("constant", "uniform", "gaussian", "xavier", "msra", "positive_unitball", "bilinear")


def _resolve(path: str | Path, net_dir: Path | None) -> Path:
    """A path as ``BuildContext.resolve_path`` resolves it (working directory first, then the
    prototxt's folder), made absolute when found so a later ``chdir`` does not change it."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    if candidate.exists():
        return candidate.absolute()
    if net_dir is not None and (net_dir / candidate).exists():
        return (net_dir / candidate).absolute()
    return candidate


def _shapes_hint(tops: list[str]) -> str:
    example = ", ".join(f"'{top}': (N, ...)" for top in tops)
    return f"give input_shapes={{{example}}} to build the net without reading it"


@register("HDF5Data")
class HDF5Data(CaffeLayer):
    """Rows of HDF5 files listed in ``hdf5_data_param.source`` (hdf5_data_layer.cpp).

    The source lists ``.h5`` files (whitespace-separated, as Caffe's ``>>`` reads them); each top
    reads the dataset of the same name; float and integer datasets are converted to float32. A
    batch takes ``batch_size`` consecutive rows; at the end of a file the next listed file is
    loaded, and after the last file the list starts over (with one file, its rows start over), so
    batches wrap around exactly as Caffe's ``Next()`` does. Relative paths (the list, and the
    files it names) resolve against the working directory, then against the prototxt's folder.

    ``shuffle: true`` permutes the file order at set-up and at each pass over the list, and the
    rows at each file load and each end of a file, at the same points as Caffe; the permutations
    come from a ``torch.Generator`` seeded with ``seed`` (drawn from torch's global generator at
    first use when None), not from Caffe's ``std::random_shuffle``.

    Nothing is read when the net is built except the first file's dataset shapes (only when
    ``input_shapes`` does not give the tops' shapes); the files are loaded on the first
    ``next_batch()``. Caffe's multi-GPU row skipping (``Skip()``) is not reproduced (one solver).
    """

    family = "data"

    is_data = True
    example = """
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param { source: "train_h5_list.txt" batch_size: 2 } }
"""
    example_input_shapes = {"data": (2, 3, 5, 7), "label": (2,)}

    def __init__(
        self,
        source: str | Path,
        batch_size: int,
        tops: list[str],
        shuffle: bool = False,
        net_dir: Path | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.source = source if isinstance(source, Path) else Path(source)
        self.batch_size = int(batch_size)
        self.tops = list(tops)
        self.shuffle = bool(shuffle)
        self.net_dir = net_dir
        self.seed = seed
        self._declared: list[Shape] | None = None
        self._files: list[str] | None = None
        self._generator: torch.Generator | None = None
        self._file_order: list[int] = []
        self._file_index = 0
        self._row_index = 0
        self._row_order: torch.Tensor | None = None
        self._rows: list[torch.Tensor] = []
        self._loaded: int | None = None  # index into _files of the file held in _rows

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> HDF5Data:
        ctx.check_bottoms(0)
        if not layer.top:
            raise ctx.error("needs at least one top")
        if layer.HasField("transform_param"):
            raise ctx.error("HDF5Data does not transform data: remove transform_param")
        param = layer.hdf5_data_param
        if not param.source:
            raise ctx.error("hdf5_data_param.source (a text file listing .h5 files) is missing")
        if param.batch_size <= 0:
            raise ctx.error("hdf5_data_param.batch_size must be a positive number")
        source = _resolve(ctx.resolve_path(param.source), ctx.net_dir)
        return cls(source, param.batch_size, list(layer.top), param.shuffle, ctx.net_dir)

    # -- errors and files ----------------------------------------------------------------------
    def _error(self, message: str) -> LayerError:
        return LayerError(f"layer '{self.caffe_name}' (HDF5Data): {message}")

    def _read_list(self, hint: str = "") -> list[str]:
        if self._files is None:
            path = _resolve(self.source, self.net_dir)
            try:
                if path.exists():
                    checked_file(path, "HDF5 source list")
                names = path.read_text().split()
            except CaffeCompatError as exc:
                raise self._error(str(exc)) from None
            except UnicodeDecodeError:
                raise self._error(
                    f"the source list '{self.source}' is not text (it should list .h5 files, one a line)"
                ) from None
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise self._error(
                    f"cannot read the source list '{self.source}' ({reason}){'; ' + hint if hint else ''}"
                ) from None
            if not names:
                raise self._error(f"the source list '{self.source}' names no HDF5 file")
            self._files = names
        return self._files

    def _open(self, index: int, hint: str = "") -> h5py.File:
        import h5py

        name = self._files[index]
        path = _resolve(name, self.net_dir)
        try:
            if path.exists():
                checked_file(path, "HDF5 file")
            return h5py.File(path, "r")
        except CaffeCompatError as exc:
            raise self._error(f"{exc} (line {index + 1} of {self.source})") from None
        except OSError as exc:
            where = f"'{name}' (line {index + 1} of {self.source})"
            raise self._error(f"cannot open HDF5 file {where}: {exc}{'; ' + hint if hint else ''}") from None

    def _dataset(self, handle: h5py.File, top: str, index: int) -> h5py.Dataset:
        dataset = handle.get(top)
        if dataset is None or not hasattr(dataset, "shape"):
            raise self._error(
                f"HDF5 file '{self._files[index]}' has no dataset '{top}' "
                "(each top reads the dataset of its name)"
            )
        if dataset.ndim < 1:
            raise self._error(f"dataset '{top}' of '{self._files[index]}' must have at least 1 axis")
        if dataset.dtype.kind not in "fiu":
            raise self._error(
                f"dataset '{top}' of '{self._files[index]}' has unsupported type {dataset.dtype} "
                "(float or integer only)"
            )
        return dataset

    # -- shapes --------------------------------------------------------------------------------
    def top_shapes(self, bottom_shapes: Sequence[Shape] = ()) -> list[Shape]:
        """``(batch_size, *dataset.shape[1:])`` per top, read from the first listed file (shapes
        only, no data), as Caffe's ``LayerSetUp`` sizes the tops."""
        if self._declared is None:
            hint = _shapes_hint(self.tops)
            self._read_list(hint)
            with self._open(0, hint) as handle:
                self._declared = [
                    (self.batch_size, *self._dataset(handle, top, 0).shape[1:]) for top in self.tops
                ]
        return list(self._declared)

    # -- reading -------------------------------------------------------------------------------
    def _permutation(self, size: int) -> torch.Tensor:
        if self._generator is None:
            if self.seed is None:
                self.seed = int(torch.randint(0, 2**62, (1,)).item())
            self._generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(size, generator=self._generator)

    def _load(self, file_index: int, shuffle_rows: bool = True) -> None:
        """Load every top's dataset of one file (``LoadHDF5FileData``) and reset the row order."""
        index = self._file_order[file_index]
        with self._open(index) as handle:
            datasets = [self._dataset(handle, top, index) for top in self.tops]
            needed = sum(d.size * (d.dtype.itemsize + 4) for d in datasets)  # as stored + float32
            try:
                check_bytes(needed, f"HDF5 file '{self._files[index]}': loading its datasets {self.tops}")
            except CaffeCompatError as exc:
                raise self._error(str(exc)) from None
            rows = [torch.from_numpy(np.asarray(d[()], dtype=np.float32)) for d in datasets]
        num = rows[0].shape[0]
        for top, data in zip(self.tops, rows, strict=True):
            if data.shape[0] != num:
                raise self._error(
                    f"datasets of '{self._files[index]}' differ in their number of rows: "
                    f"'{self.tops[0]}' has {num}, '{top}' has {data.shape[0]}"
                )
        if num == 0:
            raise self._error(f"HDF5 file '{self._files[index]}' has no rows")
        if self._declared is not None:
            for top, data, shape in zip(self.tops, rows, self._declared, strict=True):
                if tuple(data.shape[1:]) != tuple(shape[1:]):
                    raise self._error(
                        f"dataset '{top}' of '{self._files[index]}' has rows of shape "
                        f"{list(data.shape[1:])}, the top was set up for {list(shape[1:])}"
                    )
        self._rows = rows
        self._loaded = file_index
        if shuffle_rows:
            self._row_order = self._permutation(num) if self.shuffle else torch.arange(num)

    def _start(self) -> None:
        """Caffe's ``LayerSetUp``: read the list, order the files, load the first one."""
        files = self._read_list()
        self._file_order = self._permutation(len(files)).tolist() if self.shuffle else list(range(len(files)))
        self._file_index = 0
        self._row_index = 0
        self._load(0)

    def _advance(self, count: int) -> None:
        """Move the cursor ``count`` rows on within the current file (Caffe's ``Next()``)."""
        self._row_index += count
        if self._row_index < self._rows[0].shape[0]:
            return
        if len(self._file_order) > 1:
            self._file_index += 1
            if self._file_index == len(self._file_order):
                self._file_index = 0
                if self.shuffle:
                    self._file_order = self._permutation(len(self._file_order)).tolist()
            self._load(self._file_index)
        self._row_index = 0
        if self.shuffle:
            self._row_order = self._permutation(self._rows[0].shape[0])

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The next ``batch_size`` rows of every top (float32, CPU), in Caffe's order."""
        if not self._file_order:
            self._start()
        elif self._loaded != self._file_index:
            self._load(self._file_index, shuffle_rows=False)
            self._check_row_order()
        pieces: list[list[torch.Tensor]] = [[] for _ in self.tops]
        remaining = self.batch_size
        while remaining:
            take = min(remaining, self._rows[0].shape[0] - self._row_index)
            rows = self._row_order[self._row_index : self._row_index + take]
            for piece, data in zip(pieces, self._rows, strict=True):
                piece.append(data.index_select(0, rows))
            remaining -= take
            self._advance(take)
        return tuple(p[0] if len(p) == 1 else torch.cat(p) for p in pieces)

    def _check_row_order(self) -> None:
        num = self._rows[0].shape[0]
        if self._row_order is None or self._row_order.numel() != num or not 0 <= self._row_index < num:
            name = self._files[self._file_order[self._file_index]]
            raise self._error(f"the restored data state does not fit file '{name}' ({num} rows)")

    # -- cursor snapshots ----------------------------------------------------------------------
    def data_state(self) -> dict:
        """The read cursor: ``started``, ``file_index``, ``row_index``, ``file_order``,
        ``row_order``, and for shuffling layers ``seed`` and ``rng_state`` (plain Python values)."""
        started = bool(self._file_order)
        state = {
            "started": started,
            "file_index": self._file_index if started else 0,
            "row_index": self._row_index if started else 0,
            "file_order": list(self._file_order),
            "row_order": self._row_order.tolist() if started and self._row_order is not None else [],
            "seed": self.seed,
            "rng_state": None,
        }
        if self._generator is not None:
            state["rng_state"] = self._generator.get_state().tolist()
        return state

    def load_data_state(self, state: dict) -> None:
        """Restore a cursor saved by ``data_state``; the file it points into is loaded on the next
        ``next_batch()``. A state with ``started: False`` restarts at the first row."""
        missing = {"started", "file_index", "row_index", "file_order", "row_order"} - set(state)
        if missing:
            raise self._error(f"data state lacks {sorted(missing)}")
        self.seed = state.get("seed", self.seed)
        self._generator = None
        if state.get("rng_state") is not None:
            self._generator = torch.Generator()
            self._generator.set_state(torch.tensor(state["rng_state"], dtype=torch.uint8))
        self._rows, self._loaded = [], None
        if not state["started"]:
            self._file_order, self._file_index, self._row_index, self._row_order = [], 0, 0, None
            return
        files = self._read_list()
        order = [int(i) for i in state["file_order"]]
        if sorted(order) != list(range(len(files))) or not 0 <= int(state["file_index"]) < len(files):
            raise self._error(f"the restored data state does not fit the {len(files)} files of {self.source}")
        self._file_order = order
        self._file_index = int(state["file_index"])
        self._row_index = int(state["row_index"])
        self._row_order = torch.tensor([int(i) for i in state["row_order"]], dtype=torch.long)

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"source={os.fspath(self.source)!r}", f"batch_size={self.batch_size}"]
        if self.shuffle:
            parts.append(f"shuffle=True, seed={self.seed}")
        return ", ".join(p for p in parts if p)


@register("DummyData")
class DummyData(CaffeLayer):
    """Tops filled by fillers (dummy_data_layer.cpp): ``shape`` (or the legacy
    ``num``/``channels``/``height``/``width``) once or per top, ``data_filler`` none (constant 0),
    one for all tops, or one per top. A constant filler fills its top once; any other filler
    refills it at every ``next_batch()``, as Caffe's ``refill_`` does. Random numbers come from
    torch's global generator, not Caffe's.
    """

    family = "data"

    is_data = True
    example = """
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } shape { dim: 2 }
                           data_filler { type: "gaussian" std: 0.5 }
                           data_filler { type: "constant" value: 1 } } }
"""

    def __init__(self, shapes: list[Shape], fillers: list[caffe_pb2.FillerParameter]) -> None:
        super().__init__()
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.fillers = [caffe_pb2.FillerParameter() for _ in fillers]
        for mine, given in zip(self.fillers, fillers, strict=True):
            mine.CopyFrom(given)
        self._constants: dict[int, torch.Tensor] = {}

    def _filler(self, top: int) -> caffe_pb2.FillerParameter:
        return self.fillers[top if len(self.fillers) > 1 else 0]

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> DummyData:
        ctx.check_bottoms(0)
        num_tops = len(layer.top)
        if num_tops == 0:
            raise ctx.error("needs at least one top")
        param = layer.dummy_data_param
        if len(param.data_filler) not in (0, 1, num_tops):
            raise ctx.error(
                f"number of data fillers must be 0, 1 or equal to the number of tops ({num_tops}); "
                f"got {len(param.data_filler)}"
            )
        legacy = {name: list(getattr(param, name)) for name in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if param.shape:
                raise ctx.error("both shape and the legacy num/channels/height/width were given")
            for name, values in legacy.items():
                if len(values) not in (1, num_tops):
                    raise ctx.error(
                        f"give '{name}' once, or once per top blob ({num_tops}); got {len(values)}"
                    )
            shapes = [
                tuple(values[0] if len(values) == 1 else values[i] for values in legacy.values())
                for i in range(num_tops)
            ]
        else:
            if len(param.shape) not in (1, num_tops):
                raise ctx.error(
                    f"give 'shape' once, or once per top blob ({num_tops}); got {len(param.shape)}"
                )
            shapes = [tuple(param.shape[0 if len(param.shape) == 1 else i].dim) for i in range(num_tops)]
        fillers = list(param.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0.0)]
        for filler in fillers:
            if filler.type not in _KNOWN_FILLERS:
                raise ctx.error(
                    f"unknown data_filler type '{filler.type}' (known: {', '.join(_KNOWN_FILLERS)})"
                )
        return cls(shapes, fillers)

    def top_shapes(self, bottom_shapes: Sequence[Shape] = ()) -> list[Shape]:
        return list(self.shapes)

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """One tensor per top: constant tops are filled once and reused, others refilled."""
        where = f"layer '{self.caffe_name}' (DummyData)"
        tops = []
        for index, shape in enumerate(self.shapes):
            filler = self._filler(index)
            if filler.type == "constant":
                if index not in self._constants:
                    self._constants[index] = fill(shape, filler, where)
                tops.append(self._constants[index])
            else:
                tops.append(fill(shape, filler, where))
        return tuple(tops)

    def data_state(self) -> dict:
        """DummyData has no cursor: an empty dict."""
        return {}

    def load_data_state(self, state: dict) -> None:
        """Nothing to restore."""
