"""ROC plot of verification results (TAR against FAR, FAR on a log axis), drawn with matplotlib's
Agg canvas directly (no pyplot, no global backend switch) and written atomically."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto.io import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_roc(results: Mapping[str, dict] | dict, output: str | os.PathLike, dpi: int = 100) -> Figure:
    """Draw the ROC of one :func:`evaluate_pairs` result, or of several (label -> result), into the
    PNG ``output``; returns the Figure. The legend shows each curve's AUC and EER."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = {results.get("protocol", "ROC"): results} if "roc" in results else dict(results)
    if not curves:
        raise CaffeCompatError("no verification result to plot")
    figure = Figure(figsize=(6, 5), dpi=dpi)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    smallest = 1.0
    for label, result in curves.items():
        far, tar = np.asarray(result["roc"]["far"]), np.asarray(result["roc"]["tar"])
        positive = far > 0
        if positive.any():
            smallest = min(smallest, float(far[positive].min()))
        ax.plot(
            np.where(positive, far, np.nan),
            tar,
            label=f"{label} (AUC {result['auc']:.4f}, EER {result['eer'] * 100:.2f}%)",
            linewidth=1.4,
        )
    ax.set_xscale("log")
    ax.set_xlim(smallest / 2, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title("verification ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(output, buffer.getvalue())
    return figure
