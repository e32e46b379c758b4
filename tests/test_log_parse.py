"""parse_log and ``caffe-compat parse-log``: real Caffe's logs give exactly their iters.json numbers,
with either glog prefix; restarts, several test nets, date rollover, NaN values, the CSV files
and the one-line errors.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.log import parse_log
from caffe_compat.log.parse import format_csv

TRAIN_GOLDENS = Path(__file__).parent / "goldens" / "train"
CASES = sorted(p.name for p in TRAIN_GOLDENS.iterdir() if (p / "caffe_train.log").is_file())
FIXED = ("NumIters", "Seconds", "LearningRate", "SmoothedLoss")


def as_iters_json(train_rows: list[dict], test_rows: list[dict]) -> dict:
    """Rows in iters.json's layout (lr omitted where the log has none, like iters.json)."""
    train = {}
    for row in train_rows:
        entry = {"outputs": {k: v for k, v in row.items() if k not in FIXED}, "loss": row["SmoothedLoss"]}
        if not math.isnan(row["LearningRate"]):
            entry["lr"] = row["LearningRate"]
        train[str(row["NumIters"])] = entry
    test = {str(row["NumIters"]): {k: v for k, v in row.items() if k not in FIXED} for row in test_rows}
    return {"train": train, "test": test}


def classic_prefixes(text: str) -> str:
    """Rewrite glog's ``I20261123 `` prefixes into the Caffe-era ``I1123 `` ones."""
    return re.sub(r"^([IWEF])\d{4}(\d{4}) ", r"\1\2 ", text, flags=re.MULTILINE)


@pytest.mark.parametrize("case", CASES)
def test_golden_log_gives_iters_json(case: str) -> None:
    expected = json.loads((TRAIN_GOLDENS / case / "iters.json").read_text())
    train_rows, test_rows = parse_log(TRAIN_GOLDENS / case / "caffe_train.log")
    assert as_iters_json(train_rows, test_rows) == expected
    assert [row["NumIters"] for row in train_rows] == sorted(int(k) for k in expected["train"])


@pytest.mark.parametrize("case", CASES)
def test_classic_prefix_parses_the_same(case: str, tmp_path: Path) -> None:
    text = (TRAIN_GOLDENS / case / "caffe_train.log").read_text()
    classic = classic_prefixes(text)
    assert classic != text and re.search(r"^I1123 \d\d:\d\d:\d\d\.\d{6} ", classic, re.MULTILINE)
    path = tmp_path / "classic.log"
    path.write_text(classic)
    assert parse_log(path) == parse_log(TRAIN_GOLDENS / case / "caffe_train.log")


def independent_rows(text: str) -> tuple[dict[int, float], dict[int, float]]:
    """Smoothed losses and lrs by iteration, read with two plain regexes."""
    losses = {
        int(m[1]): float(m[2]) for m in re.finditer(r"\] Iteration (\d+) \([^)]*\), loss = (\S+)", text)
    }
    losses.update({int(m[1]): float(m[2]) for m in re.finditer(r"\] Iteration (\d+), loss = (\S+)", text)})
    rates = {int(m[1]): float(m[2]) for m in re.finditer(r"\] Iteration (\d+), lr = (\S+)", text)}
    return losses, rates


@pytest.mark.parametrize("case", CASES)
def test_resume_log(case: str) -> None:
    """caffe_resume.log (restarted from a snapshot) starts at the snapshot's iteration; its lr
    schedule is the original run's."""
    text = (TRAIN_GOLDENS / case / "caffe_resume.log").read_text()
    start = int(re.search(r"Resuming from final_iter_(\d+)\.solverstate", text)[1])
    train_rows, test_rows = parse_log(TRAIN_GOLDENS / case / "caffe_resume.log")
    losses, rates = independent_rows(text)
    assert [row["NumIters"] for row in train_rows] == sorted(losses) and train_rows[0]["NumIters"] == start
    assert {row["NumIters"]: row["SmoothedLoss"] for row in train_rows} == losses
    assert {row["NumIters"]: row["LearningRate"] for row in train_rows if row["NumIters"] in rates} == rates
    original = json.loads((TRAIN_GOLDENS / case / "iters.json").read_text())["train"]
    for row in train_rows[:-1]:
        assert row["LearningRate"] == original[str(row["NumIters"])]["lr"]
    assert test_rows[0]["NumIters"] == start and test_rows[-1]["NumIters"] == train_rows[-1]["NumIters"]


def test_restarted_run_in_one_file_replaces_the_rows_it_redoes(tmp_path: Path) -> None:
    case = TRAIN_GOLDENS / "face20_softmax"
    joined = tmp_path / "joined.log"
    joined.write_text((case / "caffe_train.log").read_text() + (case / "caffe_resume.log").read_text())
    first_train, first_test = parse_log(case / "caffe_train.log")
    resumed_train, resumed_test = parse_log(case / "caffe_resume.log")
    train_rows, test_rows = parse_log(joined)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "Seconds"} for row in rows]  # noqa: E731
    assert strip(train_rows) == strip([r for r in first_train if r["NumIters"] < 20] + resumed_train)
    assert strip(test_rows) == strip([r for r in first_test if r["NumIters"] < 20] + resumed_test)
    # Seconds count from the first run's Solving line (14:00:06.726425); the resumed run's first
    # test output is logged at 14:25:00.036487.
    assert test_rows[1]["Seconds"] == pytest.approx(24 * 60 + 53.310062, abs=1e-6)


def line(stamp: str, message: str, source: str = "solver.cpp:224") -> str:
    return f"I{stamp} 12345 {source}] {message}\n"


def test_restart_without_solving_line_and_nan(tmp_path: Path) -> None:
    path = tmp_path / "restart.log"
    path.write_text(
        line("0301 10:00:00.000000", "Solving net")
        + line("0301 10:00:01.000000", "Iteration 0 (0 iter/s, 0s/10 iters), loss = 2.5")
        + line("0301 10:00:01.000100", "    Train net output #0: loss = 2.5 (* 1 = 2.5 loss)")
        + line("0301 10:00:01.000200", "Iteration 0, lr = 0.1", "sgd_solver.cpp:106")
        + line("0301 10:00:02.000000", "Iteration 10 (1 iter/s, 1s/10 iters), loss = nan")
        + line("0301 10:00:02.000100", "    Train net output #0: loss = -nan (* 1 = -nan loss)")
        + line("0301 10:00:02.000200", "Iteration 10, lr = 0.1", "sgd_solver.cpp:106")
        + line("0301 10:00:05.000000", "Iteration 10 (1 iter/s, 1s/10 iters), loss = 1.5")
        + line("0301 10:00:05.000100", "    Train net output #0: loss = 1.25 (* 1 = 1.25 loss)")
        + line("0301 10:00:05.000200", "Iteration 10, lr = 0.01", "sgd_solver.cpp:106")
    )
    train_rows, test_rows = parse_log(path)
    assert test_rows == []
    assert [row["NumIters"] for row in train_rows] == [0, 10]
    assert train_rows[1] == {
        "NumIters": 10,
        "Seconds": 5.0001,
        "LearningRate": 0.01,
        "SmoothedLoss": 1.5,
        "loss": 1.25,
    }
    only_first = tmp_path / "first.log"
    only_first.write_text("".join(path.read_text().splitlines(keepends=True)[:7]))
    nan_row = parse_log(only_first)[0][1]
    assert math.isnan(nan_row["SmoothedLoss"]) and math.isnan(nan_row["loss"])


def test_several_test_nets_and_repeated_output_names(tmp_path: Path) -> None:
    path = tmp_path / "two_nets.log"
    path.write_text(
        line("1123 10:00:00.000000", "Solving net")
        + line("1123 10:00:00.500000", "Iteration 0, Testing net (#0)")
        + line("1123 10:00:01.000000", "    Test net output #0: accuracy = 0.25")
        + line("1123 10:00:01.000000", "    Test net output #1: accuracy = 0.5")
        + line("1123 10:00:01.100000", "Iteration 0, Testing net (#1)")
        + line("1123 10:00:02.000000", "    Test net output #0: accuracy = 0.75")
        + line("1123 10:00:02.000000", "    Test net output #1: loss = 1.5 (* 1 = 1.5 loss)")
        + line("1123 10:00:03.000000", "Iteration 0 (0 iter/s, 0s/1 iters), loss = 2")
        + line("1123 10:00:03.000000", "    Train net output #0: loss = 2 (* 1 = 2 loss)")
        + line("1123 10:00:03.000000", "Iteration 0, lr = 0.5", "sgd_solver.cpp:106")
    )
    train_rows, test_rows = parse_log(path)
    assert test_rows == [
        {
            "NumIters": 0,
            "Seconds": 1.0,
            "LearningRate": 0.5,
            "accuracy": 0.25,
            "accuracy#1": 0.5,
            "net1/accuracy": 0.75,
            "net1/loss": 1.5,
        }
    ]
    assert train_rows[0]["Seconds"] == 3.0 and train_rows[0]["loss"] == 2.0


def test_date_rollover_midnight_and_new_year(tmp_path: Path) -> None:
    path = tmp_path / "rollover.log"
    path.write_text(
        "Log file created at: 2025/12/31 23:59:58\nRunning on machine: x\n"
        + line("1231 23:59:58.500000", "Solving net")
        + line("1231 23:59:59.000000", "Iteration 0 (0 iter/s, 0s/1 iters), loss = 3")
        + line("0101 00:00:01.000000", "Iteration 1 (1 iter/s, 1s/1 iters), loss = 2")
        + line("0102 00:00:01.000000", "Iteration 2 (1 iter/s, 1s/1 iters), loss = 1")
    )
    train_rows, _ = parse_log(path)
    assert [row["Seconds"] for row in train_rows] == [0.5, 2.5, 86402.5]
    # Without the header the year comes from the file's time; 2024 is a leap year: 29 February.
    leap = tmp_path / "leap.log"
    leap.write_text(
        line("0228 23:00:00.000000", "Solving net")
        + line("0301 01:00:00.000000", "Iteration 0 (0 iter/s, 0s/1 iters), loss = 3")
    )
    header = "Log file created at: 2024/02/28 23:00:00\n"
    leap.write_text(header + leap.read_text())
    assert parse_log(leap)[0][0]["Seconds"] == 26 * 3600
    leap.write_text(leap.read_text().replace(header, "Log file created at: 2023/02/28 23:00:00\n"))
    assert parse_log(leap)[0][0]["Seconds"] == 2 * 3600
    # The newer prefix carries the year itself.
    dated = tmp_path / "dated.log"
    dated.write_text(
        line("20241231 23:59:59.000000", "Solving net")
        + line("20250101 00:00:01.250000", "Iteration 0 (0 iter/s, 0s/1 iters), loss = 3")
    )
    assert parse_log(dated)[0][0]["Seconds"] == 2.25


def test_learning_rate_is_the_one_of_the_row_iteration() -> None:
    """Caffe logs the lr of iteration N after N's outputs; parse_log.py would give row 20 the rate
    of iteration 19 (0.01) although iteration 20 ran at the stepped 0.001."""
    train_rows, test_rows = parse_log(TRAIN_GOLDENS / "face20_softmax" / "caffe_train.log")
    rates = {row["NumIters"]: row["LearningRate"] for row in train_rows}
    assert rates[19] == 0.01 and rates[20] == 0.001 and rates[40] == 0.0001 and math.isnan(rates[60])
    assert [(row["NumIters"], row["LearningRate"]) for row in test_rows] == [
        (0, 0.01),
        (20, 0.001),
        (40, 0.0001),
        (60, 0.0001),
    ]
    # Seconds: from the Solving line (14:00:06.726425) to the row's first output line.
    assert train_rows[0]["Seconds"] == pytest.approx(0.032604, abs=1e-9)
    assert test_rows[0]["Seconds"] == pytest.approx(0.008987, abs=1e-9)


def test_parse_log_cli_writes_parse_log_py_csvs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = TRAIN_GOLDENS / "face20_sphereface" / "caffe_train.log"
    assert main(["parse-log", str(log), "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'caffe_train.log.train'} (61 rows)" in out
    with open(tmp_path / "caffe_train.log.train", newline="") as handle:
        train = list(csv.reader(handle))
    with open(tmp_path / "caffe_train.log.test", newline="") as handle:
        test = list(csv.reader(handle))
    assert train[0] == ["NumIters", "Seconds", "LearningRate", "lambda", "softmax_loss", "SmoothedLoss"]
    assert test[0] == ["NumIters", "Seconds", "LearningRate", "accuracy", "lambda", "softmax_loss"]
    expected = json.loads((log.parent / "iters.json").read_text())
    assert len(train) == 62 and len(test) == 5
    assert train[21][0] == "20" and float(train[21][2]) == 0.001
    assert float(train[21][3]) == expected["train"]["20"]["outputs"]["lambda"]
    assert float(train[21][5]) == expected["train"]["20"]["loss"]
    assert (
        train[-1][0] == "60"
        and train[-1][2] == ""  # the final line's lr is not in the log: empty, like its outputs
        and train[-1][3] == ""
        and float(train[-1][5]) == 2.01222
    )
    assert [float(v) for v in test[4][3:]] == [0.625, 526.841, 1.99544]
    assert format_csv(parse_log(log)[1], delimiter=";").splitlines()[0] == ";".join(test[0])


def test_parse_log_creates_its_output_folder_and_writes_unknowns_as_empty_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log = TRAIN_GOLDENS / "face20_softmax" / "caffe_train.log"
    folder = tmp_path / "new" / "csv"
    assert main(["parse-log", str(log), "--out-dir", str(folder)]) == 0
    assert f"wrote {folder / 'caffe_train.log.train'} (61 rows)" in capsys.readouterr().out
    with open(folder / "caffe_train.log.train", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["NumIters", "Seconds", "LearningRate", "softmax_loss", "SmoothedLoss"]
    assert rows[-2][2] == "0.0001" and rows[-2][3] == "2.14748"
    # Iteration 60's row (Solve()'s final line) has neither an lr nor outputs: empty cells, no 'nan'
    assert rows[-1][0] == "60" and rows[-1][2:4] == ["", ""] and rows[-1][4] == "1.96397"
    assert not any("nan" in cell for row in rows for cell in row)


def test_parse_log_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(CaffeCompatError, match="cannot read log .*missing.log: no such file"):
        parse_log(tmp_path / "missing.log")
    empty = tmp_path / "empty.log"
    empty.write_text(line("1123 10:00:00.000000", "Solving net") + "Iteration 5, loss = 1 (no prefix)\n")
    with pytest.raises(CaffeCompatError, match="empty.log: no training or test iterations found"):
        parse_log(empty)
    for argv, message in (
        (["parse-log", str(tmp_path / "missing.log")], "cannot read log"),
        (["parse-log", str(empty)], "no training or test iterations found"),
        (
            [
                "parse-log",
                str(TRAIN_GOLDENS / "solver_sgd_step" / "caffe_train.log"),
                "--out-dir",
                str(empty / "below_a_file"),
            ],
            "cannot create the output folder",
        ),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("caffe-compat parse-log: error: ") and message in err
    assert not list((tmp_path).glob("*.train"))


@pytest.mark.parametrize("case", ["solver_sgd_step", "solver_adam_sigmoid"])
def test_our_own_log_parses_to_caffes_numbers(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A log written by `caffe-compat train` (Caffe-era prefix) parses like Caffe's own: the same
    rows, lrs equal and numbers within the solver goldens' tolerance."""
    import shutil

    folder = tmp_path / case
    shutil.copytree(TRAIN_GOLDENS / case, folder)
    monkeypatch.chdir(folder)
    assert (
        main(["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel", "-log", "ours.log"]) == 0
    )
    text = (folder / "ours.log").read_text()
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.cpp:\d+\] ", text, re.MULTILINE)
    ours = as_iters_json(*parse_log(folder / "ours.log"))
    expected = json.loads((folder / "iters.json").read_text())
    assert ours["train"].keys() == expected["train"].keys() and ours["test"].keys() == expected["test"].keys()
    for iteration, row in expected["train"].items():
        mine = ours["train"][iteration]
        assert mine.get("lr") == row.get("lr")
        assert mine["loss"] == pytest.approx(row["loss"], rel=1e-4)
        assert mine["outputs"] == pytest.approx(row["outputs"], rel=1e-4)
    for iteration, row in expected["test"].items():
        assert ours["test"][iteration] == pytest.approx(row, rel=1e-4)
