"""Comparing a converted artifact's outputs with its source net's on the same inputs.

The error of an output is reported as the largest absolute difference and that difference
relative to the output's largest magnitude (``max|a - b| / max|b|``: a norm-wise relative error,
insensitive to entries near zero); an output fails when the relative error exceeds ``tol`` or
its shape differs from Caffe's (every format keeps Caffe's shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

#: The default relative tolerance: float32 results of differently ordered sums (ONNX Runtime).
DEFAULT_TOL = 1e-4


@dataclass
class OutputCheck:
    """The comparison of one output."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    problem: str = ""


@dataclass
class Verification:
    """Every output's comparison for one artifact."""

    what: str
    tol: float
    checks: list[OutputCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def table(self) -> str:
        """A text table: output, shape, max abs error, max rel error, verdict."""
        rows = [("output", "shape", "max abs err", "max rel err", f"ok (rel <= {self.tol:g})")]
        for c in self.checks:
            verdict = "yes" if c.ok else f"NO{': ' + c.problem if c.problem else ''}"
            rows.append((c.name, str(list(c.shape)), f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return f"verification of {self.what}:\n" + "\n".join(lines)


def _array(value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def compare(
    what: str, reference: dict[str, torch.Tensor], actual: dict[str, object], tol: float = DEFAULT_TOL
) -> Verification:
    """Compare every reference output with the artifact's output of the same name."""
    result = Verification(what, tol)
    for name, expected in reference.items():
        want = _array(expected)
        if name not in actual:
            result.checks.append(OutputCheck(name, want.shape, math.inf, math.inf, False, "missing"))
            continue
        got = _array(actual[name])
        if got.shape != want.shape:
            problem = f"shape {list(got.shape)}"
            result.checks.append(OutputCheck(name, want.shape, math.inf, math.inf, False, problem))
            continue
        finite = np.isfinite(want) & np.isfinite(got)
        same_special = np.array_equal(want[~finite], got[~finite], equal_nan=True)
        diff = np.abs(got - want)[finite]
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(want[finite]).max()) if diff.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        ok = same_special and max_rel <= tol
        problem = "" if same_special else "inf/nan differ"
        result.checks.append(OutputCheck(name, want.shape, max_abs, max_rel, ok, problem))
    return result
