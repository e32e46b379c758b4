"""File-level upgrade of legacy nets, for ``caffe-compat upgrade`` (Caffe's upgrade_net_proto_* tools)."""

from __future__ import annotations

from pathlib import Path

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import (
    PathLike,
    decode_message,
    parse_text,
    read_binary,
    write_caffemodel,
    write_text,
)
from caffe_compat.proto.upgrade import net_needs_upgrade, upgrade_net


def is_binary_file(path: PathLike) -> bool:
    """True when the file is not UTF-8 text (a binary protobuf message)."""
    head = Path(path).read_bytes()[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in head


def upgrade_file(source: PathLike, target: PathLike) -> tuple[str, bool]:
    """Upgrade a net file to V2, writing the same kind (text or binary). Returns (kind, changed)."""
    if not Path(source).is_file():
        raise CaffeCompatError(f"net file not found: {source}")
    if is_binary_file(source):
        net = decode_message(
            read_binary(source, "caffemodel"), caffe_pb2.NetParameter(), source, "caffemodel"
        )
        changed = net_needs_upgrade(net)
        write_caffemodel(upgrade_net(net, str(source)) if changed else net, target)
        return "binary caffemodel", changed
    net = parse_text(Path(source).read_text(encoding="utf-8"), caffe_pb2.NetParameter(), str(source))
    changed = net_needs_upgrade(net)
    write_text(upgrade_net(net, str(source)) if changed else net, target)
    return "text prototxt", changed
