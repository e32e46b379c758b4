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
from caffe_compat.cli import main
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
    """Convert the face deploy net (which declares batch 100) with no batch fixed: the traced
    formats take any batch size, and everything is verified on the given batch-1 input."""
    out = face["folder"] / name
    result = convert(FACE_DEPLOY, face["weights"], fmt, out, inputs={"data": face["x"]})
    assert result.verification is not None and result.verification.ok
    (check,) = result.verification.checks
    assert check.name == "norm1" and check.shape == (1, 512, 1, 1)
    return out


@pytest.fixture(scope="module")
def face_batch3(face: dict) -> dict:
    """Three other faces and the source Net's outputs for them (a batch size nothing was traced at)."""
    x = torch.randn(3, 3, 112, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = cc.Net(FACE_DEPLOY, weights=face["weights"], phase="TEST")(data=x)["norm1"]
    return {"x": x, "reference": reference}


def test_face_pt_is_a_weights_only_state_dict_with_its_prototxt(face: dict) -> None:
    out = _convert_face(face, "pt", "face_state.pt")
    state = torch.load(out, weights_only=True)
    net = cc.Net(out.with_suffix(".prototxt"), phase="TEST")
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net(data=face["x"])["norm1"], face["reference"], rtol=0, atol=0)


def test_face_py_imports_and_matches(face: dict, face_batch3: dict) -> None:
    out = _convert_face(face, "py", "face_net.py")
    text = out.read_text()
    assert "class Net(nn.Module)" in text and "def load(weights_path" in text
    assert "# layer 'conv1_1' (Convolution)" in text and "torch.conv2d(" in text
    assert "caffe_compat" not in text.split('"""', 2)[2]  # only the docstring names its origin
    # no batch size is baked in: the mirror trick's reshapes and split read it from the input
    assert "INPUT_SHAPES = {'data': (None, 3, 112, 96)}" in text
    assert "size = data.size(0)" in text and "reshape((size, 3, 112, 96))" in text
    assert "[size, size]" in text and "100" not in text.split("class Net", 1)[1]
    module = import_file(out).load()
    with torch.no_grad():
        torch.testing.assert_close(module(data=face["x"])["norm1"], face["reference"], rtol=0, atol=0)
        torch.testing.assert_close(
            module(data=face_batch3["x"])["norm1"], face_batch3["reference"], rtol=0, atol=0
        )


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


def test_face_onnx_runs_in_onnxruntime_with_caffe_blob_names(face: dict, face_batch3: dict) -> None:
    out = _convert_face(face, "onnx", "face.onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]
    assert [o.name for o in session.get_outputs()] == ["norm1"]
    # a dynamic batch axis, although the prototxt declares 100 and the input had 1
    assert session.get_inputs()[0].shape == ["N", 3, 112, 96]
    assert session.get_outputs()[0].shape == ["N", 512, 1, 1]
    (y,) = session.run(None, {"data": face["x"].numpy()})
    np.testing.assert_allclose(y, face["reference"].numpy(), rtol=1e-4, atol=1e-6)
    (y3,) = session.run(None, {"data": face_batch3["x"].numpy()})
    assert y3.shape == (3, 512, 1, 1)
    np.testing.assert_allclose(y3, face_batch3["reference"].numpy(), rtol=1e-4, atol=1e-6)


def test_face_torchscript_loads_and_matches(face: dict, face_batch3: dict) -> None:
    out = _convert_face(face, "torchscript", "face.ts")
    module = torch.jit.load(str(out))
    with torch.no_grad():
        torch.testing.assert_close(module(face["x"])["norm1"], face["reference"], rtol=0, atol=0)
        torch.testing.assert_close(
            module(face_batch3["x"])["norm1"], face_batch3["reference"], rtol=0, atol=0
        )


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


# -- the batch axis ------------------------------------------------------------------------------

MIRROR_NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 100 dim: 3 dim: 5 dim: 7 } } }
layer { name: "flip" type: "Flip" bottom: "x" top: "flip" }
layer { name: "both" type: "Concat" bottom: "x" bottom: "flip" top: "both" concat_param { axis: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "both" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "halves" type: "Slice" bottom: "ip" top: "a" top: "b" slice_param { axis: 0 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "y" }
"""


@pytest.fixture(scope="module")
def mirror_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small deploy net that, like the face net, declares batch 100 and reshapes along the
    batch axis (Concat then Slice of 2N rows), with its weights."""
    folder = tmp_path_factory.mktemp("mirror")
    prototxt = folder / "mirror.prototxt"
    prototxt.write_text(MIRROR_NET)
    torch.manual_seed(5)
    weights = folder / "mirror.caffemodel"
    cc.Net(prototxt, phase="TEST").save_caffemodel(weights)
    return prototxt, weights


def test_conversion_traces_and_verifies_at_small_batches_not_the_declared_one(
    mirror_net: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The declared batch (100) would make a large net need GBs to trace; nothing runs at it."""
    from caffe_compat.export import trace

    traced: list[int] = []
    original = trace.flatten

    def recording(net, inputs=None, onnx_pooling=False):  # noqa: ANN001, ANN202
        traced.append(int(inputs["x"].shape[0]))
        return original(net, inputs, onnx_pooling)

    monkeypatch.setattr(trace, "flatten", recording)
    prototxt, weights = mirror_net
    result = convert(prototxt, weights, "onnx", tmp_path / "mirror.onnx")
    assert traced == [2, 3, 5]
    assert result.verification is not None and [c.shape for c in result.verification.checks] == [(4, 4)]
    assert any("['N', 3, 5, 7]" in note and "any batch size" in note for note in result.notes)
    session = onnxruntime.InferenceSession(str(tmp_path / "mirror.onnx"), providers=["CPUExecutionProvider"])
    net = cc.Net(prototxt, weights=weights, phase="TEST")
    for batch in (1, 7, 100):
        x = torch.randn(batch, 3, 5, 7)
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(y, net(x=x)["y"].numpy(), rtol=1e-4, atol=1e-5)


def test_batch_option_fixes_the_batch_axis(mirror_net: tuple[Path, Path], tmp_path: Path) -> None:
    prototxt, weights = mirror_net
    out = tmp_path / "fixed.onnx"
    assert main(["convert", str(prototxt), str(weights), "--to", "onnx", "-o", str(out), "-batch", "2"]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 5, 7]
    assert session.run(None, {"x": np.zeros((2, 3, 5, 7), np.float32)})[0].shape == (2, 4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"x": np.zeros((3, 3, 5, 7), np.float32)})
    code = convert(prototxt, weights, "py", tmp_path / "fixed_net.py", batch=2).outputs[0]
    text = code.read_text()
    assert "INPUT_SHAPES = {'x': (2, 3, 5, 7)}" in text and ".size(0)" not in text
    fixed = import_file(code).load()
    assert fixed(x=torch.zeros(2, 3, 5, 7))["y"].shape == (2, 4)
    with pytest.raises(
        ValueError, match=r"input 'x' has shape \[3, 3, 5, 7\]; this net takes \[2, 3, 5, 7\]"
    ):
        fixed(x=torch.zeros(3, 3, 5, 7))
    anysize = import_file(convert(prototxt, weights, "py", tmp_path / "any_net.py").outputs[0]).load()
    assert anysize(x=torch.zeros(3, 3, 5, 7))["y"].shape == (3, 4)
    with pytest.raises(
        ValueError, match=r"input 'x' has shape \[3, 3, 5, 6\]; this net takes \[None, 3, 5, 7\]"
    ):
        anysize(x=torch.zeros(3, 3, 5, 6))


def test_a_net_whose_graph_needs_its_batch_size_is_exported_for_it_with_a_note(tmp_path: Path) -> None:
    """Reshape with an explicit batch dimension only runs at the declared batch size."""
    prototxt = tmp_path / "reshape.prototxt"
    prototxt.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 6 dim: 2 dim: 3 } } }\n'
        'layer { name: "r" type: "Reshape" bottom: "x" top: "y"\n'
        "        reshape_param { shape { dim: 6 dim: 6 } } }\n"
    )
    result = convert(prototxt, None, "onnx", tmp_path / "reshape.onnx")
    assert result.verification is not None and result.verification.ok
    assert [c.shape for c in result.verification.checks] == [(6, 6)]
    (note,) = [n for n in result.notes if "runs at" in n]
    assert "batch size 6 only" in note and "layer 'r' (Reshape)" in note
    session = onnxruntime.InferenceSession(str(tmp_path / "reshape.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [6, 2, 3]
