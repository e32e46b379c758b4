"""Caffe's DataTransformer: every option against a literal transcription of the fork's per-pixel
loop (data_transformer.cpp), the random draws' rules, and the error messages."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.data.transformer import DataTransformer, sample_generator
from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import array_to_blob, parse_text, write_bytes_atomic

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def caffe_loop(image, mean_file, mean_values, scale, crop, do_mirror, h_off, w_off) -> np.ndarray:
    """The fork's ``Transform(cv::Mat)`` loop, pixel by pixel, in float32 (the reference)."""
    channels, height, width = image.shape
    out_h, out_w = crop if crop else (height, width)
    values = list(mean_values)
    if len(values) == 1:
        values = values * channels
    out = np.zeros((channels, out_h, out_w), dtype=np.float32)
    for h in range(out_h):
        for w in range(out_w):
            for c in range(channels):
                top_w = out_w - 1 - w if do_mirror else w
                pixel = np.float32(image[c, h_off + h, w_off + w])
                if mean_file is not None:
                    value = (pixel - np.float32(mean_file[c, h_off + h, w_off + w])) * np.float32(scale)
                elif values:
                    value = (pixel - np.float32(values[c])) * np.float32(scale)
                else:
                    value = pixel * np.float32(scale)
                out[c, h, top_w] = value
    return out


def transformer(text: str, phase: int = TRAIN, mean: Path | None = None) -> DataTransformer:
    param = parse_text(text, caffe_pb2.TransformationParameter())
    return DataTransformer(param, phase, mean, "layer 'data' (ImageData)")


def write_mean(path: Path, mean: np.ndarray) -> Path:
    write_bytes_atomic(path, array_to_blob(mean[np.newaxis].astype(np.float32)).SerializeToString())
    return path


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 9, 11)).astype(np.uint8)


CASES = [
    ("mirror: true crop_size: 5 scale: 0.5", TRAIN, "file"),
    ("mirror: true crop_h: 4 crop_w: 6 mean_value: 10 mean_value: 20 mean_value: 30", TEST, None),
    ("crop_size: 7 mean_value: 128 scale: 0.0078125", TRAIN, None),
    ("mirror: true scale: 0.00390625", TEST, "file"),
    ("crop_size: 3 center_crop: true mirror: true", TRAIN, "file"),
]


@pytest.mark.parametrize(("text", "phase", "mean_kind"), CASES)
def test_matches_caffes_pixel_loop(
    text: str, phase: int, mean_kind: str | None, image: np.ndarray, tmp_path: Path
) -> None:
    mean = np.random.default_rng(1).uniform(0, 255, size=image.shape).astype(np.float32)
    mean_path = write_mean(tmp_path / "mean.binaryproto", mean) if mean_kind else None
    if mean_kind:
        text += ' mean_file: "mean.binaryproto"'
    t = transformer(text, phase, mean_path)
    param = parse_text(text, caffe_pb2.TransformationParameter())
    crop = t.crop
    height, width = image.shape[1:]
    centred = crop is not None and (phase == TEST or param.center_crop)
    for position in range(12):
        out = t(image, sample_generator(5, position))
        if centred:
            offsets = [((height - crop[0]) // 2, (width - crop[1]) // 2)]
        elif crop:
            offsets = list(itertools.product(range(height - crop[0] + 1), range(width - crop[1] + 1)))
        else:
            offsets = [(0, 0)]
        mirrors = (False, True) if param.mirror else (False,)
        matches = [
            (m, h, w)
            for m in mirrors
            for h, w in offsets
            if np.array_equal(
                out,
                caffe_loop(image, mean if mean_kind else None, param.mean_value, param.scale, crop, m, h, w),
            )
        ]
        assert matches, f"position {position}: no crop offset/mirror of Caffe's loop gives this output"


def test_mirror_is_random_in_test_too_and_draws_follow_the_seed(image: np.ndarray) -> None:
    t = transformer("mirror: true", TEST)
    outs = [t(image, sample_generator(3, p)) for p in range(40)]
    flipped = [np.array_equal(o, image[:, :, ::-1].astype(np.float32)) for o in outs]
    assert any(flipped) and not all(flipped)
    again = [t(image, sample_generator(3, p)) for p in range(40)]
    assert all(np.array_equal(a, b) for a, b in zip(outs, again, strict=True))


def test_random_crops_in_train_centre_in_test(image: np.ndarray) -> None:
    train = transformer("crop_size: 4", TRAIN)
    offsets = set()
    for p in range(60):
        out = train(image, sample_generator(0, p))
        for h, w in itertools.product(range(6), range(8)):
            if np.array_equal(out, image[:, h : h + 4, w : w + 4].astype(np.float32)):
                offsets.add((h, w))
    assert len(offsets) > 10
    test = transformer("crop_size: 4", TEST)
    assert not test.needs_random
    np.testing.assert_array_equal(test(image), image[:, 2:6, 3:7].astype(np.float32))


def test_needs_random_is_caffes_init_rand_rule() -> None:
    assert transformer("mirror: true", TEST).needs_random
    assert transformer("crop_size: 2", TRAIN).needs_random
    assert not transformer("crop_size: 2", TEST).needs_random
    assert not transformer("crop_size: 2 center_crop: true", TRAIN).needs_random
    assert transformer("erase_ratio: 0.5", TEST).needs_random
    assert not transformer("scale: 2 mean_value: 3", TRAIN).needs_random


def test_float_data_and_grey_images() -> None:
    values = np.linspace(-1, 1, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    out = transformer("mean_value: 0.5 scale: 2")(values)
    np.testing.assert_array_equal(out, (values - np.float32(0.5)) * np.float32(2))
    grey = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    np.testing.assert_array_equal(transformer("mean_value: 1")(grey), grey.astype(np.float32) - 1)


def test_random_erasing_writes_random_pixels_in_a_rectangle() -> None:
    t = transformer("erase_ratio: 1 scale_min: 0.3 scale_max: 0.5 aspect_min: 0.5 aspect_max: 1.5", TEST)
    white = np.full((3, 20, 20), 255, dtype=np.uint8)
    out = t(white, sample_generator(0, 0))
    erased = (out < 255).any(axis=0)
    rows, cols = np.flatnonzero(erased.any(axis=1)), np.flatnonzero(erased.any(axis=0))
    assert erased.sum() > 0 and out.min() >= 0 and out.max() == 255
    assert erased[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].mean() > 0.9  # one rectangle


@pytest.mark.parametrize(
    ("text", "shape", "message"),
    [
        ("crop_size: 12", (3, 9, 11), r"image 'x.png' is 9x11 \(HxW\), smaller than the crop 12x12"),
        ("mean_value: 1 mean_value: 2", (3, 9, 11), r"give 1 mean_value or one per channel \(3\), got 2"),
    ],
)
def test_transform_errors(text: str, shape: tuple, message: str) -> None:
    with pytest.raises(CaffeCompatError, match=message):
        transformer(text)(np.zeros(shape, dtype=np.uint8), sample_generator(0, 0), "image 'x.png'")


def test_mean_file_of_the_wrong_shape(tmp_path: Path) -> None:
    path = write_mean(tmp_path / "mean.binaryproto", np.zeros((3, 8, 8), dtype=np.float32))
    t = transformer('mean_file: "mean.binaryproto"', TEST, path)
    with pytest.raises(
        CaffeCompatError, match=r"image 'a.png' has shape \[3, 9, 11\].*mean_file .* has \[3, 8, 8\]"
    ):
        t(np.zeros((3, 9, 11), dtype=np.uint8), None, "image 'a.png'")


def test_missing_mean_file_names_it(tmp_path: Path) -> None:
    t = transformer('mean_file: "gone.binaryproto"', TEST, tmp_path / "gone.binaryproto")
    with pytest.raises(CaffeCompatError, match="layer 'data' \\(ImageData\\): mean_file: .*gone.binaryproto"):
        t(np.zeros((3, 4, 4), dtype=np.uint8))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('mean_file: "m" mean_value: 3', "cannot specify mean_file and mean_value at the same time"),
        ("crop_h: 3", "crop_h and crop_w must both be set"),
        ("force_color: true force_gray: true", "cannot set both force_color and force_gray"),
    ],
)
def test_parameter_errors(text: str, message: str) -> None:
    with pytest.raises(CaffeCompatError, match=message):
        transformer(text)
