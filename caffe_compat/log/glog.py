"""Caffe's log lines: glog's prefix and C++ iostream's number formatting.

Caffe logs through glog, one line per message::

    I1123 14:00:09.381027 12345 solver.cpp:224] Iteration 20 (50 iter/s, 0.02s/1 iters), loss = 2.1

The prefix is the severity letter, month and day, wall-clock time to the microsecond, the thread id
(right-aligned in five columns) and the ``file:line`` of the call. Newer glog releases print the
year too (``I20261123 ...``); ``GlogWriter(with_year=True)`` writes that form. Numbers are printed the
way ``std::ostream << float`` prints them (six significant digits, ``%g``): ``format_number``.
``caffe train`` logs to stderr (``FLAGS_alsologtostderr``); ``GlogWriter`` writes to a stream, a
file, or both.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

SEVERITIES = {"INFO": "I", "WARNING": "W", "ERROR": "E", "FATAL": "F"}


def format_number(value: float | int | np.generic) -> str:
    """A number as ``std::ostream`` prints it with the default precision (6 significant digits).

    Integers print in full. Floats print like ``%g``: ``0.1``, ``1.42286``, ``1e-05``,
    ``-3.40694e+12``; NaN prints as glibc does, ``nan`` or ``-nan`` by its sign bit; infinities as
    ``inf``/``-inf``. A float32 value is widened to double first, as ``operator<<`` does.
    """
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(value)
    if math.isnan(number):
        return "-nan" if math.copysign(1.0, number) < 0 else "nan"
    return f"{number:g}"


def glog_prefix(
    severity: str = "I",
    when: float | None = None,
    thread_id: int | None = None,
    where: str = "",
    with_year: bool = False,
) -> str:
    """The prefix glog puts before a message, ending in ``"] "``.

    Args:
        severity: ``I``/``W``/``E``/``F`` (or the full name).
        when: a ``time.time()`` value; now when None.
        thread_id: the thread id printed; the calling OS thread's when None.
        where: the ``file:line`` shown (Caffe's source location of the matching message).
        with_year: the newer glog form with a four-digit year (``I20261123``).
    """
    letter = SEVERITIES.get(severity.upper(), severity[:1].upper())
    now = time.time() if when is None else when
    local = time.localtime(now)
    micros = int(round((now - math.floor(now)) * 1e6))
    if micros >= 1_000_000:
        micros = 999_999
    date = time.strftime("%Y%m%d" if with_year else "%m%d", local)
    clock = time.strftime("%H:%M:%S", local)
    tid = threading.get_native_id() if thread_id is None else thread_id
    return f"{letter}{date} {clock}.{micros:06d} {tid:5d} {where or 'caffe_compat'}] "


def file_header(with_year: bool = False, when: float | None = None) -> str:
    """The three lines glog writes at the top of a log file (``Log file created at: ...``)."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(time.time() if when is None else when))
    date = "yyyymmdd" if with_year else "mmdd"
    return (
        f"Log file created at: {stamp}\n"
        f"Running on machine: {socket.gethostname()}\n"
        f"Log line format: [IWEF]{date} hh:mm:ss.uuuuuu threadid file:line] msg\n"
    )


class GlogWriter:
    """Writes Caffe-format log lines to a stream (stderr by default) and/or a file.

    Args:
        stream: where lines go (``sys.stderr`` when not given; None for no stream).
        path: a log file, truncated at open and started with glog's file header (``Log file
            created at: ...``, which dates the month-day prefixes); lines are flushed as written.
        with_year: use the newer glog prefix with the year.
        console: optional function that writes a line to the terminal instead of ``stream``
            (e.g. ``tqdm.write``, so a progress bar is redrawn below the line).
    """

    _DEFAULT = object()

    def __init__(
        self,
        stream: IO[str] | None | object = _DEFAULT,
        path: str | os.PathLike | None = None,
        with_year: bool = False,
        console: Callable[[str], None] | None = None,
    ) -> None:
        self.stream: IO[str] | None = sys.stderr if stream is GlogWriter._DEFAULT else stream  # type: ignore[assignment]
        self.with_year = with_year
        self.console = console
        self.lines: list[str] | None = None
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        if path is not None:
            self._file = Path(path).open("w", encoding="utf-8")
            self._file.write(file_header(with_year))

    # -- writing -------------------------------------------------------------------------------
    def log(self, severity: str, message: str, where: str = "") -> None:
        """Write one message (it may span several lines, as glog prints DebugString dumps)."""
        line = glog_prefix(severity, where=where, with_year=self.with_year) + message
        with self._lock:
            if self.lines is not None:
                self.lines.append(line)
            if self.console is not None:
                self.console(line)
            elif self.stream is not None:
                self.stream.write(line + "\n")
                self.stream.flush()
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()

    def info(self, message: str, where: str = "") -> None:
        self.log("I", message, where)

    def warning(self, message: str, where: str = "") -> None:
        self.log("W", message, where)

    def error(self, message: str, where: str = "") -> None:
        self.log("E", message, where)

    def close(self) -> None:
        """Close the log file (the stream is left open)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # -- bridging Python logging ---------------------------------------------------------------
    def handler(self) -> logging.Handler:
        """A ``logging.Handler`` that writes records through this writer (for the package's own
        ``logging`` messages, e.g. "Ignoring source layer")."""
        writer = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                where = getattr(record, "where", "") or f"{record.filename}:{record.lineno}"
                writer.log(record.levelname, record.getMessage(), where)

        return _Handler(level=logging.INFO)

    @contextmanager
    def capture(self, logger_name: str = "caffe_compat") -> Iterator[None]:
        """Route INFO and above of a Python logger through this writer while the block runs."""
        logger = logging.getLogger(logger_name)
        handler = self.handler()
        saved = (logger.level, logger.propagate)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
