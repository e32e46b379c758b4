"""``caffe-compat plot-log`` (PNG with labelled axes and legends, several logs overlaid) and
``caffe-compat compare-logs`` (per-iteration differences, first divergence beyond --rtol)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.log.compare import compare_logs
from caffe_compat.log.plot import plot_logs

TRAIN_GOLDENS = Path(__file__).parent / "goldens" / "train"
SOFTMAX = TRAIN_GOLDENS / "face20_softmax"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_log_writes_a_labelled_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "curves.png"
    argv = [
        "plot-log",
        str(SOFTMAX / "caffe_train.log"),
        str(SOFTMAX / "caffe_resume.log"),
        "-o",
        str(output),
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {output}"
    data = output.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 30_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 1040)  # 8 x 2.6 inches per panel, 4 panels, at 100 dpi

    figure = plot_logs(
        [SOFTMAX / "caffe_train.log", SOFTMAX / "caffe_resume.log"],
        tmp_path / "b.png",
        labels=["caffe", "ours"],
    )
    axes = figure.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy", "softmax_loss", "lr"]
    assert axes[-1].get_xlabel() == "iteration" and axes[-1].get_yscale() == "log"
    for ax in axes:
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["caffe", "ours"]
    loss_line = axes[0].get_lines()[0]
    assert list(loss_line.get_xdata()) == list(range(61)) and loss_line.get_ydata()[0] == 2.3029
    assert list(axes[1].get_lines()[1].get_xdata()) == [20, 40, 60]


def test_plot_lr_line_reaches_max_iter_and_missing_folders_are_created(tmp_path: Path) -> None:
    """The final ``Iteration max_iter, loss`` row has no lr; the rate in force is drawn up to it."""
    stamp = "I1123 14:00:{:02d}.000000  4242 {}] {}"
    lines = [stamp.format(0, "solver.cpp:295", "Solving net")]
    for second, iteration, lr in ((1, 0, 0.01), (2, 10, 0.01), (3, 20, 0.001)):
        lines += [
            stamp.format(
                second, "solver.cpp:224", f"Iteration {iteration} (1 iter/s, 1s/10 iters), loss = 2.5"
            ),
            stamp.format(second, "solver.cpp:243", "    Train net output #0: loss = 2.5 (* 1 = 2.5 loss)"),
            stamp.format(second, "sgd_solver.cpp:137", f"Iteration {iteration}, lr = {lr}"),
        ]
    lines.append(stamp.format(4, "solver.cpp:316", "Iteration 30, loss = 2.25"))
    log = tmp_path / "run.log"
    log.write_text("\n".join(lines) + "\n")
    output = tmp_path / "new" / "folder" / "curves.png"
    assert main(["plot-log", str(log), "-o", str(output)]) == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    lr_line = plot_logs([log], tmp_path / "c.png").get_axes()[-1].get_lines()[0]
    assert list(lr_line.get_xdata()) == [0, 10, 20, 30]
    assert list(lr_line.get_ydata()) == [0.01, 0.01, 0.001, 0.001]


def test_plot_log_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "curves.png"
    assert main(["plot-log", str(tmp_path / "missing.log"), "-o", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read log" in err and "missing.log" in err
    assert not output.exists()
    with pytest.raises(CaffeCompatError, match="1 labels given for 2 logs"):
        plot_logs([SOFTMAX / "caffe_train.log"] * 2, output, labels=["a"])


def test_compare_identical_logs_and_prefix_variants(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    classic = tmp_path / "classic.log"
    classic.write_text(
        re.sub(r"^I2026(\d{4}) ", r"I\1 ", (SOFTMAX / "caffe_train.log").read_text(), flags=re.M)
    )
    assert main(["compare-logs", str(SOFTMAX / "caffe_train.log"), str(classic)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "no divergence beyond rtol=0.0001, atol=0 over 65 compared rows"
    assert len(out) == 1 + 65 + 1


def test_compare_finds_the_first_divergence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = (SOFTMAX / "caffe_train.log").read_text()
    # Iteration 30's smoothed loss 2.1026 -> 2.1036 (rel 4.8e-4); test accuracy at 40 0.375 -> 0.5.
    changed = text.replace(
        "Iteration 30 (52.6316 iter/s, 0.019s/1 iters), loss = 2.1026",
        "Iteration 30 (1 iter/s, 0.019s/1 iters), loss = 2.1036",
    )
    assert changed != text
    changed = changed.replace("Test net output #0: accuracy = 0.375", "Test net output #0: accuracy = 0.5", 1)
    ours = tmp_path / "ours.log"
    ours.write_text(changed)
    result = compare_logs(SOFTMAX / "caffe_train.log", ours)
    first = result.first_divergence
    assert (first.iteration, first.table, first.column, first.a, first.b) == (
        30,
        "train",
        "SmoothedLoss",
        2.1026,
        2.1036,
    )
    assert first.relative == pytest.approx(0.001 / 2.1036)
    diverged = [(d.iteration, d.table) for d in result.worst if d.diverged]
    assert diverged == [(30, "train"), (40, "test")]

    assert main(["compare-logs", str(SOFTMAX / "caffe_train.log"), str(ours)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        "first divergence beyond rtol=0.0001, atol=0: iteration 30 (train SmoothedLoss: 2.1026 vs 2.1036, "
        "rel diff 0.000475)"
    )
    assert any(line.split()[:2] == ["30", "train"] and line.endswith("<-- beyond tolerance") for line in out)
    assert main(["compare-logs", str(SOFTMAX / "caffe_train.log"), str(ours), "--rtol", "1e-3"]) == 2
    assert (
        "first divergence beyond rtol=0.001, atol=0: iteration 40 (test accuracy" in capsys.readouterr().out
    )
    assert main(["compare-logs", str(SOFTMAX / "caffe_train.log"), str(ours), "--rtol", "0.3"]) == 0


def test_compare_logs_over_different_iterations_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    result = compare_logs(SOFTMAX / "caffe_train.log", SOFTMAX / "caffe_resume.log")
    assert result.only_in_a == {"train": list(range(20)), "test": [0]} and result.only_in_b == {
        "train": [],
        "test": [],
    }
    assert result.first_divergence.iteration == 20
    assert main(["compare-logs", str(SOFTMAX / "caffe_train.log"), str(tmp_path / "nope.log")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read log" in err and "nope.log" in err
