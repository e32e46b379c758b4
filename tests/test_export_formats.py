"""Conversions to pt, py, onnx, torchscript and caffemodel agree with the source Net.

Sources: the original AM-Softmax ``face_deploy_mirror_normalize.prototxt`` with random weights
written here, and the real-Caffe golden layer cases (whose ``forward.npz`` is Caffe's own output:
the ONNX Runtime results are also checked against it, ceil-mode pooling included). Each artifact
is loaded independently of the converter (torch.load, importlib, torch.jit.load, onnxruntime,
read_caffemodel) and compared with the source Net.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import caffe_compat as cc
from caffe_compat.export.convert import convert
from caffe_compat.export.standalone import import_file
from caffe_compat.proto.io import blob_to_array, read_caffemodel

ROOT = Path(__file__).resolve().parent.parent
FACE_DEPLOY = ROOT / "prototxt" / "amsoftmax" / "face_deploy_mirror_normalize.prototxt"
LAYERS = Path(__file__).parent / "goldens" / "layers"
CAFFE_FORWARD_TOL = {"rtol": 1e-4, "atol": 1e-5}
# torch 2.13 deprecates torch.jit (load/trace/save) in favour of torch.export; the format stays.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

#: Golden cases whose deploy form has no layers left (they hold only losses, accuracies, margins).
NOT_DEPLOYABLE = {
    "accuracy_top2",
    "batch_contrastive_loss",
    "batch_contrastive_loss_max_only",
    "center_loss",
    "center_loss_l1",
    "center_loss_no_loss_weight",
    "confidence_penalty_loss",
    "correlation_loss",
    "euclidean_loss",
    "focal_loss",
    "focal_loss_oneaddp_spatial",
    "general_contrastive_loss",
    "general_triplet_loss",
    "hinge_loss_l1",
    "hinge_loss_l2",
    "label_specific_add_anneal",
    "margin_ip_double",
    "margin_ip_double_state",
    "margin_ip_lambda",
    "margin_ip_quadruple",
    "margin_ip_quadruple_state",
    "margin_ip_single",
    "margin_ip_single_state",
    "margin_ip_triple_state",
    "nca_loss",
    "nca_loss_min_negative_weighted",
    "sigmoid_ce_loss",
    "soft_contrastive_loss",
    "soft_contrastive_loss_square_weighted",
    "softmax_loss",
    "softmax_loss_ignore",
    "softmax_loss_weight",
}
#: Golden cases with a top whose size depends on the data (Proposal's rois, PredictBox's box list):
#: the traced formats refuse them by name; pt and caffemodel still convert.
NOT_EXPORTABLE = {"proposal": "Proposal", "predict_box_bbreg_vector": "PredictBox"}
ALL_CASES = sorted(p.name for p in LAYERS.iterdir() if p.is_dir())
QUICK_CASES = [
    "conv_stride2_pad1",
    "pool_max_ceil",
    "pool_ave_ceil",
    "ip_normalize",
    "batchnorm_train",
    "argmax",
]


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The face deploy net, a random caffemodel for it, an input and the Net's output."""
    folder = tmp_path_factory.mktemp("face")
    net = cc.Net(FACE_DEPLOY, phase="TEST")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in net.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    weights = folder / "face.caffemodel"
    net.save_caffemodel(weights)
    x = torch.randn(1, 3, 112, 96, generator=generator)
    with torch.no_grad():
        reference = cc.Net(FACE_DEPLOY, weights=weights, phase="TEST")(data=x)["norm1"]
    return {"folder": folder, "weights": weights, "x": x, "reference": reference}


def _convert_face(face: dict, fmt: str, name: str) -> Path:
    out = face["folder"] / name
    result = convert(FACE_DEPLOY, face["weights"], fmt, out, batch=1, inputs={"data": face["x"]})
    assert result.verification is not None and result.verification.ok
    (check,) = result.verification.checks
    assert check.name == "norm1" and check.shape == (1, 512, 1, 1)
    return out


def test_face_pt_is_a_weights_only_state_dict_with_its_prototxt(face: dict) -> None:
    out = _convert_face(face, "pt", "face_state.pt")
    state = torch.load(out, weights_only=True)
    net = cc.Net(out.with_suffix(".prototxt"), phase="TEST")
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net(data=face["x"])["norm1"], face["reference"], rtol=0, atol=0)


def test_face_py_imports_and_matches(face: dict) -> None:
    out = _convert_face(face, "py", "face_net.py")
    text = out.read_text()
    assert "class Net(nn.Module)" in text and "def load(weights_path" in text
    assert "# layer 'conv1_1' (Convolution)" in text and "torch.conv2d(" in text
    assert "caffe_compat" not in text.split('"""', 2)[2]  # only the docstring names its origin
    module = import_file(out).load()
    with torch.no_grad():
        torch.testing.assert_close(module(data=face["x"])["norm1"], face["reference"], rtol=0, atol=0)


def test_face_py_runs_where_caffe_compat_cannot_be_imported(face: dict, tmp_path: Path) -> None:
    out = _convert_face(face, "py", "face_alone.py")
    np.save(tmp_path / "x.npy", face["x"].numpy())
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["caffe_compat"] = None  # any import of caffe_compat now fails
        sys.path.insert(0, {str(out.parent)!r})
        import numpy as np, torch
        import face_alone
        net = face_alone.load()
        with torch.no_grad():
            outs = net(data=torch.from_numpy(np.load({str(tmp_path / "x.npy")!r})))
        np.save({str(tmp_path / "y.npy")!r}, outs["norm1"].numpy())
        print(sorted(outs), [m for m in sys.modules if m.startswith("caffe_compat")])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['norm1'] ['caffe_compat']"  # the blocked entry, nothing imported
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), face["reference"].numpy())


def test_face_onnx_runs_in_onnxruntime_with_caffe_blob_names(face: dict) -> None:
    out = _convert_face(face, "onnx", "face.onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]
    assert [o.name for o in session.get_outputs()] == ["norm1"]
    (y,) = session.run(None, {"data": face["x"].numpy()})
    np.testing.assert_allclose(y, face["reference"].numpy(), rtol=1e-4, atol=1e-6)


def test_face_torchscript_loads_and_matches(face: dict) -> None:
    out = _convert_face(face, "torchscript", "face.ts")
    module = torch.jit.load(str(out))
    with torch.no_grad():
        torch.testing.assert_close(module(face["x"])["norm1"], face["reference"], rtol=0, atol=0)


def test_face_caffemodel_round_trips_blob_for_blob(face: dict) -> None:
    out = _convert_face(face, "caffemodel", "face_back.caffemodel")
    source, written = read_caffemodel(face["weights"]), read_caffemodel(out)
    assert [(layer.name, layer.type) for layer in written.layer] == [
        (layer.name, layer.type) for layer in source.layer
    ]
    for a, b in zip(source.layer, written.layer, strict=True):
        assert [tuple(x.shape.dim) for x in a.blobs] == [tuple(y.shape.dim) for y in b.blobs]
        for x, y in zip(a.blobs, b.blobs, strict=True):
            np.testing.assert_array_equal(blob_to_array(x), blob_to_array(y))


def test_pt_state_dict_converts_back_to_the_same_caffemodel(face: dict) -> None:
    pt = _convert_face(face, "pt", "face_for_back.pt")
    back = face["folder"] / "from_pt.caffemodel"
    convert(pt.with_suffix(".prototxt"), pt, "caffemodel", back, batch=1)
    source, written = read_caffemodel(face["weights"]), read_caffemodel(back)
    for a, b in zip(source.layer, written.layer, strict=True):
        assert a.name == b.name
        for x, y in zip(a.blobs, b.blobs, strict=True):
            np.testing.assert_array_equal(blob_to_array(x), blob_to_array(y))


# -- the golden layer cases ------------------------------------------------------------------------


def _inputs(case: str) -> dict[str, torch.Tensor]:
    with np.load(LAYERS / case / "inputs.npz") as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def _check_case(case: str, folder: Path) -> None:
    inputs = _inputs(case)
    prototxt, weights = LAYERS / case / "net.prototxt", LAYERS / case / "weights.caffemodel"
    for fmt in ("pt", "caffemodel"):
        result = convert(prototxt, weights, fmt, folder / f"{case}.{fmt}", inputs=inputs)
        assert result.verification is not None and result.verification.ok, (case, fmt)
    if case in NOT_DEPLOYABLE:
        with pytest.raises(cc.errors.CaffeCompatError, match="no layers left"):
            convert(prototxt, weights, "py", folder / "x.py", inputs=inputs)
        return
    if case in NOT_EXPORTABLE:
        for fmt, name in (("py", "x.py"), ("onnx", "x.onnx"), ("torchscript", "x.ts")):
            with pytest.raises(
                cc.errors.CaffeCompatError, match=rf"\({NOT_EXPORTABLE[case]}\) cannot be exported"
            ):
                convert(prototxt, weights, fmt, folder / name, inputs=inputs)
        return
    for fmt, name in (("py", f"{case}_net.py"), ("onnx", f"{case}.onnx"), ("torchscript", f"{case}.ts")):
        result = convert(prototxt, weights, fmt, folder / name, inputs=inputs)
        assert result.verification is not None and result.verification.ok, (case, fmt)
        assert max(c.max_rel for c in result.verification.checks) <= 1e-4


def _caffe_outputs_from_onnxruntime(case: str, folder: Path) -> None:
    """ONNX Runtime's outputs against real Caffe's (forward.npz), independent of caffe_compat.Net."""
    inputs = _inputs(case)
    out = folder / f"{case}_vs_caffe.onnx"
    convert(LAYERS / case / "net.prototxt", LAYERS / case / "weights.caffemodel", "onnx", out, inputs=inputs)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    with np.load(LAYERS / case / "forward.npz") as caffe:
        for name, value in zip(names, session.run(names, feeds), strict=True):
            np.testing.assert_allclose(value, caffe[name], err_msg=f"{case}: {name}", **CAFFE_FORWARD_TOL)


@pytest.mark.parametrize("case", QUICK_CASES)
def test_golden_case_converts_to_every_format(case: str, tmp_path: Path) -> None:
    _check_case(case, tmp_path)


@pytest.mark.parametrize(
    "case", ["pool_max_ceil", "pool_ave_ceil", "pool_ave_pad", "pool_max_pad", "pool_rect"]
)
def test_onnxruntime_reproduces_caffe_pooling(case: str, tmp_path: Path) -> None:
    meta = json.loads((LAYERS / case / "meta.json").read_text())
    assert meta["phase"] in ("TRAIN", "TEST")
    _caffe_outputs_from_onnxruntime(case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in ALL_CASES if c not in QUICK_CASES])
def test_every_golden_case_converts(case: str, tmp_path: Path) -> None:
    _check_case(case, tmp_path)


def test_layers_that_rewrite_their_blobs_in_forward_export_functionally(tmp_path: Path) -> None:
    """Scale clamps its stored scale and InnerProduct { normalize } normalizes its stored rows in
    place at every forward (as Caffe does); the exports compute the same values without writing."""
    prototxt = tmp_path / "rewrite.prototxt"
    prototxt.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'
        'layer { name: "s" type: "Scale" bottom: "x" top: "s"\n'
        "        scale_param { min_value: 0.5 max_value: 2 filler { type: 'uniform' min: 0 max: 3 } } }\n"
        'layer { name: "ip" type: "InnerProduct" bottom: "s" top: "y"\n'
        "        inner_product_param { num_output: 5 normalize: true\n"
        "                              weight_filler { type: 'gaussian' std: 1 } } }\n"
    )
    torch.manual_seed(3)
    net = cc.Net(prototxt, phase="TEST")
    weights = tmp_path / "rewrite.caffemodel"
    net.save_caffemodel(weights)
    stored = read_caffemodel(weights)
    for fmt, name in (("py", "rewrite_net.py"), ("onnx", "rewrite.onnx"), ("torchscript", "rewrite.ts")):
        result = convert(prototxt, weights, fmt, tmp_path / name)
        assert result.verification is not None and result.verification.ok, fmt
        updated = {note.split("'")[1] for note in result.notes if "in place in forward" in note}
        assert updated == {"s", "ip"}, result.notes
    scale = blob_to_array(stored.layer[1].blobs[0])
    assert scale.min() < 0.5 or scale.max() > 2  # the clamp matters for these weights
