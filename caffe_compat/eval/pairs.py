"""LFW-style pairs files (``pairs.txt``): reading them and naming their images.

Format (LFW's View 2, also SphereFace's ``test/data/pairs.txt``): a header ``<sets> <n>``
(``10 300``), then for each set ``n`` matched lines ``name idx1 idx2`` and ``n`` mismatched lines
``name1 idx1 name2 idx2``, fields separated by tabs or spaces. A header with one number ``n``
(LFW's ``pairsDevTrain.txt``) is one set. The fold of the i-th pair (from 0) is ``i // (2 n)``,
SphereFace's ``ceil(i / 600)`` counted from 1. Images are ``root/<pattern>``, the pattern
formatted with ``name`` and ``idx`` (LFW: ``{name}/{name}_{idx:04d}.jpg``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from caffe_compat.errors import CaffeCompatError

LFW_PATTERN = "{name}/{name}_{idx:04d}.jpg"


class Pair(NamedTuple):
    """One pair of a pairs file: its two images, whether they show one person, and its fold."""

    name_a: str
    index_a: int
    name_b: str
    index_b: int
    same: bool
    fold: int


def _index(text: str, path: Path, line_number: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CaffeCompatError(f"{path}:{line_number}: image number '{text}' is not an integer") from None
    if value < 0:
        raise CaffeCompatError(f"{path}:{line_number}: image number {value} is negative")
    return value


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Read an LFW-format pairs file (see the module docstring).

    Raises:
        CaffeCompatError: unreadable file, bad header, a line that is neither a matched nor a
            mismatched pair (named by line number), or a pair count that disagrees with the header.
    """
    pairs_path = Path(path)
    try:
        text = pairs_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise CaffeCompatError(f"cannot read pairs file {pairs_path}: no such file") from None
    except OSError as exc:
        raise CaffeCompatError(f"cannot read pairs file {pairs_path}: {exc.strerror or exc}") from None
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise CaffeCompatError(f"{pairs_path}: empty pairs file")
    header_number, header = lines[0]
    if len(header) not in (1, 2) or not all(field.isdigit() for field in header):
        raise CaffeCompatError(
            f"{pairs_path}:{header_number}: expected a header '<sets> <pairs per set and kind>' "
            f"(LFW: '10 300'), got '{' '.join(header)}'"
        )
    sets, per_kind = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    if sets < 1 or per_kind < 1:
        raise CaffeCompatError(
            f"{pairs_path}:{header_number}: header '{' '.join(header)}' announces no pairs"
        )
    pairs: list[Pair] = []
    for position, (number, fields) in enumerate(lines[1:]):
        fold = position // (2 * per_kind)
        if len(fields) == 3:
            name, first, second = fields
            pairs.append(
                Pair(
                    name,
                    _index(first, pairs_path, number),
                    name,
                    _index(second, pairs_path, number),
                    True,
                    fold,
                )
            )
        elif len(fields) == 4:
            name_a, first, name_b, second = fields
            pairs.append(
                Pair(
                    name_a,
                    _index(first, pairs_path, number),
                    name_b,
                    _index(second, pairs_path, number),
                    False,
                    fold,
                )
            )
        else:
            raise CaffeCompatError(
                f"{pairs_path}:{number}: expected 'name idx1 idx2' or 'name1 idx1 name2 idx2', "
                f"got {len(fields)} fields: '{' '.join(fields)}'"
            )
    expected = sets * 2 * per_kind
    if len(pairs) != expected:
        raise CaffeCompatError(
            f"{pairs_path}: the header announces {sets} x 2 x {per_kind} = {expected} pairs, "
            f"the file has {len(pairs)}"
        )
    return pairs


def image_path(root: str | os.PathLike, name: str, index: int, pattern: str = LFW_PATTERN) -> Path:
    """``root / pattern.format(name=name, idx=index)``."""
    try:
        relative = pattern.format(name=name, idx=index)
    except (KeyError, IndexError, ValueError) as exc:
        raise CaffeCompatError(
            f"bad image pattern '{pattern}': {exc} (use the fields {{name}} and {{idx}})"
        ) from None
    return Path(root) / relative


def pair_images(
    pairs: list[Pair], root: str | os.PathLike, pattern: str = LFW_PATTERN
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The distinct images of ``pairs`` (first-appearance order) and, for each pair, the index of
    its two images in that list: ``(paths, index_a, index_b)``."""
    position: dict[Path, int] = {}
    index_a = np.empty(len(pairs), dtype=np.int64)
    index_b = np.empty(len(pairs), dtype=np.int64)
    for i, pair in enumerate(pairs):
        for target, name, idx in ((index_a, pair.name_a, pair.index_a), (index_b, pair.name_b, pair.index_b)):
            path = image_path(root, name, idx, pattern)
            target[i] = position.setdefault(path, len(position))
    return list(position), index_a, index_b


def pair_labels(pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """``(issame, fold)`` arrays of ``pairs``, as :func:`evaluate_pairs` takes them."""
    return np.array([pair.same for pair in pairs], dtype=bool), np.array(
        [pair.fold for pair in pairs], dtype=np.int64
    )
