"""Run Caffe's own pycaffe test suite against caffe-compat's ``caffe`` alias.

``python -m caffe_compat.pycaffe.bvlc_tests CAFFE_SOURCE_DIR`` copies
``CAFFE_SOURCE_DIR/python/caffe/test/*.py`` unchanged into a temporary copy of Caffe's source
layout (with the ``*.prototxt`` files of ``models/`` and ``examples/``, which ``test_draw.py``
walks), runs them with pytest and ``PYTHONPATH=$(caffe-compat pycaffe-path)``, and prints a
pass/fail table per test file and ``N passed of M``. Caffe's own ``caffe`` package is not copied,
so ``import caffe`` is caffe-compat's. The exit status is 0 only if every test passed.

The suite needs ``pytest`` and ``six`` (Caffe's tests import it); ``test_draw.py`` needs ``pydot``
and Graphviz's ``dot`` program. Works with BVLC/caffe and happynear/caffe-windows checkouts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from pathlib import Path

import caffe_compat
from caffe_compat.pycaffe import alias_path


def prepare_layout(source: Path, target: Path) -> Path:
    """Copy the test files and the prototxts of ``models``/``examples``; returns the test folder."""
    tests = sorted((source / "python" / "caffe" / "test").glob("*.py"))
    if not tests:
        raise SystemExit(f"no tests found: {source / 'python' / 'caffe' / 'test'} has no *.py files")
    test_dir = target / "python" / "caffe" / "test"
    test_dir.mkdir(parents=True)
    for path in tests:
        shutil.copy2(path, test_dir / path.name)
    for folder in ("models", "examples"):
        (target / folder).mkdir()
        root = source / folder
        if not root.is_dir():
            continue
        for path in root.rglob("*.prototxt"):
            destination = target / folder / path.relative_to(root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    return test_dir


def parse_report(report: Path) -> OrderedDict[str, dict[str, int]]:
    """Per test file: passed, failed, errors, skipped (from pytest's JUnit XML)."""
    table: OrderedDict[str, dict[str, int]] = OrderedDict()
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "?").split(".")[0] + ".py"
        row = table.setdefault(module, {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
        tags = {child.tag for child in case}
        if "failure" in tags:
            row["failed"] += 1
        elif "error" in tags:
            row["errors"] += 1
        elif "skipped" in tags:
            row["skipped"] += 1
        else:
            row["passed"] += 1
    return OrderedDict(sorted(table.items()))


def format_table(table: OrderedDict[str, dict[str, int]]) -> str:
    columns = ("passed", "failed", "errors", "skipped")
    width = max([len("test file"), *(len(name) for name in table)])
    lines = [f"{'test file':<{width}}  " + "  ".join(f"{c:>7}" for c in columns)]
    for name, row in table.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{row[c]:>7}" for c in columns))
    passed = sum(row["passed"] for row in table.values())
    total = sum(sum(row.values()) for row in table.values())
    lines.append(f"{passed} passed of {total}")
    return "\n".join(lines)


def run(source: Path, keep: Path | None = None, pytest_args: list[str] | None = None) -> tuple[int, str]:
    """Run the suite; returns (exit status, the table)."""
    work = Path(tempfile.mkdtemp(prefix="bvlc_pycaffe_")) if keep is None else keep
    try:
        test_dir = prepare_layout(source, work)
        report = work / "report.xml"
        package_root = Path(caffe_compat.__file__).resolve().parent.parent
        env = dict(os.environ)
        paths = [str(alias_path()), str(package_root), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        command = [
            sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
            "-W", "ignore::DeprecationWarning", f"--junitxml={report}", *(pytest_args or []), ".",
        ]  # fmt: skip
        completed = subprocess.run(command, cwd=test_dir, env=env, capture_output=True, text=True)
        if not report.is_file():
            return 2, completed.stdout + completed.stderr
        table = parse_report(report)
        text = format_table(table)
        failed = any(row["failed"] or row["errors"] or row["skipped"] for row in table.values())
        if failed:
            text = completed.stdout[-6000:] + "\n" + text
        return (1 if failed or not table else 0), text
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caffe_source_dir", type=Path, help="a Caffe checkout (holding python/caffe/test)")
    parser.add_argument(
        "--keep", type=Path, default=None, help="build the layout in this (new) folder and keep it"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    status, text = run(args.caffe_source_dir.resolve(), args.keep, args.pytest_args)
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
