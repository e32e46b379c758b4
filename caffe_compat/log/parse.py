"""Parse a Caffe training log (the glog output of ``caffe train``) into per-iteration rows.

The messages read are those of Caffe's ``solver.cpp`` and ``sgd_solver.cpp`` (BVLC and the
happynear fork print the same ones)::

    Solving <net name>                                        start of a run (Seconds count from here)
    Iteration N (x iter/s, ys/D iters), loss = L              a displayed training iteration
    Iteration N, loss = L                                     Solve()'s final line (and old Caffe's)
        Train net output #k: name = v (* w = l loss)          outputs of the iteration's last forward
    Iteration N, lr = R                                       ApplyUpdate(): the lr of iteration N
    Iteration N, Testing net (#t)                             a test pass of test net t starts
        Test net output #k: name = v (* w = l loss)           its averaged outputs

Lines need a glog prefix, either the classic ``I1123 14:00:09.381027 12345 solver.cpp:224] `` or
the newer one with the year, ``I20261123 ...``; lines without one (the multi-line parameter dumps)
are skipped.

Rows follow BVLC's ``tools/extra/parse_log.py``: ``NumIters``, ``Seconds``, ``LearningRate``,
then one column per output, with these deliberate differences:

* ``LearningRate`` is the lr *used at that iteration*: the ``Iteration N, lr = R`` line with the same
  N, which Caffe prints after the iteration's outputs. parse_log.py takes the last lr printed
  before the row, i.e. the previous iteration's, so its rate is one displayed iteration late (it
  shows a step change one row after it happened). A test row at iteration N gets the lr of training
  iteration N (the rate the solver is at), or the last one printed before N when N was not trained
  (the final test at ``max_iter``). Unknown rates are NaN (the final ``Iteration max_iter, loss``),
  written as empty cells in the CSV, like the outputs that row does not have.
* Train rows carry the smoothed loss of the ``Iteration N ..., loss = L`` line as ``SmoothedLoss``
  (last column; parse_log.py drops it), and that final line, which has no outputs, is a row too.
* Outputs of test net ``t > 0`` are named ``net<t>/<name>`` (parse_log.py overwrites net 0's
  columns with them); an output name repeated within one row (an output blob with several
  values) gets ``#<k>`` appended, ``k`` the output number.
* A restarted run in the same file (a new ``Solving`` line, or iteration numbers going back)
  replaces the earlier run's rows from its first iteration on, so the rows describe the run that
  produced the final weights. ``Seconds`` counts wall time from the first ``Solving`` line of the
  file (from its first prefixed line when there is none), gaps between runs included.
* Dates: the classic prefix has no year; the year is taken from glog's ``Log file created at:``
  header when present, else from the file's modification time; a month going back (December to
  January) moves to the next year, as parse_log.py does, and midnight needs nothing special.
* ``nan``/``inf`` values (a diverged run) parse as floats instead of ending the row.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from caffe_compat.errors import CaffeCompatError

Row = dict[str, float]

_NUMBER = r"([-+]?(?:nan|inf(?:inity)?|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))"
_PREFIX = re.compile(r"^[IWEF](\d{8}|\d{4}) (\d\d):(\d\d):(\d\d)\.(\d{1,6})\s+\S+\s+[^\]\s]+\] ?(.*)$")
_CREATED = re.compile(r"^Log file created at: (\d{4})/(\d\d)/(\d\d)")
_SOLVING = re.compile(r"^Solving\b")
_TRAIN = re.compile(r"^Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUMBER, re.IGNORECASE)
_LR = re.compile(r"^Iteration (\d+), lr = " + _NUMBER, re.IGNORECASE)
_TEST_START = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)")
_OUTPUT = re.compile(r"^\s*(Train|Test) net output #(\d+): (\S+) = " + _NUMBER, re.IGNORECASE)

FIXED_COLUMNS = ("NumIters", "Seconds", "LearningRate")
SMOOTHED_LOSS = "SmoothedLoss"


@dataclass
class _Stamp:
    """A glog timestamp before the year is known: (year or None, month, day, h, m, s, us, rollovers)."""

    year: int | None
    month: int
    day: int
    clock: tuple[int, int, int, int]
    rollovers: int


@dataclass
class _Run:
    """One ``caffe train`` run inside the log."""

    train: dict[int, Row] = field(default_factory=dict)
    test: dict[int, Row] = field(default_factory=dict)
    lr: dict[int, float] = field(default_factory=dict)
    stamps: dict[int, _Stamp] = field(default_factory=dict)  # id(row) -> time of the row
    last_iter: int = -1

    def empty(self) -> bool:
        return not self.train and not self.test


class _Parser:
    """Line-by-line state machine over one log file."""

    def __init__(self) -> None:
        self.runs: list[_Run] = [_Run()]
        self.train_row: Row | None = None
        self.test_row: Row | None = None
        self.test_net = 0
        self.header_year: int | None = None
        self.start: _Stamp | None = None
        self.first: _Stamp | None = None
        self.last_month: int | None = None
        self.rollovers = 0

    @property
    def run(self) -> _Run:
        return self.runs[-1]

    def new_run(self) -> None:
        if not self.run.empty():
            self.runs.append(_Run())
        self.train_row = self.test_row = None

    def stamp(self, date: str, clock: tuple[int, int, int, int]) -> _Stamp:
        if len(date) == 8:
            year, month, day = int(date[:4]), int(date[4:6]), int(date[6:])
        else:
            year, month, day = None, int(date[:2]), int(date[2:])
            if self.last_month is not None and month < self.last_month:
                self.rollovers += 1
            self.last_month = month
        return _Stamp(year, month, day, clock, self.rollovers)

    def enter(self, iteration: int) -> None:
        """Start a new run when the iteration number goes back (a restart without a header)."""
        if iteration < self.run.last_iter:
            self.new_run()
        self.run.last_iter = max(self.run.last_iter, iteration)

    def feed(self, line: str) -> None:
        match = _PREFIX.match(line)
        if match is None:
            created = _CREATED.match(line)
            if created and self.header_year is None:
                self.header_year = int(created.group(1))
            return
        date, hour, minute, second, micro, message = match.groups()
        stamp = self.stamp(date, (int(hour), int(minute), int(second), int(micro.ljust(6, "0"))))
        if self.first is None:
            self.first = stamp
        if _SOLVING.match(message):
            if self.start is None:
                self.start = stamp
            self.new_run()
            return
        output = _OUTPUT.match(message)
        if output:
            self.output(
                output.group(1).lower() == "train", int(output.group(2)), output.group(3), output, stamp
            )
            return
        train = _TRAIN.match(message)
        if train:
            iteration = int(train.group(1))
            if iteration in self.run.train:
                self.new_run()
            self.enter(iteration)
            row: Row = {"NumIters": iteration, "Seconds": math.nan, "LearningRate": math.nan}
            row[SMOOTHED_LOSS] = float(train.group(2))
            self.run.train[iteration] = row
            self.run.stamps[id(row)] = stamp
            self.train_row, self.test_row = row, None
            return
        lr = _LR.match(message)
        if lr:
            iteration = int(lr.group(1))
            self.run.lr[iteration] = float(lr.group(2))
            if iteration in self.run.train:
                self.run.train[iteration]["LearningRate"] = float(lr.group(2))
            return
        test = _TEST_START.match(message)
        if test:
            iteration = int(test.group(1))
            self.enter(iteration)
            self.test_net = int(test.group(2))
            row = self.run.test.get(iteration)
            if row is None:
                row = {"NumIters": iteration, "Seconds": math.nan, "LearningRate": math.nan}
                self.run.test[iteration] = row
            self.test_row, self.train_row = row, None

    def output(self, is_train: bool, index: int, name: str, match: re.Match, stamp: _Stamp) -> None:
        row = self.train_row if is_train else self.test_row
        if row is None:
            return
        column = name if is_train or self.test_net == 0 else f"net{self.test_net}/{name}"
        if column in row and column not in FIXED_COLUMNS:
            column = f"{column}#{index}"
        # parse_log.py times a row by its first output line (after the test pass for test rows).
        if not any(key not in FIXED_COLUMNS and key != SMOOTHED_LOSS for key in row):
            self.run.stamps[id(row)] = stamp
        row[column] = float(match.group(4))


def _base_year(parser: _Parser, path: Path) -> int:
    if parser.header_year is not None:
        return parser.header_year
    return datetime.fromtimestamp(path.stat().st_mtime).year - parser.rollovers


def _to_datetime(stamp: _Stamp, base_year: int) -> datetime:
    year = stamp.year if stamp.year is not None else base_year + stamp.rollovers
    hour, minute, second, micro = stamp.clock
    return datetime(year, stamp.month, stamp.day, hour, minute, second, micro)


def _seconds(parser: _Parser, path: Path) -> None:
    """Fill ``Seconds`` once the year of classic (yearless) timestamps is known."""
    origin = parser.start or parser.first
    stamps = [stamp for run in parser.runs for stamp in run.stamps.values()]
    base = _base_year(parser, path)
    for shift in range(8):  # a 29 February in a year that is not a leap year: try earlier years
        try:
            zero = _to_datetime(origin, base - shift) if origin else None
            times = [_to_datetime(stamp, base - shift) for stamp in stamps]
            break
        except ValueError:
            continue
    else:
        raise CaffeCompatError(f"{path}: log timestamps are not valid dates")
    by_id = dict(zip([key for run in parser.runs for key in run.stamps], times, strict=True))
    for run in parser.runs:
        for row in [*run.train.values(), *run.test.values()]:
            when = by_id.get(id(row))
            if when is not None and zero is not None:
                row["Seconds"] = (when - zero).total_seconds()


def _test_rates(run: _Run) -> None:
    """A test row's lr: that of training iteration N, else the last one printed before N."""
    logged = sorted(run.lr)
    for iteration, row in run.test.items():
        if iteration in run.lr:
            row["LearningRate"] = run.lr[iteration]
            continue
        earlier = [it for it in logged if it < iteration]
        if earlier:
            row["LearningRate"] = run.lr[earlier[-1]]


def _merge(runs: list[_Run], attribute: str) -> list[Row]:
    """Concatenate the runs, a later run replacing the earlier rows from its first iteration on."""
    rows: list[Row] = []
    for run in runs:
        if run.empty():
            continue
        cut = min([*run.train, *run.test])
        rows = [row for row in rows if row["NumIters"] < cut]
        rows.extend(getattr(run, attribute).values())
    return rows


def parse_log(path: str | os.PathLike) -> tuple[list[Row], list[Row]]:
    """Parse a Caffe training log into ``(train_rows, test_rows)``.

    Each row is a dict: ``NumIters`` (int), ``Seconds``, ``LearningRate``, then the outputs by name
    (train rows end with ``SmoothedLoss``); see the module docstring for the rules, which follow
    Caffe's ``tools/extra/parse_log.py`` except where noted there.

    Raises:
        CaffeCompatError: the file cannot be read or holds no training or test iteration.
    """
    log_path = Path(path)
    parser = _Parser()
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parser.feed(line.rstrip("\r\n"))
    except FileNotFoundError:
        raise CaffeCompatError(f"cannot read log {log_path}: no such file") from None
    except IsADirectoryError:
        raise CaffeCompatError(f"cannot read log {log_path}: it is a directory") from None
    except OSError as exc:
        raise CaffeCompatError(f"cannot read log {log_path}: {exc.strerror or exc}") from None
    runs = [run for run in parser.runs if not run.empty()]
    if not runs:
        raise CaffeCompatError(
            f"{log_path}: no training or test iterations found (expected Caffe's 'Iteration N ..., loss = L' "
            "or 'Testing net' lines with glog prefixes)"
        )
    for run in runs:
        _test_rates(run)
    _seconds(parser, log_path)
    return _merge(runs, "train"), _merge(runs, "test")


def columns(rows: list[Row]) -> list[str]:
    """The CSV columns of ``rows``: the fixed ones, the outputs in order of appearance, SmoothedLoss."""
    names: dict[str, None] = dict.fromkeys(FIXED_COLUMNS)
    for row in rows:
        names.update(dict.fromkeys(key for key in row if key != SMOOTHED_LOSS))
    if any(SMOOTHED_LOSS in row for row in rows):
        names[SMOOTHED_LOSS] = None
    return list(names)


def _cell(value: float | None, fixed: bool = False) -> str:
    """A CSV cell: empty for a value the log does not give (a missing output, or NaN in a fixed
    column: an unknown rate or time), else the number (a diverged output stays ``nan``)."""
    if value is None or (fixed and isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def format_csv(rows: list[Row], delimiter: str = ",") -> str:
    """Rows as parse_log.py's CSV text (header line, ``\\r\\n`` line ends as csv.excel writes,
    floats in Python's shortest round-trip form); what the log does not give is an empty cell,
    as parse_log.py writes it: outputs a row does not have, and unknown (NaN) rates and times,
    e.g. the lr of the final ``Iteration max_iter, loss`` row."""
    header = columns(rows)
    lines = [delimiter.join(header)]
    lines.extend(
        delimiter.join(_cell(row.get(name), name in FIXED_COLUMNS) for name in header) for row in rows
    )
    return "\r\n".join(lines) + "\r\n"


def save_csv(
    log_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    train_rows: list[Row],
    test_rows: list[Row],
    delimiter: str = ",",
) -> list[Path]:
    """Write ``<out_dir>/<log basename>.train`` and ``.test`` (atomically), as parse_log.py names
    them, creating ``out_dir`` when it is missing; a table with no rows is not written
    (parse_log.py skips it too). Returns the paths written."""
    from caffe_compat.proto.io import ensure_output_folder, write_bytes_atomic

    folder = Path(out_dir)
    ensure_output_folder(folder)
    written = []
    for suffix, rows in ((".train", train_rows), (".test", test_rows)):
        if not rows:
            continue
        target = folder / (Path(log_path).name + suffix)
        write_bytes_atomic(target, format_csv(rows, delimiter).encode("utf-8"))
        written.append(target)
    return written
