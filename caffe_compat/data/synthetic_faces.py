"""A synthetic face-identity dataset for demos and tests (``caffe-compat make-faces``).

Each identity is a set of drawn facial traits: face outline (width, forehead and chin height,
jaw taper), skin tone, hair (colour, style, hairline), eyebrows, eyes (spacing, size, iris
colour), nose, mouth and lips, ears, and sometimes a beard, moustache, glasses or a mole. Each
image of an identity varies pose (in-plane rotation, scale, shift, a small yaw and pitch that
move the inner features), expression (smile, open mouth, blink), illumination (brightness,
a directional gradient, colour cast), background, blur and noise. Images are 112x96 colour
(the size of the aligned CASIA-WebFace crops the AM-Softmax net takes), with the eyes near the
standard alignment positions, drawn with OpenCV at twice the size and reduced.

The output folder (written to a temporary folder beside it and renamed when complete):
- ``<name>/<name>_0001.png`` ... per identity (LFW's layout; ``.jpg`` with ``image_format="jpg"``);
- ``train.txt`` / ``val.txt``: ``<name>/<name>_NNNN.png label`` lines (paths relative to the
  folder: use it as ``root_folder`` with a trailing slash) for the training identities, labels
  ``0..identities-1``; ``val.txt`` holds each identity's last ``max(1, per_identity // 10)`` images;
- ``pairs.txt``: LFW's View 2 format over *held-out* identities (none of them in train/val): a
  header ``<folds>\\t<n>``, then per fold ``n`` matched lines ``name\\tidx1\\tidx2`` followed by
  ``n`` mismatched lines ``name1\\tidx1\\tname2\\tidx2`` (1-based image numbers); the identities
  of different folds are disjoint, as in LFW;
- ``info.json``: the arguments and counts.

Everything is a function of ``seed``: the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from caffe_compat.errors import CaffeCompatError

HEIGHT, WIDTH = 112, 96
_SCALE = 2  # drawing resolution factor
_SHIFT = 4  # OpenCV fixed-point bits for sub-pixel drawing
_EYE_Y, _EYE_DX, _CX = 51.6, 17.6, 48.0

_HAIR_COLOURS = np.array(
    [
        [20, 20, 25],
        [25, 35, 60],
        [30, 55, 95],
        [60, 110, 170],
        [110, 170, 215],
        [40, 60, 150],
        [160, 160, 165],
        [210, 210, 215],
    ],
    dtype=np.float64,
)  # BGR: black, dark brown, brown, light brown, blond, red, grey, white
_IRIS_COLOURS = np.array(
    [[30, 50, 80], [20, 30, 45], [150, 110, 60], [90, 130, 70], [70, 90, 110]], dtype=np.float64
)
_HAIR_STYLES = ("short", "long", "buzz", "fringe", "parted", "bald")
Points = np.ndarray | Sequence[tuple[float, float]]


def _pt(x: float, y: float) -> tuple[int, int]:
    factor = _SCALE * (1 << _SHIFT)
    return int(round(x * factor)), int(round(y * factor))


def _len(value: float) -> int:
    return max(0, int(round(value * _SCALE * (1 << _SHIFT))))


def _colour(bgr: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.clip(bgr, 0, 255))


def _ellipse(
    img: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    colour: np.ndarray,
    angle: float = 0.0,
    start: int = 0,
    end: int = 360,
    thickness: float = -1,
) -> None:
    cv2.ellipse(
        img,
        _pt(*centre),
        (_len(axes[0]), _len(axes[1])),
        angle,
        start,
        end,
        _colour(colour),
        thickness if thickness < 0 else max(1, int(round(thickness * _SCALE))),
        cv2.LINE_AA,
        _SHIFT,
    )


def _points(points: Points) -> np.ndarray:
    return np.rint(np.asarray(points, dtype=np.float64) * (_SCALE * (1 << _SHIFT))).astype(np.int32)


def _poly(img: np.ndarray, points: Points, colour: np.ndarray) -> None:
    cv2.fillPoly(img, [_points(points)], _colour(colour), cv2.LINE_AA, _SHIFT)


def _polyline(img: np.ndarray, points: Points, colour: np.ndarray, thickness: float) -> None:
    pts = _points(points)
    cv2.polylines(
        img, [pts], False, _colour(colour), max(1, int(round(thickness * _SCALE))), cv2.LINE_AA, _SHIFT
    )


def _circle(img: np.ndarray, centre: tuple[float, float], radius: float, colour: np.ndarray) -> None:
    cv2.circle(img, _pt(*centre), _len(radius), _colour(colour), -1, cv2.LINE_AA, _SHIFT)


def _blend(img: np.ndarray, overlay: np.ndarray, alpha: float) -> np.ndarray:
    return cv2.addWeighted(overlay, alpha, img, 1.0 - alpha, 0.0)


@dataclass
class Identity:
    """The drawn traits of one identity (distances in output pixels, colours BGR)."""

    skin: np.ndarray
    face_half_width: float
    forehead_y: float
    chin_y: float
    jaw: float
    hair: np.ndarray
    hair_style: str
    hairline: float
    hair_volume: float
    eye_y: float
    eye_dx: float
    eye_size: tuple[float, float]
    iris: np.ndarray
    brow_gap: float
    brow_length: float
    brow_thickness: float
    brow_tilt: float
    brow_arch: float
    nose_y: float
    nose_width: float
    nose_style: int
    mouth_y: float
    mouth_half_width: float
    lip_thickness: float
    lip: np.ndarray
    smile: float
    ear_size: float
    beard: float
    moustache: bool
    glasses: np.ndarray | None
    mole: tuple[float, float] | None


def _identity(rng: np.random.Generator) -> Identity:
    tone = rng.uniform(0.0, 1.0)
    warmth = rng.uniform(-1.0, 1.0)
    skin = np.array([45 + 150 * tone - 12 * warmth, 70 + 140 * tone, 100 + 135 * tone + 12 * warmth])
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15) + rng.normal(0, 8, 3)
    lip_red = rng.uniform(0.15, 0.45)
    lip = skin * (1 - lip_red) + np.array([70, 60, 170]) * lip_red
    glasses = None
    if rng.random() < 0.18:
        glasses = np.array([20, 20, 20]) if rng.random() < 0.6 else rng.uniform(30, 200, 3)
    mole = None
    if rng.random() < 0.3:
        mole = (rng.uniform(-20, 20), rng.uniform(58, 95))
    male_like = rng.random() < 0.5
    return Identity(
        skin=skin,
        face_half_width=rng.uniform(29.0, 38.0),
        forehead_y=rng.uniform(12.0, 22.0),
        chin_y=rng.uniform(102.0, 116.0),
        jaw=rng.uniform(0.62, 1.0),
        hair=hair,
        hair_style=_HAIR_STYLES[rng.integers(len(_HAIR_STYLES))],
        hairline=rng.uniform(22.0, 33.0),
        hair_volume=rng.uniform(4.0, 12.0),
        eye_y=_EYE_Y + rng.uniform(-2.5, 2.5),
        eye_dx=_EYE_DX * rng.uniform(0.9, 1.1),
        eye_size=(rng.uniform(4.2, 6.6), rng.uniform(2.0, 3.6)),
        iris=_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.normal(0, 10, 3),
        brow_gap=rng.uniform(6.5, 11.0),
        brow_length=rng.uniform(10.0, 17.0),
        brow_thickness=rng.uniform(1.2, 4.0),
        brow_tilt=rng.uniform(-0.3, 0.3),
        brow_arch=rng.uniform(-0.5, 3.0),
        nose_y=72.0 + rng.uniform(-4.0, 4.0),
        nose_width=rng.uniform(4.5, 10.0),
        nose_style=int(rng.integers(3)),
        mouth_y=92.0 + rng.uniform(-4.0, 3.0),
        mouth_half_width=rng.uniform(8.5, 15.5),
        lip_thickness=rng.uniform(1.2, 4.2),
        lip=lip,
        smile=rng.uniform(-1.5, 3.0),
        ear_size=rng.uniform(4.0, 8.0),
        beard=rng.uniform(0.35, 0.8) if male_like and rng.random() < 0.35 else 0.0,
        moustache=male_like and rng.random() < 0.3,
        glasses=glasses,
        mole=mole,
    )


_ANGLES = np.linspace(0, 2 * np.pi, 48, endpoint=False)
_GRID_Y, _GRID_X = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
_GRID_X = (_GRID_X - WIDTH / 2) / WIDTH * 2
_GRID_Y = (_GRID_Y - HEIGHT / 2) / HEIGHT * 2


def _face_outline(ident: Identity, cx: float) -> np.ndarray:
    """The face contour: an ellipse whose lower half tapers towards the chin, (48, 2) points."""
    top, chin = ident.forehead_y, ident.chin_y
    cy, half_h = (top + chin) / 2, (chin - top) / 2
    x, y = np.cos(_ANGLES), np.sin(_ANGLES)
    taper = 1.0 - (1.0 - ident.jaw) * np.maximum(0.0, y) ** 1.5
    return np.stack([cx + ident.face_half_width * x * taper, cy + half_h * y], axis=1)


def _draw_face(ident: Identity, rng: np.random.Generator) -> np.ndarray:
    """One image of ``ident`` at twice the output size (before lighting and noise)."""
    h, w = HEIGHT * _SCALE, WIDTH * _SCALE
    # background: a random colour with a gradient
    base = rng.uniform(20, 235, 3)
    other = np.clip(base + rng.normal(0, 40, 3), 0, 255)
    ramp = np.linspace(0, 1, h)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, w)[None, :, None]
    img = np.ascontiguousarray(np.broadcast_to(base * (1 - ramp) + other * ramp, (h, w, 3)).astype(np.uint8))

    yaw, pitch = rng.uniform(-1, 1), rng.uniform(-1, 1)
    fx, fy = 4.0 * yaw, 2.0 * pitch  # inner features move with the head's turn
    cx = _CX - 1.0 * yaw
    skin = ident.skin * rng.uniform(0.97, 1.03)
    shade = skin * 0.82
    hair = ident.hair
    top, half_w = ident.forehead_y, ident.face_half_width

    # hair behind the face, neck, ears
    if ident.hair_style == "long":
        _poly(
            img,
            [
                (cx - half_w - 5, top + 8),
                (cx + half_w + 5, top + 8),
                (cx + half_w + 8, 112),
                (cx - half_w - 8, 112),
            ],
            hair,
        )
    _poly(
        img,
        [
            (cx - 0.5 * half_w, 90),
            (cx + 0.5 * half_w, 90),
            (cx + 0.6 * half_w, 113),
            (cx - 0.6 * half_w, 113),
        ],
        shade,
    )
    ear_y = (ident.eye_y + ident.nose_y) / 2 + fy
    for side in (-1, 1):
        _ellipse(
            img,
            (cx + side * (half_w * 0.97) - yaw * 1.5, ear_y),
            (ident.ear_size * 0.55, ident.ear_size * 1.4),
            shade,
        )
    _poly(img, _face_outline(ident, cx), skin)

    # hair on the head
    if ident.hair_style != "bald":
        volume = ident.hair_volume * (0.35 if ident.hair_style == "buzz" else 1.0)
        hairline = ident.hairline + rng.uniform(-1.0, 1.0)
        cap_colour = hair if ident.hair_style != "buzz" else hair * 0.7 + skin * 0.3
        _ellipse(img, (cx, hairline), (half_w + 2.5, hairline - top + volume), cap_colour, start=180, end=360)
        if ident.hair_style == "fringe":
            _poly(
                img,
                [
                    (cx - half_w + 2, hairline - 1),
                    (cx + half_w - 2, hairline - 1),
                    (cx + half_w - 6, ident.eye_y - 11),
                    (cx - half_w + 8, ident.eye_y - 13),
                ],
                hair,
            )
        if ident.hair_style == "parted":
            _polyline(img, [(cx - 6, top - volume + 4), (cx - 9, hairline - 1)], skin * 0.9, 1.0)
        if ident.hair_style == "long":
            for side in (-1, 1):
                _ellipse(img, (cx + side * (half_w - 1), hairline + 12), (5.0, 18.0), hair)

    # beard and moustache
    if ident.beard > 0:
        overlay = img.copy()
        outline = _face_outline(ident, cx)
        jaw = outline[outline[:, 1] > ident.nose_y + 6]
        jaw = jaw[np.argsort(jaw[:, 0])]
        ends = [(jaw[0, 0], ident.nose_y + 6)], [(jaw[-1, 0], ident.nose_y + 6)]
        _poly(overlay, np.concatenate([ends[0], jaw, ends[1]]), hair * 0.8)
        img = _blend(img, overlay, ident.beard)
        _ellipse(img, (cx + fx, ident.mouth_y + fy), (ident.mouth_half_width + 2, 5.5), skin * 0.9)

    # eyebrows and eyes
    blink = rng.random() < 0.07
    for side in (-1, 1):
        ex, ey = cx + side * ident.eye_dx + fx, ident.eye_y + fy
        bx, by = ex, ey - ident.brow_gap + rng.uniform(-0.7, 0.7)
        half = ident.brow_length / 2
        tilt = ident.brow_tilt * side
        brow = [(bx - half, by + tilt * half), (bx, by - ident.brow_arch), (bx + half, by - tilt * half)]
        _polyline(img, brow, hair * 0.75, ident.brow_thickness)
        ew, eh = ident.eye_size
        if blink:
            _polyline(img, [(ex - ew, ey), (ex + ew, ey)], shade * 0.6, 1.0)
            continue
        _ellipse(img, (ex, ey), (ew, eh), np.array([235, 240, 240]))
        gaze = rng.uniform(-1.0, 1.0) + 0.6 * yaw
        _circle(img, (ex + gaze, ey), eh * 0.95, ident.iris)
        _circle(img, (ex + gaze, ey), eh * 0.45, np.array([10, 10, 10]))
        _ellipse(img, (ex, ey), (ew, eh), shade * 0.55, start=180, end=360, thickness=0.7)
        if ident.glasses is not None:
            _ellipse(img, (ex, ey), (ew + 3.5, eh + 3.5), ident.glasses, thickness=1.0)
    if ident.glasses is not None and not blink:
        ey = ident.eye_y + fy
        _polyline(
            img,
            [
                (cx + fx - ident.eye_dx + ident.eye_size[0] + 3.5, ey),
                (cx + fx + ident.eye_dx - ident.eye_size[0] - 3.5, ey),
            ],
            ident.glasses,
            1.0,
        )

    # nose
    nx, ny = cx + fx * 1.4, ident.nose_y + fy
    nw = ident.nose_width
    if ident.nose_style == 0:
        _poly(img, [(nx - 1.0, ident.eye_y + 6 + fy), (nx + nw / 2, ny), (nx - nw / 2, ny)], shade)
    elif ident.nose_style == 1:
        _polyline(img, [(nx - 1.5, ident.eye_y + 5 + fy), (nx - 2.5, ny - 2), (nx, ny)], shade * 0.85, 1.2)
        _ellipse(img, (nx, ny - 1), (nw / 2, 2.2), shade)
    else:
        _ellipse(img, (nx, ny - 2), (nw / 2, 3.5), shade)
    for side in (-1, 1):
        _ellipse(img, (nx + side * nw * 0.28, ny), (1.4, 0.9), shade * 0.5)

    # mouth
    mx, my = cx + fx, ident.mouth_y + fy
    mw = ident.mouth_half_width * rng.uniform(0.93, 1.07)
    smile = ident.smile + rng.uniform(-1.5, 2.0)
    upper = [(mx - mw, my - smile * 0.5), (mx, my - ident.lip_thickness * 0.6), (mx + mw, my - smile * 0.5)]
    lower = [
        (mx + mw, my - smile * 0.5),
        (mx, my + ident.lip_thickness + smile * 0.4),
        (mx - mw, my - smile * 0.5),
    ]
    if rng.random() < 0.2:
        _ellipse(img, (mx, my + 1.5), (mw * 0.7, 2.5 + ident.lip_thickness), np.array([40, 30, 60]))
    _polyline(img, upper, ident.lip, ident.lip_thickness)
    _polyline(img, lower, ident.lip * 0.9, ident.lip_thickness)
    if ident.moustache:
        _polyline(
            img, [(mx - mw * 0.8, my - 2.5), (mx, my - 4.5), (mx + mw * 0.8, my - 2.5)], hair * 0.8, 2.5
        )
    if ident.mole is not None:
        _circle(img, (cx + ident.mole[0] + fx * 0.5, ident.mole[1] + fy), 1.2, skin * 0.4)
    return img


def render_face(ident: Identity, rng: np.random.Generator) -> np.ndarray:
    """One 112x96 BGR uint8 image of ``ident``: drawn, posed, lit and noised with ``rng``."""
    img = _draw_face(ident, rng)
    angle = rng.uniform(-8.0, 8.0)
    scale = rng.uniform(0.93, 1.07)
    centre = (_CX * _SCALE, 60.0 * _SCALE)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += rng.uniform(-3.0, 3.0, 2) * _SCALE
    img = cv2.warpAffine(
        img, matrix, (WIDTH * _SCALE, HEIGHT * _SCALE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    img = cv2.resize(img, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA).astype(np.float32)
    # illumination: brightness, a directional gradient, a colour cast, gamma
    direction = rng.uniform(0, 2 * np.pi)
    ramp = np.float32(np.cos(direction)) * _GRID_X + np.float32(np.sin(direction)) * _GRID_Y
    light = np.float32(rng.uniform(0.7, 1.25)) * (1.0 + np.float32(rng.uniform(0.0, 0.45)) * ramp)
    gains = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    img = img * light[..., None] * gains
    gamma = rng.uniform(0.85, 1.2)
    img = cv2.LUT(np.clip(img, 0, 255).astype(np.uint8), _gamma_table(gamma)).astype(np.float32)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.1))
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.0, 6.0))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _gamma_table(gamma: float) -> np.ndarray:
    return np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)


@dataclass
class FacesReport:
    """What ``make_faces`` wrote."""

    out: Path
    train_images: int
    val_images: int
    pair_identities: int
    pairs: int


def _pairs(
    rng: np.random.Generator, names: list[str], per_identity: int, folds: int, per_fold: int
) -> list[str]:
    """LFW View 2 lines (after the header) over ``names``, split into identity-disjoint folds."""
    groups = np.array_split(rng.permutation(len(names)), folds)
    lines: list[str] = []
    for group in groups:
        members = [names[i] for i in group]
        matched: set[tuple[str, int, int]] = set()
        while len(matched) < per_fold:
            name = members[rng.integers(len(members))]
            a, b = sorted(rng.choice(per_identity, 2, replace=False) + 1)
            matched.add((name, int(a), int(b)))
        mismatched: set[tuple[str, int, str, int]] = set()
        while len(mismatched) < per_fold:
            i, j = sorted(rng.choice(len(members), 2, replace=False))
            mismatched.add(
                (
                    members[i],
                    int(rng.integers(per_identity)) + 1,
                    members[j],
                    int(rng.integers(per_identity)) + 1,
                )
            )
        lines += [f"{n}\t{a}\t{b}" for n, a, b in sorted(matched)]
        lines += [f"{n1}\t{a}\t{n2}\t{b}" for n1, a, n2, b in sorted(mismatched)]
    return lines


def _write_identity(
    folder: Path, seed: int, group: int, index: int, name: str, per_identity: int, image_format: str
) -> list[str]:
    """Render and write every image of one identity; returns their paths relative to ``folder``."""
    ident = _identity(np.random.default_rng([seed, group, index, 0]))
    (folder / name).mkdir()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    paths = []
    for number in range(1, per_identity + 1):
        image = render_face(ident, np.random.default_rng([seed, group, index, number]))
        relative = f"{name}/{name}_{number:04d}.{image_format}"
        ok, buffer = cv2.imencode("." + image_format, image, params)
        if not ok:  # pragma: no cover - OpenCV always encodes these
            raise CaffeCompatError(f"OpenCV cannot encode {relative}")
        (folder / relative).write_bytes(buffer.tobytes())
        paths.append(relative)
    return paths


def _workers(requested: int | None, images: int) -> int:
    if requested is not None:
        return max(1, int(requested))
    if images < 400:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def make_faces(
    out: str | os.PathLike,
    identities: int = 100,
    per_identity: int = 20,
    seed: int = 0,
    pair_identities: int | None = None,
    folds: int = 10,
    pairs_per_fold: int = 30,
    image_format: str = "png",
    workers: int | None = None,
) -> FacesReport:
    """Write the synthetic dataset described in the module docstring into ``out`` (which must not
    exist, or be an empty folder).

    Args:
        identities: training identities (labels ``0..identities-1``).
        per_identity: images per identity (training and held-out).
        seed: the only source of randomness.
        pair_identities: held-out identities for ``pairs.txt`` (default ``max(2 * folds, identities // 2)``).
        folds, pairs_per_fold: ``pairs.txt``'s header ``<folds>\\t<pairs_per_fold>``.
        image_format: ``png`` (lossless) or ``jpg``.
        workers: processes drawing identities in parallel (default: up to 4 CPUs for large
            sets); the output does not depend on it.
    """
    out = Path(out)
    image_format = image_format.lower().lstrip(".")
    if image_format not in ("png", "jpg"):
        raise CaffeCompatError(f"image format must be png or jpg, got {image_format!r}")
    if identities < 1 or per_identity < 2:
        raise CaffeCompatError("need at least 1 identity and 2 images per identity")
    if folds < 1 or pairs_per_fold < 1:
        raise CaffeCompatError("folds and pairs_per_fold must be positive")
    held_out = max(2 * folds, identities // 2) if pair_identities is None else int(pair_identities)
    if held_out < 2 * folds:
        raise CaffeCompatError(
            f"pairs need at least 2 held-out identities per fold ({2 * folds}), got {held_out}"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CaffeCompatError(f"'{out}' already exists and is not an empty folder")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CaffeCompatError(f"cannot write '{out}': folder {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        train_names = [f"train_{i:05d}" for i in range(identities)]
        held_names = [f"person_{i:05d}" for i in range(held_out)]
        jobs = [(tmp, seed, 0, i, name, per_identity, image_format) for i, name in enumerate(train_names)]
        jobs += [(tmp, seed, 1, i, name, per_identity, image_format) for i, name in enumerate(held_names)]
        workers = _workers(workers, len(jobs) * per_identity)
        if workers > 1:
            context = multiprocessing.get_context(
                "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            )
            with context.Pool(workers) as pool:
                written = pool.starmap(_write_identity, jobs, chunksize=4)
        else:
            written = [_write_identity(*job) for job in jobs]
        val_count = max(1, per_identity // 10)
        train_lines, val_lines = [], []
        for index, paths in enumerate(written[:identities]):
            train_lines += [f"{path} {index}" for path in paths[: per_identity - val_count]]
            val_lines += [f"{path} {index}" for path in paths[per_identity - val_count :]]
        pair_lines = _pairs(np.random.default_rng([seed, 2]), held_names, per_identity, folds, pairs_per_fold)
        (tmp / "train.txt").write_text("\n".join(train_lines) + "\n")
        (tmp / "val.txt").write_text("\n".join(val_lines) + "\n")
        (tmp / "pairs.txt").write_text(f"{folds}\t{pairs_per_fold}\n" + "\n".join(pair_lines) + "\n")
        info = {
            "seed": seed,
            "identities": identities,
            "per_identity": per_identity,
            "pair_identities": held_out,
            "folds": folds,
            "pairs_per_fold": pairs_per_fold,
            "image_format": image_format,
            "size": [HEIGHT, WIDTH],
            "train_images": len(train_lines),
            "val_images": len(val_lines),
            "image_path": "<name>/<name>_%04d." + image_format,
        }
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FacesReport(out, len(train_lines), len(val_lines), held_out, len(pair_lines))
