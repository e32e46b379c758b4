"""File-based data and output layers of the fork with no golden cases: ``WindowData`` (R-CNN's
window file), ``MultiLabelImageData`` (several labels per image, the fork's face warp) and
``HDF5Output``. Real files are written to tmp_path; expectations are computed here directly with
numpy/OpenCV from Caffe's rules, not with the layers' helpers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.proto.io import array_to_blob

# ---------------------------------------------------------------------------------------------
# helpers


def noise_image(seed: int, height: int, width: int) -> np.ndarray:
    """A BGR uint8 image of random pixels (HxWx3), so any misplaced pixel shows."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def chw(image: np.ndarray) -> np.ndarray:
    return image.transpose(2, 0, 1).astype(np.float32)


def warp(image: np.ndarray, x1: int, y1: int, x2: int, y2: int, width: int, height: int) -> np.ndarray:
    """The pixels of the inclusive box resized bilinearly to width x height (HxWx3 uint8)."""
    return cv2.resize(image[y1 : y2 + 1, x1 : x2 + 1], (width, height), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------
# WindowData

WINDOW_LAYER = """
layer {{ name: "data" type: "WindowData" top: "data" top: "label"
        transform_param {{ {transform} }}
        window_data_param {{ source: "{source}" batch_size: {batch} {extra} }} }}
"""


def window_record(
    index: int, path: str, size: tuple[int, int], windows: list[tuple], channels: int = 3
) -> str:
    lines = [f"# {index}", path, str(channels), str(size[0]), str(size[1]), str(len(windows))]
    lines += [" ".join(str(v) for v in window) for window in windows]
    return "\n".join(lines) + "\n"


def window_net(
    batch: int = 4,
    transform: str = "crop_size: 8",
    extra: str = "",
    source: str = "windows.txt",
    seed: int | None = 0,
    **kwargs,
) -> cc.Net:
    net = cc.Net(WINDOW_LAYER.format(transform=transform, source=source, batch=batch, extra=extra), **kwargs)
    layer = net.layers["data"]
    layer.configure_loading(num_workers=0)
    if seed is not None:
        layer.seed = seed
    return net


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Two images (20x16 and 16x16, HxW) in tmp_path/imgs and a window file: image 0 has two
    foreground windows (labels 3 and 7), one background (label 5, forced to 0) and one between
    the thresholds (dropped); image 1 has one background window."""
    monkeypatch.chdir(tmp_path)
    images = {"a.png": noise_image(1, 20, 16), "b.png": noise_image(2, 16, 16)}
    for name, image in images.items():
        write_png(tmp_path / "imgs" / name, image)
    text = window_record(
        0,
        "a.png",
        (20, 16),
        [(3, 0.9, 2, 3, 9, 12), (7, 0.75, 0, 0, 15, 19), (5, 0.1, 10, 0, 15, 7), (2, 0.45, 1, 1, 4, 4)],
    ) + window_record(1, "b.png", (16, 16), [(4, 0.2, 4, 5, 11, 9)])
    (tmp_path / "windows.txt").write_text(text)
    return images


def matching(row: np.ndarray, candidates: dict[str, np.ndarray]) -> list[str]:
    return [name for name, expected in candidates.items() if np.array_equal(row, expected)]


def test_window_file_sorts_windows_and_batches_are_warped_crops(scene: dict[str, np.ndarray]) -> None:
    net = window_net(
        batch=6,
        transform="crop_size: 8 mean_value: 100 mean_value: 50 mean_value: 20",
        extra='root_folder: "imgs/" fg_threshold: 0.5 bg_threshold: 0.3 fg_fraction: 0.5 scale: 0.5',
    )
    a, b = scene["a.png"], scene["b.png"]
    mean = np.array([100, 50, 20], dtype=np.float32).reshape(3, 1, 1)

    def expected(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        return (chw(warp(image, *box, 8, 8)) - mean) * np.float32(0.5)

    foreground = {"fg3": expected(a, (2, 3, 9, 12)), "fg7": expected(a, (0, 0, 15, 19))}
    background = {"bg_a": expected(a, (10, 0, 15, 7)), "bg_b": expected(b, (4, 5, 11, 9))}
    seen = set()
    for _ in range(5):
        net()
        data, label = net.blobs["data"].numpy(), net.blobs["label"].numpy()
        assert data.shape == (6, 3, 8, 8) and label.dtype == np.float32
        # 6 - int(6 * 0.5) = 3 background windows first, then 3 foreground
        np.testing.assert_array_equal(label[:3], [0, 0, 0])
        for row, value in zip(data[3:], label[3:], strict=True):
            (name,) = matching(row, foreground)
            assert value == {"fg3": 3, "fg7": 7}[name]
            seen.add(name)
        for row in data[:3]:
            (name,) = matching(row, background)
            seen.add(name)
    assert seen == {"fg3", "fg7", "bg_a", "bg_b"}  # the window between the thresholds is never drawn


def test_fg_fraction_is_taken_in_float32_as_caffe(scene: dict[str, np.ndarray]) -> None:
    # float(100) * 0.29f = 28.99999917 rounds to 29.0f in float32: Caffe takes 29 (double gives 28)
    net = window_net(batch=100, transform="crop_size: 4", extra='root_folder: "imgs/" fg_fraction: 0.29')
    net()
    label = net.blobs["label"].numpy()
    assert (label[:71] == 0).all() and (label[71:] > 0).all()
    net = window_net(batch=10, transform="crop_size: 4", extra='root_folder: "imgs/" fg_fraction: 0.0')
    net()
    assert (net.blobs["label"].numpy() == 0).all()


@pytest.fixture
def padded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """A 16x16 image; a background window in the middle and a foreground one in the corner."""
    monkeypatch.chdir(tmp_path)
    image = noise_image(3, 16, 16)
    write_png(tmp_path / "c.png", image)
    text = window_record(0, "c.png", (16, 16), [(1, 0.9, 0, 0, 3, 3), (0, 0.0, 4, 4, 7, 7)])
    (tmp_path / "windows.txt").write_text(text)
    return image


def test_context_pad_expands_clips_pads_with_zeros_and_mirrors_the_padding(padded: np.ndarray) -> None:
    # crop 8, context_pad 2: the box grows by 8 / (8 - 4) = 2 about its centre.
    # middle (4,4)-(7,7): centre 6, half 2 -> (2,2)-(10,10), 9x9 warped to 8x8, no padding.
    # corner (0,0)-(3,3): centre 2 -> (-2,-2)-(6,6): 2 pixels outside, clipped to (0,0)-(6,6);
    # scale 8/9: the 7 pixels warp to round(6.22) = 6, the padding is round(1.78) = 2.
    net = window_net(
        batch=2, transform="crop_size: 8 mirror: true mean_value: 10", extra="context_pad: 2 fg_fraction: 0.5"
    )
    image = padded
    middle = chw(warp(image, 2, 2, 10, 10, 8, 8)) - 10
    corner = np.zeros((3, 8, 8), dtype=np.float32)
    corner[:, 2:, 2:] = chw(warp(image, 0, 0, 6, 6, 6, 6)) - 10
    corner_mirrored = np.zeros((3, 8, 8), dtype=np.float32)
    corner_mirrored[:, 2:, :6] = chw(warp(image, 0, 0, 6, 6, 6, 6)[:, ::-1]) - 10  # padding moves right
    seen = set()
    for _ in range(12):
        net()
        bg, fg = net.blobs["data"].numpy()
        seen.update(matching(bg, {"middle": middle, "middle_mirrored": middle[:, :, ::-1]}))
        seen.update(matching(fg, {"corner": corner, "corner_mirrored": corner_mirrored}))
        np.testing.assert_array_equal(net.blobs["label"].numpy(), [0, 1])
    assert seen == {"middle", "middle_mirrored", "corner", "corner_mirrored"}


def test_square_crop_mode_uses_the_longer_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (4,2)-(7,11) is 4 wide, 10 high: square makes both halves 5 about (6, 7) -> (1,2)-(11,12)
    monkeypatch.chdir(tmp_path)
    image = noise_image(4, 16, 16)
    write_png(tmp_path / "d.png", image)
    text = window_record(0, "d.png", (16, 16), [(2, 1.0, 4, 2, 7, 11), (0, 0.0, 0, 0, 1, 1)])
    (tmp_path / "windows.txt").write_text(text)
    net = window_net(batch=4, extra='crop_mode: "square" fg_fraction: 0.5')
    net()
    data = net.blobs["data"].numpy()
    for row in data[2:]:
        np.testing.assert_array_equal(row, chw(warp(image, 1, 2, 11, 12, 8, 8)))
    # Caffe's centre x1 + half is half a pixel right of the true one, so even the square 2x2
    # (0,0)-(1,1) becomes centre (1, 1) +- 1 -> (0,0)-(2,2)
    for row in data[:2]:
        np.testing.assert_array_equal(row, chw(warp(image, 0, 0, 2, 2, 8, 8)))


def test_mean_file_is_read_at_the_width_centred_offset(padded: np.ndarray, tmp_path: Path) -> None:
    # mean 3 x 11 x 12 (HxW): Caffe's offset is (12 - 8) / 2 = 2 for rows and columns alike
    mean = np.random.default_rng(9).uniform(0, 255, size=(1, 3, 11, 12)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(array_to_blob(mean).SerializeToString())
    net = window_net(
        batch=2, transform='crop_size: 8 mean_file: "mean.binaryproto"', extra="fg_fraction: 0.5"
    )
    net()
    bg = net.blobs["data"].numpy()[0]
    np.testing.assert_array_equal(bg, chw(warp(padded, 4, 4, 7, 7, 8, 8)) - mean[0, :, 2:10, 2:10])


def test_window_batches_depend_on_the_seed_only(scene: dict[str, np.ndarray]) -> None:
    def batches(seed: int, workers: int, cache: bool) -> list[np.ndarray]:
        extra = f'root_folder: "imgs/" fg_fraction: 0.5 cache_images: {str(cache).lower()}'
        net = window_net(batch=4, transform="crop_size: 6 mirror: true", extra=extra, seed=seed)
        net.layers["data"].configure_loading(num_workers=workers)
        out = []
        for _ in range(3):
            net()
            out.append(net.blobs["data"].numpy().copy())
        net.layers["data"].close()
        return out

    first = batches(5, 0, False)
    for again in (batches(5, 1, False), batches(5, 0, True)):
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, batches(6, 0, False), strict=True))
    # a cursor snapshot resumes the stream
    net = window_net(batch=4, transform="crop_size: 6 mirror: true", extra='root_folder: "imgs/"', seed=5)
    net()
    state = net.layers["data"].data_state()
    net()
    expected = net.blobs["data"].numpy().copy()
    fresh = window_net(
        batch=4, transform="crop_size: 6 mirror: true", extra='root_folder: "imgs/"', seed=None
    )
    fresh.layers["data"].load_data_state(state)
    fresh()
    np.testing.assert_array_equal(fresh.blobs["data"].numpy(), expected)


def test_window_shapes_scale_and_ignored_fields(
    scene: dict[str, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="caffe_compat"):
        net = window_net(
            batch=2,
            transform="crop_size: 5 scale: 3",
            extra='root_folder: "imgs/" scale: 0.25 fg_fraction: 1 mirror: true',
        )
    assert "transform_param scale ignored" in caplog.text
    assert "window_data_param mirror ignored" in caplog.text
    assert net.blob_shapes["data"] == (2, 3, 5, 5) and net.blob_shapes["label"] == (2,)
    net()
    a = scene["a.png"]
    candidates = {
        "fg3": chw(warp(a, 2, 3, 9, 12, 5, 5)) * np.float32(0.25),
        "fg7": chw(warp(a, 0, 0, 15, 19, 5, 5)) * np.float32(0.25),
    }
    for row in net.blobs["data"].numpy():
        assert len(matching(row, candidates)) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"the window file '.*windows.txt' is empty"),
        ("# 0\na.png\n3\n20\nabc\n1\n", r"line 5 of .*windows.txt: width must be an integer, got 'abc'"),
        (
            "# 0\na.png\n3\n20\n16\n1\n3 0.9 2 3\n",
            r"line 7 of .*windows.txt: the record ends early: x2 is missing",
        ),
        ("0\na.png\n", r"line 1 of .*windows.txt: expected '#' starting an image record, got '0'"),
        ("# 1\na.png\n3 20 16 0\n", r"line 1 of .*windows.txt: image index 1 but this is image 0"),
        ("# 0\na.png\n3 20 16 1\n0 0.8 1 1 4 4\n", r"line 4 of .*windows.txt: a foreground window .* got 0"),
        (
            "# 0\na.png\n3 20 16 1\n1 0.8 5 1 4 4\n",
            r"line 4 of .*windows.txt: window \(5, 1, 4, 4\) is empty",
        ),
        (
            "# 0\na.png\n1 20 16 1\n1 0.8 1 1 4 4\n",
            r"line 2 of .*windows.txt: the last image declares 1 channels",
        ),
        (
            "# 0\na.png\n3 20 16 1\n1 0.8 1 1 4 4\n",
            r"the window file '.*windows.txt' has no background window \(fg_threshold 0.5",
        ),
    ],
)
def test_malformed_window_files_name_the_line(scene: dict[str, np.ndarray], text: str, message: str) -> None:
    Path("windows.txt").write_text(text)
    with pytest.raises(LayerError, match=r"layer 'data' \(WindowData\): " + message):
        net = window_net(input_shapes={"data": (4, 3, 8, 8), "label": (4,)})
        net()


def test_window_bad_images_and_parameters(scene: dict[str, np.ndarray]) -> None:
    with pytest.raises(LayerError, match=r"cannot read the window file '.*nothere.txt' \(No such file"):
        window_net(source="nothere.txt")
    # a window outside its image (no context padding): OpenCV's ROI would assert in Caffe
    Path("windows.txt").write_text(
        window_record(0, "a.png", (20, 16), [(1, 0.9, 2, 3, 16, 12), (0, 0, 0, 0, 3, 3)])
    )
    net = window_net(extra='root_folder: "imgs/" fg_fraction: 1')
    with pytest.raises(
        LayerError,
        match=r"window \(2, 3, 16, 12\) of line 7 of .*windows.txt lies outside its image '.*a.png' \(16x20",
    ):
        net()
    # a missing image names the record's line
    Path("windows.txt").write_text(
        window_record(0, "a.png", (20, 16), [(0, 0, 0, 0, 3, 3)])
        + window_record(1, "gone.png", (20, 16), [(1, 0.9, 2, 3, 5, 6)])
    )
    net = window_net(extra='root_folder: "imgs/" fg_fraction: 1')
    with pytest.raises(LayerError, match=r"cannot read image '.*imgs/gone.png' .*line 9 of .*windows.txt"):
        net()
    with pytest.raises(LayerError, match=r"transform_param.crop_size must be positive"):
        window_net(transform="mirror: true")
    with pytest.raises(LayerError, match=r"crop_mode must be \"warp\" or \"square\", got 'Square'"):
        window_net(extra='crop_mode: "Square"')
    with pytest.raises(LayerError, match=r"context_pad 4 leaves nothing of a 8 crop"):
        window_net(extra="context_pad: 4")
    with pytest.raises(LayerError, match=r"fg_fraction must lie in \[0, 1\], got 1.5"):
        window_net(extra="fg_fraction: 1.5")


# ---------------------------------------------------------------------------------------------
# MultiLabelImageData

MULTI_LAYER = """
layer {{ name: "data" type: "MultiLabelImageData" top: "data" top: "label"
        transform_param {{ {transform} }}
        image_data_param {{ source: "{source}" root_folder: "imgs/" batch_size: {batch} {extra} }} }}
"""


def multi_net(
    batch: int = 2,
    transform: str = "",
    extra: str = "",
    source: str = "list.txt",
    seed: int | None = 0,
    **kwargs,
) -> cc.Net:
    net = cc.Net(MULTI_LAYER.format(transform=transform, source=source, batch=batch, extra=extra), **kwargs)
    net.layers["data"].configure_loading(num_workers=0)
    if seed is not None:
        net.layers["data"].seed = seed
    return net


LABELS = [[i, 0.5 * i, -1.25 * i + 0.1] for i in range(5)]


@pytest.fixture
def listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Five 6x5 images and a list of three float labels each (tabs and spaces mixed)."""
    monkeypatch.chdir(tmp_path)
    images = [noise_image(10 + i, 6, 5) for i in range(5)]
    lines = []
    for i, image in enumerate(images):
        write_png(tmp_path / "imgs" / f"im{i}.png", image)
        lines.append(f"im{i}.png\t{LABELS[i][0]:g}  {LABELS[i][1]:g} {LABELS[i][2]:g}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return images


def test_multilabel_reads_images_and_labels_in_order_with_wrap_around(listed: list[np.ndarray]) -> None:
    net = multi_net(batch=2)
    assert net.blob_shapes["data"] == (2, 3, 6, 5) and net.blob_shapes["label"] == (2, 3)
    for entries in ([0, 1], [2, 3], [4, 0], [1, 2]):
        net()
        np.testing.assert_array_equal(net.blobs["data"].numpy(), np.stack([chw(listed[i]) for i in entries]))
        np.testing.assert_array_equal(
            net.blobs["label"].numpy(), np.asarray([LABELS[i] for i in entries], dtype=np.float32)
        )


def test_multilabel_resizes_transforms_and_shuffles_by_seed(listed: list[np.ndarray]) -> None:
    net = multi_net(
        batch=5, transform="scale: 0.5 mean_value: 3", extra="new_height: 4 new_width: 7 shuffle: true"
    )
    assert net.blob_shapes["data"] == (5, 3, 4, 7)
    expected = {i: (chw(cv2.resize(img, (7, 4))) - 3) * np.float32(0.5) for i, img in enumerate(listed)}
    orders = []
    for _ in range(3):
        net()
        order = []
        for row, label in zip(net.blobs["data"].numpy(), net.blobs["label"].numpy(), strict=True):
            (index,) = [i for i, e in expected.items() if np.array_equal(row, e)]
            np.testing.assert_array_equal(label, np.float32(LABELS[index]))
            order.append(index)
        assert sorted(order) == [0, 1, 2, 3, 4]  # each pass is a permutation of the list
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1  # a new permutation per pass
    again = multi_net(
        batch=5, transform="scale: 0.5 mean_value: 3", extra="new_height: 4 new_width: 7 shuffle: true"
    )
    again()
    assert [int(v) for v in again.blobs["label"].numpy()[:, 0]] == orders[0]


def test_label_cut_start_cuts_both_ends(listed: list[np.ndarray], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="caffe_compat"):
        net = multi_net(batch=4, extra="label_cut_start: 1 label_cut_end: 0")
    assert "label_cut_end is ignored: the fork reads label_cut_start for both ends" in caplog.text
    assert net.blob_shapes["label"] == (2, 3)
    net()
    np.testing.assert_array_equal(net.blobs["label"].numpy(), np.asarray(LABELS[1:3], dtype=np.float32))
    assert net.blobs["data"].shape == (4, 3, 6, 5)
    with pytest.raises(LayerError, match=r"label_cut_start 2 is cut from both ends of a batch of 4"):
        multi_net(batch=4, extra="label_cut_start: 2")


@pytest.mark.parametrize(
    ("stop", "reason"),
    [
        ("", "a blank line"),
        ("ab 1 2 3", "a path shorter than 3 characters"),
        ("im1.png 9 9 9", "the same image as the line before"),
    ],
)
def test_the_list_ends_where_the_fork_stops_reading(
    listed: list[np.ndarray], caplog: pytest.LogCaptureFixture, stop: str, reason: str
) -> None:
    lines = Path("list.txt").read_text().splitlines()
    Path("list.txt").write_text("\n".join(lines[:2] + [stop] + lines[2:]) + "\n")
    with caplog.at_level(logging.WARNING, logger="caffe_compat"):
        net = multi_net(batch=3)
        net()
    assert (
        f"the list ends at line 3 ({reason}" in caplog.text and "3 later line(s) are not read" in caplog.text
    )
    np.testing.assert_array_equal(net.blobs["label"].numpy()[:, 0], [0, 1, 0])  # two entries, wrapped


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("im1.png 1 x 2", r"line 2 of .*list.txt: the label 'x' is not a number"),
        ("im1.png 1 2", r"line 2 of .*list.txt: 2 labels, but line 1 has 3"),
        ("im1.png", r"line 2 of .*list.txt: 'im1.png' has no labels"),
        ("im1.png " + "1 " * 600, r"line 2 of .*list.txt: 1208 characters; the fork reads 1023 at most"),
    ],
)
def test_malformed_multilabel_lines_name_the_line(listed: list[np.ndarray], line: str, message: str) -> None:
    lines = Path("list.txt").read_text().splitlines()
    Path("list.txt").write_text("\n".join([lines[0], line, *lines[2:]]) + "\n")
    with pytest.raises(LayerError, match=r"layer 'data' \(MultiLabelImageData\): " + message):
        multi_net()


def test_multilabel_missing_files(listed: list[np.ndarray]) -> None:
    with pytest.raises(LayerError, match=r"cannot read the image list '.*nothere.txt' .*'label': \(N, K\)"):
        multi_net(source="nothere.txt")
    Path("imgs/im3.png").unlink()
    net = multi_net(batch=2)
    net()
    with pytest.raises(LayerError, match=r"cannot read image '.*imgs/im3.png' .*line 4 of .*list.txt"):
        net()
    with pytest.raises(LayerError, match=r"face_transform warps to new_height x new_width: set both"):
        multi_net(extra="face_transform: true")


# -- the fork's face warp -------------------------------------------------------------------------

EYES_NOSE_MOUTH = [14, 16, 26, 16, 20, 22, 15, 28, 25, 28]  # centre (20, 16), mouth (20, 28)


@pytest.fixture
def faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """Three 40x40 faces with landmarks plus a sixth point; the middle one's sixth point is far."""
    monkeypatch.chdir(tmp_path)
    image = noise_image(20, 40, 40)
    lines = []
    for i, extra in enumerate([(21, 17), (100, 100), (19, 15)]):
        write_png(tmp_path / "imgs" / f"face{i}.png", image)
        lines.append(" ".join(str(v) for v in [*EYES_NOSE_MOUTH, *extra]))
        lines[-1] = f"face{i}.png {lines[-1]}"
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return image


FACE = "face_transform: true new_height: 20 new_width: 20 face_point_num: 6"


def expected_face(image: np.ndarray, points: list[float], flip: bool) -> tuple[np.ndarray, np.ndarray]:
    # face size 2 * |eyes - mouth| = 24; scale 20 / (2 * 24) maps it to half the output height;
    # centre (20, 16) goes to the output centre (10, 10); a flip negates x and swaps the pairs
    s = np.float32(20 / 48)
    sx = -s if flip else s
    matrix = np.array([[sx, 0, 10 - float(sx) * 20], [0, s, 10 - float(s) * 16]], dtype=np.float32)
    warped = cv2.warpAffine(image, matrix, (20, 20), flags=cv2.INTER_LINEAR, borderValue=(128, 0, 0, 0))
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    moved = np.stack([(xy[:, 0] - 20) * float(sx), (xy[:, 1] - 16) * float(s)], axis=1).reshape(-1)
    if flip:
        for a, b in ((0, 2), (1, 3), (6, 8), (7, 9)):
            moved[a], moved[b] = moved[b], moved[a]
    return chw(warped), moved.astype(np.float32)


def test_face_transform_warps_maps_landmarks_and_skips_bad_samples(faces: np.ndarray) -> None:
    net = multi_net(batch=2, extra=FACE)
    assert net.blob_shapes["data"] == (2, 3, 20, 20) and net.blob_shapes["label"] == (2, 12)
    good = {0: [*EYES_NOSE_MOUTH, 21, 17], 2: [*EYES_NOSE_MOUTH, 19, 15]}
    for _ in range(3):  # entry 1 maps its sixth point 33 pixels from the centre (> 0.45 * 20): skipped
        net()
        data, labels = net.blobs["data"].numpy(), net.blobs["label"].numpy()
        for row, label, entry in zip(data, labels, (0, 2), strict=True):
            image, moved = expected_face(faces, good[entry], flip=False)
            np.testing.assert_array_equal(row, image)
            np.testing.assert_allclose(label, moved, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(data[0][:, 0, 0], [128, 0, 0])  # outside the image: Scalar(128)
    # the stream resumes at batch 2 in a fresh layer (the skips are replayed from the labels)
    fresh = multi_net(batch=2, extra=FACE, seed=None)
    fresh.layers["data"].load_data_state({"batch": 2, "seed": 0})
    fresh()
    np.testing.assert_array_equal(fresh.blobs["label"].numpy(), labels)


def test_face_mirror_flips_and_swaps_landmarks(faces: np.ndarray) -> None:
    net = multi_net(batch=2, extra=FACE + " face_mirror: true")
    points = [*EYES_NOSE_MOUTH, 21, 17]
    variants = {flip: expected_face(faces, points, flip) for flip in (False, True)}
    seen = set()
    for _ in range(6):
        net()
        row, label = net.blobs["data"].numpy()[0], net.blobs["label"].numpy()[0]
        (flip,) = [f for f, (image, _) in variants.items() if np.array_equal(row, image)]
        np.testing.assert_allclose(label, variants[flip][1], rtol=1e-6, atol=1e-5)
        seen.add(flip)
    assert seen == {False, True}
    # the draws are a function of the seed and the stream position: a worker process agrees
    threaded = multi_net(batch=2, extra=FACE + " face_mirror: true")
    threaded.layers["data"].configure_loading(num_workers=1)
    threaded.layers["data"].load_data_state({"batch": 5, "seed": 0})
    threaded()
    threaded.layers["data"].close()
    np.testing.assert_array_equal(threaded.blobs["data"].numpy(), net.blobs["data"].numpy())
    np.testing.assert_array_equal(threaded.blobs["label"].numpy(), net.blobs["label"].numpy())
    with pytest.raises(LayerError, match=r"face_transform reads the first 14 labels .* have 12 labels"):
        multi_net(extra="face_transform: true new_height: 20 new_width: 20 face_point_num: 7")


# ---------------------------------------------------------------------------------------------
# HDF5Output

OUTPUT_NET = """
layer {{ name: "input" type: "Input" top: "x" top: "y"
        input_param {{ shape {{ {x} }} shape {{ {y} }} }} }}
layer {{ name: "dump" type: "HDF5Output" bottom: "x" bottom: "y"
        hdf5_output_param {{ file_name: "{file}" }} }}
"""


def dims(*values: int) -> str:
    return " ".join(f"dim: {v}" for v in values)


def output_net(
    x: tuple[int, ...] = (2, 3, 4, 5), y: tuple[int, ...] = (2,), file: str = "out/dump.h5"
) -> cc.Net:
    return cc.Net(OUTPUT_NET.format(x=dims(*x), y=dims(*y), file=file))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    return tmp_path


def test_hdf5_output_writes_its_bottoms_as_legacy_4d_float32(workdir: Path) -> None:
    net = output_net()
    assert not (workdir / "out" / "dump.h5").exists()  # building writes nothing
    x = torch.arange(120, dtype=torch.float32).reshape(2, 3, 4, 5) / 7
    y = torch.tensor([3.0, -1.5])
    assert net(x=x, y=y) == {}
    with h5py.File(workdir / "out" / "dump.h5", "r") as f:
        assert sorted(f) == ["data", "label"]
        assert f["data"].dtype == np.float32 and f["label"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][()], x.numpy())
        np.testing.assert_array_equal(f["label"][()], y.numpy().reshape(2, 1, 1, 1))
    net = output_net(x=(3, 6), y=(3, 2), file="flat.h5")
    x2 = torch.randn(3, 6, requires_grad=True)
    y2 = torch.tensor([[1, 2], [3, 4], [5, 6]], dtype=torch.float64)
    net(x=x2, y=y2)
    with h5py.File(workdir / "flat.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][()], x2.detach().numpy().reshape(3, 6, 1, 1))
        np.testing.assert_array_equal(
            f["label"][()], np.float32([[1, 2], [3, 4], [5, 6]]).reshape(3, 2, 1, 1)
        )
    assert x2.grad is None


def test_hdf5_output_fails_on_a_second_forward_as_caffe(workdir: Path) -> None:
    net = output_net()
    first = torch.ones(2, 3, 4, 5)
    net(x=first, y=torch.zeros(2))
    with pytest.raises(LayerError, match=r"layer 'dump' \(HDF5Output\): a second forward: .*BVLC/caffe#1726"):
        net(x=first * 2, y=torch.ones(2))
    with h5py.File(workdir / "out" / "dump.h5", "r") as f:  # the first forward's file is intact
        np.testing.assert_array_equal(f["data"][()], first.numpy())
    output_net()(x=first * 3, y=torch.ones(2))  # a new net replaces the file
    with h5py.File(workdir / "out" / "dump.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][()], first.numpy() * 3)


def test_hdf5_output_writes_atomically(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = workdir / "out" / "dump.h5"
    target.write_bytes(b"previous contents")
    renames = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        src, dst = Path(src), Path(dst)
        assert target.read_bytes() == b"previous contents"  # untouched until the rename
        with h5py.File(src, "r") as f:  # the temporary file is complete
            assert sorted(f) == ["data", "label"]
        renames.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    output_net()(x=torch.ones(2, 3, 4, 5), y=torch.ones(2))
    ((src, dst),) = renames
    assert dst == target and src.parent == target.parent and src != target and not src.exists()
    # a failure while writing leaves the old file and no temporary file behind
    target.write_bytes(b"previous contents")
    real_create = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        if name == "label":
            raise OSError("disk full")
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(LayerError, match=r"cannot write '.*dump.h5': disk full"):
        output_net()(x=torch.ones(2, 3, 4, 5), y=torch.ones(2))
    assert target.read_bytes() == b"previous contents"
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["dump.h5"]


def test_hdf5_output_bad_configurations(workdir: Path) -> None:
    with pytest.raises(LayerError, match=r"the bottoms differ in num: 'x' \[2, 3, 4, 5\], 'y' \[3\]"):
        output_net(y=(3,))
    with pytest.raises(LayerError, match=r"a blob of 5 axes \[2, 1, 1, 1, 1\] has no legacy 4-D shape"):
        output_net(x=(2, 1, 1, 1, 1))
    with pytest.raises(LayerError, match=r"hdf5_output_param.file_name .* is missing"):
        output_net(file="")
    with pytest.raises(LayerError, match=r"\(HDF5Output\): takes 2 bottom blob\(s\), got 1"):
        cc.Net(
            'layer { name: "i" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
            'layer { name: "dump" type: "HDF5Output" bottom: "x" hdf5_output_param { file_name: "a.h5" } }'
        )
    net = output_net(file="missing_folder/dump.h5")
    with pytest.raises(LayerError, match=r"cannot write .*missing_folder/dump.h5: folder .* does not exist"):
        net(x=torch.ones(2, 3, 4, 5), y=torch.ones(2))
