"""The README, run: every command block is executed here (the full demo by the slow test in
tests/test_demo.py), and the numbers the README quotes are compared with what the commands print.

Console blocks (```console) start with ``$ COMMAND``; each following line must match a line the
command prints, in order. ``...`` stands for any number of lines, and ``…`` inside a line for any
text (times, glog prefixes). Shell blocks that name placeholders (``/data/casia``) or the full
demo's output are run with the substitutions stated in each test. The layer table's command
(``python tests/layer_cases.py --readme-table``) is checked by tests/test_layer_registry.py.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

import caffe_compat as cc
from caffe_compat.cli import build_parser, main, normalize_flags
from caffe_compat.export.convert import FORMATS
from caffe_compat.export.standalone import import_file

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def fenced_blocks(language: str) -> list[str]:
    """The README's code blocks of one language (``""`` for plain fences), in order."""
    return [body for lang, body in FENCE.findall(README) if lang == language]


def block_with(language: str, text: str) -> str:
    (found,) = [body for body in fenced_blocks(language) if text in body]
    return found


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def console_block(command: str) -> list[str]:
    """The lines of the console block whose first line is ``$ command``."""
    for body in fenced_blocks("console"):
        lines = body.splitlines()
        if lines and lines[0] == f"$ {command}":
            return lines[1:]
    raise AssertionError(f"no console block runs {command!r}")


def _pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in line.split("…")))


def assert_prints(expected: list[str], printed: str) -> None:
    """Every expected line matches a printed line, in order (``...`` skips lines)."""
    lines = printed.splitlines()
    position = 0
    for line in expected:
        if line == "...":
            continue
        pattern = _pattern(line)
        for index in range(position, len(lines)):
            if pattern.fullmatch(lines[index]):
                position = index + 1
                break
        else:
            near = [printed_line for printed_line in lines if line.split("…")[-1][-30:] in printed_line]
            raise AssertionError(f"the README quotes {line!r}; the run printed {near or 'no such line'}")


def run_cli(command: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    argv = shlex.split(command)
    assert argv[0] == "caffe-compat"
    code = main(argv[1:])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- set-up -------------------------------------------------------------------------------------


def test_setup_block_installs_what_setup_py_accepts_and_tests_as_ci_does() -> None:
    commands = shell_commands(block_with("bash", "pip install"))
    setup = (ROOT / "setup.py").read_text()
    low, high = re.search(r'"torch>=([\d.]+),<([\d.]+)"', setup).groups()
    version = lambda text: tuple(int(x) for x in text.split("."))  # noqa: E731
    steps = [step.strip() for command in commands for step in command.split("&&")]
    for step in steps:
        if step.startswith("pip install torch=="):
            assert version(low) <= version(step.split("==")[1]) < version(high)
        elif step.startswith("pip install -e"):
            extra = re.fullmatch(r"pip install -e '\.\[(\w+)\]'", step).group(1)
            assert re.search(rf'"{extra}":\s*\[', setup), f"setup.py has no extra '{extra}'"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci == [commands[-1]]
    demos = [step for step in steps if step.startswith("caffe-compat demo")]
    assert demos == [
        "caffe-compat demo --out caffe_compat_demo",
        "caffe-compat demo --quick --out caffe_compat_demo_quick",
    ]
    for demo in demos:  # the console blocks quote what these very commands print
        assert console_block(demo)
        assert f"{demo.split()[-1]}/" in (ROOT / ".gitignore").read_text().splitlines()


# -- the quick demo and the conversion after it ---------------------------------------------------


def test_quick_demo_prints_what_the_readme_quotes_and_its_model_converts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prototxt").symlink_to(ROOT / "prototxt")  # the README's relative paths
    command = "caffe-compat demo --quick --out caffe_compat_demo_quick"
    code, out, _ = run_cli(command, capsys)
    assert code == 0
    assert_prints(console_block(command), out)
    assert out.splitlines()[-1] == "verification accuracy: 0.5250"

    # the files the README's table lists (for the full demo's iteration 96) are those written
    wrote = re.search(r"^\[demo\] wrote caffe_compat_demo_quick: (.*);", out, re.MULTILINE).group(1)
    written = [re.sub(r" \(.*\)$", "", item) for item in wrote.split(", ")]
    table = re.findall(r"^\| `([^`]+)` \| [\d.]+ [kM]B \|", README, re.MULTILINE)
    assert [name.rstrip("/").replace("iter_96", "iter_8") for name in table] == written
    assert all((tmp_path / "caffe_compat_demo_quick" / name).exists() for name in written)

    # the README's conversion, on the quick demo's weights instead of the full demo's
    (convert,) = shell_commands(block_with("bash", "--to py -o face_net/"))
    convert = convert.replace("caffe_compat_demo/", "caffe_compat_demo_quick/").replace("iter_96", "iter_8")
    code, out, _ = run_cli(convert, capsys)
    assert code == 0 and "wrote face_net/net.py, face_net/net.pt (py, verified)" in out
    generated = import_file(tmp_path / "face_net" / "net.py").load()
    deploy = cc.Net(
        ROOT / "prototxt" / "amsoftmax" / "face_deploy_mirror_normalize.prototxt",
        weights=tmp_path / "caffe_compat_demo_quick" / "face_train_test_iter_8.caffemodel",
        phase="TEST",
    )
    with torch.no_grad():
        for batch in (1, 2):  # any batch size, though the prototxt declares 100
            x = torch.randn(batch, 3, 112, 96, generator=torch.Generator().manual_seed(batch))
            torch.testing.assert_close(generated(data=x)["norm1"], deploy(data=x)["norm1"])


# -- the Python blocks ----------------------------------------------------------------------------

API_NET = """
name: "readme"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_python_api_block_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Its file names are placeholders: a small net, its weights and a mean file stand in."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prototxt").symlink_to(ROOT / "prototxt")
    (tmp_path / "net.prototxt").write_text(API_NET)
    torch.manual_seed(0)
    cc.Net("net.prototxt", phase="TRAIN").save_caffemodel("weights.caffemodel")
    shutil.copy("weights.caffemodel", "model.caffemodel")
    shutil.copy(ROOT / "tests" / "goldens" / "data" / "mean.binaryproto", "mean.binaryproto")
    scope = {"x": torch.randn(2, 3, 8, 8), "y": torch.tensor([0.0, 2.0])}
    exec(compile(block_with("python", "cc.read_net("), "README.md", "exec"), scope)  # noqa: S102
    assert scope["net_param"].layer[0].name == "data" and scope["solver"].base_lr == pytest.approx(0.1)
    assert list(scope["outs"]) == ["loss"] and float(scope["loss"].detach()) > 0
    assert cc.read_caffemodel("copy.caffemodel") == scope["weights"]
    assert scope["mean"].ndim == 4 and scope["mean"].shape[1] == 3 and Path("out.caffemodel").is_file()
    assert scope["test_net"].params["fc"][0] is scope["net"].params["fc"][0]
    assert "def forward" in capsys.readouterr().out


def test_margin_losses_blocks_run() -> None:
    scope = {"embeddings": torch.randn(4, 512), "labels": torch.tensor([0, 5, 86875, 12])}
    exec(compile(block_with("python", "make_head("), "README.md", "exec"), scope)  # noqa: S102
    assert scope["head"].weight.shape == (86876, 512) and torch.isfinite(scope["loss"])
    (layer,) = [body for body in fenced_blocks("") if 'type: "MarginHead"' in body]
    net = cc.Net(
        'layer { name: "in" type: "Input" top: "fc5" top: "label"\n'
        "        input_param { shape { dim: 2 dim: 512 } shape { dim: 2 } } }\n" + layer,
        phase="TRAIN",
    )
    logits = net(fc5=torch.randn(2, 512), label=torch.tensor([1.0, 7.0]))["fc6"]
    assert logits.shape == (2, 10516) and float(logits.detach().abs().max()) <= 64.0 + 1e-3


# -- the command line -----------------------------------------------------------------------------


def _subcommand_options() -> dict[str, set[str]]:
    parser = build_parser()
    (sub,) = [action for action in parser._actions if action.dest == "command"]  # noqa: SLF001
    return {name: set(command._option_string_actions) for name, command in sub.choices.items()}  # noqa: SLF001


def test_command_table_names_every_subcommand_and_only_flags_that_exist() -> None:
    rows = re.findall(r"^\| `caffe-compat ([\w-]+)([^`]*)` \|", README, re.MULTILINE)
    options = _subcommand_options()
    assert sorted(name for name, _ in rows) == sorted(options)
    for name, usage in rows:
        flags = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage)
        for flag in flags:
            assert normalize_flags([flag])[0] in options[name], f"README: {name} has no {flag}"
    (convert,) = [usage for name, usage in rows if name == "convert"]
    listed = re.search(r"--to ([\w\\|]+)", convert).group(1).split("\\|")
    assert sorted(listed) == sorted(FORMATS)


def test_data_root_block_names_the_mapped_list_it_looks_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """/data/casia is the reader's folder; here it does not exist, and the command says so."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prototxt").symlink_to(ROOT / "prototxt")
    (command,) = shell_commands(block_with("bash", "--data-root C:/datasets"))
    assert not Path("/data/casia/list.txt").exists()
    code, _, err = run_cli(command, capsys)
    assert code == 1
    net_file = (ROOT / "prototxt" / "amsoftmax" / "face_train_test.prototxt").resolve()
    assert err.splitlines()[-1] == (
        f"caffe-compat train: error: {net_file}: layer 'data' (ImageData, TRAIN): image_data_param.source "
        "'/data/casia/list.txt' does not exist; point it at your data with --data-root OLD=NEW (replaces a "
        "path prefix) or -set TRAIN:data.image_data_param.source=PATH, e.g. caffe-compat train -solver "
        "prototxt/amsoftmax/face_solver.prototxt -set TRAIN:data.image_data_param.source=/path/to/list.txt"
    )
