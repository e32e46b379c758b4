"""The ``torchscript`` format: the flat graph traced with ``torch.jit.trace`` and saved.

The saved module takes the inputs positionally (in the order recorded in its extra file
``caffe_compat.json``, with the output names and traced shapes) or by the Python names of the
generated forward, and returns a dict of the outputs by Caffe blob name. Like every traced
export it takes any batch size unless the conversion fixed one (``None`` in the recorded shapes
marks a free batch axis); the other axes have their traced sizes. ``torch.jit`` is in
maintenance mode in recent PyTorch releases; it still loads in C++ (libtorch) without Python.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from caffe_compat.export.errors import ExportError
from caffe_compat.export.trace import FlatNet

EXTRA_FILE = "caffe_compat.json"


def write(flat: FlatNet, path: Path, inputs: dict[str, torch.Tensor]) -> None:
    """Trace the flat net on ``inputs`` and save it to ``path``."""
    args = tuple(inputs[name] for name in flat.input_names)
    meta = {
        "input_names": flat.input_names,
        "input_shapes": flat.shape_spec(),
        "output_names": flat.output_names,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                traced = torch.jit.trace(flat.module, args, strict=False, check_trace=False)
        except Exception as exc:  # noqa: BLE001  (jit raises many kinds for unsupported code)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"torch.jit.trace failed: {first}") from None
        torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})


def run(path: Path, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load the saved module and run it on ``inputs`` (by blob name)."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    names = json.loads(extra[EXTRA_FILE])["input_names"]
    with torch.no_grad():
        return dict(module(*[inputs[name] for name in names]))
