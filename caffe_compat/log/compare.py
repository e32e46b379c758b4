"""Compare two Caffe training logs iteration by iteration (e.g. real Caffe's against ours).

Both logs are parsed with :func:`caffe_compat.log.parse_log`; at every iteration present in both,
each column they share (``SmoothedLoss``, ``LearningRate`` and the outputs; not ``Seconds``) is
compared, test rows before train rows as Caffe logs them. Two values agree when
``|a - b| <= atol + rtol * max(|a|, |b|)`` (symmetric, unlike ``numpy.isclose``); two NaNs agree,
one NaN does not. The relative difference shown is ``|a - b| / max(|a|, |b|)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from caffe_compat.log.parse import Row, parse_log

_SKIPPED = ("NumIters", "Seconds")


@dataclass(frozen=True)
class ColumnDifference:
    """One column at one iteration of one table (``"train"`` or ``"test"``)."""

    iteration: int
    table: str
    column: str
    a: float
    b: float
    relative: float
    diverged: bool


@dataclass
class LogComparison:
    """Per-iteration worst differences and the first divergence beyond the tolerance."""

    rtol: float
    atol: float
    worst: list[ColumnDifference] = field(default_factory=list)
    first_divergence: ColumnDifference | None = None
    only_in_a: dict[str, list[int]] = field(default_factory=dict)
    only_in_b: dict[str, list[int]] = field(default_factory=dict)
    columns_only_in_a: list[str] = field(default_factory=list)
    columns_only_in_b: list[str] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.first_divergence is not None


def _relative(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    if a == b:
        return 0.0
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if math.isfinite(scale) else math.inf


def _agree(a: float, b: float, rtol: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def _by_iteration(rows: list[Row]) -> dict[int, Row]:
    return {int(row["NumIters"]): row for row in rows}


def _columns(rows: list[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(key for key in row if key not in _SKIPPED))
    return list(seen)


def compare_logs(
    a: str | os.PathLike, b: str | os.PathLike, rtol: float = 1e-4, atol: float = 0.0
) -> LogComparison:
    """Compare logs ``a`` and ``b``; see the module docstring for the rule."""
    result = LogComparison(rtol=rtol, atol=atol)
    parsed_a, parsed_b = parse_log(a), parse_log(b)
    entries: list[tuple[int, int, str, Row, Row]] = []
    for order, table, rows_a, rows_b in (
        (1, "train", parsed_a[0], parsed_b[0]),
        (0, "test", parsed_a[1], parsed_b[1]),
    ):
        index_a, index_b = _by_iteration(rows_a), _by_iteration(rows_b)
        result.only_in_a[table] = sorted(set(index_a) - set(index_b))
        result.only_in_b[table] = sorted(set(index_b) - set(index_a))
        columns_a, columns_b = _columns(rows_a), _columns(rows_b)
        result.columns_only_in_a += [f"{table}:{name}" for name in columns_a if name not in columns_b]
        result.columns_only_in_b += [f"{table}:{name}" for name in columns_b if name not in columns_a]
        for iteration in sorted(set(index_a) & set(index_b)):
            entries.append((iteration, order, table, index_a[iteration], index_b[iteration]))
    for iteration, _, table, row_a, row_b in sorted(entries, key=lambda entry: entry[:2]):
        differences = [
            ColumnDifference(
                iteration,
                table,
                column,
                row_a[column],
                row_b[column],
                _relative(row_a[column], row_b[column]),
                not _agree(row_a[column], row_b[column], rtol, atol),
            )
            for column in row_a
            if column not in _SKIPPED and column in row_b
        ]
        if not differences:
            continue
        worst = max(differences, key=lambda diff: (diff.diverged, diff.relative))
        result.worst.append(worst)
        if worst.diverged and result.first_divergence is None:
            result.first_divergence = worst
    return result


def format_comparison(result: LogComparison, name_a: str = "A", name_b: str = "B") -> str:
    """The comparison as text: one line per iteration and table (its worst column), then notes
    and a last line naming the first divergence (or saying there is none)."""
    lines = [
        f"{'iter':>8}  {'table':<5}  {'worst column':<24} "
        f"{name_a[:16]:>16} {name_b[:16]:>16} {'rel diff':>10}"
    ]
    for diff in result.worst:
        mark = "  <-- beyond tolerance" if diff.diverged else ""
        lines.append(
            f"{diff.iteration:>8}  {diff.table:<5}  {diff.column:<24} {diff.a:>16.6g} {diff.b:>16.6g} "
            f"{diff.relative:>10.3g}{mark}"
        )
    for table in ("train", "test"):
        for side, only in ((name_a, result.only_in_a.get(table)), (name_b, result.only_in_b.get(table))):
            if only:
                shown = ", ".join(map(str, only[:8])) + (", ..." if len(only) > 8 else "")
                lines.append(f"{len(only)} {table} iterations only in {side}: {shown}")
    for side, names in ((name_a, result.columns_only_in_a), (name_b, result.columns_only_in_b)):
        if names:
            lines.append(f"columns only in {side}: {', '.join(names)}")
    tolerance = f"rtol={result.rtol:g}, atol={result.atol:g}"
    first = result.first_divergence
    if not result.worst:
        lines.append("no iteration in common: nothing compared")
    elif first is None:
        lines.append(f"no divergence beyond {tolerance} over {len(result.worst)} compared rows")
    else:
        lines.append(
            f"first divergence beyond {tolerance}: iteration {first.iteration} "
            f"({first.table} {first.column}: {first.a:.6g} vs {first.b:.6g}, rel diff {first.relative:.3g})"
        )
    return "\n".join(lines)
