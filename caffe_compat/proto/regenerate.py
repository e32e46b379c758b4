"""Regenerate ``caffe_pb2.py`` from ``caffe.proto``.

Run ``python -m caffe_compat.proto.regenerate`` after editing the schema (needs the
``grpcio-tools`` package, which bundles ``protoc``). ``--check`` exits non-zero when the
committed ``caffe_pb2.py`` differs from what the schema generates (used by the test suite).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = PROTO_DIR / "caffe.proto"
GENERATED_FILE = PROTO_DIR / "caffe_pb2.py"


def generate_source() -> str:
    """Run the bundled protoc on caffe.proto and return the generated Python source."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("regenerating caffe_pb2.py needs grpcio-tools: pip install grpcio-tools") from exc
    with tempfile.TemporaryDirectory() as out_dir:
        status = protoc.main(
            ["protoc", f"--proto_path={PROTO_DIR}", f"--python_out={out_dir}", str(PROTO_FILE)]
        )
        if status != 0:
            raise SystemExit(f"protoc failed on {PROTO_FILE} (exit status {status})")
        return (Path(out_dir) / "caffe_pb2.py").read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args(argv)
    source = generate_source()
    if args.check:
        current = GENERATED_FILE.read_text() if GENERATED_FILE.exists() else ""
        if current != source:
            print(f"{GENERATED_FILE} is stale: run python -m caffe_compat.proto.regenerate")
            return 1
        print(f"{GENERATED_FILE} is current")
        return 0
    tmp = GENERATED_FILE.with_suffix(".py.tmp")
    tmp.write_text(source)
    tmp.replace(GENERATED_FILE)
    print(f"wrote {GENERATED_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
