"""Command-line front ends of this package (argument parsing -> one library call).

``COMMANDS`` maps a ``caffe-compat`` subcommand to ``(help, add_arguments(parser), run(args) -> int)``.
"""

from __future__ import annotations

COMMANDS: dict = {}
