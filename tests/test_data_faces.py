"""make-faces: the synthetic identity dataset's layout, LFW pairs format, determinism, identity
structure (same-identity images closer than different-identity ones, yet never identical), and
that the ImageData layer reads it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import caffe_compat as cc
from caffe_compat.cli import main
from caffe_compat.data.synthetic_faces import make_faces
from caffe_compat.errors import CaffeCompatError


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces") / "set"
    make_faces(out, identities=6, per_identity=10, seed=4, folds=2, pairs_per_fold=5, workers=1)
    return out


def test_layout_lists_and_pairs(faces: Path) -> None:
    train = [line.split(" ") for line in (faces / "train.txt").read_text().splitlines()]
    val = [line.split(" ") for line in (faces / "val.txt").read_text().splitlines()]
    assert len(train) == 6 * 9 and len(val) == 6
    assert train[0] == ["train_00000/train_00000_0001.png", "0"] and val[-1] == [
        "train_00005/train_00005_0010.png",
        "5",
    ]
    for path, _ in train + val:
        image = cv2.imread(str(faces / path))
        assert image.shape == (112, 96, 3)
    lines = (faces / "pairs.txt").read_text().splitlines()
    assert lines[0] == "2\t5" and len(lines) == 1 + 2 * 2 * 5
    fold_people = []
    for fold in range(2):
        block = [line.split("\t") for line in lines[1 + fold * 10 : 1 + (fold + 1) * 10]]
        matched, mismatched = block[:5], block[5:]
        assert all(len(p) == 3 and p[1] != p[2] for p in matched)
        assert all(len(p) == 4 and p[0] != p[2] for p in mismatched)
        people = {p[0] for p in matched} | {p[0] for p in mismatched} | {p[2] for p in mismatched}
        assert all(name.startswith("person_") for name in people)  # held out: never in train.txt
        for p in matched:
            assert (faces / p[0] / f"{p[0]}_{int(p[1]):04d}.png").exists()
        fold_people.append(people)
    assert not fold_people[0] & fold_people[1]  # folds are identity-disjoint, as in LFW


def test_same_seed_same_bytes_other_seed_other_faces(faces: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_faces(again, identities=6, per_identity=10, seed=4, folds=2, pairs_per_fold=5, workers=2)
    for name in (
        "train.txt",
        "val.txt",
        "pairs.txt",
        "train_00003/train_00003_0007.png",
        "person_00001/person_00001_0002.png",
    ):
        assert (again / name).read_bytes() == (faces / name).read_bytes()
    other = tmp_path / "other"
    make_faces(other, identities=2, per_identity=2, seed=5, folds=1, pairs_per_fold=1, pair_identities=2)
    assert (other / "train_00000/train_00000_0001.png").read_bytes() != (
        faces / "train_00000/train_00000_0001.png"
    ).read_bytes()


def test_identities_are_structured_but_images_vary(faces: Path) -> None:
    def load(identity: int, number: int) -> np.ndarray:
        name = f"train_{identity:05d}"
        return cv2.imread(str(faces / name / f"{name}_{number:04d}.png")).astype(np.float64)

    def trait(img: np.ndarray) -> np.ndarray:  # mean colour of the central face region
        return img[45:95, 30:66].reshape(-1, 3).mean(axis=0)

    within, between = [], []
    for a in range(6):
        for b in range(6):
            for i in range(1, 6):
                distance = np.linalg.norm(trait(load(a, i)) - trait(load(b, i + 1)))
                (within if a == b else between).append(distance)
    assert np.mean(within) < 0.7 * np.mean(between)
    assert not np.array_equal(load(0, 1), load(0, 2))
    assert np.abs(load(0, 1) - load(0, 2)).mean() > 5  # pose, light, background and noise vary


def test_image_data_reads_the_set(faces: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(faces)
    net = cc.Net(
        'layer { name: "data" type: "ImageData" top: "data" top: "label" '
        "transform_param { mean_value: 128 scale: 0.0078125 mirror: true } "
        'image_data_param { source: "train.txt" root_folder: "./" batch_size: 8 shuffle: true } }'
    )
    assert net.blob_shapes["data"] == (8, 3, 112, 96)
    net.layers["data"].configure_loading(num_workers=0)
    net()
    assert net.blobs["data"].abs().max() <= 1.0 and set(net.blobs["label"].tolist()) <= set(range(6))


def test_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    args = ["make-faces", str(out), "--identities", "2", "--per-identity", "3", "--folds", "1"]
    assert main([*args, "--pairs-per-fold", "2", "--format", "jpg"]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "train_00001" / "train_00001_0003.jpg").exists()
    assert main(args) == 1
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    with pytest.raises(CaffeCompatError, match="at least 2 held-out identities per fold"):
        make_faces(tmp_path / "x", identities=2, per_identity=2, folds=3, pair_identities=4)
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == ["cli"]
