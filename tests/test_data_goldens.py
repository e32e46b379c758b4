"""Acceptance: every data golden (real Caffe's ImageData/Data layers, tests/goldens/data/<case>)
reproduced batch for batch, run with the case directory as the working directory.

Labels must be exact; data within 1e-4 after scaling, except that pixels of the JPEG image may
differ by one grey level (times ``scale``) where JPEG decoders round differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import caffe_compat as cc

DATA = Path(__file__).parent / "goldens" / "data"
CASES = sorted(p.name for p in DATA.iterdir() if (p / "batches.npz").exists())
NAMES = [line.rsplit(" ", 1)[0] for line in (DATA / "list.txt").read_text().splitlines() if line.strip()]


def _jpeg_rows(net: cc.Net, batch_index: int) -> np.ndarray:
    """Which items of a batch come from the JPEG image (list order: the goldens do not shuffle;
    the LMDB holds the list's images in list order)."""
    batch = next(iter(net.layers.values())).batch_size
    positions = [(batch_index * batch + i) % len(NAMES) for i in range(batch)]
    return np.array([NAMES[p].lower().endswith((".jpg", ".jpeg")) for p in positions])


def _scale(net: cc.Net) -> float:
    return next(iter(net.layer_params.values())).transform_param.scale


@pytest.mark.parametrize("case", CASES)
def test_golden_batches(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = DATA / case
    monkeypatch.chdir(folder)
    net = cc.Net("net.prototxt", phase="TEST")
    expected = np.load("batches.npz")
    tolerance = 1e-4
    for k in range(3):
        net()
        data, label = net.blobs["data"].numpy(), net.blobs["label"].numpy()
        want_data, want_label = expected[f"batch{k}/data"], expected[f"batch{k}/label"]
        np.testing.assert_array_equal(label, want_label)
        assert data.shape == want_data.shape and data.dtype == np.float32
        error = np.abs(data.astype(np.float64) - want_data)
        allowed = np.full(error.shape, tolerance)
        allowed[_jpeg_rows(net, k)] = tolerance + abs(_scale(net)) * 1.0
        assert (error <= allowed).all(), f"{case} batch {k}: max error {error.max()}"


@pytest.mark.parametrize("workers", [0, 2])
def test_golden_batches_do_not_depend_on_the_worker_count(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(DATA / "imagedata_bgr_means_crop")
    net = cc.Net("net.prototxt", phase="TEST")
    net.layers["data"].configure_loading(num_workers=workers, prefetch=2)
    expected = np.load("batches.npz")
    for k in range(3):
        net()
        np.testing.assert_array_equal(net.blobs["data"].numpy(), expected[f"batch{k}/data"])


def test_golden_shapes_are_known_at_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA / "lmdb_mean_file_crop")
    assert cc.Net("net.prototxt", phase="TEST").blob_shapes == {"data": (3, 3, 16, 16), "label": (3,)}
    monkeypatch.chdir(DATA / "imagedata_plain_batch1")
    # no resize and no crop: the first image of the list gives the shape, as Caffe's set-up reads it
    assert cc.Net("net.prototxt", phase="TEST").blob_shapes["data"] == (1, 3, 24, 20)
