"""Thin command-line front ends for format conversions: argument parsing -> one library call.

Each module exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; ``caffe_compat.cli``
mounts them as ``caffe-compat`` subcommands.
"""
