"""``MultiLabelImageData``: images with several float labels each (the fork's
``multi_label_image_data_layer.cpp``), optionally with its face alignment augmentation.

The list file has one image per line, ``path label_1 ... label_K`` separated by whitespace (the
path is the first token, so it cannot contain spaces); every line has the same number ``K`` of
labels, read as floats. As the fork reads it, the list ends at the first line that is blank, whose
path is shorter than 3 characters, or whose path repeats the line before (later lines are not
read; a warning says so). Images are read as ``ImageData`` reads them (``root_folder + path``,
OpenCV, BGR, resized to ``new_height`` x ``new_width`` when given), transformed by the
DataTransformer, in list order with wrap-around (``shuffle``: a new permutation per pass;
``rand_skip``: a random start). Tops: data ``(N, C, H, W)`` and label ``(N - 2 * label_cut_start,
K)``: the fork reads ``label_cut_start`` for both ends (``label_cut_end`` is never read), and
only the items ``label_cut_start <= i < N - label_cut_start`` write their labels (row
``i - label_cut_start``). ``balance_class``/``balance_by`` have no effect (the fork builds
per-class tables that its batches never read).

``face_transform: true`` reads each image at full size and warps it with the fork's
``extract_face``: the first 10 labels are landmark coordinates (eye 1, eye 2, nose, mouth
corners as x, y pairs); the face centre (eye midpoint) is shifted by ``max_random_shift``, and a
random shear (``max_shear_ratio``), rotation (an integer angle within ``max_rotate_angle``
degrees), scale (``[min_random_scale, max_random_scale]`` of a face size twice the eye-to-mouth
distance mapped to half of ``new_height``), aspect ratio (``max_aspect_ratio``) and, with
``face_mirror``, a horizontal flip (which swaps the eye and mouth-corner points) give the affine
map to a ``new_width`` x ``new_height`` image (bilinear, border colour ``cv::Scalar(128)``, i.e.
128 in the first channel only). The first ``face_point_num`` points are mapped too and become
labels relative to the output centre; a sample with a point beyond ``0.45`` of the output size
from the centre is skipped for the next list entry. Float32/float64 arithmetic follows the
fork's types.

Deliberate deviations:
- random numbers come from numpy generators seeded by the layer's ``seed`` and the position in
  the stream (shuffling, skipping, the transformer's draws, the face draws), not from Caffe's
  generators; the fork seeds its face generator with ``time(NULL)`` at every image, so all the
  images of one second share their draws there;
- a missing or undecodable image is an error naming the list line (the fork skips it, except
  as the first image of a batch, where it aborts);
- errors replace what the fork reads past or loops on: a label that is not a number (the fork
  loops forever), a line without labels or with another count than the first line, a line over
  1023 characters (the fork stops reading there), ``face_transform`` with ``label_cut_start``
  (the fork transforms another row's stale labels), with fewer than 10 (or ``2 *
  face_point_num``) labels, or without ``new_height``/``new_width``;
- trailing whitespace (``\\r`` included) at the end of a line is ignored (the fork's loop reads
  the last label twice);
- with ``face_transform``, finding where batch ``n`` starts in the list replays the validity
  test of the samples before it (labels and draws only, no image is read), once per process.
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

from caffe_compat.data.image_list import ImageList, ImageListSource, read_list_text
from caffe_compat.data.transformer import DataTransformer
from caffe_compat.errors import CaffeCompatError
from caffe_compat.layers.base import BuildContext, Shape
from caffe_compat.layers.image_data import (
    _LEGACY_TRANSFORM,
    _absolute,
    _ignored_fields,
    _ImageListLayer,
    _shapes_hint,
    _transformer,
)
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

logger = logging.getLogger("caffe_compat")

_MAX_LINE = 1023  # the fork's getline buffer holds 1024 characters with the terminating NUL
_FACE_DRAWS = 21  # stream tag of the face augmentation draws
_FACE_FIELDS = (
    "max_shear_ratio",
    "max_aspect_ratio",
    "max_rotate_angle",
    "min_random_scale",
    "max_random_scale",
    "max_random_shift",
    "face_mirror",
    "face_point_num",
)
_VALID_EXTENT = 0.45
_LANDMARK_VALUES = 10  # extract_face reads points 0..4 (eyes, nose, mouth corners)


def read_multilabel_list(path: str | os.PathLike, hint: str = "") -> ImageList:
    """Parse a multi-label list (``path label ... label`` per line) as the fork reads it.

    Returns an ``ImageList`` whose ``labels`` are ``(N, K)`` float32.

    Raises:
        CaffeCompatError: the file cannot be read, has no entry, or a line is malformed.
    """
    path = Path(path)
    lines = read_list_text(path, hint).splitlines()
    names: list[str] = []
    rows: list[list[float]] = []
    numbers: list[int] = []
    for number, line in enumerate(lines, start=1):
        if len(line) > _MAX_LINE:
            raise CaffeCompatError(
                f"line {number} of {path}: {len(line)} characters; the fork reads {_MAX_LINE} at most"
            )
        tokens = line.split()
        reason = ""
        if not tokens:
            reason = "a blank line"
        elif len(tokens[0]) < 3:
            reason = f"a path shorter than 3 characters ({tokens[0]!r})"
        elif names and tokens[0] == names[-1]:
            reason = f"the same image as the line before ({tokens[0]!r})"
        if reason:
            rest = sum(1 for later in lines[number:] if later.strip())
            if rest:
                logger.warning(
                    "%s: the list ends at line %d (%s), as the fork reads it: %d later line(s) are not read",
                    path,
                    number,
                    reason,
                    rest,
                )
            break
        name, values = tokens[0], tokens[1:]
        if not values:
            raise CaffeCompatError(
                f"line {number} of {path}: {name!r} has no labels (lines are 'path label ...')"
            )
        try:
            row = [float(value) for value in values]
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            raise CaffeCompatError(f"line {number} of {path}: the label {bad!r} is not a number") from None
        if rows and len(row) != len(rows[0]):
            raise CaffeCompatError(
                f"line {number} of {path}: {len(row)} labels, but line {numbers[0]} has {len(rows[0])} "
                "(every line must have the same number)"
            )
        names.append(name)
        rows.append(row)
        numbers.append(number)
    if not names:
        raise CaffeCompatError(f"the image list '{path}' has no entry")
    labels = np.asarray(rows, dtype=np.float32)
    return ImageList(path, names, labels, np.asarray(numbers, dtype=np.int64))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class FaceTransform:
    """The fork's ``extract_face`` parameters; ``width``/``height`` are the output size."""

    width: int
    height: int
    point_num: int
    max_shift: int
    max_shear: float
    max_aspect: float
    max_rotate: int
    min_scale: float
    max_scale: float
    mirror: bool

    def draw(self, points: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """The affine map (float32, 2x3) and the flip (+1/-1) for one sample's landmarks."""
        f32 = np.float32
        face_x = float((points[0] + points[2]) / f32(2))
        face_y = float((points[1] + points[3]) / f32(2))
        mouth_x = float((points[6] + points[8]) / f32(2))
        mouth_y = float((points[7] + points[9]) / f32(2))
        face_scale = 2.0 * math.sqrt((face_x - mouth_x) ** 2 + (face_y - mouth_y) ** 2)
        face_x += int(rng.integers(-self.max_shift, self.max_shift + 1))
        face_y += int(rng.integers(-self.max_shift, self.max_shift + 1))
        max_shear, max_aspect = f32(self.max_shear), f32(self.max_aspect)
        shear = rng.random(dtype=np.float32) * max_shear * f32(2) - max_shear
        angle = int(rng.integers(-self.max_rotate, self.max_rotate + 1))
        cos = f32(math.cos(angle / 180.0 * math.pi))
        sin = f32(math.sin(angle / 180.0 * math.pi))
        min_scale, max_scale = f32(self.min_scale), f32(self.max_scale)
        scale = rng.random(dtype=np.float32) * (max_scale - min_scale) + min_scale
        scale = f32(float(scale * f32(self.height)) / (face_scale * 2.0))
        ratio = rng.random(dtype=np.float32) * max_aspect * f32(2) - max_aspect + f32(1)
        hs = f32(2) * scale / (f32(1) + ratio)
        ws = ratio * hs
        flip = int(rng.integers(2)) * 2 - 1 if self.mirror else 1
        hs = hs * f32(flip)
        matrix = np.empty((2, 3), dtype=np.float32)
        matrix[0, 0] = hs * cos - shear * sin * ws
        matrix[1, 0] = -sin * ws
        matrix[0, 1] = hs * sin + shear * cos * ws
        matrix[1, 1] = cos * ws
        matrix[0, 2] = self.width // 2 - float(matrix[0, 0]) * face_x - float(matrix[0, 1]) * face_y
        matrix[1, 2] = self.height // 2 - float(matrix[1, 0]) * face_x - float(matrix[1, 1]) * face_y
        return matrix, flip

    def move_points(self, points: np.ndarray, matrix: np.ndarray, flip: int) -> np.ndarray:
        """The labels after the map: the first ``point_num`` points relative to the output centre,
        the eye and mouth-corner points swapped when flipped (float32)."""
        out = points.copy()
        for j in range(self.point_num):
            x, y = points[2 * j], points[2 * j + 1]
            out[2 * j] = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2] - np.float32(self.width // 2)
            out[2 * j + 1] = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2] - np.float32(self.height // 2)
        if flip == -1:
            for a, b in ((0, 2), (1, 3), (6, 8), (7, 9)):
                out[a], out[b] = out[b], out[a]
        return out

    def valid(self, points: np.ndarray) -> bool:
        """The fork's test: every mapped point within 0.45 of the output size from the centre."""
        x_extent, y_extent = _VALID_EXTENT * self.width, _VALID_EXTENT * self.height
        for j in range(self.point_num):
            x, y = float(points[2 * j]), float(points[2 * j + 1])
            if x < -x_extent or x > x_extent or y < -y_extent or y > y_extent:
                return False
        return True

    def warp(self, image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """``cv::warpAffine`` of a ``(C, H, W)`` image to ``(C, height, width)``."""
        hwc = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
        out = cv2.warpAffine(
            hwc,
            matrix,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(128, 0, 0, 0),
        )
        return out[np.newaxis] if out.ndim == 2 else np.ascontiguousarray(out.transpose(2, 0, 1))


@dataclass
class MultiLabelSource:
    """Batches of a ``MultiLabelImageData`` layer as a function of the batch number (picklable).

    ``images`` walks the list (order, shuffling, skipping, reading); a *visit* is one step of
    that walk. Without ``face`` batch ``n`` takes visits ``n * batch_size ...``; with it, the
    samples that fail the landmark test are skipped, so the first visit of a batch is found by
    replaying the test from the last batch whose start is known.
    """

    images: ImageListSource
    batch_size: int
    label_cut: int
    face: FaceTransform | None
    seed: int
    where: str
    _starts: dict[int, int] = field(default_factory=lambda: {0: 0}, repr=False)

    @property
    def max_skips(self) -> int:
        """Consecutive invalid samples after which the stream is declared hopeless (the fork
        would loop forever)."""
        return max(1000, 10 * len(self.images.images.names))

    def _face_sample(self, visit: int) -> tuple[int, np.ndarray, np.ndarray, bool]:
        index = self.images.entry(visit)
        points = self.images.images.labels[index]
        rng = np.random.default_rng([self.seed, _FACE_DRAWS, visit])
        matrix, flip = self.face.draw(points, rng)
        moved = self.face.move_points(points, matrix, flip)
        return index, matrix, moved, self.face.valid(moved)

    def _next_valid(self, visit: int) -> int:
        for skipped in range(self.max_skips + 1):
            if self._face_sample(visit + skipped)[3]:
                return visit + skipped
        raise CaffeCompatError(
            f"{self.where}: {self.max_skips} samples in a row from visit {visit} put a landmark beyond "
            f"{_VALID_EXTENT} of the output size from the centre: check the landmark labels and the "
            "face_transform ranges"
        )

    def _start(self, number: int) -> int:
        if self.face is None:
            return number * self.batch_size
        known = max(k for k in self._starts if k <= number)
        visit = self._starts[known]
        for _ in range(known, number):
            for _ in range(self.batch_size):
                visit = self._next_valid(visit) + 1
        if len(self._starts) > 256:
            self._starts = {0: 0}
        self._starts[number] = visit
        return visit

    def batch(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``number``: data ``(N, C, H, W)`` and labels ``(N - 2 * label_cut, K)``."""
        visit = self._start(number)
        names = self.images.images
        data: np.ndarray | None = None
        labels = np.zeros((self.batch_size - 2 * self.label_cut, names.labels.shape[1]), dtype=np.float32)
        for item in range(self.batch_size):
            if self.face is not None:
                visit = self._next_valid(visit)
                index, matrix, row, _ = self._face_sample(visit)
                image = self.face.warp(self.images.read(index), matrix)
            else:
                index = self.images.entry(visit)
                row = names.labels[index]
                image = self.images.read(index)
            data = self.images.transform_into(data, item, index, image, visit)
            if self.label_cut <= item < self.batch_size - self.label_cut:
                labels[item - self.label_cut] = row
            visit += 1
        if self.face is not None:
            self._starts[number + 1] = visit
        return torch.from_numpy(data), torch.from_numpy(labels)


@register("MultiLabelImageData")
class MultiLabelImageData(_ImageListLayer):
    """Images with ``K`` float labels each, from a list file (see the module docstring for the
    line format, the fork's rules, ``face_transform`` and the deviations). Tops: data
    ``(N, C, H, W)``, label ``(N - 2 * label_cut_start, K)``.

    Only the list is read when the net is built (for ``K``), plus the list's first image when
    neither ``new_height``/``new_width`` nor a crop gives the data shape (the fork reads the
    first after shuffling and skipping; each batch takes the shape of its own first image in
    both); nothing when ``input_shapes`` gives the tops' shapes.
    """

    family = "data"

    example = """
layer { name: "data" type: "MultiLabelImageData" top: "data" top: "label"
        transform_param { mirror: true crop_size: 4 mean_value: 104 mean_value: 117 mean_value: 123 }
        image_data_param { source: "multilabel_list.txt" root_folder: "images/" batch_size: 2
                           new_height: 6 new_width: 5 shuffle: true } }
"""
    example_input_shapes = {"data": (2, 3, 4, 4), "label": (2, 3)}

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
        label_cut: int = 0,
        face: FaceTransform | None = None,
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
        self.label_cut = int(label_cut)
        self.face = face

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> MultiLabelImageData:
        ctx.check_bottoms(0)
        ctx.check_tops(2)
        param = layer.image_data_param
        where = f"layer '{layer.name}' (MultiLabelImageData)"
        cls._check_list_param(param, ctx)
        if 2 * param.label_cut_start >= param.batch_size:
            raise ctx.error(
                f"label_cut_start {param.label_cut_start} is cut from both ends of a batch of "
                f"{param.batch_size}: nothing is left (the fork reads label_cut_start for both ends)"
            )
        _ignored_fields(param, _LEGACY_TRANSFORM, where, "Caffe reads these from transform_param")
        _ignored_fields(
            param,
            ("balance_class", "balance_by"),
            where,
            "the fork's MultiLabelImageData builds per-class tables that its batches never read",
        )
        _ignored_fields(param, ("label_cut_end",), where, "the fork reads label_cut_start for both ends")
        face = None
        if param.face_transform:
            if param.new_height <= 0:
                raise ctx.error("face_transform warps to new_height x new_width: set both")
            if param.label_cut_start:
                raise ctx.error(
                    "face_transform with label_cut_start: the fork maps the landmarks of another "
                    "batch row (stale labels), which cannot be reproduced"
                )
            face = FaceTransform(
                width=param.new_width,
                height=param.new_height,
                point_num=param.face_point_num,
                max_shift=param.max_random_shift,
                max_shear=param.max_shear_ratio,
                max_aspect=param.max_aspect_ratio,
                max_rotate=int(param.max_rotate_angle),
                min_scale=param.min_random_scale,
                max_scale=param.max_random_scale,
                mirror=param.face_mirror,
            )
        else:
            _ignored_fields(param, _FACE_FIELDS, where, "they apply only with face_transform: true")
        transformer = _transformer(layer, ctx, where)
        return cls(
            _absolute(ctx.resolve_path(param.source)),
            list(layer.top),
            transformer,
            param.batch_size,
            label_cut=param.label_cut_start,
            face=face,
            **cls._list_options(layer, ctx),
        )

    def _needs_seed(self) -> bool:
        return super()._needs_seed() or self.face is not None

    def _read_list(self, hint: str) -> ImageList:
        images = read_multilabel_list(self.source, hint)
        if self.face is not None:
            needed = max(_LANDMARK_VALUES, 2 * self.face.point_num)
            if images.labels.shape[1] < needed:
                raise self._error(
                    f"face_transform reads the first {needed} labels as landmark coordinates (x, y of "
                    "eyes, nose, mouth corners, and face_point_num points), but the lines of "
                    f"{self.source} have {images.labels.shape[1]} labels"
                )
        return images

    def _list_source(self, images: ImageList, resize: bool = True, **options) -> ImageListSource:
        # face_transform reads each image at full size and warps it to new_height x new_width
        return super()._list_source(images, resize and self.face is None, **options)

    def _make_source(self, seed: int) -> MultiLabelSource:
        images = self._image_list()
        skip = self._skip(images, seed)
        return MultiLabelSource(
            images=self._list_source(images, shuffle=self.shuffle, seed=seed, skip=skip),
            batch_size=self.batch_size,
            label_cut=self.label_cut,
            face=self.face,
            seed=seed,
            where=self.where,
        )

    def _set_up_shapes(self) -> list[Shape]:
        hint = _shapes_hint(self.tops).replace("'label': (N,)", "'label': (N, K)")
        images = self._image_list(hint)
        shape = self._data_shape(lambda: images)
        label_rows = self.batch_size - 2 * self.label_cut
        return [(self.batch_size, *shape), (label_rows, int(images.labels.shape[1]))]

    def _repr_parts(self) -> list[str]:
        parts = super()._repr_parts()
        if self.face is not None:
            parts.append("face_transform=True")
        return parts
