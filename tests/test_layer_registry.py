"""Registry-driven checks: every built-in layer type builds from its example, declares its blobs
as it stores them, round-trips through a caffemodel, and is listed in the README."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from layer_cases import golden_coverage

import caffe_compat as cc
from caffe_compat.layers.registry import builtin_types, support_table

ROOT = Path(__file__).resolve().parent.parent
TYPES = sorted(builtin_types())


def _layer_of_type(net: cc.Net, type_name: str) -> tuple[str, torch.nn.Module]:
    for name, module in net.layers.items():
        if net.layer_params[name].type == type_name:
            return name, module
    raise AssertionError(f"the example of {type_name} has no layer of that type")


@pytest.mark.parametrize("type_name", TYPES)
def test_every_type_builds_from_its_example_and_round_trips(type_name: str, tmp_path: Path) -> None:
    cls = builtin_types()[type_name]
    assert cls.example.strip(), f"{type_name} has no example net"
    net = cc.Net(cls.example, phase="TRAIN", input_shapes=dict(cls.example_input_shapes) or None)
    name, module = _layer_of_type(net, type_name)
    assert isinstance(module, cls) and module.caffe_name == name
    declared = [spec.name for spec in cls.caffe_blobs]
    present = module.present_blob_specs()
    assert [spec.name for spec in present] == [n for n in declared if getattr(module, n, None) is not None]
    parameters = dict(module.named_parameters(recurse=False))
    buffers = dict(module.named_buffers(recurse=False))
    for spec in present:
        if spec.learnable:
            assert spec.name in parameters, f"{type_name}.{spec.name} should be an nn.Parameter"
        else:
            assert spec.name in buffers, f"{type_name}.{spec.name} should be a buffer"
    # caffemodel round trip: perturb, save, load into a fresh net, compare blob for blob
    with torch.no_grad():
        for i, tensor in enumerate(module.caffe_blob_tensors()):
            tensor.add_(0.25 * (i + 1))
    path = tmp_path / "example.caffemodel"
    net.save_caffemodel(path)
    fresh = cc.Net(cls.example, phase="TRAIN", input_shapes=dict(cls.example_input_shapes) or None)
    fresh.copy_from(path)
    for before, after in zip(net.params[name], fresh.params[name], strict=True):
        assert before.shape == after.shape
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    stored = cc.read_caffemodel(path)
    stored_layer = next(layer for layer in stored.layer if layer.name == name)
    assert len(stored_layer.blobs) == len(present)


def test_readme_support_table_matches_the_registry_and_the_goldens() -> None:
    """The README's layer table lists every built-in type and, per type, the golden cases that
    check it (computed from tests/goldens, so a new case or type changes the table)."""
    readme = (ROOT / "README.md").read_text()
    assert support_table(golden_coverage()) in readme, (
        "README's layer table is out of date; regenerate it with python tests/layer_cases.py --readme-table"
    )


def test_layer_table_says_which_types_have_no_golden() -> None:
    table = support_table(golden_coverage())
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines()[2:]}
    for name in ("Clip", "Swish", "MarginHead"):
        assert "**no golden**" in rows[name], name
    assert "`ip_normalize`" in rows["InnerProduct"] and "**no golden**" not in rows["InnerProduct"]
    assert "GPU-only in the fork" in rows["GlobalLSEMargin"]
    assert rows["MarginInnerProduct"].split("|")[4].strip().startswith("9: ")  # 8 layer + 1 training case


@pytest.mark.parametrize("type_name", sorted(builtin_types()))
def test_every_builtin_type_names_its_family_explicitly(type_name: str) -> None:
    cls = builtin_types()[type_name]
    assert isinstance(cls.__dict__.get("family"), str) and cls.__dict__["family"], (
        f"{cls.__qualname__} must set `family` in its own class body"
    )
