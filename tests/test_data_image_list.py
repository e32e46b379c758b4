"""The ImageData layer: list parsing, Caffe's batch order and wrap-around, shuffling and random
transforms reproducible from the seed whatever the number of workers, cursor snapshots, shapes
without reading data, path resolution, the fork's extras, and every bad-input error."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.data.image_list import read_image_list
from caffe_compat.errors import CaffeCompatError, LayerError
from caffe_compat.layers import registered_types

LAYER = """
layer {{ name: "data" type: "ImageData" top: "data" top: "label" {tops}
        transform_param {{ {transform} }}
        image_data_param {{ source: "{source}" root_folder: "{root}" batch_size: {batch} {extra} }} }}
"""


def image(index: int, height: int = 8, width: int = 6) -> np.ndarray:
    """A BGR image whose pixels encode its index (so a batch row tells which image it is)."""
    img = np.full((height, width, 3), index * 10, dtype=np.uint8)
    img[..., 1] += np.arange(width, dtype=np.uint8)[None, :]
    img[..., 2] += np.arange(height, dtype=np.uint8)[:, None]
    return img


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Seven PNG images and a list file (labels = index % 3) in tmp_path (the working dir)."""
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(7):
        cv2.imwrite(str(tmp_path / "imgs" / f"im {i}.png"), image(i))
        lines.append(f"im {i}.png {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_net(
    batch: int = 3,
    transform: str = "",
    extra: str = "",
    source: str = "list.txt",
    root: str = "imgs/",
    tops: str = "",
    phase: str = "TRAIN",
    workers: int | None = 0,
    **kwargs,
) -> cc.Net:
    text = LAYER.format(tops=tops, transform=transform, source=source, root=root, batch=batch, extra=extra)
    net = cc.Net(text, phase=phase, **kwargs)
    if workers is not None:
        net.layers["data"].configure_loading(num_workers=workers)
    return net


def indices(data: torch.Tensor) -> list[int]:
    """Image indices of a batch of untransformed, uncropped images (pixel (0,0) of channel 0)."""
    return [int(v) // 10 for v in data[:, 0, 0, 0]]


def test_batches_follow_the_list_and_wrap_around(images: Path) -> None:
    net = make_net(batch=3)
    seen = []
    for _ in range(4):
        net()
        seen += indices(net.blobs["data"])
        np.testing.assert_array_equal(net.blobs["label"].numpy(), [i % 3 for i in indices(net.blobs["data"])])
    assert seen == [i % 7 for i in range(12)]
    np.testing.assert_array_equal(
        net.blobs["data"][0].numpy(), image(2).transpose(2, 0, 1).astype(np.float32)
    )


def test_list_paths_may_contain_spaces_and_crlf(images: Path) -> None:
    images.joinpath("list.txt").write_bytes(b"im 1.png 4\r\n\r\nim 2.png   7\r\n")
    parsed = read_image_list(images / "list.txt")
    assert parsed.names == ["im 1.png", "im 2.png  "]  # split at the last space, as Caffe
    assert parsed.labels.tolist() == [4, 7] and parsed.lines.tolist() == [1, 3]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_shuffle_and_random_transforms_depend_only_on_the_seed(images: Path, workers: int) -> None:
    def run(seed: int, workers: int) -> list[np.ndarray]:
        net = make_net(batch=4, transform="mirror: true crop_size: 5", extra="shuffle: true", workers=workers)
        net.layers["data"].seed = seed
        batches = []
        for _ in range(4):
            net()
            batches.append(net.blobs["data"].numpy().copy())
        return batches

    reference = run(11, 0)
    for got, want in zip(run(11, workers), reference, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not all(np.array_equal(a, b) for a, b in zip(run(12, 0), reference, strict=True))


def test_shuffle_permutes_each_pass(images: Path) -> None:
    net = make_net(batch=7, extra="shuffle: true")
    net.layers["data"].seed = 3
    passes = []
    for _ in range(3):
        net()
        passes.append(indices(net.blobs["data"]))
    assert all(sorted(p) == list(range(7)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_seed_comes_from_torch_when_unset(images: Path) -> None:
    orders = []
    for _ in range(2):
        torch.manual_seed(7)
        net = make_net(batch=7, extra="shuffle: true")
        net()
        orders.append(indices(net.blobs["data"]))
    assert orders[0] == orders[1]
    plain = make_net(batch=2)
    plain()
    assert plain.layers["data"].seed is None  # nothing random: no seed drawn


def test_rand_skip_starts_at_a_drawn_entry(images: Path) -> None:
    net = make_net(batch=3, extra="rand_skip: 5")
    net.layers["data"].seed = 1
    net()
    first = indices(net.blobs["data"])
    assert first == [(first[0] + i) % 7 for i in range(3)] and first[0] < 5
    starts = set()
    for seed in range(20):
        net = make_net(batch=1, extra="rand_skip: 5")
        net.layers["data"].seed = seed
        net()
        starts.add(indices(net.blobs["data"])[0])
    assert len(starts) > 1 and max(starts) < 5


def test_data_state_round_trip(images: Path) -> None:
    net = make_net(batch=3, transform="mirror: true", extra="shuffle: true", workers=1)
    net()
    state = net.layers["data"].data_state()
    expected = []
    for _ in range(2):
        net()
        expected.append(net.blobs["data"].clone())
    other = make_net(batch=3, transform="mirror: true", extra="shuffle: true", workers=2)
    other.layers["data"].load_data_state(state)
    for want in expected:
        other()
        torch.testing.assert_close(other.blobs["data"], want, rtol=0, atol=0)
    assert state == {"batch": 1, "seed": state["seed"]} and isinstance(state["seed"], int)


def test_shapes_need_no_file_when_resized_or_cropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing exists here
    net = make_net(batch=4, extra="new_height: 10 new_width: 8 is_color: false", workers=None)
    assert net.blob_shapes == {"data": (4, 1, 10, 8), "label": (4,)}
    net = make_net(batch=2, transform="crop_size: 5", workers=None)
    assert net.blob_shapes["data"] == (2, 3, 5, 5)
    with pytest.raises(
        LayerError, match=r"cannot read the image list '.*list.txt' .*give input_shapes=\{'data'"
    ):
        make_net(batch=2, workers=None)
    net = make_net(batch=2, workers=None, input_shapes={"data": (2, 3, 8, 6), "label": (2,)})
    assert net.blob_shapes["data"] == (2, 3, 8, 6)


def test_shape_from_the_first_image(images: Path) -> None:
    assert make_net(batch=2).blob_shapes == {"data": (2, 3, 8, 6), "label": (2,)}


def test_resize_and_grey_decode_as_opencv(images: Path) -> None:
    net = make_net(batch=1, extra="new_height: 5 new_width: 4 is_color: false")
    net()
    grey = cv2.imread(str(images / "imgs" / "im 0.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(
        net.blobs["data"][0, 0].numpy(), cv2.resize(grey, (4, 5)).astype(np.float32)
    )


def test_paths_fall_back_to_the_prototxt_folder(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (images / "net.prototxt").write_text(
        LAYER.format(tops="", transform="", source="list.txt", root="imgs/", batch=2, extra="")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    net = cc.Net(images / "net.prototxt")
    net.layers["data"].configure_loading(num_workers=0)
    net()
    assert indices(net.blobs["data"]) == [0, 1]


def test_three_tops_give_the_forks_class_weights(images: Path) -> None:
    net = make_net(batch=7, tops='top: "weight"')
    net()
    # labels 0,1,2,0,1,2,0: counts 3,2,2; mean 7/3 per class
    expected = np.float32(np.float32(7) / np.float32(3)) / np.array([3, 2, 2, 3, 2, 2, 3], dtype=np.float32)
    np.testing.assert_array_equal(net.blobs["weight"].numpy(), expected)


def test_balance_class_visits_classes_in_turn(images: Path) -> None:
    net = make_net(batch=6, extra="balance_class: true")
    net.layers["data"].seed = 0
    labels = []
    chosen = {0: [], 1: [], 2: []}
    for _ in range(3):
        net()
        labels += net.blobs["label"].tolist()
        for index, label in zip(indices(net.blobs["data"]), net.blobs["label"].tolist(), strict=True):
            chosen[int(label)].append(index)
    assert labels == [0, 1, 2] * 6
    assert sorted(chosen[0][:3]) == [0, 3, 6] and sorted(chosen[1][:2]) == [1, 4]  # no repeat within a round


def test_multilabel_only_fields_are_ignored_with_a_warning(
    images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="caffe_compat"):
        net = make_net(batch=2, extra="face_transform: true max_rotate_angle: 10")
    assert "face_transform, max_rotate_angle are ignored" in caplog.text
    net()
    assert indices(net.blobs["data"]) == [0, 1]


def test_example_builds_without_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ImageData", "Data", "MemoryData"):
        cls = registered_types()[name]
        net = cc.Net(cls.example, input_shapes=dict(cls.example_input_shapes) or None)
        assert net.data_layer_names == ["data"]


# -- bad input ----------------------------------------------------------------------------------


def test_missing_list_file(images: Path) -> None:
    net = make_net(source="nothere.txt", extra="new_height: 4 new_width: 4")
    with pytest.raises(
        LayerError, match=r"layer 'data' \(ImageData\): cannot read the image list '.*nothere.txt' \("
    ):
        net()


def test_missing_image_names_the_path_and_line(images: Path) -> None:
    (images / "list.txt").write_text("im 0.png 0\ngone.png 1\n")
    net = make_net(batch=2)
    with pytest.raises(
        LayerError, match=r"cannot read image '.*imgs/gone.png' \(.*\) \(line 2 of .*list.txt\)"
    ):
        net()


def test_missing_image_hints_at_root_folder_slash(images: Path) -> None:
    net = make_net(batch=1, root="imgs", extra="new_height: 4 new_width: 4")
    with pytest.raises(LayerError, match=r"imgsim 0.png.*end it with '/'"):
        net()


def test_undecodable_image(images: Path) -> None:
    (images / "imgs" / "im 1.png").write_bytes(b"not a png at all")
    net = make_net(batch=2, workers=1)
    with pytest.raises(LayerError, match=r"cannot decode image '.*im 1.png' \(16 bytes\).*\(line 2 of"):
        net()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("im 0.png zero\n", r"line 1 of .*list.txt: the label 'zero' is not an integer"),
        ("im 0.png 0\nim1.png\t1\n", r"line 2 of .*list.txt: expected 'path label' separated by a space"),
        ("\n\n", r"the image list '.*list.txt' is empty"),
    ],
)
def test_bad_list_lines(images: Path, content: str, message: str) -> None:
    (images / "list.txt").write_text(content)
    with pytest.raises(CaffeCompatError, match=message):
        make_net(batch=1)


def test_crop_larger_than_the_image(images: Path) -> None:
    net = make_net(batch=2, transform="crop_size: 9")
    with pytest.raises(
        LayerError, match=r"image '.*im 0.png' is 8x6 \(HxW\), smaller than the crop 9x9 \(line 1 of"
    ):
        net()


def test_mean_file_of_the_wrong_shape(images: Path) -> None:
    from caffe_compat.proto.io import array_to_blob, write_bytes_atomic

    write_bytes_atomic(
        images / "mean.binaryproto", array_to_blob(np.zeros((1, 3, 4, 4), np.float32)).SerializeToString()
    )
    with pytest.raises(
        LayerError, match=r"has shape \[3, 8, 6\] \(CxHxW\) but the mean_file .* has \[3, 4, 4\]"
    ):
        make_net(batch=2, transform='mean_file: "mean.binaryproto"')  # Caffe's set-up checks it too
    net = make_net(
        batch=2, transform='mean_file: "mean.binaryproto"', input_shapes={"data": (2, 3, 8, 6), "label": (2,)}
    )
    with pytest.raises(LayerError, match=r"im 0.png' has shape \[3, 8, 6\] \(CxHxW\) but the mean_file"):
        net()


def test_images_of_different_sizes_in_one_batch(images: Path) -> None:
    cv2.imwrite(str(images / "imgs" / "im 1.png"), image(1, 5, 5))
    net = make_net(batch=2)
    with pytest.raises(LayerError, match=r"im 1.png' has shape \[3, 5, 5\].*first image gives \[3, 8, 6\]"):
        net()


@pytest.mark.parametrize(
    ("extra", "tops", "message"),
    [
        ("new_height: 4", "", "new_height and new_width must be set together"),
        ("", 'top: "w" top: "x"', r"produces 2 or 3 top blob\(s\), got 4"),
    ],
)
def test_bad_parameters(images: Path, extra: str, tops: str, message: str) -> None:
    with pytest.raises(LayerError, match=message):
        make_net(extra=extra, tops=tops)
    with pytest.raises(LayerError, match="batch_size must be a positive number"):
        make_net(batch=0)
