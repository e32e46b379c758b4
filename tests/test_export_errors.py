"""Bad input to ``convert`` and ``caffe-compat convert``: one clear error, nothing left behind.

Covered: weights from a different net (every differing layer/blob listed), a layer that cannot be
exported (named, with the reason), an output that cannot be written, an artifact failing its
verification, and the command line's exit codes and messages.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.cli import main
from caffe_compat.errors import WeightsError
from caffe_compat.export import convert as convert_module
from caffe_compat.export.convert import convert
from caffe_compat.export.errors import ExportError, VerificationError
from caffe_compat.export.standalone import import_file
from caffe_compat.layers import CaffeLayer, register, registered_types

LAYERS = Path(__file__).parent / "goldens" / "layers"
CONV = LAYERS / "conv_basic"


class _ValueBranch(CaffeLayer):
    """Doubles positive-sum inputs: Python control flow on a tensor value."""

    @classmethod
    def from_caffe(cls, layer, ctx):  # noqa: ANN001, ANN206
        return cls()

    def top_shapes(self, bottom_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return list(bottom_shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad * 2


class _CustomFunction(CaffeLayer):
    @classmethod
    def from_caffe(cls, layer, ctx):  # noqa: ANN001, ANN206
        return cls()

    def top_shapes(self, bottom_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return list(bottom_shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Double.apply(x)


class _NumpyForward(CaffeLayer):
    """Computes through numpy: invisible to any tracer."""

    @classmethod
    def from_caffe(cls, layer, ctx):  # noqa: ANN001, ANN206
        return cls()

    def top_shapes(self, bottom_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return list(bottom_shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.tanh(x.detach().numpy()))


class _NumpyExportable(_NumpyForward):
    def export_forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


for _name, _cls in (
    ("ExportTestValueBranch", _ValueBranch),
    ("ExportTestCustomFunction", _CustomFunction),
    ("ExportTestNumpy", _NumpyForward),
    ("ExportTestExportable", _NumpyExportable),
):
    if _name not in registered_types():
        register(_name)(_cls)


def _custom_net(folder: Path, layer_type: str) -> tuple[Path, Path]:
    text = (
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"\n'
        "        inner_product_param { num_output: 4 } }\n"
        f'layer {{ name: "custom" type: "{layer_type}" bottom: "h" top: "y" }}\n'
    )
    prototxt = folder / f"{layer_type}.prototxt"
    prototxt.write_text(text)
    weights = folder / f"{layer_type}.caffemodel"
    cc.Net(prototxt, phase="TEST").save_caffemodel(weights)
    return prototxt, weights


def _leftovers(folder: Path, before: set[str]) -> set[str]:
    return {p.name for p in folder.iterdir()} - before


# -- weights that do not fit ---------------------------------------------------------------------


def test_weights_of_a_different_net_are_listed_and_nothing_is_written(tmp_path: Path) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(WeightsError) as info:
        convert(CONV / "net.prototxt", LAYERS / "ip_basic" / "weights.caffemodel", "py", tmp_path / "net.py")
    message = str(info.value)
    assert "different net" in message and "['conv'] have no weights" in message
    assert "layers in the weights but not in the net: ['ip']" in message
    assert _leftovers(tmp_path, before) == set()


def test_shape_differences_are_listed_for_state_dicts_too(tmp_path: Path) -> None:
    pt = tmp_path / "conv.pt"
    convert(CONV / "net.prototxt", CONV / "weights.caffemodel", "pt", pt)
    wider = tmp_path / "wider.prototxt"
    wider.write_text((CONV / "net.prototxt").read_text().replace("num_output: 4", "num_output: 6"))
    with pytest.raises(WeightsError) as info:
        convert(wider, pt, "onnx", tmp_path / "wider.onnx")
    message = str(info.value)
    assert (
        "layer 'conv' blob 0 ('conv.weight'): stored shape [4, 3, 3, 3], the net's is [6, 3, 3, 3]" in message
    )
    assert "layer 'conv' blob 1 ('conv.bias'): stored shape [4]" in message
    assert not (tmp_path / "wider.onnx").exists()


def test_allow_missing_keeps_fillers_with_a_note(tmp_path: Path) -> None:
    result = convert(
        CONV / "net.prototxt",
        LAYERS / "ip_basic" / "weights.caffemodel",
        "pt",
        tmp_path / "c.pt",
        allow_missing=True,
    )
    assert any("no weights for ['conv']" in note for note in result.notes)
    assert any("not in the net, ignored: ['ip']" in note for note in result.notes)


def test_a_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a zip file at all")
    with pytest.raises(WeightsError, match=r"bogus\.pt: not a PyTorch state dict"):
        convert(CONV / "net.prototxt", bogus, "caffemodel", tmp_path / "x.caffemodel")


# -- layers that cannot be exported ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer_type", "reason"),
    [
        ("ExportTestValueBranch", "Python control flow on a tensor value (bool of a tensor)"),
        ("ExportTestNumpy", "a tensor converted to numpy"),
    ],
)
@pytest.mark.parametrize("fmt", ["py", "onnx", "torchscript"])
def test_unexportable_layer_is_named_with_the_reason(
    tmp_path: Path, layer_type: str, reason: str, fmt: str
) -> None:
    prototxt, weights = _custom_net(tmp_path, layer_type)
    before = {p.name for p in tmp_path.iterdir()}
    out = tmp_path / ("out.py" if fmt == "py" else f"out.{fmt}")
    with pytest.raises(ExportError) as info:
        convert(prototxt, weights, fmt, out)
    assert f"layer 'custom' ({layer_type}) cannot be exported as plain torch code" in str(info.value)
    assert reason in str(info.value)
    assert _leftovers(tmp_path, before) == set()


def test_export_forward_makes_a_custom_layer_exportable(tmp_path: Path) -> None:
    prototxt, weights = _custom_net(tmp_path, "ExportTestExportable")
    result = convert(prototxt, weights, "onnx", tmp_path / "ok.onnx")
    assert result.verification is not None and result.verification.ok
    assert result.verification.checks[0].max_rel < 1e-6


def test_custom_autograd_function_exports_its_forward(tmp_path: Path) -> None:
    prototxt, weights = _custom_net(tmp_path, "ExportTestCustomFunction")
    result = convert(prototxt, weights, "py", tmp_path / "fn.py")
    assert result.verification is not None and result.verification.ok
    assert "linear * 2" in (tmp_path / "fn.py").read_text()


def test_partial_in_place_update_of_a_parameter_is_refused(tmp_path: Path) -> None:
    from caffe_compat.export.trace import flatten

    net = cc.Net(CONV / "net.prototxt", weights=CONV / "weights.caffemodel", phase="TEST")
    conv = net.layers["conv"]

    def forward(x: torch.Tensor) -> torch.Tensor:
        conv.weight[0].mul_(0.5)  # half of one filter: cannot be written as a whole-tensor update
        return x

    conv.export_forward = forward
    with pytest.raises(ExportError, match=r"layer 'conv' \(Convolution\).*changes part of a parameter"):
        flatten(net)


def test_whole_parameter_updates_become_functional_with_a_note(tmp_path: Path) -> None:
    case = LAYERS / "batchnorm_train"
    with np.load(case / "inputs.npz") as data:
        inputs = {key: torch.from_numpy(data[key]) for key in data.files}
    result = convert(
        case / "net.prototxt", case / "weights.caffemodel", "py", tmp_path / "bn.py", inputs=inputs
    )
    assert result.verification is not None and result.verification.ok
    assert any(
        "layer 'bn' (BatchNorm) updates" in note and "not write them back" in note for note in result.notes
    )


# -- outputs that cannot be written --------------------------------------------------------------


def test_convert_creates_missing_output_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "new" / "deeper" / "net.py"
    argv = [
        "convert",
        str(CONV / "net.prototxt"),
        str(CONV / "weights.caffemodel"),
        "--to",
        "py",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert out.is_file() and out.with_suffix(".pt").is_file()
    assert f"wrote {out}, {out.with_suffix('.pt')} (py, verified)" in capsys.readouterr().out


@pytest.mark.parametrize("form", ["existing", "trailing-slash", "no-suffix"])
def test_py_output_to_a_folder_writes_net_py_and_net_pt(form: str, tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    if form == "existing":
        folder.mkdir()
    given = str(folder) + ("/" if form == "trailing-slash" else "")
    argv = [
        "convert",
        str(CONV / "net.prototxt"),
        str(CONV / "weights.caffemodel"),
        "--to",
        "py",
        "-o",
        given,
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["net.pt", "net.py"]
    module = import_file(folder / "net.py")
    with np.load(CONV / "inputs.npz") as data:
        x = torch.from_numpy(data["x"])
    with torch.no_grad():
        expected = cc.Net(CONV / "net.prototxt", weights=CONV / "weights.caffemodel", phase="TEST")(x=x)["y"]
        torch.testing.assert_close(module.load()(x=x)["y"], expected)


def test_other_formats_into_a_folder_are_named_after_the_prototxt(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    for fmt, names in (("onnx", ["net.onnx"]), ("pt", ["net.onnx", "net.prototxt", "net.pt"])):
        result = convert(CONV / "net.prototxt", CONV / "weights.caffemodel", fmt, folder)
        assert result.outputs[0] == folder / f"net.{fmt}"
        assert sorted(p.name for p in folder.iterdir()) == names


def test_a_failed_conversion_removes_the_output_folders_it_created(tmp_path: Path) -> None:
    other = LAYERS / "conv_stride2_pad1" / "weights.caffemodel"  # 5 filters, not 4
    with pytest.raises(WeightsError, match="conv"):
        convert(CONV / "net.prototxt", other, "onnx", tmp_path / "new" / "deeper" / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_output_below_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match=r"x\.onnx: .*file is not a folder"):
        convert(CONV / "net.prototxt", CONV / "weights.caffemodel", "onnx", tmp_path / "file" / "x.onnx")
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(ExportError, match=r"is not writable \(Permission denied\)"):
        convert(CONV / "net.prototxt", CONV / "weights.caffemodel", "pt", tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_output_may_not_overwrite_an_input(tmp_path: Path) -> None:
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text((CONV / "net.prototxt").read_text())
    with pytest.raises(ExportError, match="would overwrite an input"):
        convert(prototxt, CONV / "weights.caffemodel", "pt", tmp_path / "net.pt")
    assert prototxt.read_text() == (CONV / "net.prototxt").read_text()


def test_py_output_needs_a_module_name(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"ending in \.py"):
        convert(CONV / "net.prototxt", CONV / "weights.caffemodel", "py", tmp_path / "net.txt")
    with pytest.raises(ExportError, match="must be a Python module name"):
        convert(CONV / "net.prototxt", CONV / "weights.caffemodel", "py", tmp_path / "my-net.py")


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "x.onnx"
    out.write_bytes(b"previous")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_module.onnx_io, "_stream_model", broken)
    with pytest.raises(ExportError, match=r"cannot write .*x\.onnx: No space left on device"):
        convert(CONV / "net.prototxt", CONV / "weights.caffemodel", "onnx", out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx"]


# -- verification ------------------------------------------------------------------------------------


def test_failed_verification_writes_nothing(tmp_path: Path) -> None:
    logged: list[str] = []
    with pytest.raises(VerificationError, match=r"outputs \['y'\] .* nothing was written"):
        convert(
            CONV / "net.prototxt",
            CONV / "weights.caffemodel",
            "onnx",
            tmp_path / "c.onnx",
            tol=1e-12,
            log=logged.append,
        )
    assert list(tmp_path.iterdir()) == []
    table = logged[-1]
    assert table.startswith("verification of onnx") and "max rel err" in table and "NO" in table


def test_unknown_format_and_safetensors_without_the_package(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown format 'keras'"):
        convert(CONV / "net.prototxt", CONV / "weights.caffemodel", "keras", tmp_path / "x")
    try:
        import safetensors  # noqa: F401
    except ImportError:
        with pytest.raises(ExportError, match="safetensors package is not installed"):
            convert(
                CONV / "net.prototxt", CONV / "weights.caffemodel", "safetensors", tmp_path / "x.safetensors"
            )
        assert list(tmp_path.iterdir()) == []


# -- the command line ------------------------------------------------------------------------------


def test_cli_converts_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "conv.onnx"
    code = main(
        [
            "convert",
            str(CONV / "net.prototxt"),
            str(CONV / "weights.caffemodel"),
            "--to",
            "onnx",
            "-o",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "max abs err" in printed and "ok (rel <= 0.0001)" in printed and "yes" in printed
    assert f"wrote {out} (onnx, verified)" in printed


def test_cli_errors_are_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["convert", str(CONV / "net.prototxt"), str(LAYERS / "ip_basic" / "weights.caffemodel")]
    code = main([*argv, "--to", "pt", "-o", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("caffe-compat convert: error: ") and "different net" in err
    code = main(
        [*argv[:2], str(CONV / "weights.caffemodel"), "--to", "pt", "-o", "x.pt", "--input-shape", "x=2,a"]
    )
    assert code == 1 and "--input-shape 'x=2,a': expected NAME=N,C,H,W" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_verification_inputs_from_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    argv = ["convert", str(CONV / "net.prototxt"), str(CONV / "weights.caffemodel"), "--to", "torchscript"]
    code = main([*argv, "-o", str(tmp_path / "c.ts"), "--inputs", str(tmp_path / "in.npz"), "--tol", "0"])
    assert code == 0, capsys.readouterr().err
    assert "y       [2, 4, 9, 8]  0            0" in capsys.readouterr().out
