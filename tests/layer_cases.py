"""Running one golden layer case (tests/goldens/layers/<case>) and comparing with real Caffe.

Format (tests/goldens/README.md): net.prototxt, weights_init.caffemodel (the blobs before
forward: the file loaded here), params_after.npz (every parameter blob after forward, compared, so
layers that change their own blobs in forward are checked), inputs.npz, forward.npz (every blob
after the last of ``meta.forwards`` passes), top_diffs.npz, backward.npz (``blob/<name>`` and
``param/<layer>/<i>``), meta.json (phase, outputs, backward, forwards, no_diff_inputs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import caffe_compat as cc

GOLDENS = Path(__file__).parent / "goldens"
LAYER_GOLDENS = GOLDENS / "layers"
FORWARD_TOL = {"rtol": 1e-4, "atol": 1e-5}
BACKWARD_TOL = {"rtol": 1e-3, "atol": 1e-4}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def assert_close(actual: torch.Tensor | None, expected: np.ndarray, what: str, tol: dict) -> None:
    if actual is None:
        actual_np = np.zeros_like(expected)
    else:
        actual_np = actual.detach().cpu().double().numpy()
    assert actual_np.shape == expected.shape or actual_np.size == expected.size == 1, (
        f"{what}: shape {actual_np.shape} != Caffe's {expected.shape}"
    )
    np.testing.assert_allclose(actual_np.reshape(expected.shape), expected, err_msg=what, **tol)


def case_names() -> list[str]:
    """Every case folder, found by listing (the goldens grow; no fixed list)."""
    return sorted(p.name for p in LAYER_GOLDENS.iterdir() if (p / "meta.json").exists())


def case_layer_types(case: str) -> list[str]:
    """The layer types a case runs besides its Input layers, in prototxt order (each once)."""
    net = cc.read_net(LAYER_GOLDENS / case / "net.prototxt")
    types: list[str] = []
    for layer in net.layer:
        if layer.type != "Input" and layer.type not in types:
            types.append(layer.type)
    return types


def golden_coverage() -> dict[str, list[str]]:
    """Layer type -> the real-Caffe golden cases whose net runs it: the layer cases, and the data
    (``data/<case>``) and training (``train/<case>``) cases, which check the data layers and the
    solver's nets. The README's layer table shows it (tests/test_layer_registry.py)."""
    nets = [(case, LAYER_GOLDENS / case / "net.prototxt") for case in case_names()]
    for kind in ("data", "train"):
        nets += [(f"{kind}/{p.parent.name}", p) for p in sorted((GOLDENS / kind).glob("*/net.prototxt"))]
    coverage: dict[str, list[str]] = {}
    for case, path in nets:
        for layer_type in sorted({layer.type for layer in cc.read_net(path).layer}):
            coverage.setdefault(layer_type, []).append(case)
    return coverage


def run_case(case: str) -> None:
    """Load the case's initial blobs, run its forward pass(es) and one backward; compare every
    blob, every parameter blob after forward, and every diff with Caffe's."""
    folder = LAYER_GOLDENS / case
    meta = json.loads((folder / "meta.json").read_text())
    net = cc.Net(folder / "net.prototxt", weights=folder / "weights_init.caffemodel", phase=meta["phase"])
    no_diff = set(meta.get("no_diff_inputs", ()))
    inputs = {
        k: torch.tensor(v, requires_grad=k not in no_diff) for k, v in load_npz(folder / "inputs.npz").items()
    }
    for _ in range(meta.get("forwards", 1)):
        outputs = net(**inputs)
    assert sorted(outputs) == sorted(meta["outputs"]), (
        f"outputs {sorted(outputs)} != Caffe's {meta['outputs']}"
    )
    forward = load_npz(folder / "forward.npz")
    compared = 0
    for name, expected in forward.items():
        if name in net.blobs:
            assert_close(net.blobs[name], expected, f"{case}: forward blob '{name}'", FORWARD_TOL)
            compared += 1
    assert compared >= len(meta["outputs"])
    params_after = load_npz(folder / "params_after.npz")
    for key, expected in params_after.items():
        layer, _, index = key.rpartition("/")
        tensor = net.params[layer][int(index)]
        assert_close(tensor, expected, f"{case}: param {layer}[{index}] after forward", FORWARD_TOL)
    assert len(params_after) == sum(len(blobs) for blobs in net.params.values()), (
        f"{case}: Caffe has {len(params_after)} parameter blobs, the net {sum(map(len, net.params.values()))}"
    )
    if not meta.get("backward"):
        return
    top_diffs = load_npz(folder / "top_diffs.npz")
    tops = [outputs[name] for name in top_diffs]
    grads = [torch.tensor(top_diffs[name]).reshape(outputs[name].shape) for name in top_diffs]
    differentiable = [(t, g) for t, g in zip(tops, grads, strict=True) if t.requires_grad]
    assert differentiable, f"{case}: no output carries a gradient"
    torch.autograd.backward([t for t, _ in differentiable], [g for _, g in differentiable])
    backward = load_npz(folder / "backward.npz")
    for key, expected in backward.items():
        kind, _, rest = key.partition("/")
        if kind == "blob" and rest in inputs:
            assert_close(inputs[rest].grad, expected, f"{case}: diff of input '{rest}'", BACKWARD_TOL)
        elif kind == "param":
            layer, _, index = rest.rpartition("/")
            tensor = net.params[layer][int(index)]
            assert_close(tensor.grad, expected, f"{case}: diff of param {layer}[{index}]", BACKWARD_TOL)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--readme-table"]:
        from caffe_compat.layers.registry import support_table

        print(support_table(golden_coverage()))
