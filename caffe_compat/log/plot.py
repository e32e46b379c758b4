"""Plot training curves of one or more Caffe logs, overlaid (e.g. a paper's log and a reproduction).

Panels, all against the iteration: the smoothed training loss, one panel per test output (test
nets' outputs by column name, as :func:`caffe_compat.log.parse_log` names them) and the learning
rate (log scale, drawn up to the run's last iteration). Drawn with matplotlib's Agg canvas
directly (no pyplot, no global backend switch), so it works headless and leaves the caller's
matplotlib state alone.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from caffe_compat.errors import CaffeCompatError
from caffe_compat.log.parse import FIXED_COLUMNS, SMOOTHED_LOSS, Row, parse_log
from caffe_compat.proto.io import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _labels(paths: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(paths):
            raise CaffeCompatError(f"{len(labels)} labels given for {len(paths)} logs")
        return list(labels)
    names = [path.name for path in paths]
    return names if len(set(names)) == len(names) else [str(path) for path in paths]


def _series(rows: list[Row], column: str) -> tuple[list[float], list[float]]:
    points = [(row["NumIters"], row[column]) for row in rows if column in row and not math.isnan(row[column])]
    return [x for x, _ in points], [y for _, y in points]


def plot_logs(
    logs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    labels: Sequence[str] | None = None,
    dpi: int = 100,
) -> Figure:
    """Draw the curves of ``logs`` into the PNG ``output`` (written atomically); returns the Figure.

    Raises:
        CaffeCompatError: no log given, a log that cannot be parsed, or an unwritable output.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not logs:
        raise CaffeCompatError("no log given to plot")
    paths = [Path(log) for log in logs]
    names = _labels(paths, labels)
    parsed = [parse_log(path) for path in paths]
    test_columns: list[str] = []
    for _, test_rows in parsed:
        for row in test_rows:
            test_columns.extend(key for key in row if key not in FIXED_COLUMNS and key not in test_columns)
    panels = ["train", *test_columns, "lr"]
    figure = Figure(figsize=(8, 2.6 * len(panels)), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(paths))]
    rates: list[float] = []
    for (train_rows, test_rows), name, color in zip(parsed, names, colors, strict=True):
        x, y = _series(train_rows, SMOOTHED_LOSS)
        axes[0].plot(x, y, color=color, label=name, linewidth=1.2)
        for ax, column in zip(axes[1:-1], test_columns, strict=True):
            x, y = _series(test_rows, column)
            if x:
                ax.plot(x, y, color=color, marker="o", markersize=3, label=name, linewidth=1.2)
        x, y = _series(train_rows, "LearningRate")
        if x:
            # the last rate holds until the run's last iteration (max_iter), whose row has no rate
            last = max(row["NumIters"] for row in [*train_rows, *test_rows])
            if last > x[-1]:
                x, y = [*x, last], [*y, y[-1]]
            axes[-1].step(x, y, where="post", color=color, label=name, linewidth=1.2)
            rates.extend(y)
    axes[0].set_title("training loss (smoothed, as displayed)")
    axes[0].set_ylabel("loss")
    for ax, column in zip(axes[1:-1], test_columns, strict=True):
        ax.set_title(f"test output: {column}")
        ax.set_ylabel(column)
    axes[-1].set_title("learning rate")
    axes[-1].set_ylabel("lr")
    if rates and min(rates) > 0:
        axes[-1].set_yscale("log")
    axes[-1].set_xlabel("iteration")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(output, buffer.getvalue())
    return figure
