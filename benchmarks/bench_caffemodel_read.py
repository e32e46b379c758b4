"""Reading a 100 MB caffemodel: caffe_compat.read_caffemodel against the bare protobuf parse.

Target (foundation issue): our read takes at most 1.5x the bare parse of the same file. Both are
timed side by side, interleaved, in one process; the table prints the medians and their ratio,
plus the time to turn every blob into a numpy array (what loading weights into a net costs).

    python benchmarks/bench_caffemodel_read.py [--mb 100] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from caffe_compat import read_caffemodel, write_caffemodel
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import array_to_blob, blob_to_array


def make_model(path: Path, megabytes: int) -> None:
    """A net of InnerProduct layers holding ``megabytes`` of float32 weights."""
    net = caffe_pb2.NetParameter(name="bench")
    rng = np.random.default_rng(0)
    per_layer = 2500 * 1000
    layers = max(1, megabytes * 1_000_000 // (per_layer * 4))
    for i in range(layers):
        layer = net.layer.add(name=f"fc{i}", type="InnerProduct", bottom=[f"x{i}"], top=[f"x{i + 1}"])
        layer.inner_product_param.num_output = 2500
        array_to_blob(rng.standard_normal((2500, 1000), dtype=np.float32), layer.blobs.add())
        array_to_blob(rng.standard_normal(2500, dtype=np.float32), layer.blobs.add())
    write_caffemodel(net, path)


def bare_parse(path: Path) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.caffemodel"
        make_model(path, args.mb)
        size_mb = path.stat().st_size / 1e6
        bare_parse(path), read_caffemodel(path)  # warm the page cache
        bare, ours, arrays = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            bare_parse(path)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            net = read_caffemodel(path)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            for layer in net.layer:
                for blob in layer.blobs:
                    blob_to_array(blob)
            arrays.append(time.perf_counter() - start)
    b, o, a = statistics.median(bare), statistics.median(ours), statistics.median(arrays)
    print(f"caffemodel of {size_mb:.1f} MB, median of {args.repeats} interleaved runs")
    print(f"{'what':<40}{'seconds':>10}{'ratio':>10}")
    print(f"{'bare protobuf NetParameter parse':<40}{b:>10.4f}{1.0:>10.2f}")
    print(f"{'caffe_compat.read_caffemodel':<40}{o:>10.4f}{o / b:>10.2f}")
    print(f"{'  + every blob to numpy':<40}{a:>10.4f}{'':>10}")
    print(f"target: read_caffemodel <= 1.5x bare parse: {'met' if o <= 1.5 * b else 'NOT met'}")


if __name__ == "__main__":
    main()
