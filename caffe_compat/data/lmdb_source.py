"""Key-value databases of ``Datum`` records (Caffe's ``src/caffe/util/db_lmdb.cpp`` and
``db_leveldb.cpp``) and the record source of Caffe's ``Data`` layer (``data_layer.cpp``).

Rules followed:
- LMDB: a folder holding ``data.mdb``/``lock.mdb``, one unnamed database, records read in key
  order with a cursor; LevelDB (through the ``plyvel`` package, when installed) likewise;
- the ``Data`` layer reads ``batch_size`` consecutive records per batch and restarts at the first
  record after the last (``Next()``); each batch takes its shape from its first record
  (``InferBlobShape``), and every record is transformed by the DataTransformer (encoded records
  are decoded with OpenCV first: in colour with ``force_color``, grey with ``force_gray``, as
  stored otherwise). This fork's ``Data`` layer has no ``rand_skip`` and no shuffling.
- writing (``convert_imageset``): records are put in transactions of 1,000; the map grows by
  doubling when full, as Caffe's ``LMDBTransaction::Commit`` does.

Deliberate deviations: the database is written into a temporary folder next to ``DB_NAME`` and
renamed when complete, so a failure leaves nothing behind; the record keys are listed once when
the layer starts (so workers read any record by position); Caffe's multi-GPU record skipping is
not reproduced (one solver).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np
import torch

from caffe_compat.data.images import datum_to_array
from caffe_compat.data.transformer import DataTransformer, transform_into_batch
from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2

BACKENDS = ("lmdb", "leveldb")
_INITIAL_MAP_SIZE = 1 << 24
# Handles open in this process, shared by readers of one database (LMDB refuses to open an
# environment twice in a process): (real path, backend, pid) -> [handle, holders].
_OPEN: dict[tuple, list] = {}


def _drop_inherited_handles() -> None:
    """In a forked child: close the LMDB environments inherited from the parent (an environment
    must not cross a fork, and LMDB refuses to open a second one on the same files) so the child
    opens its own. Inherited LevelDB handles are only forgotten (closing one would wait for the
    parent's compaction thread, which the child does not have)."""
    pid = os.getpid()
    for key in [k for k in _OPEN if k[2] != pid]:
        handle, _ = _OPEN.pop(key)
        if key[1] == "lmdb":
            try:
                handle.close()
            except Exception:  # nothing more can be done in the child
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_handles)


def backend_name(backend: int | str) -> str:
    """``"lmdb"``/``"leveldb"`` from a DataParameter enum value or a flag value (any case)."""
    if isinstance(backend, int):
        return "lmdb" if backend == caffe_pb2.DataParameter.LMDB else "leveldb"
    name = backend.lower()
    if name not in BACKENDS:
        raise CaffeCompatError(f"unknown database backend '{backend}' (known: lmdb, leveldb)")
    return name


def _plyvel() -> ModuleType:
    try:
        import plyvel
    except ImportError:
        raise CaffeCompatError(
            "LevelDB databases need the 'plyvel' package (pip install plyvel); or convert the data to LMDB"
        ) from None
    return plyvel


class DatumDB:
    """A read-only Datum database: ``keys()`` in Caffe's cursor order, ``get(key)`` bytes.

    Opened lazily and re-opened in each process that uses it (loader workers), never shared.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "lmdb") -> None:
        self.path = Path(path)
        self.backend = backend_name(backend)
        self._handle = None
        self._pid: int | None = None
        self._key: tuple | None = None

    def _open(self) -> Any:
        if self._handle is not None and self._pid == os.getpid():
            return self._handle
        if not self.path.exists():
            raise CaffeCompatError(f"cannot open {self.backend} database '{self.path}': no such folder")
        key = (os.path.realpath(self.path), self.backend, os.getpid())
        entry = _OPEN.get(key)
        if entry is None:
            try:
                if self.backend == "lmdb":
                    import lmdb

                    handle = lmdb.open(
                        str(self.path),
                        readonly=True,
                        lock=False,
                        readahead=False,
                        max_readers=512,
                        subdir=True,
                    )
                else:
                    handle = _plyvel().DB(str(self.path), create_if_missing=False)
            except CaffeCompatError:
                raise
            except Exception as exc:  # lmdb.Error / plyvel.Error carry the library's reason
                raise CaffeCompatError(f"cannot open {self.backend} database '{self.path}': {exc}") from None
            entry = _OPEN[key] = [handle, 0]
        entry[1] += 1
        self._handle, self._pid, self._key = entry[0], os.getpid(), key
        return self._handle

    def keys(self) -> list[bytes]:
        """Every key, in key order (the order Caffe's cursor visits the records)."""
        handle = self._open()
        if self.backend == "lmdb":
            with handle.begin(buffers=False) as txn:
                return list(txn.cursor().iternext(keys=True, values=False))
        return list(handle.iterator(include_value=False))

    def get(self, key: bytes) -> bytes:
        handle = self._open()
        if self.backend == "lmdb":
            with handle.begin(buffers=False) as txn:
                value = txn.get(key)
        else:
            value = handle.get(key)
        if value is None:
            raise CaffeCompatError(f"{self.backend} database '{self.path}' has no record {key!r}")
        return value

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) pair in key order (one pass with a cursor)."""
        handle = self._open()
        if self.backend == "lmdb":
            with handle.begin(buffers=False) as txn:
                yield from txn.cursor()
        else:
            yield from handle.iterator()

    def close(self) -> None:
        """Release this reader's hold on the shared handle (closed when no reader holds it)."""
        if self._handle is not None and self._pid == os.getpid():
            entry = _OPEN.get(self._key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _OPEN[self._key]
                    entry[0].close()
        self._handle = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "backend": self.backend, "_handle": None, "_pid": None, "_key": None}


class DatumWriter:
    """Writes a new database atomically: records go to a temporary folder beside ``path`` that
    is renamed to ``path`` by ``close()``; ``abort()`` (or an exception in a ``with`` block)
    removes it. ``path`` must not exist (Caffe's ``mkdir`` of a NEW database fails too)."""

    def __init__(self, path: str | os.PathLike, backend: str = "lmdb", batch: int = 1000) -> None:
        self.path = Path(path)
        self.backend = backend_name(backend)
        self.batch = batch
        if self.path.exists():
            raise CaffeCompatError(
                f"cannot create database '{self.path}': it already exists (Caffe's mkdir fails too)"
            )
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise CaffeCompatError(f"cannot create database '{self.path}': folder {parent} does not exist")
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent))
        self._pending: list[tuple[bytes, bytes]] = []
        self.count = 0
        if self.backend == "lmdb":
            import lmdb

            self._map_size = _INITIAL_MAP_SIZE
            self._env = lmdb.open(str(self._tmp), map_size=self._map_size, subdir=True)
        else:
            try:
                self._env = _plyvel().DB(str(self._tmp), create_if_missing=True)
            except BaseException:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise

    def put(self, key: bytes, value: bytes) -> None:
        self._pending.append((key, value))
        self.count += 1
        if len(self._pending) >= self.batch:
            self.commit()

    def commit(self) -> None:
        """Write the pending records in one transaction (doubling the LMDB map when full)."""
        if not self._pending:
            return
        if self.backend == "lmdb":
            import lmdb

            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        for key, value in self._pending:
                            txn.put(key, value)
                    break
                except lmdb.MapFullError:
                    self._map_size *= 2
                    self._env.set_mapsize(self._map_size)
        else:
            with self._env.write_batch() as batch:
                for key, value in self._pending:
                    batch.put(key, value)
        self._pending.clear()

    def close(self) -> None:
        """Commit, close and move the finished database to its path."""
        try:
            self.commit()
            self._env.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o777 & ~umask)
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        try:
            self._env.close()
        except Exception:  # already closed
            pass
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> DatumWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def parse_datum(value: bytes, what: str) -> caffe_pb2.Datum:
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception:  # google.protobuf.message.DecodeError
        raise CaffeCompatError(f"{what} is not a Caffe Datum record ({len(value)} bytes)") from None
    return datum


@dataclass
class DatumSource:
    """Batches of a ``Data`` layer as a pure function of the batch number (picklable).

    Attributes:
        db: the database; keys: its keys in cursor order (listed once at start).
        transformer: the layer's DataTransformer; batch_size: records per batch.
        with_labels: whether the layer has a label top. seed: seeds random transforms.
        where: error prefix naming the layer.
    """

    db: DatumDB
    keys: np.ndarray
    transformer: DataTransformer
    batch_size: int
    with_labels: bool = True
    seed: int = 0
    where: str = "Data"

    def record(self, position: int) -> tuple[np.ndarray, int, str]:
        """The pixels ``(C, H, W)``, label and description of the record at stream ``position``."""
        key = bytes(self.keys[position % len(self.keys)])
        what = f"record {key.decode('utf-8', 'replace')!r} of {self.db.path}"
        try:
            datum = parse_datum(self.db.get(key), what)
            pixels = datum_to_array(datum, self.transformer.force_color, self.transformer.force_gray, what)
        except CaffeCompatError as exc:
            raise CaffeCompatError(f"{self.where}: {exc}") from None
        return pixels, int(datum.label), what

    def first_shape(self) -> tuple[int, int, int]:
        pixels, _, what = self.record(0)
        try:
            self.transformer.check(pixels.shape, what)
        except CaffeCompatError as exc:
            raise CaffeCompatError(f"{self.where}: {exc}") from None
        return self.transformer.output_shape(pixels.shape)

    def batch(self, number: int) -> tuple[torch.Tensor, ...]:
        """Batch ``number``: data[, label]."""
        start = number * self.batch_size
        data: np.ndarray | None = None
        labels = np.empty(self.batch_size, dtype=np.float32)
        for item in range(self.batch_size):
            position = start + item
            pixels, label, what = self.record(position)
            try:
                data = transform_into_batch(
                    self.transformer,
                    data,
                    item,
                    self.batch_size,
                    pixels,
                    self.seed,
                    position,
                    what,
                    "record",
                    "every record of a batch must transform to one shape",
                )
            except CaffeCompatError as exc:
                raise CaffeCompatError(f"{self.where}: {exc}") from None
            labels[item] = label
        tops = [torch.from_numpy(data)]
        if self.with_labels:
            tops.append(torch.from_numpy(labels))
        return tuple(tops)


def list_keys(db: DatumDB, where: str) -> np.ndarray:
    """The database's keys as a compact numpy bytes array; an empty database is an error."""
    try:
        keys = db.keys()
    except CaffeCompatError as exc:
        raise CaffeCompatError(f"{where}: {exc}") from None
    if not keys:
        raise CaffeCompatError(f"{where}: the {db.backend} database '{db.path}' holds no record")
    return np.array(keys, dtype=object) if any(k.endswith(b"\0") for k in keys) else np.array(keys)
