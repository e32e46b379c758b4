"""HDF5Data and DummyData: Caffe's batch order, file switching, wrap-around, shuffling, cursor
snapshots, and the error messages.

Acceptance: the solver goldens' net.prototxt files build in both phases and read their batches in
Caffe's order (for the face20_* nets, whose other layers belong to other families, only the
HDF5Data layers are built).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.layers import registered_types
from caffe_compat.proto import caffe_pb2

TRAIN_GOLDENS = Path(__file__).parent / "goldens" / "train"
TRAIN_CASES = sorted(p.name for p in TRAIN_GOLDENS.iterdir() if p.is_dir())


def data_only(prototxt: Path) -> caffe_pb2.NetParameter:
    """The net with only its HDF5Data layers."""
    full = cc.read_net(prototxt)
    kept = caffe_pb2.NetParameter()
    kept.name = full.name
    kept.layer.extend(layer for layer in full.layer if layer.type == "HDF5Data")
    return kept


@pytest.mark.parametrize("case", TRAIN_CASES)
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_golden_nets_read_batches_in_caffe_order(
    case: str, phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = TRAIN_GOLDENS / case
    monkeypatch.chdir(folder)
    source = data_only(folder / "net.prototxt") if case.startswith("face20_") else folder / "net.prototxt"
    net = cc.Net(source, phase=phase)
    layer_name = net.data_layer_names[0]
    layer = net.layers[layer_name]
    batch = layer.batch_size
    with h5py.File(folder / ("train.h5" if phase == "TRAIN" else "test.h5"), "r") as handle:
        data, label = handle["data"][()], handle["label"][()]
    assert net.blob_shapes["data"] == (batch, *data.shape[1:])
    assert net.blob_shapes["label"] == (batch, *label.shape[1:])
    rows = data.shape[0]
    for step in range(rows // batch + 2):  # past the end: the rows start over
        index = [(step * batch + i) % rows for i in range(batch)]
        net()
        np.testing.assert_array_equal(net.blobs["data"].numpy(), data[index])
        np.testing.assert_array_equal(net.blobs["label"].numpy(), label[index])
        assert net.blobs["data"].dtype == torch.float32


def write_h5(path: Path, start: int, rows: int) -> None:
    with h5py.File(path, "w") as handle:
        handle["data"] = (
            np.arange(start, start + rows, dtype=np.float64)[:, None, None].repeat(2, 1).repeat(3, 2)
        )
        handle["label"] = np.arange(start, start + rows, dtype=np.int32)


HDF5_LAYER = """
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{source}" batch_size: {batch} {extra} }} }}
"""


@pytest.fixture
def two_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """a.h5 (rows 0..4) and b.h5 (rows 100..102) listed in list.txt, the working directory."""
    monkeypatch.chdir(tmp_path)
    write_h5(tmp_path / "a.h5", 0, 5)
    write_h5(tmp_path / "b.h5", 100, 3)
    (tmp_path / "list.txt").write_text("a.h5\n\nb.h5\n")
    return tmp_path


def hdf5_net(source: str = "list.txt", batch: int = 4, extra: str = "", **kwargs) -> cc.Net:
    return cc.Net(HDF5_LAYER.format(source=source, batch=batch, extra=extra), phase="TRAIN", **kwargs)


def test_file_switching_and_wrap_around(two_files: Path) -> None:
    net = hdf5_net()
    assert net.blob_shapes == {"data": (4, 2, 3), "label": (4,)}
    order = [0, 1, 2, 3, 4, 100, 101, 102]
    for step in range(5):
        labels = net()["label"]
        expected = [order[(step * 4 + i) % 8] for i in range(4)]
        assert labels.tolist() == expected
        assert net.blobs["data"][:, 1, 2].tolist() == expected
        assert labels.dtype == torch.float32


def test_single_file_smaller_than_batch_wraps_inside_a_batch(two_files: Path) -> None:
    (two_files / "one.txt").write_text("b.h5")
    net = hdf5_net("one.txt", batch=7)
    assert net()["label"].tolist() == [100, 101, 102, 100, 101, 102, 100]
    assert net()["label"].tolist() == [101, 102, 100, 101, 102, 100, 101]


def test_paths_fall_back_to_the_prototxt_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    write_h5(folder / "a.h5", 0, 5)
    (folder / "list.txt").write_text("a.h5\n")
    (folder / "net.prototxt").write_text(HDF5_LAYER.format(source="list.txt", batch=2, extra=""))
    monkeypatch.chdir(tmp_path)
    net = cc.Net(folder / "net.prototxt")
    assert net()["label"].tolist() == [0, 1]


def read(net: cc.Net, count: int) -> list[list[float]]:
    return [net()["label"].tolist() for _ in range(count)]


def test_shuffle_is_seeded_and_covers_every_row(two_files: Path) -> None:
    def shuffled(seed: int) -> cc.Net:
        net = hdf5_net(batch=2, extra="shuffle: true")
        net.layers["data"].seed = seed
        return net

    first, again, other = read(shuffled(3), 12), read(shuffled(3), 12), read(shuffled(4), 12)
    assert first == again
    assert first != other
    a_rows, b_rows = {0.0, 1.0, 2.0, 3.0, 4.0}, {100.0, 101.0, 102.0}
    seen = [v for batch in first for v in batch]
    for start in range(0, 24, 8):  # each pass over the list reads every row of both files once
        one_pass = seen[start : start + 8]
        assert set(one_pass) == a_rows | b_rows and len(one_pass) == 8
        assert set(one_pass[:5]) in (a_rows, b_rows) or set(one_pass[:3]) in (a_rows, b_rows)


def test_data_state_round_trip(two_files: Path) -> None:
    for extra in ("", "shuffle: true"):
        net = hdf5_net(batch=3, extra=extra)
        net.layers["data"].seed = 11
        read(net, 2)
        state = net.layers["data"].data_state()
        expected = read(net, 5)
        fresh = hdf5_net(batch=3, extra=extra)
        fresh.layers["data"].load_data_state(state)
        assert read(fresh, 5) == expected
        # a state taken before the first batch restarts at the first row
        fresh.layers["data"].load_data_state(hdf5_net(batch=3, extra=extra).layers["data"].data_state())
        if not extra:
            assert read(fresh, 1) == [[0, 1, 2]]


def test_input_shapes_build_without_files_and_errors_name_the_list_line(two_files: Path) -> None:
    (two_files / "broken.txt").write_text("a.h5\nmissing.h5\n")
    net = hdf5_net("broken.txt", batch=4, input_shapes={"data": (4, 2, 3), "label": (4,)})
    net()
    with pytest.raises(
        LayerError, match=r"layer 'data' \(HDF5Data\): cannot open HDF5 file 'missing.h5' \(line 2 of"
    ):
        net()


def test_missing_list_file_tells_to_give_input_shapes(two_files: Path) -> None:
    with pytest.raises(LayerError, match=r"cannot read the source list 'nowhere.txt'.*give input_shapes="):
        hdf5_net("nowhere.txt")
    net = hdf5_net("nowhere.txt", input_shapes={"data": (4, 2, 3), "label": (4,)})
    with pytest.raises(LayerError, match="cannot read the source list 'nowhere.txt'"):
        net()


def test_missing_first_file_and_missing_dataset(two_files: Path) -> None:
    (two_files / "gone.txt").write_text("gone.h5\n")
    with pytest.raises(LayerError, match=r"cannot open HDF5 file 'gone.h5' \(line 1 of .*give input_shapes"):
        hdf5_net("gone.txt")
    with pytest.raises(LayerError, match="HDF5 file 'a.h5' has no dataset 'weight'"):
        cc.Net(
            'layer { name: "d" type: "HDF5Data" top: "data" top: "weight" '
            'hdf5_data_param { source: "list.txt" batch_size: 2 } }'
        )


@pytest.mark.parametrize(
    "param,message",
    [
        ('source: "list.txt"', "batch_size must be a positive number"),
        ("batch_size: 2", "source (a text file listing .h5 files) is missing"),
    ],
)
def test_bad_hdf5_parameters(two_files: Path, param: str, message: str) -> None:
    with pytest.raises(LayerError, match="layer 'd' \\(HDF5Data\\)") as info:
        cc.Net(f'layer {{ name: "d" type: "HDF5Data" top: "data" hdf5_data_param {{ {param} }} }}')
    assert message in str(info.value)
    with pytest.raises(LayerError, match="does not transform data"):
        cc.Net(
            'layer { name: "d" type: "HDF5Data" top: "data" transform_param { scale: 2 } '
            'hdf5_data_param { source: "list.txt" batch_size: 2 } }'
        )


def test_hdf5_example_builds_without_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cls = registered_types()["HDF5Data"]
    net = cc.Net(cls.example, phase="TRAIN", input_shapes=cls.example_input_shapes)
    assert net.blob_shapes == {"data": (2, 3, 5, 7), "label": (2,)}
    assert net.layers["data"].data_state()["started"] is False


# -- DummyData ---------------------------------------------------------------------------------
def test_dummy_data_constant_once_random_refilled() -> None:
    cls = registered_types()["DummyData"]
    net = cc.Net(cls.example, phase="TRAIN")
    assert net.blob_shapes == {"data": (2, 3, 5, 7), "label": (2,)}
    torch.manual_seed(0)
    first = {k: v.clone() for k, v in net().items()}
    second = net()
    assert torch.equal(first["label"], torch.ones(2)) and torch.equal(second["label"], torch.ones(2))
    assert not torch.equal(first["data"], second["data"])
    assert 0.3 < float(second["data"].std()) < 0.7  # gaussian std 0.5


def test_dummy_data_legacy_dims_and_default_filler() -> None:
    net = cc.Net(
        'layer { name: "d" type: "DummyData" top: "a" top: "b" '
        "dummy_data_param { num: 2 channels: 3 channels: 4 height: 5 width: 1 } }"
    )
    assert net.blob_shapes == {"a": (2, 3, 5, 1), "b": (2, 4, 5, 1)}
    out = net()
    assert torch.count_nonzero(out["a"]) == 0 and out["b"].shape == (2, 4, 5, 1)


@pytest.mark.parametrize(
    "param,message",
    [
        ("shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1", "both shape and the legacy"),
        (
            "num: 2 num: 3 num: 4 channels: 1 height: 1 width: 1",
            "give 'num' once, or once per top blob (2); got 3",
        ),
        (
            "shape { dim: 1 } shape { dim: 2 } shape { dim: 3 }",
            "give 'shape' once, or once per top blob (2); got 3",
        ),
        (
            'shape { dim: 2 } data_filler { type: "constant" } data_filler { type: "constant" } '
            'data_filler { type: "constant" }',
            "number of data fillers must be 0, 1 or equal to the number of tops (2); got 3",
        ),
        ('shape { dim: 2 } data_filler { type: "nope" }', "unknown data_filler type 'nope'"),
    ],
)
def test_dummy_data_errors(param: str, message: str) -> None:
    with pytest.raises(LayerError, match="layer 'd' \\(DummyData\\)") as info:
        cc.Net(f'layer {{ name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {param} }} }}')
    assert message in str(info.value)
