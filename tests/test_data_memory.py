"""MemoryData: Caffe's Reset/set_input_arrays (untransformed, wrap-around), AddMatVector and
AddDatumVector (transformed), the fork's transpose, cursor snapshots and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.data.images import array_to_datum
from caffe_compat.errors import LayerError

LAYER = """
layer {{ name: "data" type: "MemoryData" top: "data" top: "label" transform_param {{ {transform} }}
        memory_data_param {{ batch_size: 2 channels: 3 height: 4 width: 5 {extra} }} }}
"""


def net(transform: str = "", extra: str = "") -> cc.Net:
    return cc.Net(LAYER.format(transform=transform, extra=extra), phase="TEST")


def test_reset_serves_arrays_untransformed_with_wrap_around() -> None:
    n = net("scale: 0.5")
    assert n.blob_shapes == {"data": (2, 3, 4, 5), "label": (2,)}
    data = np.arange(6 * 60, dtype=np.float32).reshape(6, 3, 4, 5)
    n.layers["data"].set_input_arrays(data, np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1))
    seen = []
    for _ in range(4):
        n()
        seen += n.blobs["label"].tolist()
        np.testing.assert_array_equal(n.blobs["data"].numpy(), data[[int(v) for v in n.blobs["label"]]])
    assert seen == [0, 1, 2, 3, 4, 5, 0, 1]
    assert n.layers["data"].data_state() == {"pos": 2}
    n.layers["data"].load_data_state({"pos": 4})
    n()
    assert n.blobs["label"].tolist() == [4, 5]


def test_add_mat_vector_transforms_and_serves_one_batch() -> None:
    n = net("mean_value: 10 scale: 2")
    images = [np.full((4, 5, 3), v, dtype=np.uint8) for v in (20, 30, 40)]
    n.layers["data"].add_mat_vector(images, [7, 8, 9])
    n()
    assert n.blobs["data"].shape == (3, 3, 4, 5)  # Caffe sets the batch size to the number of images
    np.testing.assert_array_equal(n.blobs["data"][:, 0, 0, 0].numpy(), [20.0, 40.0, 60.0])
    assert n.blobs["label"].tolist() == [7, 8, 9]
    n.layers["data"].add_mat_vector(images[:1], [1])  # consumed: new images are accepted
    with pytest.raises(LayerError, match="cannot add images until the current ones have been consumed"):
        n.layers["data"].add_mat_vector(images[:1], [1])


def test_transpose_swaps_axes_and_reverses_channels() -> None:
    n = cc.Net(
        LAYER.format(transform="", extra="transpose: true").replace(
            "height: 4 width: 5", "height: 5 width: 4"
        )
    )
    image = np.random.default_rng(0).integers(0, 255, (4, 5, 3)).astype(np.uint8)  # H=4, W=5
    n.layers["data"].add_mat_vector([image], [0])
    n()
    np.testing.assert_array_equal(
        n.blobs["data"][0].numpy(), image.transpose(2, 1, 0)[::-1].astype(np.float32)
    )


def test_add_datum_vector() -> None:
    n = net("crop_size: 3")
    datums = [array_to_datum(np.full((3, 4, 5), v, dtype=np.uint8), label=v) for v in (1, 2)]
    n.layers["data"].add_datum_vector(datums)
    n()
    assert n.blobs["data"].shape == (2, 3, 3, 3) and n.blobs["label"].tolist() == [1, 2]


def test_memory_data_errors() -> None:
    n = net()
    with pytest.raises(
        LayerError, match=r"layer 'data' \(MemoryData\): has no data: call reset\(data, labels\)"
    ):
        n()
    layer = n.layers["data"]
    with pytest.raises(LayerError, match=r"data must have shape \(N, 3, 4, 5\)"):
        layer.reset(np.zeros((2, 3, 5, 5), np.float32), np.zeros(2))
    with pytest.raises(LayerError, match="multiple of batch_size 2"):
        layer.reset(np.zeros((3, 3, 4, 5), np.float32), np.zeros(3))
    with pytest.raises(LayerError, match="2 data items but 3 labels"):
        layer.reset(torch.zeros(2, 3, 4, 5), torch.zeros(3))
    with pytest.raises(LayerError, match="must be positive in memory_data_param"):
        cc.Net('layer { name: "m" type: "MemoryData" top: "a" top: "b" memory_data_param { batch_size: 2 } }')
