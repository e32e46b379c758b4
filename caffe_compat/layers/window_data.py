"""``WindowData``: R-CNN's window-file data layer (the fork's ``window_data_layer.cpp``).

The window file is a sequence of whitespace-separated records, one per image::

    # image_index
    image_path
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2     (num_windows lines, inclusive pixel corners)

Set-up sorts the windows: ``overlap >= fg_threshold`` is foreground (its label must be
positive), ``overlap < bg_threshold`` is background (label and overlap forced to 0), anything
between is dropped. Each batch takes ``batch_size - int(batch_size * fg_fraction)`` background
windows, then the foreground ones, each drawn uniformly with replacement; a window is cut out
of its image (``root_folder + image_path``, read in colour with OpenCV, BGR), expanded by
``context_pad`` (and made square with ``crop_mode: "square"``), clipped to the image, warped
bilinearly to ``crop_size`` x ``crop_size`` (the part that fell outside the image stays 0),
mirrored at random with ``mirror``, then ``(pixel - mean) * scale``. The top ``data`` is
``(batch_size, channels, crop_size, crop_size)`` with ``channels`` the last record's; ``label``
is ``(batch_size,)``.

Caffe's own choices are kept: ``crop_size``, ``mirror``, ``mean_file``/``mean_value`` come from
``transform_param`` but ``scale`` from ``window_data_param`` (``transform_param.scale`` is
ignored, with a warning); the mean file is read at ``(c, mean_off + pad_h + h, mean_off + pad_w
+ w)`` with ``mean_off = (mean_width - crop_size) / 2``; the declared image sizes are not used.

Deliberate deviations:
- random numbers come from a numpy generator seeded by ``(seed, batch number)`` (the layer's
  ``seed``, drawn from torch's global generator at first use when unset), not from Caffe's
  ``prefetch_rng_``, so batches are reproducible from the seed whatever the number of workers;
- bad input that Caffe reads past or crashes on is an error naming the file and line: a record
  whose ``image_index`` is not its position (Caffe indexes its image table by that number), a
  truncated record, a window with ``x2 < x1`` or ``y2 < y1``, a window outside its image (Caffe's
  OpenCV ROI assertion), ``channels`` other than 3 (Caffe always decodes in colour), an unknown
  ``crop_mode`` (Caffe warps), a missing or undecodable image (Caffe logs and returns a batch
  half filled);
- ``cache_images`` keeps each worker's encoded image bytes in memory after the first read
  (Caffe reads them all at set-up); the output is the same.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from caffe_compat.data.image_list import resolve_image_path
from caffe_compat.data.images import decode_image, read_image
from caffe_compat.data.transformer import DataTransformer
from caffe_compat.errors import CaffeCompatError
from caffe_compat.layers.base import BuildContext, Shape
from caffe_compat.layers.image_data import (
    _absolute,
    _base_dirs,
    _check_source,
    _LoadingDataLayer,
    _shapes_hint,
    _transformer,
)
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

logger = logging.getLogger("caffe_compat")

_CROP_MODES = ("warp", "square")
# Stream tag of the window draws (keeps them apart from other uses of the seed).
_WINDOW_DRAWS = 11
# transform_param fields WindowData does not read.
_UNREAD_TRANSFORM = (
    "scale",
    "crop_h",
    "crop_w",
    "center_crop",
    "force_color",
    "force_gray",
    "erase_ratio",
)
# window_data_param fields Caffe moves to transform_param only when upgrading V1 layers.
_LEGACY_WINDOW = ("mean_file", "crop_size", "mirror")


@dataclass(frozen=True)
class Window:
    """One window of the file: its image (position in the file), label, overlap and corners."""

    image: int
    label: int
    overlap: float
    x1: int
    y1: int
    x2: int
    y2: int
    line: int  # 1-based line of the window file


@dataclass
class WindowFile:
    """The parsed window file: image paths as written, declared channels, sorted windows."""

    path: Path
    images: list[str]
    image_lines: list[int]
    channels: int
    foreground: list[Window]
    background: list[Window]

    def where(self, line: int) -> str:
        return f"line {line} of {self.path}"


def _tokens(text: str) -> list[tuple[str, int]]:
    return [(token, number) for number, line in enumerate(text.splitlines(), 1) for token in line.split()]


def read_window_file(path: str | os.PathLike, fg_threshold: float, bg_threshold: float) -> WindowFile:
    """Parse a window file and sort its windows into foreground and background.

    Raises:
        CaffeCompatError: the file cannot be read, is empty, or a record is malformed (the
            message names the line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CaffeCompatError(f"cannot read the window file '{path}' ({reason})") from None
    tokens = _tokens(text)
    if not tokens:
        raise CaffeCompatError(f"the window file '{path}' is empty")
    cursor = 0
    last_line = tokens[-1][1]

    def take(what: str, kind: type = str) -> tuple:
        nonlocal cursor
        if cursor >= len(tokens):
            raise CaffeCompatError(
                f"line {last_line} of {path}: the record ends early: {what} is missing "
                "(records are '# index', path, channels, height, width, num_windows, then "
                "'label overlap x1 y1 x2 y2' per window)"
            )
        token, line = tokens[cursor]
        cursor += 1
        try:
            return kind(token), line
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise CaffeCompatError(f"line {line} of {path}: {what} must be {noun}, got {token!r}") from None

    images: list[str] = []
    image_lines: list[int] = []
    channels = 0
    foreground: list[Window] = []
    background: list[Window] = []
    while cursor < len(tokens):
        hashtag, line = take("'#'")
        if hashtag != "#":
            raise CaffeCompatError(
                f"line {line} of {path}: expected '#' starting an image record, got {hashtag!r}"
            )
        index, line = take("the image index", int)
        if index != len(images):
            raise CaffeCompatError(
                f"line {line} of {path}: image index {index} but this is image {len(images)} of the file: "
                "Caffe looks images up by this number, so records must be numbered 0, 1, 2, ... in order"
            )
        name, line = take("the image path")
        images.append(name)
        image_lines.append(line)
        channels, _ = take("channels", int)
        take("height", int)
        take("width", int)
        count, line = take("the number of windows", int)
        if count < 0:
            raise CaffeCompatError(f"line {line} of {path}: negative number of windows {count}")
        for _ in range(count):
            label, line = take("the window's class index", int)
            overlap, _ = take("the window's overlap", float)
            x1, _ = take("x1", int)
            y1, _ = take("y1", int)
            x2, _ = take("x2", int)
            y2, _ = take("y2", int)
            if x2 < x1 or y2 < y1:
                raise CaffeCompatError(
                    f"line {line} of {path}: window ({x1}, {y1}, {x2}, {y2}) is empty: corners are "
                    "x1 y1 x2 y2 with x2 >= x1 and y2 >= y1"
                )
            if np.float32(overlap) >= np.float32(fg_threshold):
                if label <= 0:
                    raise CaffeCompatError(
                        f"line {line} of {path}: a foreground window (overlap {overlap} >= fg_threshold "
                        f"{fg_threshold}) needs a positive class index, got {label} (0 is background)"
                    )
                foreground.append(Window(len(images) - 1, label, overlap, x1, y1, x2, y2, line))
            elif np.float32(overlap) < np.float32(bg_threshold):
                background.append(Window(len(images) - 1, 0, 0.0, x1, y1, x2, y2, line))
    return WindowFile(path, images, image_lines, channels, foreground, background)


def _round(value: np.float32) -> int:
    """C's ``round`` (halves away from zero) of a float."""
    return int(math.copysign(math.floor(abs(float(value)) + 0.5), float(value)))


@dataclass(frozen=True)
class Placement:
    """Where a window is cut and where its warped pixels land in the crop."""

    x1: int
    y1: int
    x2: int
    y2: int
    height: int  # warped size
    width: int
    pad_h: int  # offset in the crop
    pad_w: int


def place_window(
    window: Window,
    image_height: int,
    image_width: int,
    crop_size: int,
    context_pad: int,
    square: bool,
    mirror: bool,
) -> Placement | None:
    """Caffe's window geometry (float32 arithmetic, C rounding); None when nothing of the
    window lies inside the image."""
    x1, y1, x2, y2 = window.x1, window.y1, window.x2, window.y2
    height, width = crop_size, crop_size
    pad_h = pad_w = 0
    if context_pad > 0 or square:
        f32 = np.float32
        context_scale = f32(crop_size) / f32(crop_size - 2 * context_pad)
        half_height = f32(float(f32(y2 - y1 + 1)) / 2.0)
        half_width = f32(float(f32(x2 - x1 + 1)) / 2.0)
        center_x = f32(x1) + half_width
        center_y = f32(y1) + half_height
        if square:
            half_height = half_width = max(half_height, half_width)
        x1 = _round(center_x - half_width * context_scale)
        x2 = _round(center_x + half_width * context_scale)
        y1 = _round(center_y - half_height * context_scale)
        y2 = _round(center_y + half_height * context_scale)
        unclipped_height, unclipped_width = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - image_width + 1), max(0, y2 - image_height + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        if x2 < x1 or y2 < y1:
            return None
        scale_x = f32(crop_size) / f32(unclipped_width)
        scale_y = f32(crop_size) / f32(unclipped_height)
        width = _round(f32(x2 - x1 + 1) * scale_x)
        height = _round(f32(y2 - y1 + 1) * scale_y)
        pad_x1, pad_x2 = _round(f32(pad_x1) * scale_x), _round(f32(pad_x2) * scale_x)
        pad_y1 = _round(f32(pad_y1) * scale_y)
        pad_h = pad_y1
        pad_w = pad_x2 if mirror else pad_x1
        height = min(height, crop_size - pad_h)
        width = min(width, crop_size - pad_w)
    if not (0 <= x1 <= x2 < image_width and 0 <= y1 <= y2 < image_height):
        return None
    return Placement(x1, y1, x2, y2, height, width, pad_h, pad_w)


@dataclass
class WindowSource:
    """Batches of a ``WindowData`` layer as a pure function of the batch number (picklable)."""

    windows: WindowFile
    root_folder: str
    base_dirs: list[Path]
    batch_size: int
    num_foreground: int
    crop_size: int
    context_pad: int
    square: bool
    mirror: bool
    scale: np.float32
    mean: np.ndarray | None  # (C, H, W) float32 mean image
    mean_values: np.ndarray  # (3,) float32 or empty
    cache_images: bool
    seed: int
    where: str
    _cache: dict[int, bytes] = field(default_factory=dict, repr=False)

    def image_path(self, index: int) -> Path:
        """``root_folder + path`` (joined as text), tried against each base folder when relative."""
        return resolve_image_path(self.root_folder, self.windows.images[index], self.base_dirs)

    def _image(self, index: int) -> np.ndarray:
        path = self.image_path(index)
        where = self.windows.where(self.windows.image_lines[index])
        try:
            if not self.cache_images:
                return read_image(path)
            if index not in self._cache:
                self._cache[index] = path.read_bytes()
            image = decode_image(self._cache[index], True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise CaffeCompatError(f"{self.where}: cannot read image '{path}' ({reason}) ({where})") from None
        except CaffeCompatError as exc:
            raise CaffeCompatError(f"{self.where}: {exc} ({where})") from None
        if image is None:
            raise CaffeCompatError(f"{self.where}: cannot decode image '{path}' ({where})")
        return image

    def _fill(self, out: np.ndarray, window: Window, image: np.ndarray, mirror: bool) -> None:
        _, image_height, image_width = image.shape
        place = place_window(
            window, image_height, image_width, self.crop_size, self.context_pad, self.square, mirror
        )
        if place is None or place.height <= 0 or place.width <= 0:
            raise CaffeCompatError(
                f"{self.where}: window ({window.x1}, {window.y1}, {window.x2}, {window.y2}) of "
                f"{self.windows.where(window.line)} lies outside its image "
                f"'{self.image_path(window.image)}' ({image_width}x{image_height}, WxH)"
            )
        hwc = image.transpose(1, 2, 0)[place.y1 : place.y2 + 1, place.x1 : place.x2 + 1]
        warped = cv2.resize(
            np.ascontiguousarray(hwc), (place.width, place.height), interpolation=cv2.INTER_LINEAR
        )
        if warped.ndim == 2:
            warped = warped[:, :, np.newaxis]
        if mirror:
            warped = warped[:, ::-1]
        pixels = warped.transpose(2, 0, 1).astype(np.float32)
        rows = slice(place.pad_h, place.pad_h + place.height)
        cols = slice(place.pad_w, place.pad_w + place.width)
        if self.mean is not None:
            offset = (self.mean.shape[2] - self.crop_size) // 2
            pixels -= self.mean[
                : pixels.shape[0],
                offset + rows.start : offset + rows.stop,
                offset + cols.start : offset + cols.stop,
            ]
        elif self.mean_values.size:
            pixels -= self.mean_values.reshape(-1, 1, 1)
        out[:, rows, cols] = pixels * self.scale

    def batch(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``number``: background windows first, then foreground, as Caffe samples them."""
        channels = self.windows.channels
        data = np.zeros((self.batch_size, channels, self.crop_size, self.crop_size), dtype=np.float32)
        labels = np.zeros(self.batch_size, dtype=np.float32)
        rng = np.random.default_rng([self.seed, _WINDOW_DRAWS, number])
        counts = (self.batch_size - self.num_foreground, self.num_foreground)
        item = 0
        for pool, count in zip((self.windows.background, self.windows.foreground), counts, strict=True):
            for _ in range(count):
                window = pool[int(rng.integers(len(pool)))]
                mirror = self.mirror and bool(rng.integers(2))
                image = self._image(window.image)
                if image.shape[0] != channels:
                    raise CaffeCompatError(
                        f"{self.where}: image '{self.image_path(window.image)}' decodes to "
                        f"{image.shape[0]} channels, the window file declares {channels}"
                    )
                self._fill(data[item], window, image, mirror)
                labels[item] = window.label
                item += 1
        return torch.from_numpy(data), torch.from_numpy(labels)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


@register("WindowData")
class WindowData(_LoadingDataLayer):
    """R-CNN's window data layer: foreground and background windows of images, warped to
    ``crop_size`` squares (see the module docstring for the file format, Caffe's rules and the
    deviations). Tops: data ``(N, C, crop, crop)``, label ``(N,)``.

    Only the window file is read when the net is built (for the channel count), and not even
    that when ``input_shapes`` gives the tops' shapes; images are read by the batches.
    """

    family = "data"

    example = """
layer { name: "data" type: "WindowData" top: "data" top: "label"
        transform_param { mirror: true crop_size: 6 mean_value: 104 mean_value: 117 mean_value: 123 }
        window_data_param { source: "windows.txt" batch_size: 4 fg_threshold: 0.5 bg_threshold: 0.5
                            fg_fraction: 0.25 context_pad: 1 crop_mode: "warp" } }
"""
    example_input_shapes = {"data": (4, 3, 6, 6), "label": (4,)}

    def __init__(
        self,
        source: Path,
        tops: Sequence[str],
        transformer: DataTransformer,
        batch_size: int,
        crop_size: int,
        fg_threshold: float = 0.5,
        bg_threshold: float = 0.5,
        fg_fraction: float = 0.25,
        context_pad: int = 0,
        crop_mode: str = "warp",
        cache_images: bool = False,
        root_folder: str = "",
        scale: float = 1.0,
        base_dirs: Sequence[Path] = (),
        prefetch: int = 4,
    ) -> None:
        super().__init__(tops, transformer, prefetch)
        self.source = source
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size)
        self.fg_threshold = float(fg_threshold)
        self.bg_threshold = float(bg_threshold)
        self.fg_fraction = float(fg_fraction)
        self.context_pad = int(context_pad)
        self.crop_mode = crop_mode
        self.cache_images = bool(cache_images)
        self.root_folder = root_folder
        self.scale = np.float32(scale)
        self.base_dirs = [Path(d) for d in base_dirs]
        self._windows: WindowFile | None = None

    @property
    def num_foreground(self) -> int:
        """Caffe's ``static_cast<int>(static_cast<float>(batch_size) * fg_fraction)``."""
        return int(np.float32(self.batch_size) * np.float32(self.fg_fraction))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> WindowData:
        ctx.check_bottoms(0)
        ctx.check_tops(2)
        param = layer.window_data_param
        transform = layer.transform_param
        where = f"layer '{layer.name}' (WindowData)"
        _check_source(param, ctx, "window_data_param", "the window file")
        if transform.crop_size <= 0:
            legacy = (
                " (window_data_param.crop_size is read only when upgrading V1 nets)"
                if param.crop_size
                else ""
            )
            raise ctx.error(f"transform_param.crop_size must be positive: windows are warped to it{legacy}")
        if param.crop_mode not in _CROP_MODES:
            raise ctx.error(f'crop_mode must be "warp" or "square", got {param.crop_mode!r}')
        if (
            param.context_pad > 0 or param.crop_mode == "square"
        ) and transform.crop_size <= 2 * param.context_pad:
            raise ctx.error(
                f"context_pad {param.context_pad} leaves nothing of a {transform.crop_size} crop "
                "(crop_size must exceed 2 * context_pad)"
            )
        if not 0.0 <= param.fg_fraction <= 1.0:
            raise ctx.error(f"fg_fraction must lie in [0, 1], got {param.fg_fraction}")
        unread = [name for name in _UNREAD_TRANSFORM if transform.HasField(name)]
        if unread:
            logger.warning(
                "%s: transform_param %s ignored: WindowData reads crop_size, mirror and the mean only "
                "(its scale is window_data_param.scale)",
                where,
                ", ".join(unread),
            )
        legacy = [name for name in _LEGACY_WINDOW if param.HasField(name)]
        if legacy:
            logger.warning(
                "%s: window_data_param %s ignored: Caffe reads them from transform_param",
                where,
                ", ".join(legacy),
            )
        transformer = _transformer(layer, ctx, where)
        return cls(
            _absolute(ctx.resolve_path(param.source)),
            list(layer.top),
            transformer,
            param.batch_size,
            transform.crop_size,
            fg_threshold=param.fg_threshold,
            bg_threshold=param.bg_threshold,
            fg_fraction=param.fg_fraction,
            context_pad=param.context_pad,
            crop_mode=param.crop_mode,
            cache_images=param.cache_images,
            root_folder=param.root_folder,
            scale=param.scale,
            base_dirs=_base_dirs(ctx),
            prefetch=layer.data_param.prefetch,
        )

    def _needs_seed(self) -> bool:
        return True  # windows are always drawn at random

    def _window_file(self, hint: str = "") -> WindowFile:
        if self._windows is None:
            try:
                windows = read_window_file(self.source, self.fg_threshold, self.bg_threshold)
            except CaffeCompatError as exc:
                raise self._error(f"{exc}{'; ' + hint if hint else ''}") from None
            if windows.channels != 3:
                raise self._error(
                    f"{windows.where(windows.image_lines[-1])}: the last image declares {windows.channels} "
                    "channels, which sizes the data top; Caffe decodes every image in colour, so it must be 3"
                )
            self._windows = windows
        return self._windows

    def _mean_image(self, channels: int) -> np.ndarray | None:
        try:
            mean = self.transformer.mean
        except CaffeCompatError as exc:
            raise self._wrap(exc) from None
        if mean is None:
            return None
        _, height, width = mean.shape
        offset = (width - self.crop_size) // 2
        if mean.shape[0] < channels or offset < 0 or offset + self.crop_size > height:
            raise self._error(
                f"the mean_file '{self.transformer.mean_path}' has shape {list(mean.shape)} (CxHxW): "
                f"WindowData reads its centre {self.crop_size}x{self.crop_size} (offset (width - crop) / 2 "
                f"= {offset}) for {channels} channels"
            )
        return mean

    def _make_source(self, seed: int) -> WindowSource:
        windows = self._window_file()
        for name, pool in (("foreground", windows.foreground), ("background", windows.background)):
            if not pool:
                raise self._error(
                    f"the window file '{self.source}' has no {name} window (fg_threshold "
                    f"{self.fg_threshold}, bg_threshold {self.bg_threshold}); Caffe needs both kinds"
                )
        channels = windows.channels
        values = self.transformer.mean_values
        if values.size not in (0, 1, channels):
            raise self._error(f"give 1 mean_value or one per channel ({channels}), got {values.size}")
        if values.size == 1:
            values = np.repeat(values, channels)
        return WindowSource(
            windows=windows,
            root_folder=self.root_folder,
            base_dirs=self.base_dirs,
            batch_size=self.batch_size,
            num_foreground=self.num_foreground,
            crop_size=self.crop_size,
            context_pad=self.context_pad,
            square=self.crop_mode == "square",
            mirror=self.transformer.mirror,
            scale=self.scale,
            mean=self._mean_image(channels),
            mean_values=values,
            cache_images=self.cache_images,
            seed=seed,
            where=self.where,
        )

    def _set_up_shapes(self) -> list[Shape]:
        hint = _shapes_hint(self.tops)
        windows = self._window_file(hint)
        return [(self.batch_size, windows.channels, self.crop_size, self.crop_size), (self.batch_size,)]

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"source={os.fspath(self.source)!r}", f"batch_size={self.batch_size}"]
        parts.append(
            f"crop_size={self.crop_size}, context_pad={self.context_pad}, crop_mode={self.crop_mode!r}"
        )
        return ", ".join(p for p in parts if p)
