"""Data layers that read images: ``ImageData`` (image_data_layer.cpp), ``Data``
(data_layer.cpp: LMDB/LevelDB ``Datum`` records) and ``MemoryData`` (memory_data_layer.cpp).

They follow the data-layer protocol of ``layers/data.py``: ``is_data = True``; ``next_batch()``
returns one float32 CPU tensor per top; ``top_shapes()`` gives the set-up shapes;
``data_state()``/``load_data_state()`` snapshot and restore the read cursor. Every image goes
through Caffe's DataTransformer (``caffe_compat.data.transformer``).

``ImageData`` and ``Data`` decode in background worker processes (Caffe's prefetch thread;
``caffe_compat.data.loader``): ``num_workers`` (default 1, or ``$CAFFE_COMPAT_DATA_WORKERS``),
``prefetch`` batches per worker (``data_param.prefetch``, default 4, as Caffe's
``BasePrefetchingDataLayer`` reads it for both types). Each batch is a function of the layer's
``seed`` and the batch number, so shuffling and random crops/mirrors are reproducible from the
seed whatever the number of workers; the seed is drawn from torch's global generator at first use
when not set (seed torch with the solver's ``random_seed``), and only when something is random.

Nothing is read when the net is built, except the first image or record when the top shape
cannot be known otherwise (no ``new_height``/``new_width``/crop for ``ImageData``; always for
``Data``), and not even that when ``input_shapes`` gives the tops' shapes. Paths (the list, the
database, the mean file, the images) resolve against the working directory, then the
prototxt's folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import Message

from caffe_compat.data.image_list import ImageList, ImageListSource, draw_skip, read_image_list
from caffe_compat.data.lmdb_source import DatumDB, DatumSource, backend_name, list_keys
from caffe_compat.data.loader import BatchLoader, BatchSource, default_workers
from caffe_compat.data.memory import MemoryStore
from caffe_compat.data.transformer import DataTransformer
from caffe_compat.errors import CaffeCompatError, LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

logger = logging.getLogger("caffe_compat")

# Fork fields of ImageDataParameter that only its MultiLabelImageData layer reads.
_MULTILABEL_ONLY = (
    "face_transform",
    "max_shear_ratio",
    "max_aspect_ratio",
    "max_rotate_angle",
    "min_random_scale",
    "max_random_scale",
    "max_random_shift",
    "face_mirror",
    "face_point_num",
    "label_cut_start",
    "label_cut_end",
    "balance_by",
)
# Old transformation fields Caffe moves into transform_param only when upgrading V1 layers.
_LEGACY_TRANSFORM = ("scale", "mean_file", "crop_size", "mirror")


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else path.absolute()


def _shapes_hint(tops: Sequence[str]) -> str:
    shapes = ", ".join(f"'{top}': {'(N, C, H, W)' if i == 0 else '(N,)'}" for i, top in enumerate(tops))
    return f"give input_shapes={{{shapes}}} to build the net without reading it"


def _base_dirs(ctx: BuildContext) -> list[Path]:
    """The folders relative image paths resolve against: the working directory, then the
    prototxt's folder."""
    return [Path.cwd()] + ([ctx.net_dir] if ctx.net_dir is not None else [])


def _check_source(param: Message, ctx: BuildContext, param_name: str, what: str) -> None:
    """The checks every file-reading data layer makes: a ``source`` and a positive ``batch_size``."""
    if not param.source:
        raise ctx.error(f"{param_name}.source ({what}) is missing")
    if param.batch_size <= 0:
        raise ctx.error(f"{param_name}.batch_size must be a positive number")


def _ignored_fields(param: Message, names: Sequence[str], where: str, why: str) -> None:
    given = [name for name in names if param.HasField(name)]
    if given:
        logger.warning(
            "%s: %s %s ignored: %s", where, ", ".join(given), "is" if len(given) == 1 else "are", why
        )


class _LoadingDataLayer(CaffeLayer):
    """Shared machinery of the prefetching layers: the seed, the loader and the cursor."""

    is_data = True

    def __init__(self, tops: Sequence[str], transformer: DataTransformer, prefetch: int = 4) -> None:
        super().__init__()
        self.tops = list(tops)
        self.transformer = transformer
        self.prefetch = int(prefetch)
        self.num_workers: int | None = None
        self._seed: int | None = None
        self._position = 0
        self._source: BatchSource | None = None
        self._loader: BatchLoader | None = None
        self._declared: list[Shape] | None = None

    @property
    def seed(self) -> int | None:
        """Seeds the order and random transforms (drawn from torch at first use when None)."""
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        value = None if value is None else int(value)
        if value != self._seed:
            self._close_loader()
            self._source = None
        self._seed = value

    # -- subclass hooks ------------------------------------------------------------------------
    def _needs_seed(self) -> bool:
        return self.transformer.needs_random

    def _make_source(self, seed: int) -> BatchSource:
        raise NotImplementedError

    def _workers(self) -> int:
        return default_workers() if self.num_workers is None else self.num_workers

    # -- errors --------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"layer '{self.caffe_name}' ({self.caffe_type})"

    def _error(self, message: str) -> LayerError:
        return LayerError(f"{self.where}: {message}")

    def _wrap(self, exc: CaffeCompatError) -> LayerError:
        text = str(exc)
        return LayerError(text if text.startswith(self.where) else f"{self.where}: {text}")

    # -- loading -------------------------------------------------------------------------------
    def configure_loading(self, num_workers: int | None = None, prefetch: int | None = None) -> None:
        """Set the worker processes and the batches each keeps ready; a running loader restarts
        at the current batch."""
        if num_workers is not None:
            if num_workers < 0:
                raise self._error(f"num_workers must be 0 or more, got {num_workers}")
            self.num_workers = int(num_workers)
        if prefetch is not None:
            if prefetch < 1:
                raise self._error(f"prefetch must be 1 or more, got {prefetch}")
            self.prefetch = int(prefetch)
        self._close_loader()

    def close(self) -> None:
        """Stop the worker processes (they release the files they hold); the next ``next_batch()``
        starts new ones where the stream stands."""
        self._close_loader()

    def _close_loader(self) -> None:
        if self._loader is not None:
            self._loader.close()
            self._loader = None

    def _ensure_loader(self) -> BatchLoader:
        if self._loader is None:
            if self._source is None:
                if self._seed is None and self._needs_seed():
                    self._seed = int(torch.randint(0, 2**62, (1,)).item())
                try:
                    self._source = self._make_source(self._seed or 0)
                except CaffeCompatError as exc:
                    raise self._wrap(exc) from None
            self._loader = BatchLoader(self._source, self._workers(), self.prefetch, start=self._position)
        return self._loader

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The next batch (float32 CPU tensors, one per top), in Caffe's order."""
        loader = self._ensure_loader()
        try:
            batch = loader.next()
        except CaffeCompatError as exc:
            self._close_loader()
            raise self._wrap(exc) from None
        self._position = loader.position
        return batch

    # -- cursor snapshots ----------------------------------------------------------------------
    def data_state(self) -> dict:
        """The read cursor: ``batch`` (batches handed out so far) and ``seed``."""
        return {"batch": self._position, "seed": self.seed}

    def load_data_state(self, state: dict) -> None:
        """Restore a cursor saved by ``data_state``: the next batch is batch ``state['batch']``
        of the stream that ``state['seed']`` orders."""
        if "batch" not in state:
            raise self._error("data state lacks 'batch'")
        position = int(state["batch"])
        if position < 0:
            raise self._error(f"data state has a negative batch number {position}")
        self._close_loader()
        self.seed = state.get("seed", self.seed)
        self._position = position

    def top_shapes(self, bottom_shapes: Sequence[Shape] = ()) -> list[Shape]:
        if self._declared is None:
            self._declared = self._set_up_shapes()
        return list(self._declared)

    def _set_up_shapes(self) -> list[Shape]:
        raise NotImplementedError

    def __del__(self) -> None:
        try:
            self._close_loader()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_loader"] = None
        return state


class _ImageListLayer(_LoadingDataLayer):
    """Shared machinery of the layers that read an image list (``image_data_param``): the list,
    its ``ImageListSource``, ``rand_skip`` and the data top's set-up shape."""

    def __init__(
        self,
        source: Path,
        tops: Sequence[str],
        transformer: DataTransformer,
        batch_size: int,
        root_folder: str = "",
        new_height: int = 0,
        new_width: int = 0,
        is_color: bool = True,
        shuffle: bool = False,
        rand_skip: int = 0,
        base_dirs: Sequence[Path] = (),
        prefetch: int = 4,
    ) -> None:
        super().__init__(tops, transformer, prefetch)
        self.source = source
        self.batch_size = int(batch_size)
        self.root_folder = root_folder
        self.new_height, self.new_width = int(new_height), int(new_width)
        self.is_color = bool(is_color)
        self.shuffle = bool(shuffle)
        self.rand_skip = int(rand_skip)
        self.base_dirs = [Path(d) for d in base_dirs]
        self._list: ImageList | None = None

    @staticmethod
    def _check_list_param(param: caffe_pb2.ImageDataParameter, ctx: BuildContext) -> None:
        _check_source(param, ctx, "image_data_param", "the image list file")
        if (param.new_height > 0) != (param.new_width > 0):
            raise ctx.error("new_height and new_width must be set together (Caffe resizes only with both)")

    @staticmethod
    def _list_options(layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> dict:
        """The constructor's list arguments from ``image_data_param`` (and ``data_param.prefetch``)."""
        param = layer.image_data_param
        return {
            "root_folder": param.root_folder,
            "new_height": param.new_height,
            "new_width": param.new_width,
            "is_color": param.is_color,
            "shuffle": param.shuffle,
            "rand_skip": param.rand_skip,
            "base_dirs": _base_dirs(ctx),
            "prefetch": layer.data_param.prefetch,
        }

    def _needs_seed(self) -> bool:
        return self.transformer.needs_random or self.shuffle or self.rand_skip > 0

    def _read_list(self, hint: str) -> ImageList:
        raise NotImplementedError

    def _image_list(self, hint: str = "") -> ImageList:
        if self._list is None:
            try:
                self._list = self._read_list(hint)
            except CaffeCompatError as exc:
                raise self._wrap(exc) from None
        return self._list

    def _list_source(self, images: ImageList, resize: bool = True, **options) -> ImageListSource:
        """An ``ImageListSource`` over ``images`` (``resize``: read at ``new_height`` x
        ``new_width``; ``options``: its order and seed fields)."""
        return ImageListSource(
            images=images,
            root_folder=self.root_folder,
            base_dirs=self.base_dirs,
            new_height=self.new_height if resize else 0,
            new_width=self.new_width if resize else 0,
            is_color=self.is_color,
            transformer=self.transformer,
            batch_size=self.batch_size,
            where=self.where,
            **options,
        )

    def _skip(self, images: ImageList, seed: int) -> int:
        """``rand_skip``'s draw for ``seed``, checked against the list's length."""
        skip = draw_skip(seed, self.rand_skip)
        if skip >= len(images.names):
            raise self._error(f"rand_skip drew {skip}: not enough images ({len(images.names)}) to skip")
        return skip

    def _data_shape(self, images: Callable[[], ImageList]) -> tuple[int, int, int]:
        """The data top's ``(C, H, W)``: the crop, else ``new_height`` x ``new_width``, else the
        transformed shape of the first image of ``images()``."""
        channels = 3 if self.is_color else 1
        if self.transformer.crop is not None:
            return (channels, *self.transformer.crop)
        if self.new_height > 0:
            return (channels, self.new_height, self.new_width)
        probe = self._list_source(images())
        try:
            return probe.first_shape()
        except CaffeCompatError as exc:
            raise self._wrap(exc) from None

    def _repr_parts(self) -> list[str]:
        parts = [super().extra_repr(), f"source={os.fspath(self.source)!r}", f"batch_size={self.batch_size}"]
        if self.new_height:
            parts.append(f"new_size=({self.new_height}, {self.new_width})")
        if self.shuffle:
            parts.append(f"shuffle=True, seed={self.seed}")
        return parts

    def extra_repr(self) -> str:
        return ", ".join(p for p in self._repr_parts() if p)


@register("ImageData")
class ImageData(_ImageListLayer):
    """Images named in a list file (``path label`` lines), decoded with OpenCV (BGR), resized to
    ``new_height`` x ``new_width`` when given, transformed, in list order (``shuffle``: a new
    permutation per pass) with wrap-around; ``rand_skip`` starts at a random entry. Tops: data,
    label, and with a third top the fork's class weights; ``balance_class`` as the fork.

    The fork's ImageDataParameter fields ``face_transform``, ``max_rotate_angle`` and the other
    face-augmentation fields are read only by its ``MultiLabelImageData`` layer: its
    ``ImageData`` ignores them, and so does this one (with a warning). The old
    ``image_data_param`` ``scale``/``mean_file``/``crop_size``/``mirror`` are ignored as Caffe
    ignores them outside V1 upgrades (with a warning): use ``transform_param``.

    Without ``new_height``/``new_width`` or a crop, the set-up shape comes from the list's first
    line (Caffe reads the first image after shuffling; each batch takes the shape of its own first
    image in both, so only the shape reported at build time can differ).
    """

    family = "data"

    example = """
layer { name: "data" type: "ImageData" top: "data" top: "label"
        transform_param { mirror: true crop_size: 4 mean_value: 104 mean_value: 117 mean_value: 123 }
        image_data_param { source: "train_list.txt" root_folder: "images/" batch_size: 2
                           new_height: 6 new_width: 5 shuffle: true } }
"""
    example_input_shapes = {"data": (2, 3, 4, 4), "label": (2,)}

    def __init__(
        self,
        source: Path,
        tops: Sequence[str],
        transformer: DataTransformer,
        batch_size: int,
        root_folder: str = "",
        new_height: int = 0,
        new_width: int = 0,
        is_color: bool = True,
        shuffle: bool = False,
        rand_skip: int = 0,
        balance: bool = False,
        base_dirs: Sequence[Path] = (),
        prefetch: int = 4,
    ) -> None:
        super().__init__(
            source,
            tops,
            transformer,
            batch_size,
            root_folder,
            new_height,
            new_width,
            is_color,
            shuffle,
            rand_skip,
            base_dirs,
            prefetch,
        )
        self.balance = bool(balance)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ImageData:
        ctx.check_bottoms(0)
        ctx.check_tops(2, 3)
        param = layer.image_data_param
        where = f"layer '{layer.name}' (ImageData)"
        cls._check_list_param(param, ctx)
        _ignored_fields(
            param, _MULTILABEL_ONLY, where, "the fork's ImageData does not read it (MultiLabelImageData does)"
        )
        _ignored_fields(param, _LEGACY_TRANSFORM, where, "Caffe reads these from transform_param")
        transformer = _transformer(layer, ctx, where)
        return cls(
            _absolute(ctx.resolve_path(param.source)),
            list(layer.top),
            transformer,
            param.batch_size,
            balance=param.balance_class,
            **cls._list_options(layer, ctx),
        )

    def _needs_seed(self) -> bool:
        return super()._needs_seed() or self.balance

    def _read_list(self, hint: str) -> ImageList:
        return read_image_list(self.source, hint)

    def _make_source(self, seed: int) -> ImageListSource:
        images = self._image_list()
        skip = self._skip(images, seed)
        return self._list_source(
            images, shuffle=self.shuffle, balance=self.balance, num_tops=len(self.tops), seed=seed, skip=skip
        )

    def _set_up_shapes(self) -> list[Shape]:
        hint = _shapes_hint(self.tops) + ", or set new_height/new_width"
        shape = self._data_shape(lambda: self._image_list(hint))
        return [(self.batch_size, *shape)] + [(self.batch_size,)] * (len(self.tops) - 1)


def _transformer(layer: caffe_pb2.LayerParameter, ctx: BuildContext, where: str) -> DataTransformer:
    param = layer.transform_param
    mean_path = _absolute(ctx.resolve_path(param.mean_file)) if param.HasField("mean_file") else None
    try:
        return DataTransformer(param, ctx.phase, mean_path, where)
    except CaffeCompatError as exc:
        raise LayerError(str(exc)) from None


@register("Data")
class Data(_LoadingDataLayer):
    """``Datum`` records of an LMDB (``backend: LMDB``) or LevelDB (the default backend, through
    the ``plyvel`` package) database, in key order with wrap-around; raw or encoded (decoded with
    OpenCV; ``force_color``/``force_gray`` apply); transformed. Tops: data[, label].
    The old ``data_param`` ``scale``/``mean_file``/``crop_size``/``mirror`` are ignored with a
    warning, as Caffe ignores them outside V1 upgrades; this fork's Data layer has no
    ``rand_skip``.
    """

    family = "data"

    example = """
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00390625 mirror: true }
        data_param { source: "train_lmdb" backend: LMDB batch_size: 2 } }
"""
    example_input_shapes = {"data": (2, 3, 6, 5), "label": (2,)}

    def __init__(
        self,
        source: Path,
        tops: Sequence[str],
        transformer: DataTransformer,
        batch_size: int,
        backend: str = "lmdb",
        prefetch: int = 4,
    ) -> None:
        super().__init__(tops, transformer, prefetch)
        self.source = source
        self.batch_size = int(batch_size)
        self.backend = backend
        self._db: DatumDB | None = None
        self._keys: np.ndarray | None = None

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Data:
        ctx.check_bottoms(0)
        ctx.check_tops(1, 2)
        param = layer.data_param
        where = f"layer '{layer.name}' (Data)"
        _check_source(param, ctx, "data_param", "the database folder")
        _ignored_fields(param, _LEGACY_TRANSFORM, where, "Caffe reads these from transform_param")
        if param.HasField("rand_skip"):
            logger.warning("%s: rand_skip is ignored: this fork's Data layer does not skip records", where)
        transformer = _transformer(layer, ctx, where)
        source = _absolute(ctx.resolve_path(param.source))
        backend = backend_name(param.backend)
        if backend == "leveldb" and not param.HasField("backend") and (source / "data.mdb").exists():
            raise ctx.error(
                f"'{param.source}' is an LMDB database but backend defaults to LEVELDB (as in Caffe): "
                "add backend: LMDB to data_param"
            )
        return cls(source, list(layer.top), transformer, param.batch_size, backend, param.prefetch)

    def _workers(self) -> int:
        workers = super()._workers()
        if self.backend == "leveldb" and workers > 1:
            logger.warning(
                "%s: a LevelDB database admits one reader process: using 1 worker, not %d",
                self.where,
                workers,
            )
            return 1
        return workers

    def _database(self, hint: str = "") -> tuple[DatumDB, np.ndarray]:
        if self._keys is None:
            db = DatumDB(self.source, self.backend)
            try:
                keys = list_keys(db, self.where)
            except CaffeCompatError as exc:
                raise self._error(
                    f"{str(exc).removeprefix(self.where + ': ')}{'; ' + hint if hint else ''}"
                ) from None
            db.close()
            self._db, self._keys = db, keys
        return self._db, self._keys

    def _make_source(self, seed: int) -> DatumSource:
        db, keys = self._database()
        return DatumSource(db, keys, self.transformer, self.batch_size, len(self.tops) > 1, seed, self.where)

    def _set_up_shapes(self) -> list[Shape]:
        db, keys = self._database(_shapes_hint(self.tops))
        probe = DatumSource(db, keys, self.transformer, self.batch_size, True, 0, self.where)
        try:
            shape = probe.first_shape()
        except CaffeCompatError as exc:
            raise self._wrap(exc) from None
        finally:
            db.close()
        return [(self.batch_size, *shape)] + [(self.batch_size,)] * (len(self.tops) - 1)

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"source={os.fspath(self.source)!r}", f"backend={self.backend}"]
        parts.append(f"batch_size={self.batch_size}")
        return ", ".join(p for p in parts if p)


@register("MemoryData")
class MemoryData(CaffeLayer):
    """Arrays handed over in memory (``reset``/``set_input_arrays``: used untransformed;
    ``add_mat_vector``/``add_datum_vector``: transformed), served ``batch_size`` at a time with
    wrap-around. See ``caffe_compat.data.memory`` for Caffe's rules and the deviations."""

    family = "data"

    is_data = True
    example = """
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 3 height: 5 width: 7 } }
"""

    def __init__(self, store: MemoryStore, tops: Sequence[str]) -> None:
        super().__init__()
        self.store = store
        self.tops = list(tops)
        self.seed: int | None = None

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> MemoryData:
        ctx.check_bottoms(0)
        ctx.check_tops(2)
        param = layer.memory_data_param
        sizes = {name: getattr(param, name) for name in ("batch_size", "channels", "height", "width")}
        if any(value <= 0 for value in sizes.values()):
            given = ", ".join(f"{name} {value}" for name, value in sizes.items())
            raise ctx.error(
                f"batch_size, channels, height and width must be positive in memory_data_param ({given})"
            )
        where = f"layer '{layer.name}' (MemoryData)"
        transformer = _transformer(layer, ctx, where)
        store = MemoryStore(
            param.batch_size, param.channels, param.height, param.width, transformer, param.transpose, where
        )
        return cls(store, list(layer.top))

    def top_shapes(self, bottom_shapes: Sequence[Shape] = ()) -> list[Shape]:
        store = self.store
        crop = store.transformer.crop
        height, width = crop if crop is not None else (store.height, store.width)
        return [(store.batch_size, store.channels, height, width), (store.batch_size,)]

    def _seeded(self) -> MemoryStore:
        if self.seed is None and self.store.transformer.needs_random:
            self.seed = int(torch.randint(0, 2**62, (1,)).item())
        self.store.seed = self.seed or 0
        return self.store

    def reset(self, data: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        """Caffe's ``Reset``: serve ``data`` (N, C, H, W) and ``labels`` untransformed."""
        try:
            self.store.reset(data, labels)
        except CaffeCompatError as exc:
            raise LayerError(str(exc)) from None

    set_input_arrays = reset

    def add_mat_vector(self, images: list[np.ndarray], labels: list[int]) -> None:
        """Caffe's ``AddMatVector``: transform OpenCV (BGR, HxWxC) images into one batch."""
        try:
            self._seeded().add_mat_vector(images, labels)
        except CaffeCompatError as exc:
            raise LayerError(str(exc)) from None

    def add_datum_vector(self, datums: list[caffe_pb2.Datum]) -> None:
        """Caffe's ``AddDatumVector``: transform Datums into one batch."""
        try:
            self._seeded().add_datum_vector(datums)
        except CaffeCompatError as exc:
            raise LayerError(str(exc)) from None

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        try:
            return self.store.next()
        except CaffeCompatError as exc:
            raise LayerError(str(exc)) from None

    def data_state(self) -> dict:
        """The read position ``pos`` within the current arrays."""
        return {"pos": self.store.pos}

    def load_data_state(self, state: dict) -> None:
        if "pos" not in state:
            raise LayerError(f"layer '{self.caffe_name}' (MemoryData): data state lacks 'pos'")
        self.store.pos = int(state["pos"])
