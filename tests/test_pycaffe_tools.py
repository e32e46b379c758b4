"""pycaffe's helpers: ``caffe.io`` (conversions, Transformer, image loading and scikit-image's
resize), ``NetSpec``, ``coord_map``, ``draw`` (DOT text, no Graphviz needed), ``Classifier``, the
classic feature-extraction script against ``cc.Net``, the ``caffe`` alias folder and the runner
of Caffe's own pycaffe tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import caffe_compat as cc
import caffe_compat.pycaffe as caffe
from caffe_compat.cli import main as cli_main
from caffe_compat.proto import caffe_pb2
from caffe_compat.pycaffe import bvlc_tests, draw
from caffe_compat.pycaffe import io as cio
from caffe_compat.pycaffe.coord_map import coord_map_from_to, crop
from caffe_compat.pycaffe.net_spec import layers as L
from caffe_compat.pycaffe.net_spec import params as P

ROOT = Path(__file__).resolve().parent.parent

DEPLOY = """name: "feat"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.05 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc5" type: "InnerProduct" bottom: "pool1" top: "fc5" inner_product_param { num_output: 5
        weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc5" top: "prob" }
"""


# -- caffe.io -----------------------------------------------------------------------------------


def test_blobproto_and_datum_conversions() -> None:
    array = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    blob = cio.array_to_blobproto(array, diff=-array)
    assert list(blob.shape.dim) == [1, 2, 3]
    np.testing.assert_array_equal(cio.blobproto_to_array(blob), array)
    np.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), -array)
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=list(range(6)))
    assert cio.blobproto_to_array(legacy).shape == (1, 1, 2, 3)
    arrays = cio.blobprotovector_str_to_arraylist(cio.arraylist_to_blobprotovector_str([array, array * 2]))
    np.testing.assert_array_equal(arrays[1], array * 2)
    image = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = cio.array_to_datum(image, label=3)
    assert datum.data == image.tobytes() and datum.label == 3 and not datum.float_data
    np.testing.assert_array_equal(cio.datum_to_array(datum), image)
    floats = cio.array_to_datum(image.astype(np.float64) / 2)
    assert not floats.HasField("label") and len(floats.float_data) == 24
    np.testing.assert_array_equal(cio.datum_to_array(floats), image / 2)
    with pytest.raises(ValueError, match="Incorrect array shape"):
        cio.array_to_datum(np.zeros((2, 2)))


def test_resize_image_reproduces_scikit_image() -> None:
    # expected values: skimage 0.26 resize(im, dims, order, mode='constant') channel 0, 7 decimals
    image = (np.arange(60, dtype=np.float32).reshape(4, 5, 3) % 7) / 6.0
    expected = {
        ((3, 2), 1): [[0.3917319, 0.5654123], [0.4351688, 0.4356878], [0.6417482, 0.4691057]],
        ((3, 2), 0): [[0.4898408, 0.5858013], [0.5627224, 0.4037719], [0.726827, 0.5678764]],
        ((6, 7), 1): [
            [0.0, 0.2380952, 0.5357143, 0.8333333, 0.4365079, 0.4563492, 0.5952381],
            [0.0714286, 0.3690476, 0.5595238, 0.5, 0.4404762, 0.6309524, 0.7857143],
            [0.1666667, 0.4801587, 0.5039682, 0.0277778, 0.3849206, 0.6587301, 0.7142857],
            [0.2619048, 0.5912699, 0.6150793, 0.1388889, 0.4960318, 0.4365079, 0.1428571],
            [0.3571429, 0.702381, 0.7261904, 0.25, 0.6071429, 0.4642857, 0.0714286],
            [0.3571429, 0.6547619, 0.6746032, 0.2777778, 0.5753968, 0.4563492, 0.1190476],
        ],
    }
    for (dims, order), values in expected.items():
        result = cio.resize_image(image, dims, interp_order=order)
        assert result.dtype == np.float32 and result.shape == (*dims, 3)
        np.testing.assert_allclose(result[:, :, 0], values, atol=1e-6)
    # the [0, 1] normalization is undone; a constant image stays constant
    np.testing.assert_allclose(
        cio.resize_image(image * 200 + 10, (3, 2))[:, :, 0],
        np.array(expected[((3, 2), 1)]) * 200 + 10,
        rtol=1e-5,
    )
    np.testing.assert_array_equal(
        cio.resize_image(np.full((4, 5, 1), 3.0), (2, 2)), np.full((2, 2, 1), 3.0, np.float32)
    )
    # other channel counts: corner-aligned linear interpolation (scipy's zoom)
    two = np.stack([np.arange(3.0)[:, None].repeat(2, 1), np.zeros((3, 2))], axis=2)
    np.testing.assert_allclose(cio.resize_image(two, (5, 2))[:, 0, 0], [0, 0.5, 1, 1.5, 2])


def test_load_image_matches_skimage_conventions(tmp_path: Path) -> None:
    bgr = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [0, 128, 255]]], np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    color = caffe.io.load_image(str(tmp_path / "c.png"))
    assert color.dtype == np.float32 and color.shape == (2, 2, 3)
    np.testing.assert_allclose(color, bgr[:, :, ::-1] / 255.0, rtol=1e-6)
    gray = caffe.io.load_image(str(tmp_path / "c.png"), color=False)
    rgb = bgr[:, :, ::-1] / 255.0
    np.testing.assert_allclose(gray[:, :, 0], rgb @ [0.2125, 0.7154, 0.0721], rtol=1e-6)
    bgra = np.concatenate([bgr, np.array([[[255], [0]], [[51], [255]]], np.uint8)], axis=2)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "a.png")), color, rtol=1e-6)
    alpha = bgra[:, :, 3:] / 255.0
    blended = (1 - alpha) + rgb * alpha
    np.testing.assert_allclose(
        caffe.io.load_image(str(tmp_path / "a.png"), color=False)[:, :, 0],
        blended @ [0.2125, 0.7154, 0.0721],
        rtol=1e-6,
    )
    cv2.imwrite(str(tmp_path / "g.png"), np.array([[0, 65535], [1000, 30000]], np.uint16))
    single = caffe.io.load_image(str(tmp_path / "g.png"))
    assert single.shape == (2, 2, 3)
    np.testing.assert_allclose(single[:, :, 2], np.array([[0, 65535], [1000, 30000]]) / 65535.0, rtol=1e-6)
    with pytest.raises(OSError, match="cannot read image file"):
        caffe.io.load_image(str(tmp_path / "missing.png"))


def test_transformer_and_oversample() -> None:
    transformer = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", np.array([100.0, 110.0, 120.0]))
    transformer.set_input_scale("data", 0.5)
    image = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    out = transformer.preprocess("data", image)
    expected = (
        image.transpose(2, 0, 1)[::-1] * np.float32(255) - np.array([100, 110, 120.0])[:, None, None]
    ) * 0.5
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(transformer.deprocess("data", out), image, atol=1e-6)
    assert transformer.preprocess("data", np.random.default_rng(1).random((8, 10, 3))).shape == (3, 4, 5)
    transformer.set_mean("data", np.ones((3, 8, 10)) * np.array([1.0, 2.0, 3.0])[:, None, None])
    assert transformer.mean["data"].shape == (3, 4, 5)
    with pytest.raises(Exception, match="is not one of the net inputs"):
        transformer.preprocess("label", image)
    with pytest.raises(ValueError, match="Mean channels incompatible"):
        transformer.set_mean("data", np.zeros(4))
    images = [np.arange(4 * 6 * 1, dtype=np.float32).reshape(4, 6, 1)]
    crops = caffe.io.oversample(images, (2, 4))
    assert crops.shape == (10, 2, 4, 1)
    np.testing.assert_array_equal(crops[0], images[0][:2, :4])
    np.testing.assert_array_equal(crops[3], images[0][2:, 2:])
    np.testing.assert_array_equal(crops[4], images[0][1:3, 1:5])
    np.testing.assert_array_equal(crops[5], images[0][:2, :4][:, ::-1])


# -- the classic feature-extraction script ------------------------------------------------------


def _deploy(tmp_path: Path) -> tuple[str, str]:
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    torch.manual_seed(3)
    cc.Net(model, phase="TEST").save_caffemodel(tmp_path / "deploy.caffemodel")
    return str(model), str(tmp_path / "deploy.caffemodel")


def test_feature_extraction_script_equals_the_native_net(tmp_path: Path) -> None:
    model, weights = _deploy(tmp_path)
    rng = np.random.default_rng(5)
    files = []
    for index in range(3):
        files.append(str(tmp_path / f"img{index}.png"))
        cv2.imwrite(files[-1], rng.integers(0, 256, (11, 9, 3), dtype=np.uint8))
    # the script, as pycaffe users write it
    net = caffe.Net(model, caffe.TEST, weights=weights)
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", np.array([104.0, 117.0, 123.0]))
    net.blobs["data"].reshape(len(files), 3, 8, 6)
    net.blobs["data"].data[...] = [transformer.preprocess("data", caffe.io.load_image(f)) for f in files]
    net.forward()
    features = net.blobs["fc5"].data.copy()
    # the same through the native API
    native = cc.Net(model, weights=weights, phase="TEST")
    batch = torch.from_numpy(np.ascontiguousarray(net.blobs["data"].data))
    with torch.no_grad():
        native(data=batch)
    assert features.shape == (3, 5) and np.abs(features).sum() > 0
    np.testing.assert_array_equal(features, native.blobs["fc5"].numpy())


def test_classifier_predicts_centre_and_oversampled_crops(tmp_path: Path) -> None:
    model, weights = _deploy(tmp_path)
    classifier = caffe.Classifier(model, weights, image_dims=(10, 8), raw_scale=255, channel_swap=(2, 1, 0))
    images = [np.random.default_rng(i).random((12, 9, 3)).astype(np.float32) for i in range(2)]
    native = cc.Net(model, weights=weights, phase="TEST")

    def probabilities(crops: np.ndarray) -> np.ndarray:
        batch = np.stack([classifier.transformer.preprocess("data", c) for c in crops])
        with torch.no_grad():
            return native(data=torch.from_numpy(batch))["prob"].numpy()

    resized = np.stack([caffe.io.resize_image(im, (10, 8)) for im in images])
    centre = classifier.predict(images, oversample=False)
    np.testing.assert_allclose(centre, probabilities(resized[:, 1:9, 1:7]), rtol=1e-6)
    assert centre.shape == (2, 5)
    np.testing.assert_allclose(centre.sum(1), [1, 1], rtol=1e-6)
    averaged = classifier.predict(images)
    expected = probabilities(caffe.io.oversample(resized, (8, 6))).reshape(2, 10, 5).mean(1)
    np.testing.assert_allclose(averaged, expected, rtol=1e-6)


# -- NetSpec, coord_map, draw -------------------------------------------------------------------


def test_net_spec_generates_the_prototxt(tmp_path: Path) -> None:
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[{"dim": [2, 1, 6, 6]}, {"dim": [2]}], ntop=2)
    n.conv = L.Convolution(
        n.data,
        kernel_size=3,
        num_output=4,
        weight_filler={"type": "xavier"},
        param=[{"lr_mult": 1}, {"lr_mult": 2}],
    )
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu = L.ReLU(n.pool, in_place=True)
    n.ip = L.InnerProduct(n.relu, num_output=3)
    n.loss = L.SoftmaxWithLoss(n.ip, n.label, loss_weight=0.5)
    n.silence = L.Silence(n.loss, ntop=0)
    proto = n.to_proto()
    assert [layer.name for layer in proto.layer] == ["data", "conv", "pool", "relu", "ip", "loss", "silence"]
    conv = proto.layer[1]
    assert (
        list(conv.convolution_param.kernel_size) == [3]
        and conv.convolution_param.weight_filler.type == "xavier"
    )
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert proto.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(proto.layer[3].bottom) == list(proto.layer[3].top) == ["pool"]
    assert list(proto.layer[5].loss_weight) == [0.5] and not proto.layer[6].top
    (tmp_path / "spec.prototxt").write_text(str(proto))
    net = caffe.Net(str(tmp_path / "spec.prototxt"), caffe.TRAIN)
    assert len(net.layers) == 7 and net.blobs["ip"].shape == (2, 3) and net.outputs == []
    anonymous = L.InnerProduct(L.ReLU(L.Input(shape={"dim": [1, 2]})), num_output=1).to_proto()
    assert [(layer.name, list(layer.top)) for layer in anonymous.layer] == [
        ("Input1", ["Input1"]),
        ("ReLU1", ["ReLU1"]),
        ("InnerProduct1", ["InnerProduct1"]),
    ]
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(L.DummyData(ntop=2), ntop=0)


def _coord_spec(pad: int = 0, dpad: int = 0) -> caffe.NetSpec:
    n = caffe.NetSpec()
    n.data = L.Input(shape={"dim": [1, 1, 20, 20]})
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=5, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.deconv = L.Deconvolution(n.pool, num_output=2, kernel_size=4, stride=2, pad=dpad)
    return n


def test_coord_map_and_crop(tmp_path: Path) -> None:
    # deconv (k4 s2): x -> 2x + 1.5; pool (k2 s2): x/2 - 0.25; conv (k5, pad p): x + p - 2
    n = _coord_spec()
    axis, a, b = coord_map_from_to(n.deconv, n.data)
    assert axis == 1 and a == 1 and b == 1
    n = _coord_spec(pad=4)
    axis, a, b = coord_map_from_to(n.deconv, n.data)
    assert (axis, float(a[0]), float(b[0])) == (1, 1.0, -3.0)
    n.crop = crop(n.deconv, n.data)
    proto = n.to_proto()
    assert proto.layer[-1].type == "Crop" and proto.layer[-1].crop_param.axis == 2
    assert list(proto.layer[-1].crop_param.offset) == [3]
    (tmp_path / "crop.prototxt").write_text(str(proto))
    net = caffe.Net(str(tmp_path / "crop.prototxt"), caffe.TEST)
    assert net.blobs["deconv"].shape == (1, 2, 26, 26) and net.blobs["crop"].shape == (1, 2, 20, 20)
    n = _coord_spec()
    with pytest.raises(AssertionError, match="cannot crop negative offset"):
        crop(n.deconv, n.data)
    n.ip = L.InnerProduct(n.deconv, num_output=2)
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        coord_map_from_to(n.ip, n.data)


def test_draw_makes_the_dot_graph_without_graphviz(tmp_path: Path) -> None:
    net = caffe_pb2.NetParameter()
    from google.protobuf import text_format

    text_format.Merge(
        """name: "d"
        layer { name: "data" type: "Data" top: "data" data_param { batch_size: 16 } include { phase: TRAIN } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
                convolution_param { num_output: 20 kernel_size: 5 stride: 2 } }
        layer { name: "relu" type: "ReLU" bottom: "conv1" top: "conv1" }
        layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param { pool: AVE kernel_size: 3 } }""",
        net,
    )
    text = draw.get_pydot_graph(net, "LR", display_lrm=True).to_string()
    assert "digraph d {" in text and "rankdir=LR;" in text
    assert '"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 2\\npad: 0\\nlr mult: 1.0, 2.0"' in text
    assert 'fillcolor="#FF5050"' in text and 'fillcolor="#90EE90"' in text and 'fillcolor="#FF9900"' in text
    assert '"pool\\n(Pooling AVE)\\nkernel size: 3\\nstride: 1\\npad: 0"' in text
    assert 'label="Batch 16"' in text and "label=20" in text
    assert (
        "data"
        not in draw.get_pydot_graph(net, "TB", phase=caffe_pb2.TEST)
        .to_string()
        .split("digraph")[1]
        .split("{")[0]
    )
    vertical = draw.get_pydot_graph(net, "TB", phase=caffe_pb2.TEST).to_string()
    assert "Batch 16" not in vertical and '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 0"' in vertical
    draw.draw_net_to_file(net, str(tmp_path / "net.raw"))
    assert (tmp_path / "net.raw").read_text() == draw.get_pydot_graph(net, "LR").to_string()
    assert draw.get_layer_lr_mult(net.layer[1]) == (1.0, 2.0)
    with pytest.raises(ValueError, match="ReLU layers do not have a learning rate multiplier"):
        draw.get_layer_lr_mult(net.layer[2])


# -- the alias folder and the runner of Caffe's tests ---------------------------------------------


def test_pycaffe_path_holds_a_caffe_alias_and_nothing_installs_caffe(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["pycaffe-path"]) == 0
    folder = capsys.readouterr().out.strip()
    assert Path(folder, "caffe", "__init__.py").is_file()
    script = textwrap.dedent(
        """
        import caffe, caffe.io, caffe.net_spec, caffe.coord_map, caffe.draw, caffe.classifier, caffe.detector
        from caffe.proto import caffe_pb2
        from caffe import layers as L, params as P
        import caffe_compat.pycaffe as p, caffe_compat.proto.caffe_pb2 as pb
        assert caffe.io is p.io and caffe.draw is p.draw and caffe.net_spec is p.net_spec
        assert caffe.coord_map is p.coord_map and caffe.classifier is p.classifier and caffe.detector is p.detector
        assert caffe_pb2 is pb and caffe.proto.caffe_pb2 is pb and caffe.Net is p.Net and L is p.layers
        assert caffe.TEST == 1 and caffe.Layer is p.Layer and caffe.SGDSolver is p.SGDSolver
        print("alias ok", caffe.__file__)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("alias ok") and folder in done.stdout
    # installing caffe-compat ships no top-level `caffe`: the alias is package data
    from setuptools import find_packages

    packages = find_packages(
        str(ROOT), include=["caffe_compat", "caffe_compat.*", "converters", "converters.*"]
    )
    assert "caffe_compat.pycaffe" in packages and not any(p.split(".")[0] == "caffe" for p in packages)
    assert not any(p.endswith(".caffe") for p in packages)
    assert '"alias/caffe/*.py", "alias/caffe/proto/*.py"' in (ROOT / "setup.py").read_text()


def test_bvlc_runner_copies_the_layout_and_prints_the_table(tmp_path: Path) -> None:
    source = tmp_path / "caffe"
    tests = source / "python" / "caffe" / "test"
    tests.mkdir(parents=True)
    (source / "models" / "m").mkdir(parents=True)
    (source / "models" / "m" / "deploy.prototxt").write_text('name: "m"')
    (source / "models" / "m" / "weights.caffemodel").write_bytes(b"x")
    (tests / "test_alias.py").write_text(
        textwrap.dedent(
            """
            import os
            import caffe

            def test_caffe_is_the_alias():
                assert caffe.Net.__module__ == "caffe_compat.pycaffe.net"

            def test_layout():
                root = os.path.join(os.path.dirname(__file__), "..", "..", "..")
                assert os.listdir(os.path.join(root, "models", "m")) == ["deploy.prototxt"]

            def test_fails():
                assert caffe.has_nccl()
            """
        )
    )
    status, table = bvlc_tests.run(source)
    assert status == 1
    rows = [line.split() for line in table.splitlines() if line.startswith("test_alias.py ")]
    assert rows == [["test_alias.py", "2", "1", "0", "0"]]
    assert table.rstrip().endswith("2 passed of 3") and "assert False" in table
