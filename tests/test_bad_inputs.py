"""The bad-input corpus (tests/bad_inputs/): every malformed or hostile file gives one clear line.

Each case of ``cases.json`` runs its ``caffe-compat`` command in a fresh copy of ``common/`` and
``cases/<id>/`` (with the links, FIFOs and sparse files of its ``setup`` made here) and must:
exit with status 1; print exactly one ``caffe-compat <command>: error: ...`` line, the last line
of stderr, naming the file and matching the case's expected message; print no traceback; finish
in bounded time (an alarm) and memory (an address-space limit 3 GiB above the process's own, and
the peak resident size growing by less than 1 GiB). The cases run in this process through the
CLI's ``main`` (the ~150 cases take seconds, not the minutes of as many interpreters); a few run
in a real subprocess to check the exit status and stderr of the installed entry point.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from caffe_compat.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))
ENV = {"CAFFE_COMPAT_MEMORY_BUDGET": "2G", "CAFFE_COMPAT_DATA_WORKERS": "0"}
SECONDS = 60
HEADROOM = 3 << 30


def _materialize(case: dict, folder: Path) -> Path:
    work = folder / "work"
    shutil.copytree(CORPUS / "common", work)
    own = CORPUS / "cases" / case["id"]
    if own.is_dir():
        shutil.copytree(own, work, dirs_exist_ok=True)
    for kind, name, *rest in case["setup"]:
        path = work / name
        if path.is_symlink() or path.exists():
            path.unlink()
        if kind == "link":
            os.symlink(rest[0], path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        elif kind == "sparse":
            with open(path, "wb") as handle:
                handle.truncate(rest[0])
        else:
            raise AssertionError(f"unknown setup {kind}")
    return work


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


class _TimedOut(BaseException):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _TimedOut(f"the case ran longer than {SECONDS} s")


def test_corpus_covers_every_format() -> None:
    formats = {case["format"] for case in CASES}
    assert len(CASES) >= 80
    assert formats == {
        "net prototxt",
        "solver prototxt",
        "caffemodel",
        "solverstate",
        "snapshot side file",
        "mean binaryproto",
        "LMDB Datum",
        "image list and images",
        "HDF5 source",
        "pt weights to convert",
        "npz inputs to convert",
    }
    assert len({case["id"] for case in CASES}) == len(CASES)


def test_corpus_is_what_make_corpus_writes() -> None:
    """The committed manifest and case files are the generator's output (regenerate after a change)."""
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cases, files = module.build()
    assert cases == CASES
    for case_id, case_files in files.items():
        for name, content in case_files.items():
            assert (CORPUS / "cases" / case_id / name).read_bytes() == content, f"{case_id}/{name}"


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_bad_input(case: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    work = _materialize(case, tmp_path)
    monkeypatch.chdir(work)
    for key, value in {**ENV, **case["env"]}.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + HEADROOM
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS)
    resource.setrlimit(
        resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard)
    )
    try:
        status = main(case["argv"])
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    err = capsys.readouterr().err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("caffe-compat ")]
    assert status == 1, err[-2000:]
    assert "Traceback" not in err
    assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    message = errors[0]
    assert message.startswith(f"caffe-compat {case['argv'][0]}: error: "), message
    assert case["names"] in message, message
    assert re.search(case["expect"], message), message
    assert grown < 1 << 30, f"peak resident memory grew by {grown >> 20} MiB"
    for name in case["absent"]:
        assert not (work / name).exists(), f"{name} was created: code ran from data"


@pytest.mark.parametrize("case_id", ["net-huge-input", "side-pickle-runs-code", "caffemodel-truncated"])
def test_bad_input_through_the_real_cli(case_id: str, tmp_path: Path) -> None:
    """The entry point itself: exit status 1, one stderr line, no traceback, under rlimits."""
    case = next(c for c in CASES if c["id"] == case_id)
    work = _materialize(case, tmp_path)
    env = {**os.environ, **ENV, **case["env"], "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    result = subprocess.run(
        [sys.executable, "-m", "caffe_compat.cli", *case["argv"]],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limits,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"caffe-compat {case['argv'][0]}: error: ") and re.search(case["expect"], last), (
        last
    )
    for name in case["absent"]:
        assert not (work / name).exists()
