"""The Data layer and Caffe's data tools: convert-imageset writes the records Caffe's own tool
wrote (byte for byte on the goldens), our Data layer reads them back identically, compute-image-mean
writes Caffe's mean file, LevelDB works where plyvel is installed, and the errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

import caffe_compat as cc
from caffe_compat.cli import main
from caffe_compat.data.images import datum_to_array, read_image
from caffe_compat.data.lmdb_source import DatumDB
from caffe_compat.data.tools import compute_image_mean, convert_imageset
from caffe_compat.errors import CaffeCompatError, LayerError
from caffe_compat.proto import caffe_pb2

DATA = Path(__file__).parent / "goldens" / "data"

DATA_LAYER = """
layer {{ name: "data" type: "Data" top: "data" top: "label" transform_param {{ {transform} }}
        data_param {{ source: "{source}" {backend} batch_size: {batch} }} }}
"""


def records(path: Path, backend: str = "lmdb") -> list[tuple[bytes, bytes]]:
    db = DatumDB(path, backend)
    try:
        return list(db.items())
    finally:
        db.close()


@pytest.fixture
def golden_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The goldens' images and list in a scratch working directory."""
    shutil.copytree(DATA / "images", tmp_path / "images")
    shutil.copy(DATA / "list.txt", tmp_path / "list.txt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def data_net(
    source: str, batch: int = 3, transform: str = "", backend: str = "backend: LMDB", workers: int = 0, **kw
) -> cc.Net:
    net = cc.Net(
        DATA_LAYER.format(source=source, batch=batch, transform=transform, backend=backend),
        phase="TEST",
        **kw,
    )
    net.layers["data"].configure_loading(num_workers=workers)
    return net


def test_convert_imageset_writes_the_records_caffe_wrote(golden_copy: Path) -> None:
    report = convert_imageset("images/", "list.txt", "db", resize_height=22, resize_width=18)
    assert report.written == 7 and report.skipped == []
    assert records(golden_copy / "db") == records(DATA / "train_lmdb")  # keys and Datum bytes
    assert sorted(p.name for p in (golden_copy / "db").iterdir()) == ["data.mdb", "lock.mdb"]
    assert [p.name for p in golden_copy.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_compute_image_mean_writes_caffes_file(tmp_path: Path) -> None:
    mean = compute_image_mean(DATA / "train_lmdb", tmp_path / "mean.binaryproto")
    assert (tmp_path / "mean.binaryproto").read_bytes() == (DATA / "mean.binaryproto").read_bytes()
    np.testing.assert_array_equal(mean, cc.read_blobproto(DATA / "mean.binaryproto"))


@pytest.mark.parametrize("encoded", [False, True])
def test_data_layer_reads_our_database_back(golden_copy: Path, encoded: bool) -> None:
    convert_imageset("images/", "list.txt", "db", encoded=encoded)
    net = data_net("db", batch=1)
    names = [line.rsplit(" ", 1)[0] for line in (golden_copy / "list.txt").read_text().splitlines()]
    for index in range(len(names) + 1):
        net()
        expected = read_image(golden_copy / "images" / names[index % len(names)])
        np.testing.assert_array_equal(net.blobs["data"][0].numpy(), expected.astype(np.float32))
        assert net.blobs["label"].item() == index % 7 % 3
    for key, value in records(golden_copy / "db"):
        datum = caffe_pb2.Datum.FromString(value)  # the Caffe schema
        assert datum.encoded == encoded and key.startswith(b"0000000")
        if encoded:  # no resize, colour matches: the file's own bytes, as Caffe stores them
            name = key.decode().split("_", 1)[1]
            assert datum.data == (golden_copy / "images" / name).read_bytes()
            assert datum.channels == 0


def test_explicit_encode_type_reencodes_and_gray_decodes(golden_copy: Path) -> None:
    convert_imageset(
        "images/", "list.txt", "db", encode_type="png", gray=True, resize_height=10, resize_width=8
    )
    first = caffe_pb2.Datum.FromString(records(golden_copy / "db")[0][1])
    assert first.encoded and first.data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = datum_to_array(first)
    assert pixels.shape == (1, 10, 8)
    grey = cv2.resize(cv2.imread("images/img0.png", cv2.IMREAD_GRAYSCALE), (8, 10))
    np.testing.assert_array_equal(pixels[0], grey)


def test_force_color_on_grey_encoded_records(golden_copy: Path) -> None:
    convert_imageset("images/", "list.txt", "db", encode_type="png", gray=True)
    net = data_net("db", batch=1, transform="force_color: true")
    net()
    assert net.blobs["data"].shape == (1, 3, 24, 20)
    assert data_net("db", batch=1).blob_shapes["data"] == (1, 1, 24, 20)  # as stored: grey


def test_golden_lmdb_with_workers_and_two_layers_on_one_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA / "lmdb_scale")
    expected = np.load("batches.npz")
    text = (DATA / "lmdb_scale" / "net.prototxt").read_text()
    second = text.replace('name: "data"', 'name: "data2"').replace('top: "data"', 'top: "data2"')
    second = second.replace('top: "label"', 'top: "label2"').replace('name: "lmdb_scale"', "")
    net = cc.Net(text + second, phase="TEST")
    net.layers["data"].configure_loading(num_workers=0)  # the main process holds the database open ...
    net.layers["data2"].configure_loading(num_workers=2)  # ... while forked workers open their own
    for k in range(3):
        net()
        np.testing.assert_array_equal(net.blobs["data"].numpy(), expected[f"batch{k}/data"])
        np.testing.assert_array_equal(net.blobs["data2"].numpy(), expected[f"batch{k}/data"])


def test_data_state_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    net = data_net("train_lmdb", batch=3, transform="mirror: true")
    net()
    state = net.layers["data"].data_state()
    net()
    want = net.blobs["data"].clone()
    other = data_net("train_lmdb", batch=3, transform="mirror: true", workers=1)
    other.layers["data"].load_data_state(state)
    other()
    np.testing.assert_array_equal(other.blobs["data"].numpy(), want.numpy())


def test_leveldb_round_trip(golden_copy: Path) -> None:
    pytest.importorskip("plyvel")
    convert_imageset("images/", "list.txt", "ldb", backend="leveldb", resize_height=22, resize_width=18)
    assert records(golden_copy / "ldb", "leveldb") == records(DATA / "train_lmdb")
    net = data_net(
        "ldb", batch=4, backend="", transform="scale: 0.00390625", workers=2
    )  # LEVELDB is the default
    expected = np.load(DATA / "lmdb_scale" / "batches.npz")
    for k in range(3):
        net()
        np.testing.assert_array_equal(net.blobs["data"].numpy(), expected[f"batch{k}/data"])
    net.layers["data"].close()  # LevelDB admits one process at a time
    mean = compute_image_mean("ldb", backend="leveldb")
    np.testing.assert_array_equal(mean, cc.read_blobproto(DATA / "mean.binaryproto"))


def test_cli_tools(golden_copy: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(
            [
                "convert-imageset",
                "-resize_height=22",
                "-resize_width",
                "18",
                "-shuffle=false",
                "images/",
                "list.txt",
                "db",
            ]
        )
        == 0
    )
    assert "wrote 7 records to db" in capsys.readouterr().out
    assert records(golden_copy / "db") == records(DATA / "train_lmdb")
    assert main(["compute-image-mean", "-backend", "lmdb", "db", "mean.binaryproto"]) == 0
    assert "mean_value channel [0]:" in capsys.readouterr().out
    assert (golden_copy / "mean.binaryproto").read_bytes() == (DATA / "mean.binaryproto").read_bytes()
    assert main(["convert-imageset", "--shuffle", "--seed", "3", "images/", "list.txt", "db2"]) == 0
    shuffled = [k.split(b"_", 1)[1] for k, _ in records(golden_copy / "db2")]
    assert sorted(shuffled) == sorted(k.split(b"_", 1)[1] for k, _ in records(golden_copy / "db"))
    assert main(["convert-imageset", "images/", "list.txt", "db"]) == 1
    assert "it already exists" in capsys.readouterr().err


def test_unreadable_images_are_skipped_as_caffe_does(golden_copy: Path) -> None:
    (golden_copy / "images" / "img2.png").unlink()
    report = convert_imageset("images/", "list.txt", "db")
    assert report.written == 6 and report.skipped == ["img2.png"]
    assert [k for k, _ in records(golden_copy / "db")][2].startswith(b"00000003_")  # keys keep the line index


def test_failed_conversion_leaves_nothing(golden_copy: Path) -> None:
    with pytest.raises(CaffeCompatError, match=r"check_size: 'img1.png' \(line 2 of .*\) has data size"):
        convert_imageset("images/", "list.txt", "db", check_size=True)
    assert sorted(p.name for p in golden_copy.iterdir()) == ["images", "list.txt"]


def test_database_errors(golden_copy: Path) -> None:
    with pytest.raises(
        LayerError, match=r"layer 'data' \(Data\): cannot open lmdb database '.*nodb': no such folder"
    ):
        data_net("nodb")
    convert_imageset("images/", "list.txt", "db")
    with pytest.raises(
        LayerError, match="is an LMDB database but backend defaults to LEVELDB .* add backend: LMDB"
    ):
        data_net("db", backend="")
    lmdb.open(str(golden_copy / "empty")).close()
    with pytest.raises(LayerError, match="holds no record"):
        data_net("empty")
    with lmdb.open(str(golden_copy / "junk")) as env, env.begin(write=True) as txn:
        txn.put(b"k", b"\xff\xff\xff")
    with pytest.raises(LayerError, match=r"record 'k' of .*junk is not a Caffe Datum record"):
        data_net("junk")


def test_crop_larger_than_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    with pytest.raises(
        LayerError, match=r"record '00000000_img0.png' .* is 22x18 \(HxW\), smaller than the crop 20x20"
    ):
        data_net("train_lmdb", transform="crop_size: 20")


def test_data_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    net = cc.Net(
        'layer { name: "d" type: "Data" top: "data" '
        'data_param { source: "train_lmdb" backend: LMDB batch_size: 2 } }'
    )
    net.layers["d"].configure_loading(num_workers=0)
    assert list(net()) == ["data"] and net.blobs["data"].shape == (2, 3, 22, 18)
    with pytest.raises(LayerError, match="data_param.batch_size must be a positive number"):
        cc.Net(
            'layer { name: "d" type: "Data" top: "data" data_param { source: "train_lmdb" backend: LMDB } }'
        )
