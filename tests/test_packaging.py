"""Set-up contracts: .ci/run runs the README's test command; the torch and protobuf pins."""

from __future__ import annotations

import re
from pathlib import Path

import google.protobuf

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(commands) == 1
    assert commands[0].strip() in readme
    assert commands[0].startswith("pip install torch==2.13.0 && ")


def test_setup_pins_a_torch_range_that_2_13_0_satisfies_and_no_newer_release() -> None:
    setup = (ROOT / "setup.py").read_text()
    low, high = re.search(r'"torch>=([\d.]+),<([\d.]+)"', setup).groups()
    version = (2, 13, 0)
    assert tuple(int(x) for x in low.split(".")) <= version < tuple(int(x) for x in high.split("."))
    assert high == "2.14"


def test_protobuf_pin_admits_the_runtime_and_the_generated_code() -> None:
    setup = (ROOT / "setup.py").read_text()
    low, high = re.search(r'"protobuf>=([\d.]+),<(\d+)"', setup).groups()
    generated = (ROOT / "caffe_compat" / "proto" / "caffe_pb2.py").read_text()
    gencode = re.search(r"Protobuf Python Version: ([\d.]+)", generated).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) >= as_tuple(gencode)
    assert as_tuple(low) <= as_tuple(google.protobuf.__version__) < (int(high),)
