"""Writes the bad-input corpus: ``python tests/bad_inputs/make_corpus.py`` (from anywhere).

It rewrites ``common/`` (good files the cases lean on: nets, weights, a snapshot set, images, an
HDF5 file), ``cases/<id>/`` (the malformed or hostile files of each case, laid over ``common/``)
and ``cases.json``, the manifest ``tests/test_bad_inputs.py`` runs. Each manifest entry has:

- ``id``, ``format``: the case and the kind of file it attacks;
- ``argv``: the ``caffe-compat`` command, run in a fresh copy of ``common/`` + ``cases/<id>/``;
- ``expect``: a regular expression the one-line error must match (the specific problem);
- ``names``: the file the message must name;
- ``setup``: what the test creates itself because git cannot or should not hold it: ``link``
  (a symbolic link: to ``/dev/zero``, to itself, to nothing), ``fifo``, ``dir`` (a folder
  where a file is expected) and ``sparse`` (a file of that many bytes that occupies no disk);
- ``absent``: files that must not exist afterwards (what a code-running pickle would create);
- ``env``: environment variables of the case (the test sets ``CAFFE_COMPAT_MEMORY_BUDGET=2G`` and
  ``CAFFE_COMPAT_DATA_WORKERS=0`` for all).

Every file is generated from code here (deterministically), so the corpus can be regenerated
after a format change; ``test_bad_inputs.py`` checks that the committed manifest and files are
what this script writes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from caffe_compat.proto import caffe_pb2  # noqa: E402
from caffe_compat.proto.io import array_to_blob, length_delimited_header  # noqa: E402

CASES: list[dict] = []
FILES: dict[str, dict[str, bytes]] = {}

TIME = ["time", "-iterations", "1", "-model"]
TEST_GOOD = ["test", "-model", "good_net.prototxt", "-iterations", "1", "-weights"]
RESUME = ["train", "-solver", "solver.prototxt", "-snapshot"]
BUDGET = r"more than the memory budget of 2\.0 GiB"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip members' time stamps, so the files are reproducible


def case(
    case_id: str,
    fmt: str,
    argv: list[str],
    expect: str,
    names: str,
    files: dict[str, bytes | str] | None = None,
    setup: list[list] | None = None,
    absent: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> None:
    assert all(c["id"] != case_id for c in CASES), case_id
    CASES.append(
        {
            "id": case_id,
            "format": fmt,
            "argv": argv,
            "expect": expect,
            "names": names,
            "setup": setup or [],
            "absent": absent or [],
            "env": env or {},
        }
    )
    FILES[case_id] = {
        name: content.encode("utf-8") if isinstance(content, str) else content
        for name, content in (files or {}).items()
    }


# --------------------------------------------------------------------------------------------
# building blocks


def text(message: object) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(message)


def blob(shape: list[int] | None = None, values: list[float] | None = None, **legacy: int) -> dict:
    return {"shape": shape, "values": values, "legacy": legacy}


def blob_proto(spec: dict) -> caffe_pb2.BlobProto:
    proto = caffe_pb2.BlobProto()
    if spec["values"] is not None:
        array_to_blob(np.asarray(spec["values"], dtype=np.float32), proto)
    proto.shape.ClearField("dim")
    if spec["shape"] is not None:
        proto.shape.dim.extend(spec["shape"])
    else:
        proto.ClearField("shape")
    for key, value in spec["legacy"].items():
        setattr(proto, key, value)
    return proto


def caffemodel(layers: list[tuple[str, str, list[dict]]]) -> bytes:
    net = caffe_pb2.NetParameter(name="good")
    for name, kind, blobs in layers:
        layer = net.layer.add(name=name, type=kind)
        for spec in blobs:
            layer.blobs.append(blob_proto(spec))
    return net.SerializeToString()


def good_layers(rng: np.random.Generator) -> list[tuple[str, str, list[dict]]]:
    """The blobs of ``good_net.prototxt``: conv (4, 3, 3, 3) + (4,), fc (5, 144) + (5,)."""

    def values(*shape: int) -> dict:
        return blob(list(shape), rng.standard_normal(int(np.prod(shape))).astype(np.float32).tolist())

    return [
        ("conv", "Convolution", [values(4, 3, 3, 3), values(4)]),
        ("fc", "InnerProduct", [values(5, 144), values(5)]),
    ]


def png(height: int, width: int, seed: int = 0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring ``width`` x ``height`` RGB pixels, and no data."""
    import zlib

    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def h5_bytes(fill: object) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.h5"
        with h5py.File(path, "w", track_order=False) as handle:
            fill(handle)
        return path.read_bytes()


def datum(**fields: object) -> bytes:
    return caffe_pb2.Datum(**fields).SerializeToString()


def lmdb_files(records: list[tuple[bytes, bytes]]) -> dict[str, bytes]:
    import lmdb

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "db"
        env = lmdb.open(str(path), map_size=1 << 20, subdir=True)
        with env.begin(write=True) as txn:
            for key, value in records:
                txn.put(key, value)
        env.close()
        return {"db/data.mdb": (path / "data.mdb").read_bytes()}


def torch_save(obj: object) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class RunsCode:
    """Unpickling this runs ``touch PWNED``: what a weights_only=False load would do."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


def net(*layers: str, name: str = "bad") -> str:
    return f'name: "{name}"\n' + "\n".join(layers) + "\n"


def input_layer(*dims: int, top: str = "data", name: str = "data") -> str:
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'layer {{ name: "{name}" type: "Input" top: "{top}" input_param {{ shape {{ {shape} }} }} }}'


def layer(name: str, kind: str, bottoms: list[str], tops: list[str], params: str = "") -> str:
    wiring = " ".join([*(f'bottom: "{b}"' for b in bottoms), *(f'top: "{t}"' for t in tops)])
    return f'layer {{ name: "{name}" type: "{kind}" {wiring} {params} }}'


RELU = layer("relu", "ReLU", ["data"], ["out"])


# --------------------------------------------------------------------------------------------
# common files


def common_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    files["good_net.prototxt"] = net(
        input_layer(2, 3, 8, 8),
        layer(
            "conv", "Convolution", ["data"], ["conv"], "convolution_param { num_output: 4 kernel_size: 3 }"
        ),
        layer("relu", "ReLU", ["conv"], ["conv"]),
        layer("fc", "InnerProduct", ["conv"], ["fc"], "inner_product_param { num_output: 5 }"),
        name="good",
    ).encode()
    files["good.caffemodel"] = caffemodel(good_layers(rng))
    loss_layers = [
        layer("ip", "InnerProduct", ["data"], ["ip"], "inner_product_param { num_output: 3 }"),
        layer("loss", "SoftmaxWithLoss", ["ip", "label"], ["loss"]),
    ]
    files["train_net.prototxt"] = net(
        layer(
            "data",
            "HDF5Data",
            [],
            ["data", "label"],
            'hdf5_data_param { source: "train_h5.txt" batch_size: 4 }',
        ),
        *loss_layers,
        name="train",
    ).encode()
    files["train_h5.txt"] = b"train.h5\n"

    def train_h5(handle: h5py.File) -> None:
        handle["data"] = rng.standard_normal((8, 6)).astype(np.float32)
        handle["label"] = (np.arange(8) % 3).astype(np.float32)

    files["train.h5"] = h5_bytes(train_h5)
    files["solver.prototxt"] = (
        b'net: "train_net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.9\nmax_iter: 2\n'
        b'display: 1\nsnapshot: 1\nsnapshot_prefix: "snap"\nsolver_mode: CPU\nrandom_seed: 1\n'
    )
    for index in range(4):
        files[f"imgs/img{index}.png"] = png(8, 8, index)
    files["img_list.txt"] = b"".join(f"img{i}.png {i % 3}\n".encode() for i in range(4))
    image_data = 'image_data_param { source: "img_list.txt" root_folder: "imgs/" batch_size: 2 }'
    files["net_img.prototxt"] = net(
        layer("data", "ImageData", [], ["data", "label"], image_data), *loss_layers, name="img"
    ).encode()
    files["net_mean.prototxt"] = net(
        layer(
            "data",
            "ImageData",
            [],
            ["data", "label"],
            image_data + ' transform_param { mean_file: "mean.binaryproto" }',
        ),
        *loss_layers,
        name="mean",
    ).encode()
    files["net_h5.prototxt"] = net(
        layer(
            "data",
            "HDF5Data",
            [],
            ["data", "label"],
            'hdf5_data_param { source: "h5_list.txt" batch_size: 2 }',
        ),
        *loss_layers,
        name="h5",
    ).encode()
    files["h5_list.txt"] = b"bad.h5\n"
    files["net_db.prototxt"] = net(
        layer(
            "data", "Data", [], ["data", "label"], 'data_param { source: "db" backend: LMDB batch_size: 2 }'
        ),
        *loss_layers,
        name="db",
    ).encode()
    files.update(snapshot_set(files))
    return files


def snapshot_set(files: dict[str, bytes]) -> dict[str, bytes]:
    """A real snapshot set after one iteration of ``solver.prototxt`` (snap_iter_1.*)."""
    from caffe_compat.log.glog import GlogWriter
    from caffe_compat.solver.solver import Solver

    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            (Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(folder) / name).write_bytes(content)
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            solver = Solver("solver.prototxt", log=GlogWriter(stream=None))
            solver.step(1)
            solver.snapshot()
        finally:
            os.chdir(cwd)
        names = ["snap_iter_1.caffemodel", "snap_iter_1.solverstate", "snap_iter_1.caffe_compat.pt"]
        return {name: (Path(folder) / name).read_bytes() for name in names}


# --------------------------------------------------------------------------------------------
# the cases


def net_cases() -> None:
    bad = "bad.prototxt"
    argv = [*TIME, bad]

    def net_case(case_id: str, content: str | bytes, expect: str, **kw: object) -> None:
        case(case_id, "net prototxt", argv, expect, bad, {bad: content}, **kw)

    net_case(
        "net-missing-brace",
        net(input_layer(2, 3), 'layer { name: "r" type: "ReLU"'),
        r"syntax error at 'end of file",
    )
    net_case("net-unterminated-string", 'layer { name: "abc }\n', r"bad\.prototxt:1:\d+: syntax error")
    net_case(
        "net-unknown-field",
        'layer { nme: "x" }\n',
        r"unknown field 'nme' in LayerParameter; did you mean 'name'",
    )
    net_case(
        "net-wrong-enum",
        'layer { name: "x" include { phase: TRIAN } }\n',
        r"Phase has no value 'TRIAN'; did you mean TRAIN",
    )
    net_case(
        "net-string-for-int",
        net(
            input_layer(2, 3),
            layer("fc", "InnerProduct", ["data"], ["fc"], 'inner_product_param { num_output: "ten" }'),
        ),
        r"syntax error at '\"ten\"'.*integer",
    )
    net_case(
        "net-float-for-int",
        net(
            input_layer(2, 3),
            layer("c", "Convolution", ["data"], ["c"], "convolution_param { kernel_size: 2.5 }"),
        ),
        r"syntax error at '2\.5'.*integer",
    )
    net_case(
        "net-negative-unsigned",
        net(
            input_layer(2, 3),
            layer("fc", "InnerProduct", ["data"], ["fc"], "inner_product_param { num_output: -4 }"),
        ),
        r"syntax error at '-4'.*out of range",
    )
    net_case(
        "net-int64-overflow",
        net(input_layer(2, 99999999999999999999999)),
        r"syntax error at '99999999999999999999999'.*out of range",
    )
    net_case("net-duplicate-field", 'layer { name: "a" name: "b" }\n', r"multiple \"name\" fields")
    net_case("net-not-utf8", b'layer { name: "\xff\xfe" }\n', r"not a text prototxt \(byte \d+ is not UTF-8")
    net_case("net-binary-garbage", bytes(range(256)) * 4, r"not a text prototxt")
    net_case(
        "net-huge-input",
        net(input_layer(200000, 3, 90000, 80000), RELU),
        rf"blob 'data' of layer 'data' \(Input\), has shape \[200000, 3, 90000, 80000\].*{BUDGET}",
    )
    net_case(
        "net-huge-innerproduct",
        net(
            input_layer(2, 4096),
            layer("fc", "InnerProduct", ["data"], ["fc"], "inner_product_param { num_output: 2000000000 }"),
        ),
        rf"layer 'fc' \(InnerProduct\): a blob of shape \[2000000000, 4096\] needs 29\.8 TiB, {BUDGET}",
    )
    net_case(
        "net-huge-convolution",
        net(
            input_layer(1, 3, 8, 8),
            layer(
                "c",
                "Convolution",
                ["data"],
                ["c"],
                "convolution_param { num_output: 100000 kernel_size: 300 }",
            ),
        ),
        rf"layer 'c' \(Convolution\): a blob of shape \[100000, 3, 300, 300\] needs .*{BUDGET}",
    )
    net_case(
        "net-huge-params-in-total",
        net(
            input_layer(2, 2048),
            *(
                layer(
                    f"fc{i}",
                    "InnerProduct",
                    [f"fc{i - 1}" if i > 1 else "data"],
                    [f"fc{i}"],
                    "inner_product_param { num_output: 2048 }",
                )
                for i in range(1, 6)
            ),
        ),
        r"layer 'fc3' \(InnerProduct\): a blob of shape \[2048, 2048\] needs 16\.0 MiB with 48\.0 MiB held already, more than the memory budget of 64\.0 MiB",
        env={"CAFFE_COMPAT_MEMORY_BUDGET": "64M"},
    )
    net_case(
        "net-huge-data-batch",
        net(
            layer(
                "data",
                "HDF5Data",
                [],
                ["data", "label"],
                'hdf5_data_param { source: "train_h5.txt" batch_size: 2000000000 }',
            ),
            layer("r", "ReLU", ["data"], ["r"]),
        ),
        rf"blob 'data' of layer 'data' \(HDF5Data\), has shape \[2000000000, 6\].*{BUDGET}",
    )
    net_case(
        "net-huge-resize",
        net(
            layer(
                "data",
                "ImageData",
                [],
                ["data", "label"],
                'image_data_param { source: "img_list.txt" root_folder: "imgs/" batch_size: 64 new_height: 100000 new_width: 100000 }',
            ),
            layer("r", "ReLU", ["data"], ["r"]),
        ),
        rf"shape \[64, 3, 100000, 100000\].*{BUDGET}",
    )
    net_case(
        "net-huge-dummydata",
        net(
            layer(
                "d", "DummyData", [], ["d"], "dummy_data_param { shape { dim: 100000 dim: 100000 dim: 100 } }"
            )
        ),
        rf"blob 'd' of layer 'd' \(DummyData\).*{BUDGET}",
    )
    net_case(
        "net-huge-tile",
        net(
            input_layer(2, 3), layer("t", "Tile", ["data"], ["t"], "tile_param { axis: 1 tiles: 2000000000 }")
        ),
        rf"blob 't' of layer 't' \(Tile\), has shape \[2, 6000000000\].*{BUDGET}",
    )
    net_case(
        "net-negative-dim",
        net(input_layer(-5, 3), RELU),
        r"layer 'data' \(Input\): shape \[-5, 3\] has a negative dimension",
    )
    net_case(
        "net-too-many-axes",
        net(input_layer(*([1] * 33)), RELU),
        r"layer 'data' \(Input\): a shape has 33 axes; Caffe allows at most 32",
    )
    net_case(
        "net-zero-kernel",
        net(
            input_layer(1, 3, 8, 8),
            layer("c", "Convolution", ["data"], ["c"], "convolution_param { num_output: 2 kernel_size: 0 }"),
        ),
        r"layer 'c' \(Convolution\): filter dimensions must be nonzero",
    )
    net_case(
        "net-zero-stride",
        net(
            input_layer(1, 3, 8, 8),
            layer(
                "c",
                "Convolution",
                ["data"],
                ["c"],
                "convolution_param { num_output: 2 kernel_size: 3 stride: 0 }",
            ),
        ),
        r"layer 'c' \(Convolution\): .*stride",
    )
    net_case(
        "net-kernel-larger-than-input",
        net(
            input_layer(1, 3, 8, 8),
            layer("c", "Convolution", ["data"], ["c"], "convolution_param { num_output: 2 kernel_size: 20 }"),
        ),
        r"layer 'c' \(Convolution\): ",
    )
    net_case(
        "net-zero-pool-kernel",
        net(
            input_layer(1, 3, 8, 8),
            layer("p", "Pooling", ["data"], ["p"], "pooling_param { pool: MAX kernel_size: 0 }"),
        ),
        r"layer 'p' \(Pooling\): filter dimensions cannot be zero",
    )
    net_case(
        "net-undefined-bottom",
        net(input_layer(2, 3), layer("r", "ReLU", ["nothing"], ["r"])),
        r"layer 'r' \(ReLU\): bottom blob 'nothing' \(bottom #0\) is not produced by any earlier layer",
    )
    net_case(
        "net-cycle",
        net(input_layer(2, 3), layer("a", "ReLU", ["b"], ["a"]), layer("b", "ReLU", ["a"], ["b"])),
        r"layer 'a' \(ReLU\): bottom blob 'b' \(bottom #0\) is not produced by any earlier layer",
    )
    net_case(
        "net-duplicate-top",
        net(input_layer(2, 3), layer("a", "ReLU", ["data"], ["x"]), layer("b", "Sigmoid", ["data"], ["x"])),
        r"layer 'b' \(Sigmoid\): top blob 'x' is produced by multiple sources",
    )
    net_case(
        "net-unknown-type",
        net(input_layer(2, 3), layer("w", "Wobble", ["data"], ["w"])),
        r"layer 'w': unknown layer type 'Wobble'",
    )
    net_case(
        "net-eltwise-shape-mismatch",
        net(
            input_layer(2, 3, name="a", top="a"),
            input_layer(2, 4, name="b", top="b"),
            layer("e", "Eltwise", ["a", "b"], ["e"]),
        ),
        r"layer 'e' \(Eltwise\): .*\[2, 3\].*\[2, 4\]",
    )
    net_case(
        "net-concat-shape-mismatch",
        net(
            input_layer(2, 3, 4, name="a", top="a"),
            input_layer(2, 3, 5, name="b", top="b"),
            layer("c", "Concat", ["a", "b"], ["c"]),
        ),
        r"layer 'c' \(Concat\): ",
    )
    net_case(
        "net-reshape-two-inferred",
        net(
            input_layer(2, 3, 4),
            layer("r", "Reshape", ["data"], ["r"], "reshape_param { shape { dim: -1 dim: -1 } }"),
        ),
        r"layer 'r' \(Reshape\): .*-1",
    )
    net_case(
        "net-reshape-count-mismatch",
        net(
            input_layer(2, 3, 4),
            layer("r", "Reshape", ["data"], ["r"], "reshape_param { shape { dim: 5 dim: 5 } }"),
        ),
        r"layer 'r' \(Reshape\): ",
    )
    net_case(
        "net-loss-weight-count",
        net(input_layer(2, 3), layer("r", "ReLU", ["data"], ["r"], "loss_weight: 1 loss_weight: 2")),
        r"layer 'r' \(ReLU\): loss_weight has 2 entries but the layer has 1 tops",
    )
    net_case(
        "net-propagate-down-count",
        net(
            input_layer(2, 3),
            layer("r", "ReLU", ["data"], ["r"], "propagate_down: true propagate_down: false"),
        ),
        r"layer 'r' \(ReLU\): propagate_down has 2 entries but the layer has 1 bottoms",
    )
    net_case(
        "net-ip-input-mismatch-weights",
        net(
            input_layer(2, 3),
            layer("fc", "InnerProduct", ["data"], ["fc"], "inner_product_param { num_output: 2 axis: 5 }"),
        ),
        r"layer 'fc' \(InnerProduct\): axis 5 is out of range",
    )
    net_case(
        "net-python-layer",
        net(
            input_layer(2, 3),
            layer("py", "Python", ["data"], ["y"], 'python_param { module: "os" layer: "system" }'),
        ),
        r"layer 'py' \(Python\): runs Python code \(class 'system' of module 'os'\).*--allow-python-layers",
    )
    # files that are not files
    case(
        "net-sparse-64g",
        "net prototxt",
        argv,
        rf"net prototxt bad\.prototxt: reading its 68719476736 bytes needs 64\.0 GiB, {BUDGET}",
        bad,
        setup=[["sparse", bad, 64 << 30]],
    )
    case(
        "net-link-to-dev-zero",
        "net prototxt",
        argv,
        r"net prototxt bad\.prototxt: is a device \(through the link to '/dev/zero'\), not a regular file",
        bad,
        setup=[["link", bad, "/dev/zero"]],
    )
    case(
        "net-link-loop",
        "net prototxt",
        argv,
        r"net prototxt bad\.prototxt: is a symbolic link loop",
        bad,
        setup=[["link", bad, bad]],
    )
    case(
        "net-dangling-link",
        "net prototxt",
        argv,
        r"net prototxt file not found: bad\.prototxt \(a symbolic link to 'gone\.prototxt', which does not exist\)",
        bad,
        setup=[["link", bad, "gone.prototxt"]],
    )
    case(
        "net-fifo",
        "net prototxt",
        argv,
        r"net prototxt bad\.prototxt: is a FIFO, not a regular file",
        bad,
        setup=[["fifo", bad]],
    )
    case(
        "net-directory",
        "net prototxt",
        argv,
        r"net prototxt bad\.prototxt: is a directory, not a regular file",
        bad,
        setup=[["dir", bad]],
    )


def solver_cases() -> None:
    bad = "bad_solver.prototxt"
    argv = ["train", "-solver", bad]
    good = 'net: "train_net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\nsolver_mode: CPU\n'

    def solver_case(case_id: str, content: str, expect: str) -> None:
        case(case_id, "solver prototxt", argv, expect, bad, {bad: content})

    solver_case("solver-syntax", good + "base_lr 0.1\n", r"bad_solver\.prototxt:6:\d+: syntax error")
    solver_case(
        "solver-unknown-field",
        good + 'lr_polcy: "step"\n',
        r"unknown field 'lr_polcy' in SolverParameter; did you mean 'lr_policy'",
    )
    solver_case(
        "solver-wrong-enum", good.replace("CPU", "TPU"), r"SolverParameter\.SolverMode has no value 'TPU'"
    )
    solver_case(
        "solver-negative-max-iter",
        good.replace("max_iter: 2", "max_iter: -3"),
        r"max_iter must not be negative, got -3",
    )
    solver_case("solver-no-net", 'base_lr: 0.1\nlr_policy: "fixed"\n', r"must specify a train net")
    solver_case(
        "solver-net-file-missing",
        good.replace("train_net.prototxt", "nope.prototxt"),
        r"net file 'nope\.prototxt' not found",
    )
    solver_case(
        "solver-average-loss-zero", good + "average_loss: 0\n", r"average_loss should be at least 1, got 0"
    )
    solver_case("solver-iter-size-zero", good + "iter_size: 0\n", r"iter_size should be at least 1, got 0")
    solver_case("solver-unknown-lr-policy", good.replace('"fixed"', '"wavy"'), r"wavy")
    solver_case("solver-unknown-type", good + 'type: "Quantum"\n', r"Quantum")
    solver_case(
        "solver-snapshot-without-prefix",
        good + "snapshot: 5\n",
        r"snapshot is specified but snapshot_prefix is not",
    )
    solver_case(
        "solver-test-iter-without-interval",
        good + "test_iter: 2\n",
        r"test nets need a positive test_interval",
    )
    solver_case(
        "solver-huge-net-param",
        'net_param { name: "inline" '
        + input_layer(200000, 3, 90000, 80000)
        + " "
        + layer("loss", "EuclideanLoss", ["data", "data"], ["loss"])
        + ' }\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\nsolver_mode: CPU\n',
        rf"blob 'data' of layer 'data' \(Input\).*{BUDGET}",
    )


def caffemodel_cases() -> None:
    bad = "bad.caffemodel"
    argv = [*TEST_GOOD, bad]
    rng = np.random.default_rng(1)
    good_bytes = caffemodel(good_layers(rng))

    def cm_case(case_id: str, content: bytes | str, expect: str, name: str = bad) -> None:
        case(case_id, "caffemodel", [*TEST_GOOD, name], expect, name, {name: content})

    def changed(layer_index: int, blob_index: int, spec: dict) -> bytes:
        layers = good_layers(np.random.default_rng(1))
        layers[layer_index][2][blob_index] = spec
        return caffemodel(layers)

    cm_case("caffemodel-empty", b"", r"bad\.caffemodel: file is empty \(0 bytes\)")
    cm_case(
        "caffemodel-random-bytes",
        bytes(np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8)),
        r"bad\.caffemodel: cannot decode as a caffemodel",
    )
    cm_case(
        "caffemodel-truncated",
        good_bytes[: len(good_bytes) // 2],
        r"bad\.caffemodel: cannot decode as a caffemodel .*truncated",
    )
    flipped = bytearray(good_bytes)
    flipped[good_bytes.index(b"\xa2\x06") + 3] ^= 0x40  # the first layer's length: past the end now
    cm_case("caffemodel-bit-flipped", bytes(flipped), r"bad\.caffemodel: cannot decode as a caffemodel")
    cm_case(
        "caffemodel-is-text",
        'layer { name: "conv" }\n',
        r"bad\.caffemodel: is a text file \(prototxt\?\), not a binary caffemodel",
    )
    cm_case(
        "caffemodel-values-short",
        changed(0, 0, blob([4, 3, 3, 3], [0.5] * 10)),
        r"layer 'conv' blob 0: holds 10 values but its shape \[4, 3, 3, 3\] needs 108",
    )
    cm_case(
        "caffemodel-values-long",
        changed(1, 1, blob([5], [0.5] * 7)),
        r"layer 'fc' blob 1: holds 7 values but its shape \[5\] needs 5",
    )
    cm_case(
        "caffemodel-huge-shape-no-values",
        changed(0, 0, blob([1 << 32, 1 << 32])),
        r"layer 'conv' blob 0: holds 0 values but its shape \[4294967296, 4294967296\] needs 18446744073709551616",
    )
    cm_case(
        "caffemodel-negative-shape",
        changed(0, 1, blob([-2, -2], [1.0] * 4)),
        r"layer 'conv' blob 1: shape \[-2, -2\] has a negative dimension",
    )
    cm_case(
        "caffemodel-negative-legacy-dims",
        changed(0, 1, blob(None, [1.0] * 4, num=-1, channels=-4, height=1, width=1)),
        r"layer 'conv' blob 1: shape \[-1, -4, 1, 1\] has a negative dimension",
    )
    cm_case(
        "caffemodel-too-many-axes",
        changed(0, 1, blob([1] * 36 + [4], [1.0] * 4)),
        r"layer 'conv' blob 1: has 37 axes; Caffe allows at most 32",
    )
    cm_case(
        "caffemodel-shape-mismatch",
        changed(0, 0, blob([4, 3, 5, 5], [0.1] * 300)),
        r"cannot copy param 0 weights from layer 'conv'; shape mismatch",
    )
    layers = good_layers(np.random.default_rng(1))
    layers[0][2].pop()
    cm_case(
        "caffemodel-blob-count",
        caffemodel(layers),
        r"incompatible number of blobs for layer 'conv': the weights hold 1, the net's layer has 2",
    )
    non_utf8 = caffemodel(good_layers(np.random.default_rng(1))).replace(
        b"\x0a\x04conv", b"\x0a\x04c\xffnv", 1
    )
    cm_case(
        "caffemodel-non-utf8-name",
        non_utf8,
        r"bad\.caffemodel: corrupt caffemodel: the text field 'layer\[0\]\.name' is not UTF-8",
    )
    huge_length = length_delimited_header(100, 1 << 31) + b"\x0a\x04conv"
    cm_case("caffemodel-huge-length-prefix", huge_length, r"bad\.caffemodel: cannot decode as a caffemodel")
    # caffe.proto's messages cannot nest deeply; an unknown group can: 20000 levels of field 1
    deep = b"\x0b" * 20000 + b"\x0c" * 20000
    cm_case("caffemodel-deeply-nested", deep, r"bad\.caffemodel: cannot decode as a caffemodel")
    cm_case(
        "caffemodel-h5-not-hdf5",
        b"\x89HDF\r\n\x1a\n" + bytes(200),
        r"cannot open HDF5 weights bad\.caffemodel\.h5: Unable to synchronously open file",
        name="bad.caffemodel.h5",
    )

    def huge_h5(handle: h5py.File) -> None:
        group = handle.create_group("data/conv")
        group.create_dataset("0", shape=(1 << 20, 1 << 20), dtype="f4", chunks=(16, 16))
        group.create_dataset("1", data=np.zeros(4, np.float32))

    cm_case(
        "caffemodel-h5-huge-dataset",
        h5_bytes(huge_h5),
        rf"bad\.caffemodel\.h5: layer 'conv' blob 0 \(shape \[1048576, 1048576\]\) needs 8\.0 TiB, {BUDGET}",
        name="bad.caffemodel.h5",
    )
    cm_case(
        "caffemodel-h5-no-data-group",
        h5_bytes(lambda h: h.create_group("weights")),
        r"bad\.caffemodel\.h5: not a Caffe HDF5 net \(no 'data' group\)",
        name="bad.caffemodel.h5",
    )
    case(
        "caffemodel-link-to-dev-zero",
        "caffemodel",
        argv,
        r"caffemodel bad\.caffemodel: is a device",
        bad,
        setup=[["link", bad, "/dev/zero"]],
    )
    case(
        "caffemodel-sparse-64g",
        "caffemodel",
        argv,
        rf"caffemodel bad\.caffemodel: reading its 68719476736 bytes needs 64\.0 GiB, {BUDGET}",
        bad,
        setup=[["sparse", bad, 64 << 30]],
    )


def solverstate_proto(**changes: object) -> bytes:
    state = caffe_pb2.SolverState(iter=1, learned_net="snap_iter_1.caffemodel", current_step=0)
    history = changes.pop("history", None)
    for key, value in changes.items():
        setattr(state, key, value)
    for spec in history if history is not None else [blob([3, 6], [0.0] * 18), blob([3], [0.0] * 3)]:
        state.history.append(blob_proto(spec))
    return state.SerializeToString()


def solverstate_cases() -> None:
    bad = "bad.solverstate"

    def ss_case(case_id: str, content: bytes | str, expect: str, name: str = bad, **kw: object) -> None:
        case(case_id, "solverstate", [*RESUME, name], expect, name, {name: content}, **kw)

    ss_case("solverstate-empty", b"", r"bad\.solverstate: file is empty")
    ss_case(
        "solverstate-random-bytes",
        bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8)),
        r"bad\.solverstate: cannot decode as a solverstate",
    )
    ss_case(
        "solverstate-truncated", solverstate_proto()[:-9], r"bad\.solverstate: cannot decode as a solverstate"
    )
    ss_case(
        "solverstate-is-caffemodel",
        caffemodel(good_layers(np.random.default_rng(4))),
        r"bad\.solverstate: decodes but holds no solver state",
    )
    ss_case(
        "solverstate-history-count",
        solverstate_proto(history=[blob([3, 6], [0.0] * 18)]),
        r"bad\.solverstate: incorrect length of history blobs: the solverstate holds 1, this SGD solver on this net needs 2",
    )
    ss_case(
        "solverstate-history-shape",
        solverstate_proto(history=[blob([4, 6], [0.0] * 24), blob([3], [0.0] * 3)]),
        r"bad\.solverstate: history blob 0 has shape \[4, 6\] but param .* has shape \[3, 6\]",
    )
    ss_case(
        "solverstate-history-values-short",
        solverstate_proto(history=[blob([3, 6], [0.0] * 5), blob([3], [0.0] * 3)]),
        r"bad\.solverstate: history blob 0: holds 5 values but its shape \[3, 6\] needs 18",
    )
    ss_case(
        "solverstate-history-huge-shape",
        solverstate_proto(history=[blob([1 << 31, 1 << 31]), blob([3], [0.0] * 3)]),
        r"bad\.solverstate: history blob 0: holds 0 values but its shape \[2147483648, 2147483648\] needs",
    )
    ss_case(
        "solverstate-non-utf8-learned-net",
        solverstate_proto().replace(b"snap_iter_1", b"snap\xfeiter_1", 1),
        r"bad\.solverstate: corrupt solverstate: the text field 'learned_net' is not UTF-8",
    )
    ss_case(
        "solverstate-negative-iter", solverstate_proto(iter=-5), r"bad\.solverstate: iteration -5 is negative"
    )
    ss_case(
        "solverstate-learned-net-missing",
        solverstate_proto(learned_net="gone_iter_1.caffemodel"),
        r"bad\.solverstate: cannot restore the weights of learned_net: caffemodel file not found: .*gone_iter_1\.caffemodel",
    )
    ss_case(
        "solverstate-learned-net-not-weights",
        solverstate_proto(learned_net="/etc/passwd"),
        r"bad\.solverstate: learned_net '/etc/passwd' is not a snapshot's weights file.*refusing to read it",
    )
    ss_case(
        "solverstate-learned-net-escapes",
        solverstate_proto(learned_net="../../../../../../../../../../../../etc/hostname"),
        r"learned_net '\.\./.*/etc/hostname' is not a snapshot's weights file",
    )

    def h5_state(fill: object) -> bytes:
        return h5_bytes(fill)

    def no_iter(handle: h5py.File) -> None:
        handle.create_group("history")

    def huge_history(handle: h5py.File) -> None:
        handle["iter"] = np.array([1], np.int32)
        handle["current_step"] = np.array([0], np.int32)
        group = handle.create_group("history")
        group.create_dataset("0", shape=(1 << 20, 1 << 20), dtype="f4", chunks=(16, 16))
        group["1"] = np.zeros(3, np.float32)

    def string_iter(handle: h5py.File) -> None:
        handle["iter"] = np.array([b"one"])
        handle.create_group("history")

    ss_case(
        "solverstate-h5-no-iter",
        h5_state(no_iter),
        r"bad\.solverstate\.h5: HDF5 solverstate has no 'iter' dataset",
        name="bad.solverstate.h5",
    )
    ss_case(
        "solverstate-h5-string-iter",
        h5_state(string_iter),
        r"bad\.solverstate\.h5: HDF5 solverstate's 'iter' is not one integer",
        name="bad.solverstate.h5",
    )
    ss_case(
        "solverstate-h5-huge-history",
        h5_state(huge_history),
        rf"bad\.solverstate\.h5: history blob 0 \(shape \[1048576, 1048576\]\) needs 8\.0 TiB, {BUDGET}",
        name="bad.solverstate.h5",
    )
    ss_case(
        "solverstate-h5-not-hdf5",
        b"not an hdf5 file at all",
        r"cannot open HDF5 solverstate bad\.solverstate\.h5: .*file signature not found",
        name="bad.solverstate.h5",
    )


def side_cases() -> None:
    import torch

    side = "snap_iter_1.caffe_compat.pt"
    argv = [*RESUME, "snap_iter_1.solverstate"]
    good = {
        "version": 1,
        "iter": 1,
        "layers": {"train": {}},
        "data": {"train": {}},
        "rng": {"torch": torch.zeros(5056, dtype=torch.uint8)},
        "losses": {"values": [1.0], "smoothed": 1.0, "start_iter": 0},
    }

    def side_case(case_id: str, content: bytes, expect: str, **kw: object) -> None:
        case(case_id, "snapshot side file", argv, expect, side, {side: content}, **kw)

    side_case(
        "side-pickle-runs-code",
        torch_save({**good, "layers": RunsCode()}),
        r"refusing to load the side file: it holds more than tensors and plain values \(Trying to load unsupported GLOBAL posix\.system",
        absent=["PWNED"],
    )
    side_case(
        "side-pickle-eval",
        torch_save({**good, "x": RunsCode()}),
        r"refusing to load the side file",
        absent=["PWNED"],
    )
    side_case(
        "side-random-bytes",
        bytes(np.random.default_rng(5).integers(0, 256, 700, dtype=np.uint8)),
        r"not a caffe-compat side file \(not a zip archive",
    )
    side_case("side-truncated", torch_save(good)[:300], r"not a caffe-compat side file \(not a zip archive")
    side_case(
        "side-not-a-dict",
        torch_save([1, 2, 3]),
        r"not a valid caffe-compat side file: it holds a list, not a dict",
    )
    side_case(
        "side-wrong-version", torch_save({**good, "version": 7}), r"not a caffe-compat side file of version 1"
    )
    side_case(
        "side-missing-keys",
        torch_save({"version": 1, "iter": 1}),
        r"not a valid caffe-compat side file: it lacks \['layers', 'data', 'rng', 'losses'\]",
    )
    side_case(
        "side-bad-rng",
        torch_save({**good, "rng": {"torch": torch.zeros(3)}}),
        r"the torch generator state is a torch\.float32 tensor of shape \[3\]",
    )
    side_case(
        "side-short-rng",
        torch_save({**good, "rng": {"torch": torch.zeros(3, dtype=torch.uint8)}}),
        r"the generator state does not restore",
    )
    side_case(
        "side-unknown-layer",
        torch_save({**good, "layers": {"train": {"nope": {"x": torch.zeros(2)}}}}),
        r"the side file has state for layer 'nope' which the net lacks",
    )
    side_case(
        "side-layer-state-not-tensors",
        torch_save({**good, "layers": {"train": {"ip": {"x": "text"}}}}),
        r"the state of layer 'ip' of net 'train' is not all tensors",
    )
    side_case(
        "side-bad-data-cursor",
        torch_save(
            {
                **good,
                "data": {
                    "train": {
                        "data": {
                            "started": True,
                            "file_index": "x",
                            "row_index": 0,
                            "file_order": [0],
                            "row_order": [],
                        }
                    }
                },
            }
        ),
        r"the cursor of data layer 'data' does not fit the layer \(ValueError",
    )
    side_case("side-bad-losses", torch_save({**good, "losses": {"values": "many"}}), r"'losses' is not")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
        handle.writestr(zipfile.ZipInfo("archive/data.pkl", FIXED_TIME), b"\x80\x02}q\x00.")
    raw = bytearray(archive.getvalue())
    central = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, 0xFFFFFFF0)  # the declared uncompressed size: 4 GiB
    side_case(
        "side-zip-declares-4g", bytes(raw), rf"unpacking its 1 archive members needs 4\.0 GiB, {BUDGET}"
    )


def mean_cases() -> None:
    mean = "mean.binaryproto"
    argv = [*TIME, "net_mean.prototxt"]

    def mean_case(case_id: str, content: bytes, expect: str) -> None:
        case(case_id, "mean binaryproto", argv, expect, mean, {mean: content})

    mean_case("mean-empty", b"", r"mean\.binaryproto: file is empty")
    mean_case(
        "mean-random-bytes",
        bytes(np.random.default_rng(6).integers(0, 256, 300, dtype=np.uint8)),
        r"mean\.binaryproto: cannot decode as a binaryproto blob",
    )
    mean_case(
        "mean-values-short",
        blob_proto(blob([1, 3, 8, 8], [1.0] * 10)).SerializeToString(),
        r"mean\.binaryproto: holds 10 values but its shape \[1, 3, 8, 8\] needs 192",
    )
    mean_case(
        "mean-huge-shape",
        blob_proto(blob([1000000, 1000000, 3], [1.0] * 3)).SerializeToString(),
        r"mean\.binaryproto: holds 3 values but its shape \[1000000, 1000000, 3\] needs 3000000000000",
    )
    mean_case(
        "mean-negative-legacy",
        blob_proto(blob(None, [1.0] * 4, num=1, channels=-1, height=-4, width=1)).SerializeToString(),
        r"mean\.binaryproto: shape \[1, -1, -4, 1\] has a negative dimension",
    )
    mean_case(
        "mean-is-caffemodel",
        caffemodel(good_layers(np.random.default_rng(7))),
        r"mean\.binaryproto: .*\(it looks like a \.caffemodel\)",
    )
    mean_case(
        "mean-wrong-size-for-data",
        blob_proto(blob([1, 3, 4, 4], [0.5] * 48)).SerializeToString(),
        r"has shape \[3, 8, 8\] \(CxHxW\) but the mean_file '.*mean\.binaryproto' has \[3, 4, 4\]",
    )
    case(
        "mean-link-loop",
        "mean binaryproto",
        argv,
        r"mean\.binaryproto: is a symbolic link loop",
        mean,
        setup=[["link", mean, mean]],
    )


def lmdb_cases() -> None:
    argv = [*TIME, "net_db.prototxt"]

    def db_case(case_id: str, records: list[tuple[bytes, bytes]], expect: str) -> None:
        case(case_id, "LMDB Datum", argv, expect, "db", lmdb_files(records))

    raw = np.random.default_rng(8).integers(0, 256, 192, dtype=np.uint8).tobytes()
    db_case(
        "lmdb-not-a-datum",
        [(b"0001", b"\xff\xff\xff\xff garbage")],
        r"record '0001' of .*db is not a Caffe Datum record",
    )
    db_case(
        "lmdb-datum-data-short",
        [(b"0001", datum(channels=3, height=8, width=8, data=raw[:10], label=1))],
        r"record '0001' of .*db: holds 10 bytes but \[3, 8, 8\] needs 192",
    )
    db_case(
        "lmdb-datum-huge-dims",
        [(b"0001", datum(channels=3, height=100000, width=100000, data=raw[:10], label=1))],
        r"record '0001' of .*db: holds 10 bytes but \[3, 100000, 100000\] needs 30000000000",
    )
    db_case(
        "lmdb-datum-zero-channels",
        [(b"0001", datum(channels=0, height=8, width=8, data=b"", label=1))],
        r"record '0001' of .*db: a raw Datum needs positive channels/height/width, got \[0, 8, 8\]",
    )
    db_case(
        "lmdb-datum-float-mismatch",
        [(b"0001", datum(channels=1, height=2, width=2, float_data=[1.0, 2.0], label=1))],
        r"record '0001' of .*db: holds 2 floats but \[1, 2, 2\] needs 4",
    )
    db_case(
        "lmdb-datum-encoded-garbage",
        [(b"0001", datum(encoded=True, data=b"not an image", label=1))],
        r"record '0001' of .*db: the encoded image \(12 bytes\) cannot be decoded",
    )
    db_case(
        "lmdb-datum-encoded-bomb",
        [(b"0001", datum(encoded=True, data=png_header(100000, 100000), label=1))],
        rf"record '0001' of .*db: its header declares 100000x100000 pixels, which needs 37\.3 GiB, {BUDGET}",
    )
    db_case("lmdb-empty", [], r"the lmdb database '.*db' holds no record")
    case(
        "lmdb-corrupt-file",
        "LMDB Datum",
        argv,
        r"cannot open lmdb database '.*db': .*MDB_INVALID",
        "db",
        {"db/data.mdb": bytes(np.random.default_rng(9).integers(0, 256, 8192, dtype=np.uint8))},
    )


def image_cases() -> None:
    argv = [*TIME, "net_img.prototxt"]

    def img_case(case_id: str, files: dict[str, bytes | str], expect: str, names: str, **kw: object) -> None:
        case(case_id, "image list and images", argv, expect, names, files, **kw)

    img_case(
        "list-missing-label",
        {"img_list.txt": "img0.png\nimg1.png 1\n"},
        r"line 1 of .*img_list\.txt: expected 'path label' separated by a space",
        "img_list.txt",
    )
    img_case(
        "list-label-not-integer",
        {"img_list.txt": "img0.png zero\n"},
        r"line 1 of .*img_list\.txt: the label 'zero' is not an integer",
        "img_list.txt",
    )
    img_case(
        "list-empty", {"img_list.txt": "\n\n"}, r"the image list '.*img_list\.txt' is empty", "img_list.txt"
    )
    img_case(
        "list-binary",
        {"img_list.txt": bytes(range(1, 256))},
        r"line 1 of .*img_list\.txt: expected 'path label' separated by a space",
        "img_list.txt",
    )
    img_case(
        "list-missing-image",
        {"img_list.txt": "img0.png 0\nmissing.png 1\n"},
        r"cannot read image '.*imgs/missing\.png' \(No such file or directory\) \(line 2 of .*img_list\.txt\)",
        "missing.png",
    )
    img_case(
        "list-escapes-root",
        {"img_list.txt": "img0.png 0\n../../../../../../etc/hostname 1\n"},
        r"line 2 of .*img_list\.txt: the path '\.\./\.\./\.\./\.\./\.\./\.\./etc/hostname' leads out of root_folder 'imgs/' through '\.\.'",
        "img_list.txt",
    )
    img_case(
        "image-garbage",
        {"imgs/img0.png": b"this is not a png"},
        r"cannot decode image '.*imgs/img0\.png' \(17 bytes\): not an image format OpenCV reads",
        "img0.png",
    )
    img_case(
        "image-truncated-png",
        {"imgs/img0.png": png(8, 8)[:60]},
        r"cannot decode image '.*imgs/img0\.png' \(60 bytes\)",
        "img0.png",
    )
    img_case(
        "image-png-bomb-header",
        {"imgs/img0.png": png_header(100000, 100000)},
        rf"image '.*imgs/img0\.png': its header declares 100000x100000 pixels, which needs 37\.3 GiB, {BUDGET}",
        "img0.png",
    )
    img_case(
        "image-size-mismatch",
        {"imgs/img1.png": png(9, 8)},
        r"image '.*img1\.png' has shape \[3, 9, 8\] \(CxHxW\) but the batch's first image gives \[3, 8, 8\]",
        "img1.png",
    )
    img_case(
        "image-link-to-dev-zero",
        {},
        r"cannot read image '.*imgs/img0\.png' \(not a regular file\)",
        "img0.png",
        setup=[["link", "imgs/img0.png", "/dev/zero"]],
    )
    img_case(
        "image-fifo",
        {},
        r"cannot read image '.*imgs/img0\.png' \(not a regular file\)",
        "img0.png",
        setup=[["fifo", "imgs/img0.png"]],
    )
    img_case(
        "image-directory",
        {},
        r"cannot read image '.*imgs/img0\.png' \(not a regular file\)",
        "img0.png",
        setup=[["dir", "imgs/img0.png"]],
    )
    img_case(
        "image-link-loop",
        {},
        r"cannot read image '.*imgs/img0\.png' \(Too many levels of symbolic links\)",
        "img0.png",
        setup=[["link", "imgs/img0.png", "img0.png"]],
    )
    img_case(
        "list-link-to-dev-zero",
        {},
        r"image list .*img_list\.txt: is a device \(through the link to '/dev/zero'\)",
        "img_list.txt",
        setup=[["link", "img_list.txt", "/dev/zero"]],
    )


def hdf5_cases() -> None:
    argv = [*TIME, "net_h5.prototxt"]

    def h5_case(
        case_id: str, files: dict[str, bytes | str], expect: str, names: str = "bad.h5", **kw: object
    ) -> None:
        case(case_id, "HDF5 source", argv, expect, names, files, **kw)

    def only(**datasets: object) -> object:
        def fill(handle: h5py.File) -> None:
            for key, value in datasets.items():
                if isinstance(value, tuple):
                    handle.create_dataset(
                        key, shape=value, dtype="f4", chunks=tuple(min(16, d) for d in value)
                    )
                else:
                    handle[key] = value

        return fill

    h5_case(
        "h5-list-missing-file",
        {"h5_list.txt": "gone.h5\n"},
        r"cannot open HDF5 file 'gone\.h5' \(line 1 of .*h5_list\.txt\): .*No such file or directory",
        "gone.h5",
    )
    h5_case(
        "h5-list-empty",
        {"h5_list.txt": "\n"},
        r"the source list '.*h5_list\.txt' names no HDF5 file",
        "h5_list.txt",
    )
    h5_case(
        "h5-list-binary",
        {"h5_list.txt": b"\xff\xfe\x00\x81"},
        r"the source list '.*h5_list\.txt' is not text",
        "h5_list.txt",
    )
    h5_case(
        "h5-not-hdf5",
        {"bad.h5": b"plain text, not HDF5"},
        r"cannot open HDF5 file 'bad\.h5' \(line 1 of .*h5_list\.txt\): .*file signature not found",
    )
    h5_case(
        "h5-missing-dataset",
        {"bad.h5": h5_bytes(only(data=np.zeros((4, 6), np.float32)))},
        r"HDF5 file 'bad\.h5' has no dataset 'label'",
    )
    h5_case(
        "h5-string-dataset",
        {"bad.h5": h5_bytes(only(data=np.array([b"a", b"b"]), label=np.zeros(2, np.float32)))},
        r"dataset 'data' of 'bad\.h5' has unsupported type",
    )
    h5_case(
        "h5-scalar-dataset",
        {"bad.h5": h5_bytes(only(data=np.float32(1.0), label=np.zeros(2, np.float32)))},
        r"dataset 'data' of 'bad\.h5' must have at least 1 axis",
    )
    h5_case(
        "h5-rows-mismatch",
        {"bad.h5": h5_bytes(only(data=np.zeros((4, 6), np.float32), label=np.zeros(3, np.float32)))},
        r"datasets of 'bad\.h5' differ in their number of rows: 'data' has 4, 'label' has 3",
    )
    h5_case(
        "h5-zero-rows",
        {"bad.h5": h5_bytes(only(data=np.zeros((0, 6), np.float32), label=np.zeros(0, np.float32)))},
        r"HDF5 file 'bad\.h5' has no rows",
    )
    h5_case(
        "h5-huge-declared-dataset",
        {"bad.h5": h5_bytes(only(data=(1 << 24, 1 << 16), label=np.zeros(4, np.float32)))},
        rf"HDF5 file 'bad\.h5': loading its datasets \['data', 'label'\] needs 8\.0 TiB, {BUDGET}",
    )
    h5_case(
        "h5-link-to-dev-zero",
        {},
        r"HDF5 file .*bad\.h5: is a device",
        setup=[["link", "bad.h5", "/dev/zero"]],
    )


def convert_cases() -> None:
    import torch

    out = ["--to", "caffemodel", "-o", "out.caffemodel", "--no-verify"]

    def pt_case(case_id: str, content: bytes, expect: str, **kw: object) -> None:
        case(
            case_id,
            "pt weights to convert",
            ["convert", "good_net.prototxt", "bad.pt", *out],
            expect,
            "bad.pt",
            {"bad.pt": content},
            **kw,
        )

    good = {
        "conv.weight": torch.zeros(4, 3, 3, 3),
        "conv.bias": torch.zeros(4),
        "fc.weight": torch.zeros(5, 144),
        "fc.bias": torch.zeros(5),
    }
    pt_case(
        "pt-pickle-runs-code",
        torch_save({"conv.weight": RunsCode()}),
        r"bad\.pt: refusing to load: it holds more than tensors and plain values \(Trying to load unsupported GLOBAL posix\.system",
        absent=["PWNED"],
    )
    pt_case(
        "pt-truncated",
        torch_save(good)[:200],
        r"bad\.pt: not a PyTorch state dict saved with torch\.save \(not a zip archive",
    )
    pt_case("pt-not-a-state-dict", torch_save([1, 2]), r"bad\.pt: does not hold a state dict")
    pt_case(
        "pt-wrong-shapes",
        torch_save({**good, "fc.weight": torch.zeros(5, 7)}),
        r"bad\.pt: the weights do not fit the net .*layer 'fc' blob 0 \('fc\.weight'\): stored shape \[5, 7\], the net's is \[5, 144\]",
    )

    def npz(**arrays: object) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    inputs = [
        "convert",
        "good_net.prototxt",
        "good.caffemodel",
        "--to",
        "caffemodel",
        "-o",
        "out.caffemodel",
        "--inputs",
        "bad.npz",
    ]
    case(
        "npz-object-array",
        "npz inputs to convert",
        inputs,
        r"--inputs bad\.npz: cannot read it as a \.npz of arrays",
        "bad.npz",
        {"bad.npz": npz(data=np.array([{"a": 1}], dtype=object))},
    )
    huge = io.BytesIO()
    with zipfile.ZipFile(huge, "w") as handle:
        header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)}
        member = io.BytesIO()
        np.lib.format.write_array_header_1_0(member, header)
        handle.writestr(zipfile.ZipInfo("data.npy", FIXED_TIME), member.getvalue() + b"\0" * 64)
    case(
        "npz-huge-declared-array",
        "npz inputs to convert",
        inputs,
        rf"--inputs bad\.npz: array 'data' \(shape \[1048576, 1048576\]\) needs 4\.0 TiB, {BUDGET}",
        "bad.npz",
        {"bad.npz": huge.getvalue()},
    )
    case(
        "npz-not-a-zip",
        "npz inputs to convert",
        inputs,
        r"--inputs bad\.npz: cannot read it as a \.npz of arrays",
        "bad.npz",
        {"bad.npz": b"PK\x03\x04 broken"},
    )


def build() -> tuple[list[dict], dict[str, dict[str, bytes]]]:
    """Every case: the manifest entries and each case's files (``common/`` not included)."""
    CASES.clear()
    FILES.clear()
    for add in (
        net_cases,
        solver_cases,
        caffemodel_cases,
        solverstate_cases,
        side_cases,
        mean_cases,
        lmdb_cases,
        image_cases,
        hdf5_cases,
        convert_cases,
    ):
        add()
    return list(CASES), dict(FILES)


def main() -> None:
    cases, files = build()
    for folder in ("common", "cases"):
        shutil.rmtree(HERE / folder, ignore_errors=True)
    for name, content in common_files().items():
        target = HERE / "common" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    for case_id, case_files in files.items():
        for name, content in case_files.items():
            target = HERE / "cases" / case_id / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {HERE}")


if __name__ == "__main__":
    main()
