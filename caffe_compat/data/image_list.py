"""The image-list source of Caffe's ``ImageData`` layer (the fork's ``image_data_layer.cpp``).

Rules followed:
- the list file has one ``path label`` per line, split at the *last* space (paths may contain
  spaces); the image read is ``root_folder + path`` joined as text, as Caffe does;
- batches take consecutive entries and wrap around the list (Caffe's ``lines_id_``); with
  ``shuffle`` the list is permuted at set-up and again at each wrap-around; ``rand_skip`` starts
  the first pass at a random entry in ``[0, rand_skip)``;
- each image is read with ``ReadImageToCVMat(root_folder + path, new_height, new_width,
  is_color)`` and transformed; the batch takes its shape from its first image, and the others
  must match it (Caffe's CHECKs);
- the fork's ``balance_class`` visits the classes ``0..max_label`` in turn and draws an image of
  the class without replacement (all of the class before any again); a third top gets the
  fork's class weights ``(N / (max_label + 1)) / count(label)`` (float32).

Deliberate deviations: a label that is not an integer, or a line without a space, is an error
naming the line (Caffe's ``atoi`` reads 0); blank lines are skipped (Caffe would fail on them);
the permutations and draws come from numpy generators seeded by ``(seed, ...)``, so the order of
every pass and every random crop/mirror is a function of the seed and the stream position, not
of Caffe's generator. Relative image paths resolve against the working directory at set-up, then
the prototxt's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from caffe_compat.data.images import ImageReadError, read_image
from caffe_compat.data.transformer import DataTransformer, transform_into_batch
from caffe_compat.errors import CaffeCompatError

# Stream tags that keep the independent random draws of one seed apart.
_SHUFFLE, _SKIP, _BALANCE = 1, 2, 3


@dataclass
class ImageList:
    """The parsed list file: image paths (as written), integer labels, and the list's path."""

    path: Path
    names: list[str]
    labels: np.ndarray  # int64, one per entry
    lines: np.ndarray  # 1-based line number in the list file of each entry

    def where(self, index: int) -> str:
        return f"line {int(self.lines[index])} of {self.path}"


def read_list_text(path: Path, hint: str = "") -> str:
    """The text of an image list file; an error naming it (and ``hint``) when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CaffeCompatError(
            f"cannot read the image list '{path}' ({reason}){'; ' + hint if hint else ''}"
        ) from None


def resolve_image_path(root_folder: str, name: str, base_dirs: list[Path]) -> Path:
    """``root_folder + name`` (joined as text, as Caffe does), tried against each base folder
    when relative; the first candidate when none exists."""
    joined = Path(root_folder + name)
    if joined.is_absolute():
        return joined
    candidates = [base / joined for base in base_dirs]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0] if candidates else joined


def read_image_list(path: str | os.PathLike, hint: str = "") -> ImageList:
    """Parse a Caffe image list (``path label`` per line, split at the last space).

    Raises:
        CaffeCompatError: the file cannot be read, is empty, or a line has no integer label.
    """
    path = Path(path)
    text = read_list_text(path, hint)
    names: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        name, space, label = line.rpartition(" ")
        if not space or not name:
            raise CaffeCompatError(
                f"line {number} of {path}: expected 'path label' separated by a space, got {line!r}"
            )
        try:
            value = int(label)
        except ValueError:
            raise CaffeCompatError(
                f"line {number} of {path}: the label {label!r} is not an integer (lines are 'path label')"
            ) from None
        names.append(name)
        labels.append(value)
        lines.append(number)
    if not names:
        raise CaffeCompatError(f"the image list '{path}' is empty")
    return ImageList(path, names, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64))


def draw_skip(seed: int, rand_skip: int) -> int:
    """``rand_skip``'s draw: the entry the first pass starts at, in ``[0, rand_skip)``."""
    return int(np.random.default_rng([seed, _SKIP]).integers(rand_skip)) if rand_skip > 0 else 0


@dataclass
class ImageListSource:
    """Batches of an ``ImageData`` layer as a pure function of the batch number (picklable).

    Attributes:
        images: the parsed list.
        root_folder: prepended to every path as text (Caffe's ``root_folder``).
        base_dirs: folders a relative ``root_folder + path`` is tried in, in order.
        new_height, new_width, is_color: ``ReadImageToCVMat``'s arguments.
        transformer: the layer's DataTransformer.
        batch_size: entries per batch.
        shuffle, balance: ``image_data_param.shuffle`` / the fork's ``balance_class``.
        num_tops: 2 (data, label) or 3 (data, label, class weight).
        seed: seeds every permutation and random draw (needed when anything is random).
        skip: the first pass starts at this entry (``rand_skip``'s draw).
        where: error prefix naming the layer.
    """

    images: ImageList
    root_folder: str
    base_dirs: list[Path]
    new_height: int
    new_width: int
    is_color: bool
    transformer: DataTransformer
    batch_size: int
    shuffle: bool = False
    balance: bool = False
    num_tops: int = 2
    seed: int = 0
    skip: int = 0
    where: str = "ImageData"
    _epoch: tuple[int, np.ndarray] | None = field(default=None, repr=False)
    _class_members: list[np.ndarray] | None = field(default=None, repr=False)
    _class_rounds: dict = field(default_factory=dict, repr=False)
    _weights: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        labels = self.images.labels
        if (self.balance or self.num_tops == 3) and labels.min() < 0:
            index = int(np.argmax(labels < 0))
            raise CaffeCompatError(
                f"{self.where}: {self.images.where(index)}: negative label {int(labels[index])} "
                "(balance_class and the class-weight top index classes by label)"
            )

    # -- order ---------------------------------------------------------------------------------
    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            count = len(self.images.names)
            order = np.random.default_rng([self.seed, _SHUFFLE, epoch]).permutation(count)
            self._epoch = (epoch, order)
        return self._epoch[1]

    def _members(self) -> list[np.ndarray]:
        if self._class_members is None:
            labels = self.images.labels
            members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
            for label, found in enumerate(members):
                if found.size == 0:
                    raise CaffeCompatError(
                        f"{self.where}: balance_class visits every label 0..{len(members) - 1}, "
                        f"but the list {self.images.path} has no image of label {label}"
                    )
            self._class_members = members
        return self._class_members

    def entry(self, position: int) -> int:
        """The list entry read at stream ``position`` (0 = the first image the layer reads)."""
        if self.balance:
            members = self._members()
            label, visit = position % len(members), position // len(members)
            chosen = members[label]
            round_index, offset = divmod(visit, chosen.size)
            key = (label, round_index)
            if key not in self._class_rounds:
                if len(self._class_rounds) > 4 * len(members):
                    self._class_rounds.clear()
                generator = np.random.default_rng([self.seed, _BALANCE, label, round_index])
                self._class_rounds[key] = generator.permutation(chosen.size)
            return int(chosen[self._class_rounds[key][offset]])
        count = len(self.images.names)
        epoch, index = divmod(self.skip + position, count)
        return int(self._permutation(epoch)[index]) if self.shuffle else index

    # -- reading -------------------------------------------------------------------------------
    def image_path(self, index: int) -> Path:
        """Where entry ``index`` is read from: ``root_folder + path`` (as text), tried against
        each base folder when relative; the first candidate when none exists."""
        return resolve_image_path(self.root_folder, self.images.names[index], self.base_dirs)

    def read(self, index: int) -> np.ndarray:
        """Entry ``index`` decoded and resized, ``(C, H, W)`` uint8; errors name the list line."""
        path = self.image_path(index)
        try:
            return read_image(path, self.new_height, self.new_width, self.is_color)
        except ImageReadError as exc:
            hint = ""
            if exc.missing and self.root_folder and not self.root_folder.endswith(("/", "\\")):
                hint = (
                    f" (root_folder '{self.root_folder}' is joined to the path as text, as Caffe does:"
                    " end it with '/')"
                )
            raise CaffeCompatError(f"{self.where}: {exc} ({self.images.where(index)}){hint}") from None

    def first_shape(self) -> tuple[int, int, int]:
        """The transformed shape of the list's first image (read from disk), for set-up."""
        image = self.read(0)
        try:
            self.transformer.check(image.shape, f"image '{self.image_path(0)}'")
        except CaffeCompatError as exc:
            raise CaffeCompatError(f"{self.where}: {exc} ({self.images.where(0)})") from None
        return self.transformer.output_shape(image.shape)

    def transform_into(
        self, data: np.ndarray | None, item: int, index: int, image: np.ndarray, position: int
    ) -> np.ndarray:
        """Transform entry ``index``'s ``image``, read at stream ``position``, into row ``item`` of
        the batch ``data`` (allocated by the first); errors name the list line. Returns the batch."""
        try:
            return transform_into_batch(
                self.transformer,
                data,
                item,
                self.batch_size,
                image,
                self.seed,
                position,
                f"image '{self.image_path(index)}'",
                "image",
                "give new_height/new_width or a crop so the images agree",
            )
        except CaffeCompatError as exc:
            if str(exc).startswith(self.where):
                raise
            raise CaffeCompatError(f"{self.where}: {exc} ({self.images.where(index)})") from None

    def class_weights(self) -> np.ndarray:
        """The fork's per-class weights (float32): mean images per class / images of the class."""
        labels = self.images.labels
        counts = np.bincount(labels, minlength=int(labels.max()) + 1)
        mean_count = np.float32(labels.size) / np.float32(counts.size)
        weights = np.ones(counts.size, dtype=np.float32)
        present = counts > 0
        weights[present] = mean_count / counts[present].astype(np.float32)
        return weights

    def batch(self, number: int) -> tuple[torch.Tensor, ...]:
        """Batch ``number`` (0 = the first the layer produces): data, label[, weight]."""
        start = number * self.batch_size
        data: np.ndarray | None = None
        labels = np.empty(self.batch_size, dtype=np.float32)
        entries = []
        for item in range(self.batch_size):
            position = start + item
            index = self.entry(position)
            entries.append(index)
            data = self.transform_into(data, item, index, self.read(index), position)
            labels[item] = self.images.labels[index]
        tops = [torch.from_numpy(data), torch.from_numpy(labels)]
        if self.num_tops == 3:
            if self._weights is None:
                self._weights = self.class_weights()
            tops.append(torch.from_numpy(self._weights[self.images.labels[entries]]))
        return tuple(tops)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_epoch"] = None
        state["_class_rounds"] = {}
        return state
