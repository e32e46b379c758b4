"""Exceptions raised by caffe-compat.

Every error carries a message that names the file, line, layer or field at fault, so the CLI can
print it as one line. Library code never prints and continues.
"""

from __future__ import annotations


class CaffeCompatError(Exception):
    """Base class of every error caffe-compat raises on bad input."""


class UpgradeError(CaffeCompatError):
    """A legacy (V0/V1) net or solver that Caffe's upgrade_proto.cpp would also reject."""


class PrototxtError(CaffeCompatError):
    """A text prototxt that does not parse: syntax error, unknown field or enum value."""


class CaffemodelError(CaffeCompatError):
    """A binary file that is not a readable Caffe message (truncated, empty, wrong kind)."""


class LayerError(CaffeCompatError):
    """A layer that cannot be built or run: unknown type, bad parameters, shape mismatch."""


class WeightsError(CaffeCompatError):
    """Weights that do not fit the net (blob count or shape mismatch)."""


class SolverError(CaffeCompatError):
    """A solver configuration Caffe would reject."""


def name_file(exc: CaffeCompatError, label: str) -> CaffeCompatError:
    """Prefix ``exc``'s message with ``label`` (a file name) unless the message names it already."""
    message = str(exc)
    if label and label not in message:
        exc.args = (f"{label}: {message}", *exc.args[1:])
    return exc


def summary_line(exc: BaseException) -> str:
    """The informative line of a library's exception message (torch's are paragraphs whose first
    line is boilerplate)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Trying to load", "Unsupported", "WeightsUnpickler error")):
            return line
    return lines[0] if lines else type(exc).__name__
