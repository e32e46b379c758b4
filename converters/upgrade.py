"""``caffe-compat upgrade IN OUT``: write the V2 form of a legacy (V0/V1) net, text or binary.

Like Caffe's ``upgrade_net_proto_text`` and ``upgrade_net_proto_binary`` tools; the output kind
follows the input's.
"""

from __future__ import annotations

import argparse

HELP = "write the V2 form of a legacy net prototxt or caffemodel (like upgrade_net_proto_text/binary)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="legacy net: .prototxt text or binary .caffemodel")
    parser.add_argument("output", help="where to write the upgraded net (same kind as the input)")


def run(args: argparse.Namespace) -> int:
    from caffe_compat.proto.convert import upgrade_file

    kind, changed = upgrade_file(args.input, args.output)
    note = "upgraded" if changed else "already in the current format; copied"
    print(f"{args.input}: {note} -> {args.output} ({kind})")
    return 0


COMMANDS = {"upgrade": (HELP, add_arguments, run)}
