"""Command-line front ends of this package (argument parsing -> one library call).

``COMMANDS`` maps a ``caffe-compat`` subcommand to ``(help, add_arguments(parser), run(args) -> int)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_parse(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", help="a Caffe training log (glog output of `caffe train`, ours or Caffe's)")
    parser.add_argument(
        "--out-dir",
        default=".",
        help="folder for <log name>.train and <log name>.test (default: the current folder; created "
        "when missing)",
    )
    parser.add_argument("--delimiter", default=",", help="column delimiter (default: ',')")


def _run_parse(args: argparse.Namespace) -> int:
    from caffe_compat.log.parse import parse_log, save_csv

    train_rows, test_rows = parse_log(args.log)
    for path in save_csv(args.log, args.out_dir, train_rows, test_rows, delimiter=args.delimiter):
        rows = train_rows if path.suffix == ".train" else test_rows
        print(f"wrote {path} ({len(rows)} rows)")
    return 0


def _add_plot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", metavar="LOG", help="one or more training logs, overlaid")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="the PNG to write (e.g. curves.png; missing folders are created)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=None,
        help="legend label of each log, in order (default: file names)",
    )


def _run_plot(args: argparse.Namespace) -> int:
    from caffe_compat.log.plot import plot_logs
    from caffe_compat.proto.io import ensure_output_folder

    ensure_output_folder(Path(args.output).parent)
    plot_logs(args.logs, args.output, labels=args.label)
    print(f"wrote {args.output}")
    return 0


def _add_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="first training log (e.g. real Caffe's)")
    parser.add_argument("b", metavar="B", help="second training log (e.g. ours)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default: 1e-4)")
    parser.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default: 0)")


def _run_compare(args: argparse.Namespace) -> int:
    from caffe_compat.log.compare import compare_logs, format_comparison

    result = compare_logs(args.a, args.b, rtol=args.rtol, atol=args.atol)
    print(format_comparison(result, Path(args.a).name, Path(args.b).name))
    return 2 if result.diverged else 0


COMMANDS: dict = {
    "parse-log": (
        "parse a Caffe training log into CSV tables (tools/extra/parse_log.py's format)",
        _add_parse,
        _run_parse,
    ),
    "plot-log": (
        "plot loss, test outputs and lr of one or more training logs into a PNG",
        _add_plot,
        _run_plot,
    ),
    "compare-logs": (
        "compare two training logs iteration by iteration (exit status 2 when they diverge beyond the "
        "tolerance)",
        _add_compare,
        _run_compare,
    ),
}
