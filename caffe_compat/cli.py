"""``caffe-compat``: the command-line tool, mirroring Caffe's ``caffe`` tool and its helpers.

Subcommands are thin: they parse arguments and make one library call. Caffe's single-dash flag
spelling (``-model x``) is accepted as well as ``--model x``. Errors print one line, no traceback,
and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Callable, Sequence

from caffe_compat.errors import CaffeCompatError

_SINGLE_DASH_LONG = re.compile(r"^-[A-Za-z][A-Za-z0-9_-]+(=.*)?$")

# name -> (help, add_arguments, run)
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def normalize_flags(argv: Sequence[str]) -> list[str]:
    """Turn Caffe's ``-flag`` spelling into ``--flag`` (single letters and numbers are left alone)."""
    return [f"-{arg}" if _SINGLE_DASH_LONG.match(arg) else arg for arg in argv]


def _add_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a net or solver prototxt, .caffemodel, .solverstate or .binaryproto")
    parser.add_argument(
        "--phase",
        default="TEST",
        type=str.upper,
        choices=("TRAIN", "TEST"),
        help="the phase whose layers are listed and shaped (default TEST)",
    )
    parser.add_argument("--level", type=int, default=0, help="the NetState level")
    parser.add_argument("--stage", default="", help="NetState stages, separated by ','")
    parser.add_argument(
        "--input-shape",
        "--input_shape",
        dest="input_shape",
        action="append",
        default=[],
        metavar="TOP=N,C,H,W",
        help="shape of an input or data layer top whose source is not at hand, e.g. data=32,3,112,96 "
        "(repeatable; a data layer's label tops get N)",
    )


def _run_inspect(args: argparse.Namespace) -> int:
    from caffe_compat.summary import summarize
    from converters.convert import parse_shape

    shapes = dict(parse_shape(text) for text in args.input_shape)
    stages = [s for s in args.stage.split(",") if s]
    print(summarize(args.file, phase=args.phase, level=args.level, stages=stages, input_shapes=shapes))
    return 0


# Modules holding subcommand front ends; each defines COMMANDS: name -> (help, add_arguments, run).
FRONT_ENDS = (
    "converters.upgrade",
    "converters.convert",
    "caffe_compat.solver.commands",
    "caffe_compat.data.commands",
    "caffe_compat.log.commands",
    "caffe_compat.eval.commands",
    "caffe_compat.demo",
    "caffe_compat.pycaffe.commands",
)


def _commands() -> dict[str, Command]:
    commands: dict[str, Command] = {
        "inspect": (
            "summarize a prototxt, solver, caffemodel, solverstate or mean file",
            _add_inspect,
            _run_inspect,
        ),
    }
    for module_name in FRONT_ENDS:
        for name, command in importlib.import_module(module_name).COMMANDS.items():
            if name in commands:
                raise RuntimeError(f"subcommand '{name}' is defined twice (second in {module_name})")
            commands[name] = command
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caffe-compat", description="Run original Caffe models and training configs on PyTorch."
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log details (INFO level)")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it registers custom layer types with @caffe_compat.layers.register)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in _commands().items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command_parser)
        command_parser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``caffe-compat`` console script."""
    argv = normalize_flags(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        for module in args.plugin:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise CaffeCompatError(f"cannot import plugin module '{module}': {exc}") from None
        return int(args.run(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except CaffeCompatError as exc:
        print(f"caffe-compat {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"caffe-compat {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"caffe-compat {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            f"caffe-compat {args.command}: error: out of memory (lower CAFFE_COMPAT_MEMORY_BUDGET "
            "so that oversized inputs are refused before they are allocated)",
            file=sys.stderr,
        )
        return 1
    except RuntimeError as exc:
        # torch's SIGCHLD handler raises this wherever the main thread is when a worker dies
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not first.startswith("DataLoader worker"):
            raise
        print(f"caffe-compat {args.command}: error: a data worker process died ({first})", file=sys.stderr)
        return 1


def console_main() -> int:
    """The ``caffe-compat`` process: :func:`main` with freed activation memory kept for reuse
    (``caffe_compat.net.allocator``: a deploy net's forward pass at batch 100 ~1.45x faster).
    Not done in :func:`main`, which callers may run inside their own process."""
    from caffe_compat.net.allocator import keep_freed_memory

    keep_freed_memory()
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
