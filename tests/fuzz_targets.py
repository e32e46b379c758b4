"""Fuzz targets over every reader of untrusted files, and a runner for long fuzzing sessions.

A target takes the bytes of one file and reads them the way the CLI does; the only exception it
may raise is ``CaffeCompatError`` (a one-line message), in bounded memory (a 256 MiB budget). The
inputs are the corpus's good files (``tests/bad_inputs/common``) and a few more, mutated by byte
flips, insertions, deletions, duplications, truncation and (for text) Caffe's own tokens, plus
plain random bytes.

``tests/test_fuzz_parsers.py`` runs every target for a fixed, deterministic number of examples in
the normal test command. For a long session (random seeds, a time budget):

    python tests/fuzz_targets.py --seconds 600 [--target caffemodel]

which prints the examples run per target and saves any crashing input under
``tests/fuzz_crashes/<target>-<sha1>.bin``: each becomes a regression case of
``test_fuzz_parsers.py`` (``REGRESSIONS``) once fixed. HDF5 files are not fuzzed: a malformed
file can crash the HDF5 C library itself, beyond what Python can catch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from caffe_compat.errors import CaffeCompatError  # noqa: E402
from caffe_compat.net.budget import memory_budget_limit  # noqa: E402
from caffe_compat.proto import caffe_pb2  # noqa: E402

COMMON = HERE / "bad_inputs" / "common"
BUDGET = 256 << 20
TOKENS = [
    b"{",
    b"}",
    b":",
    b'"',
    b"\n",
    b"layer {",
    b'type: "Convolution"',
    b'type: "InnerProduct"',
    b'type: "Reshape"',
    b"dim: -1",
    b"dim: 0",
    b"dim: 99999999999",
    b"num_output: 2147483647",
    b"kernel_size: 0",
    b"stride: 0",
    b"axis: -9",
    b'bottom: "data"',
    b'top: "data"',
    b"include { phase: TEST }",
    b"layers { type: CONVOLUTION }",
    b"input_dim: 3",
    b"\xff",
    b"1e400",
    b"nan",
]
V1_NET = b"""name: "legacy"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 5
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "pool" top: "ip" inner_product_param { num_output: 3 } }
"""


class Unexpected(Exception):
    """A target raised something other than a one-line CaffeCompatError."""


def _scratch() -> Path:
    folder = Path(tempfile.gettempdir()) / f"caffe_compat_fuzz_{os.getpid()}"
    folder.mkdir(exist_ok=True)
    return folder


def _as_file(data: bytes, name: str) -> Path:
    path = _scratch() / name
    path.write_bytes(data)
    return path


def _expect_clean(read: Callable[[], object]) -> None:
    try:
        with memory_budget_limit(BUDGET), contextlib.redirect_stderr(io.StringIO()):
            read()
    except CaffeCompatError as exc:
        if "\n" in str(exc):
            raise Unexpected(f"a multi-line message: {str(exc)[:300]!r}") from None


# --------------------------------------------------------------------------------------------
# targets


@functools.cache
def _good_net() -> object:
    from caffe_compat.net.net import Net

    return Net(COMMON / "good_net.prototxt", phase="TEST")


@functools.cache
def _solver() -> object:
    from caffe_compat.log.glog import GlogWriter
    from caffe_compat.solver.solver import Solver

    cwd = os.getcwd()
    os.chdir(COMMON)
    try:
        return Solver("solver.prototxt", log=GlogWriter(stream=None))
    finally:
        os.chdir(cwd)


def net_prototxt(data: bytes) -> None:
    from caffe_compat.net.net import Net
    from caffe_compat.proto.io import read_net

    path = _as_file(data, "net.prototxt")
    _expect_clean(lambda: Net(read_net(path), phase="TEST"))


def solver_prototxt(data: bytes) -> None:
    from caffe_compat.proto.io import read_solver

    path = _as_file(data, "solver.prototxt")
    _expect_clean(lambda: read_solver(path))


def caffemodel(data: bytes) -> None:
    from caffe_compat.proto.caffemodel_index import CaffemodelIndex
    from caffe_compat.proto.io import read_caffemodel

    path = _as_file(data, "w.caffemodel")
    _expect_clean(lambda: read_caffemodel(path))
    _expect_clean(lambda: CaffemodelIndex(path))
    _expect_clean(lambda: _good_net().copy_from(path))


def solverstate(data: bytes) -> None:
    from caffe_compat.solver import snapshot as snap

    path = _as_file(data, "s.solverstate")
    _expect_clean(lambda: snap.read_state(path))


def solverstate_restore(data: bytes) -> None:
    """A solverstate restored into the corpus's solver (its weights file is the corpus's)."""
    path = COMMON / f".fuzz_{os.getpid()}.solverstate"
    path.write_bytes(data)
    try:
        _expect_clean(lambda: _solver().restore(path))
    finally:
        path.unlink()


def binaryproto(data: bytes) -> None:
    from caffe_compat.proto.io import read_blobproto

    path = _as_file(data, "mean.binaryproto")
    _expect_clean(lambda: read_blobproto(path))


def side_file(data: bytes) -> None:
    from caffe_compat.solver import snapshot as snap

    path = _as_file(data, "s.caffe_compat.pt")
    _expect_clean(lambda: snap.read_side_file(path))


def datum(data: bytes) -> None:
    from caffe_compat.data.images import datum_to_array
    from caffe_compat.data.lmdb_source import parse_datum

    _expect_clean(lambda: datum_to_array(parse_datum(data, "record"), what="record"))


def image(data: bytes) -> None:
    from caffe_compat.data.images import decode_image

    _expect_clean(lambda: decode_image(data, True, what="image"))


def npz_inputs(data: bytes) -> None:
    from converters.convert import _load_inputs

    path = _as_file(data, "inputs.npz")
    _expect_clean(lambda: _load_inputs(str(path)))


# --------------------------------------------------------------------------------------------
# seeds and mutations


def _encoded(extension: str) -> bytes:
    image = (np.arange(7 * 5 * 3, dtype=np.uint8) * 7).reshape(7, 5, 3)
    return cv2.imencode(extension, image)[1].tobytes()


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, data=np.ones((2, 3, 8, 8), np.float32))
    return buffer.getvalue()


@functools.cache
def seeds() -> dict[str, list[bytes]]:
    def common(name: str) -> bytes:
        return (COMMON / name).read_bytes()

    raw = caffe_pb2.Datum(channels=3, height=4, width=5, data=bytes(range(60)), label=2)
    encoded = caffe_pb2.Datum(encoded=True, data=_encoded(".png"), label=1)
    mean = caffe_pb2.BlobProto(num=1, channels=3, height=8, width=8)
    mean.data.extend([0.5] * 192)
    return {
        "net_prototxt": [common("good_net.prototxt"), common("train_net.prototxt"), V1_NET],
        "solver_prototxt": [common("solver.prototxt")],
        "caffemodel": [common("good.caffemodel"), common("snap_iter_1.caffemodel")],
        "solverstate": [common("snap_iter_1.solverstate")],
        "solverstate_restore": [common("snap_iter_1.solverstate")],
        "binaryproto": [mean.SerializeToString()],
        "side_file": [common("snap_iter_1.caffe_compat.pt")],
        "datum": [raw.SerializeToString(), encoded.SerializeToString()],
        "image": [_encoded(".png"), _encoded(".jpg"), _encoded(".bmp")],
        "npz_inputs": [_npz()],
    }


TARGETS: dict[str, Callable[[bytes], None]] = {
    "net_prototxt": net_prototxt,
    "solver_prototxt": solver_prototxt,
    "caffemodel": caffemodel,
    "solverstate": solverstate,
    "solverstate_restore": solverstate_restore,
    "binaryproto": binaryproto,
    "side_file": side_file,
    "datum": datum,
    "image": image,
    "npz_inputs": npz_inputs,
}
TEXT_TARGETS = {"net_prototxt", "solver_prototxt"}


def _apply(seed: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for op, where, value in edits:
        at = where % (len(data) + 1)
        if op == "flip" and data:
            at = where % len(data)
            data[at] ^= value[0] or 1
        elif op == "insert":
            data[at:at] = value
        elif op == "delete":
            del data[at : at + len(value)]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[at : at + 16 * len(value)]
        elif op == "varint" and data:  # a huge length or count
            data[at:at] = b"\xff\xff\xff\xff\x0f"
    return bytes(data)


def inputs(target: str) -> st.SearchStrategy[bytes]:
    """Mutations of the target's seeds, and random bytes."""
    ops = ["flip", "flip", "insert", "delete", "truncate", "duplicate", "varint"]
    values = st.binary(min_size=1, max_size=8)
    if target in TEXT_TARGETS:
        values = st.one_of(values, st.sampled_from(TOKENS))
    edits = st.lists(st.tuples(st.sampled_from(ops), st.integers(0, 1 << 20), values), min_size=1, max_size=6)
    mutated = st.tuples(st.sampled_from(seeds()[target]), edits).map(lambda pair: _apply(*pair))
    return st.one_of(mutated, mutated, mutated, st.binary(max_size=512))


# --------------------------------------------------------------------------------------------
# long sessions


def run_for(target: str, seconds: float) -> tuple[int, list[bytes]]:
    """Fuzz ``target`` for about ``seconds`` with random seeds; (examples run, crashing inputs)."""
    from hypothesis import given, settings

    count = [0]
    crashes: list[bytes] = []

    @settings(max_examples=200, deadline=None, database=None, derandomize=False)
    @given(inputs(target))
    def batch(data: bytes) -> None:
        count[0] += 1
        try:
            TARGETS[target](data)
        except Exception:
            crashes.append(data)
            raise

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            batch()
        except Exception:  # noqa: BLE001  (reported below; the shrunk input was saved)
            pass
    return count[0], crashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="budget per target")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="only these targets")
    args = parser.parse_args()
    out = HERE / "fuzz_crashes"
    print(f"{'target':<22}{'examples':>10}{'crashes':>9}")
    for target in args.target or sorted(TARGETS):
        count, crashes = run_for(target, args.seconds)
        print(f"{target:<22}{count:>10}{len(crashes):>9}")
        for data in crashes[-1:]:  # the shrunk one
            out.mkdir(exist_ok=True)
            path = out / f"{target}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
            path.write_bytes(data)
            print(f"  saved {path}")


if __name__ == "__main__":
    main()
