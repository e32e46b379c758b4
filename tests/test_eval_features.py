"""extract_features (batching, the mirror modes, a net with its own Flip, images read with OpenCV)
against a numpy reference of a linear net, and ``caffe-compat verify`` end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.eval import evaluate_pairs, extract_features, read_pairs
from caffe_compat.eval.features import load_images, net_mirrors_input
from caffe_compat.eval.pairs import pair_images, pair_labels

INPUT = (
    'layer { name: "input" type: "Input" top: "data" '
    "input_param { shape { dim: 4 dim: 3 dim: 6 dim: 5 } } }\n"
)
FC5 = (
    'layer {{ name: "fc5" type: "InnerProduct" bottom: "{bottom}" top: "fc5" '
    "inner_product_param {{ num_output: 4 "
    'weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "constant" value: 0.25 }} }} }}\n'
)
PLAIN = 'name: "tiny"\n' + INPUT + FC5.format(bottom="data")
MIRRORED = (
    'name: "tiny_mirror"\n'
    + INPUT
    + 'layer { name: "flip_data" type: "Flip" bottom: "data" top: "flip_data" }\n'
    + 'layer { name: "concat_data" type: "Concat" bottom: "data" bottom: "flip_data" top: "concat_data" '
    "concat_param { axis: 0 } }\n"
    + FC5.format(bottom="concat_data")
    + 'layer { name: "slice_fc5" type: "Slice" bottom: "fc5" top: "fc5_orig" top: "fc5_mirror" '
    "slice_param { axis: 0 } }\n"
    + 'layer { name: "eltmax_fc5" type: "Eltwise" bottom: "fc5_orig" bottom: "fc5_mirror" top: "eltmax_fc5" '
    "eltwise_param { operation: SUM } }\n"
    + 'layer { name: "normalize1" type: "Normalize" bottom: "eltmax_fc5" top: "norm1" }\n'
)


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("nets")
    (folder / "plain.prototxt").write_text(PLAIN)
    (folder / "mirror.prototxt").write_text(MIRRORED)
    plain = cc.Net(folder / "plain.prototxt", phase="TEST")
    with torch.no_grad():
        weight, bias = plain.params["fc5"]
        weight.copy_(
            torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, size=(4, 90)).astype(np.float32))
        )
        bias.copy_(torch.tensor([0.25, -0.5, 0.0, 1.0]))
    plain.save_caffemodel(folder / "w.caffemodel")
    mirror = cc.Net(folder / "mirror.prototxt", weights=folder / "w.caffemodel", phase="TEST")
    w, b = (t.detach().double().numpy() for t in plain.params["fc5"])
    return {"folder": folder, "plain": plain, "mirror": mirror, "w": w, "b": b}


def reference(nets: dict, x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1).astype(np.float64) @ nets["w"].T + nets["b"]


def test_mirror_modes_and_batching(nets: dict) -> None:
    x = np.random.default_rng(1).normal(size=(7, 3, 6, 5)).astype(np.float32)
    own, flipped = reference(nets, x), reference(nets, x[..., ::-1])
    net = nets["plain"]
    assert not net_mirrors_input(net) and net_mirrors_input(nets["mirror"])
    np.testing.assert_allclose(extract_features(net, x, mirror=None, batch_size=3), own, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        extract_features(net, x, mirror="sum", batch_size=3), own + flipped, rtol=1e-5, atol=1e-5
    )
    concat = extract_features(net, torch.from_numpy(x), mirror="concat", batch_size=64, progress=False)
    np.testing.assert_allclose(concat, np.hstack([own, flipped]), rtol=1e-5, atol=1e-5)
    assert concat.dtype == np.float32 and concat.shape == (7, 8)


def test_net_with_its_own_flip_is_run_once(nets: dict) -> None:
    x = np.random.default_rng(2).normal(size=(5, 3, 6, 5)).astype(np.float32)
    own, flipped = reference(nets, x), reference(nets, x[..., ::-1])
    net = nets["mirror"]
    # fc5 holds originals then mirrors (2N rows): combined as asked, never flipped twice.
    np.testing.assert_allclose(
        extract_features(net, x, blob="fc5", mirror="sum", batch_size=2), own + flipped, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        extract_features(net, x, blob="fc5", mirror="concat"), np.hstack([own, flipped]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(extract_features(net, x, blob="fc5", mirror=None), own, rtol=1e-5, atol=1e-5)
    # norm1 already is the normalized flip-sum (N rows): returned as the net computed it.
    total = own + flipped
    expected = total / np.sqrt((total**2).sum(axis=1, keepdims=True) + 1e-6)
    for mirror in ("sum", "concat", None):
        np.testing.assert_allclose(
            extract_features(net, x, blob="norm1", mirror=mirror), expected, rtol=1e-5, atol=1e-6
        )


def write_image(path: Path, rng: np.random.Generator, base: np.ndarray | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = base if base is not None else rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return image


def test_images_from_paths_are_read_as_caffe_does(nets: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    paths = [tmp_path / f"img{i}.png" for i in range(5)]
    images = np.stack([write_image(p, rng) for p in paths])  # BGR, as cv2 writes and reads
    batch = load_images(paths, (3, 6, 5), mean=127.5, scale=1 / 128)
    np.testing.assert_array_equal(batch, ((images.astype(np.float32) - 127.5) / 128).transpose(0, 3, 1, 2))
    per_channel = load_images(paths[:1], (3, 6, 5), mean=[100, 110, 120], scale=0.5)
    np.testing.assert_array_equal(per_channel[0, 2], (images[0, :, :, 2].astype(np.float32) - 120) * 0.5)
    x = (images.astype(np.float32) - 128) * 0.0078125
    expected = reference(nets, x.transpose(0, 3, 1, 2))
    got = extract_features(nets["plain"], paths, mirror=None, batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_extraction_errors(nets: dict, tmp_path: Path) -> None:
    net = nets["plain"]
    with pytest.raises(CaffeCompatError, match=r"image not found: .*missing\.png"):
        extract_features(net, [tmp_path / "missing.png"])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(CaffeCompatError, match=r"cannot decode image .*junk\.png"):
        extract_features(net, [tmp_path / "junk.png"])
    write_image(tmp_path / "big.png", None, np.zeros((8, 5, 3), dtype=np.uint8))
    with pytest.raises(CaffeCompatError, match=r"big\.png is 5x8 \(WxH\); the net takes 5x6 crops"):
        extract_features(net, [tmp_path / "big.png"])
    with pytest.raises(CaffeCompatError, match="unknown mirror mode 'flip'"):
        extract_features(net, np.zeros((1, 3, 6, 5), np.float32), mirror="flip")
    with pytest.raises(CaffeCompatError, match="the net has no blob 'fc7'"):
        extract_features(net, np.zeros((1, 3, 6, 5), np.float32), blob="fc7")
    with pytest.raises(CaffeCompatError, match=r"\(N, C, H, W\) batch"):
        extract_features(net, np.zeros((3, 6, 5), np.float32))


def make_lfw(root: Path, rng: np.random.Generator) -> Path:
    """A 2-fold, 3-pairs-per-kind LFW look-alike: same-person images are near copies."""
    lines = ["2\t3"]
    for fold in range(2):
        for k in range(3):
            name = f"Same_{fold}_{k}"
            base = write_image(root / name / f"{name}_0001.png", rng)
            noise = rng.integers(-12, 13, size=base.shape)
            write_image(root / name / f"{name}_0002.png", rng, np.clip(base + noise, 0, 255).astype(np.uint8))
            lines.append(f"{name}\t1\t2")
        for k in range(3):
            first, second = f"A_{fold}_{k}", f"B_{fold}_{k}"
            write_image(root / first / f"{first}_0001.png", rng)
            write_image(root / second / f"{second}_0003.png", rng)
            lines.append(f"{first}\t1\t{second}\t3")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return pairs


def test_verify_command(nets: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pairs = make_lfw(tmp_path / "lfw", np.random.default_rng(4))
    model, weights = nets["folder"] / "plain.prototxt", nets["folder"] / "w.caffemodel"
    pattern = "{name}/{name}_{idx:04d}.png"
    for protocol, mirror in (("sphereface", "concat"), ("insightface", "sum")):
        roc = tmp_path / f"roc_{protocol}.png"
        argv = [
            "verify",
            "-model",
            str(model),
            "-weights",
            str(weights),
            "-pairs",
            str(pairs),
            "-root",
            str(tmp_path / "lfw"),
            "--image-pattern",
            pattern,
            "--protocol",
            protocol,
            "--roc",
            str(roc),
        ]
        assert main(argv) == 0
        out = capsys.readouterr().out.splitlines()
        listed = read_pairs(pairs)
        paths, index_a, index_b = pair_images(listed, tmp_path / "lfw", pattern)
        features = extract_features(nets["plain"], paths, mirror=mirror)
        result = evaluate_pairs(features[index_a], features[index_b], *pair_labels(listed), protocol=protocol)
        assert out[0] == f"features: {len(paths)} images x {features.shape[1]} (fc5, mirror: {mirror})"
        assert out[-1] == f"verification accuracy: {result['accuracy']:.4f}"
        assert f"protocol: {protocol} (12 pairs: 6 same, 6 different; 2 folds)" in out
        assert roc.read_bytes().startswith(b"\x89PNG")
    assert result["accuracy"] > 0.5  # near copies are told apart from strangers


def test_verify_errors(nets: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pairs = make_lfw(tmp_path / "lfw", np.random.default_rng(5))
    base = [
        "verify",
        "-model",
        str(nets["folder"] / "plain.prototxt"),
        "-weights",
        str(nets["folder"] / "w.caffemodel"),
        "-root",
        str(tmp_path / "lfw"),
    ]
    # the default pattern names .jpg files, which do not exist
    assert main([*base, "-pairs", str(pairs)]) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and f"image not found: {tmp_path / 'lfw' / 'Same_0_0' / 'Same_0_0_0001.jpg'}" in err
    )
    bad = tmp_path / "bad_pairs.txt"
    bad.write_text("1\t1\nSame_0_0\t1\t2\nA_0_0\tone\tB_0_0\t3\n")
    assert main([*base, "-pairs", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}:3: image number 'one' is not an integer" in err
