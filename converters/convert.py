"""``caffe-compat convert MODEL.prototxt WEIGHTS --to FORMAT -o OUT``: Caffe nets to PyTorch and back.

Formats: pt (state_dict + prototxt), safetensors, py (standalone PyTorch source + weights), onnx,
torchscript, caffemodel. Every conversion runs the source net and the converted artifact on the
same inputs and prints each output's max absolute and relative error; above ``--tol`` it exits
non-zero and writes nothing (``--no-verify`` skips the check). The traced formats (py, onnx,
torchscript) take any batch size unless ``--batch N`` fixes one; ``-o`` may name a folder.
"""

from __future__ import annotations

import argparse

HELP = (
    "convert a Caffe net and its weights to pt, safetensors, py, onnx, torchscript or caffemodel (verified)"
)


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=d0,d1,...`` -> (name, dims)."""
    from caffe_compat.export.errors import ExportError

    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise ExportError(f"--input-shape {text!r}: expected NAME=N,C,H,W with positive integers")
    return name, shape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from caffe_compat.export.convert import FORMATS
    from caffe_compat.export.verify import DEFAULT_TOL

    parser.add_argument("model", help="the net: a TRAIN/TEST or deploy .prototxt")
    parser.add_argument(
        "weights", help="its weights: .caffemodel, or a .pt/.safetensors state dict made by --to pt"
    )
    parser.add_argument(
        "--to",
        required=True,
        choices=sorted(FORMATS),
        metavar="FORMAT",
        help="; ".join(f"{name}: {text}" for name, text in FORMATS.items()),
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="output file (py: NAME.py, weights go to NAME.pt), or a folder (created when missing) to "
        "write net.py/net.pt (py) or <prototxt name>.<format extension> in",
    )
    parser.add_argument(
        "--deploy",
        action="store_true",
        help="convert the deploy form: data layers become Input layers, loss/accuracy layers and label "
        "consumers are dropped (always done for py, onnx, torchscript)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        help="fix the batch size of every input (default: py, onnx and torchscript take any batch size, "
        "and conversions are verified at batch 4)",
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=N,C,H,W",
        help="shape of an input blob (e.g. a data layer's top whose source is not at hand); repeatable",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="do not run and compare the converted artifact"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=DEFAULT_TOL,
        help=f"largest relative error accepted (default {DEFAULT_TOL:g})",
    )
    parser.add_argument("--inputs", metavar="NPZ", help="verification inputs by blob name (default: random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the newest the exporter supports)")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="accept weights lacking some of the net's layers (those keep their fillers' values)",
    )


def _load_inputs(path: str) -> dict:
    """The arrays of a ``.npz`` (no pickled objects), each header's declared size checked against
    the memory budget before its data is read."""
    import math
    import zipfile

    import numpy as np
    import torch

    from caffe_compat.errors import CaffeCompatError, summary_line
    from caffe_compat.export.errors import ExportError
    from caffe_compat.net.budget import check_bytes
    from caffe_compat.proto.io import checked_file

    try:
        checked_file(path, "--inputs")
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(handle)
                key = member[:-4] if member.endswith(".npy") else member
                what = f"--inputs {path}: array '{key}' (shape {list(shape)})"
                check_bytes(math.prod(shape) * max(dtype.itemsize, 4), what)
        with np.load(path) as data:
            return {key: torch.from_numpy(np.asarray(data[key], dtype=np.float32)) for key in data.files}
    except CaffeCompatError as exc:
        raise ExportError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001  (zipfile, zlib and numpy raise many kinds for corrupt files)
        raise ExportError(
            f"--inputs {path}: cannot read it as a .npz of arrays ({summary_line(exc)})"
        ) from None


def run(args: argparse.Namespace) -> int:
    from caffe_compat.export.convert import convert

    shapes = dict(parse_shape(text) for text in args.input_shape)
    result = convert(
        args.model,
        args.weights,
        args.to,
        args.output,
        deploy=args.deploy,
        input_shapes=shapes,
        batch=args.batch,
        inputs=_load_inputs(args.inputs) if args.inputs else None,
        verify=not args.no_verify,
        tol=args.tol,
        opset=args.opset,
        allow_missing=args.allow_missing,
        progress=True,
        seed=args.seed,
        log=print,
    )
    total = sum(result.seconds.values())
    written = ", ".join(str(path) for path in result.outputs)
    checked = "verified" if result.verification is not None else "not verified (--no-verify)"
    print(f"wrote {written} ({result.format}, {checked}) in {total:.1f} s")
    return 0


COMMANDS = {"convert": (HELP, add_arguments, run)}
