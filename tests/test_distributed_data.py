"""Rank-aware data slicing (``caffe_compat.distributed.data``), checked in one process: for N
ranks with batch B, rank r's batches are rows ``r*B:(r+1)*B`` of the one-process batches of size
N*B (shuffling, random mirrors and crops, wrap-around and file changes included), and the cursor
a rank snapshots is the one-process cursor."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.distributed import data as sharding
from caffe_compat.distributed.solver import layers_reaching_loss
from caffe_compat.errors import LayerError

HDF5 = """
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{source}" batch_size: {batch} shuffle: {shuffle} }} }}
"""
IMAGES = """
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
        transform_param {{ mirror: true crop_size: 4 }}
        image_data_param {{ source: "list.txt" root_folder: "imgs/" batch_size: {batch} shuffle: true }} }}
"""


@pytest.fixture
def h5_files(tmp_path: Path) -> Path:
    """Two HDF5 files of 5 and 4 rows whose data encode the row (file * 100 + row)."""
    names = []
    for index, rows in enumerate((5, 4)):
        path = tmp_path / f"part{index}.h5"
        with h5py.File(path, "w") as handle:
            handle["data"] = (index * 100 + np.arange(rows, dtype=np.float32)).reshape(rows, 1, 1, 1)
            handle["label"] = np.arange(rows, dtype=np.float32)
        names.append(str(path))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    return tmp_path / "list.txt"


@pytest.fixture
def image_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Seven 6x5 images whose pixels encode their index, listed with labels."""
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(7):
        img = np.full((6, 5, 3), i * 20, dtype=np.uint8)
        img[..., 1] += np.arange(5, dtype=np.uint8)[None, :]
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), img)
        lines.append(f"{i}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _batches(net: cc.Net, count: int) -> list[tuple[np.ndarray, ...]]:
    layer = net.layers["data"]
    return [tuple(t.numpy().copy() for t in layer.next_batch()) for _ in range(count)]


@pytest.mark.parametrize("shuffle", ["false", "true"])
def test_hdf5_ranks_read_slices_of_the_global_batch(h5_files: Path, shuffle: str) -> None:
    world, batch, count = 3, 2, 7  # 42 rows over 9 in the files: several passes and file changes
    single = cc.Net(HDF5.format(source=h5_files, batch=world * batch, shuffle=shuffle))
    single.layers["data"].seed = 123
    expected = _batches(single, count)
    ranks = []
    for rank in range(world):
        net = cc.Net(HDF5.format(source=h5_files, batch=batch, shuffle=shuffle))
        net.layers["data"].seed = 123
        assert sharding.shard_data_layers(net, rank, world) == ["data"]
        ranks.append(_batches(net, count))
        if rank == 1:
            assert net.layers["data"].data_state() == single.layers["data"].data_state()
    for number in range(count):
        for top in range(2):
            joined = np.concatenate([ranks[r][number][top] for r in range(world)])
            np.testing.assert_array_equal(joined, expected[number][top])
    rows = np.concatenate([b[0].reshape(-1) for b in expected])
    assert len(set(rows[:9].tolist())) == 9  # the first pass reads every row once
    if shuffle == "true":
        assert rows[:9].tolist() != [0, 1, 2, 3, 4, 100, 101, 102, 103]


def test_image_data_ranks_decode_only_their_slice(image_list: Path) -> None:
    world, batch, count = 2, 3, 5
    single = cc.Net(IMAGES.format(batch=world * batch))
    single.layers["data"].configure_loading(num_workers=0)
    single.layers["data"].seed = 99
    expected = _batches(single, count)
    for rank in range(world):
        net = cc.Net(IMAGES.format(batch=batch))
        layer = net.layers["data"]
        layer.configure_loading(num_workers=0)
        layer.seed = 99
        sharding.shard_data_layers(net, rank, world)
        got = _batches(net, count)
        for number in range(count):
            rows = slice(rank * batch, (rank + 1) * batch)
            np.testing.assert_array_equal(got[number][0], expected[number][0][rows])
            np.testing.assert_array_equal(got[number][1], expected[number][1][rows])
        assert layer.data_state() == {"batch": count, "seed": 99}
    labels = np.concatenate([b[1] for b in expected])
    assert sorted(labels[:7].tolist()) == list(range(7)) and labels[:7].tolist() != list(range(7))
    mirrored = [b[0][i, 1, 0, 0] > b[0][i, 1, 0, -1] for b in expected for i in range(world * batch)]
    assert any(mirrored) and not all(mirrored)  # random mirrors, drawn per position


def test_unsupported_data_layers_are_refused_by_name(h5_files: Path) -> None:
    net = cc.Net(HDF5.format(source=h5_files, batch=2, shuffle="false"))
    net.layers["data"].caffe_type = "MultiLabelImageData"  # its label_cut_start trims each batch's ends
    net.layers["data"].label_cut = 1
    with pytest.raises(LayerError, match=r"layer 'data' \(MultiLabelImageData\): label_cut_start"):
        sharding.shard_data_layers(net, 0, 2)
    net = cc.Net(HDF5.format(source=h5_files, batch=2, shuffle="false"))
    net.layers["data"].caffe_type = "MadeUpData"
    with pytest.raises(LayerError, match=r"layer 'data' \(MadeUpData\): no rule to split"):
        sharding.shard_data_layers(net, 0, 2)
    net = cc.Net(HDF5.format(source=h5_files, batch=2, shuffle="false"))
    sharding.shard_data_layers(net, 0, 1)  # one rank: nothing changes
    assert net.layers["data"].batch_size == 2 and "next_batch" not in vars(net.layers["data"])


def test_seeds_follow_the_one_process_draw_order(h5_files: Path) -> None:
    nets = [cc.Net(HDF5.format(source=h5_files, batch=2, shuffle=s)) for s in ("true", "false", "true")]
    layers = sharding.unseeded_data_layers(nets)
    assert layers == [(0, "data"), (2, "data")]
    torch.manual_seed(5)
    seeds = sharding.draw_seeds(len(layers))
    sharding.set_seeds(nets, layers, seeds)
    torch.manual_seed(5)
    lazily = [cc.Net(HDF5.format(source=h5_files, batch=2, shuffle="true")) for _ in range(2)]
    for net in lazily:
        net.layers["data"].next_batch()  # draws its seed from torch's generator at first use
    assert [nets[0].layers["data"].seed, nets[2].layers["data"].seed] == [
        n.layers["data"].seed for n in lazily
    ]


def test_layers_reaching_loss() -> None:
    net = cc.Net(
        """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 2 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 3 } }
        layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" inner_product_param { num_output: 2 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "a" bottom: "y" top: "loss" }
        """
    )
    assert layers_reaching_loss(net) == {"x", "y", "a", "loss"}  # not "b"
