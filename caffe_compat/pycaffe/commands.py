"""``caffe-compat pycaffe-path``: the folder to put on PYTHONPATH so ``import caffe`` gives
caffe-compat's pycaffe (``PYTHONPATH=$(caffe-compat pycaffe-path) python script.py``)."""

from __future__ import annotations

import argparse


def _add(parser: argparse.ArgumentParser) -> None:
    del parser  # no arguments


def _run(args: argparse.Namespace) -> int:
    from caffe_compat.pycaffe import alias_path

    print(alias_path())
    return 0


COMMANDS: dict = {
    "pycaffe-path": (
        "print the folder holding the `caffe` alias package (put it on PYTHONPATH to run pycaffe scripts)",
        _add,
        _run,
    ),
}
