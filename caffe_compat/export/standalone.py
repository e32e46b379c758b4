"""Standalone PyTorch source for a net: ``net.py`` (code) and ``net.pt`` (its weights) beside it.

The code is the flat graph of :mod:`caffe_compat.export.trace` (plain ``torch`` calls, one line per
operation, a comment naming the Caffe layer each group of lines comes from) inside
``class Net(nn.Module)``, whose ``__init__`` declares every parameter and buffer the graph reads,
under the source net's own ``state_dict`` names (``conv1.weight``). ``load(weights_path=None)``
builds ``Net`` and reads the weights (``torch.load(..., weights_only=True)``) from the ``.pt`` file
of the same stem. ``Net()(data=x)`` returns the outputs by Caffe blob name, like
``caffe_compat.Net``. Only ``torch`` is imported; the code reads the batch size from its input
(``data.size(0)``) unless the conversion fixed one, and every other axis has its traced size
(``INPUT_SHAPES``, with None for a free batch axis).
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from caffe_compat.export.errors import ExportError
from caffe_compat.export.trace import FlatNet, get_attribute

_NODE_LINE = re.compile(r"^    (\w+) = ")
_TORCH_NAME = re.compile(r"\btorch(?:\.\w+)+")
_FREE_VALUES = re.compile(r";\s+(?:\w+ = )+None$")

# Names the fx code generator may reference, and how the generated file imports them.
_IMPORTS = {
    "torch": "import torch",
    "inf": "from math import inf",
    "nan": "from math import nan",
    "device": "from torch import device",
    "operator": "import operator",
    "math": "import math",
}


def _state_tensors(flat: FlatNet) -> dict[str, tuple[torch.Tensor, bool]]:
    """Each ``get_attr`` target -> (tensor, is a Parameter)."""
    tensors = {}
    for node in flat.module.graph.nodes:
        if node.op != "get_attr":
            continue
        value = get_attribute(flat.module, str(node.target))
        if not isinstance(value, torch.Tensor):
            raise ExportError(f"the graph reads '{node.target}', a {type(value).__name__}, not a tensor")
        tensors[str(node.target)] = (value, isinstance(value, nn.Parameter))
    return tensors


def weights(flat: FlatNet) -> dict[str, torch.Tensor]:
    """The tensors ``net.pt`` holds: every parameter, buffer and constant the graph reads."""
    return {name: tensor.detach() for name, (tensor, _) in _state_tensors(flat).items()}


def _dtype_text(dtype: torch.dtype) -> str:
    return str(dtype)  # e.g. "torch.float32"


def _init_lines(flat: FlatNet) -> list[str]:
    lines: list[str] = []
    containers: set[str] = set()
    for name, (tensor, is_parameter) in _state_tensors(flat).items():
        parts = name.split(".")
        for depth in range(1, len(parts)):
            path = ".".join(parts[:depth])
            if path not in containers:
                containers.add(path)
                lines.append(f"self.{path} = nn.Module()")
        owner = ".".join(["self", *parts[:-1]])
        leaf = parts[-1]
        shape = ", ".join(str(int(d)) for d in tensor.shape)
        empty = f"torch.empty(({shape}{',' if tensor.dim() == 1 else ''}), dtype={_dtype_text(tensor.dtype)})"
        if is_parameter:
            grad = "" if tensor.requires_grad else ", requires_grad=False"
            lines.append(f"{owner}.register_parameter({leaf!r}, nn.Parameter({empty}{grad}))")
        else:
            lines.append(f"{owner}.register_buffer({leaf!r}, {empty})")
    return lines


def _body(flat: FlatNet) -> tuple[str, set[str]]:
    """The graph's code as the body of ``Net.graph``, with layer comments; and the globals used."""
    code = flat.module.graph.python_code(root_module="self")
    lines = code.src.strip("\n").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def forward("))
    signature = lines[start].replace("def forward(", "def graph(", 1)
    body: list[str] = []
    current = None
    for line in lines[start + 1 :]:
        line = _FREE_VALUES.sub("", line.rstrip())
        match = _NODE_LINE.match(line)
        layer = flat.layer_of.get(match.group(1)) if match else None
        if layer is not None and layer != current:
            if current is not None:
                body.append("")
            current = layer
            body.append(f"    # layer '{layer}' ({flat.layer_types.get(layer, '?')})")
        body.append(_TORCH_NAME.sub(_public_name, line))
    text = "\n".join([signature, *body])
    used = {name for name in code.globals if re.search(rf"\b{re.escape(name)}\b", text)}
    for name in used:
        if name not in _IMPORTS:
            value = code.globals[name]
            raise ExportError(
                f"the exported code calls {getattr(value, '__module__', '?')}."
                f"{getattr(value, '__qualname__', name)}, "
                "which a standalone file cannot import: only torch calls can be exported"
            )
    return text, used


def _resolve(dotted: str) -> Any:
    value: Any = torch
    for part in dotted.split(".")[1:]:
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _public_name(match: re.Match[str]) -> str:
    """``torch._C._nn.linear`` -> ``torch.nn.functional.linear``, ``torch.functional.split`` ->
    ``torch.split``: the public spelling of the same function (names already public are kept)."""
    dotted = match.group(0)
    last = dotted.rsplit(".", 1)[-1]
    public = (f"torch.{last}", f"torch.nn.functional.{last}")
    target = _resolve(dotted)
    if dotted in public or target is None or last.startswith("_"):
        return dotted
    for alias in public:
        if _resolve(alias) is target:
            return alias
    return dotted


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def generate(flat: FlatNet, weights_name: str, net_name: str, source: str) -> str:
    """The text of the standalone module."""
    body, used = _body(flat)
    imports = sorted(
        {_IMPORTS[name] for name in used} | {"import os", "import torch", "from torch import nn"}
    )
    imports.sort(key=lambda line: (line.startswith("from "), line))
    init = "\n".join(f"        {line}" for line in _init_lines(flat)) or "        pass"
    shapes = ", ".join(f"{name!r}: {tuple(shape)!r}" for name, shape in flat.shape_spec().items())
    shape_text = (
        "The batch size is free (None in INPUT_SHAPES); the other axes are those it was traced with."
        if flat.dynamic_batch
        else "The code is specialised to the input shapes it was traced with (INPUT_SHAPES)."
    )
    arguments = ", ".join(f"given[{name!r}]" for name in flat.input_names)
    dropped = tuple(flat.dropped_inputs)
    return f'''"""{net_name or "Caffe net"}: standalone PyTorch code generated by caffe-compat from {source}.

Needs only torch::

    import {Path(weights_name).stem} as generated
    model = generated.load()  # weights from {weights_name} beside this file
    outputs = model(**inputs)  # dict of output blobs by Caffe name

{shape_text}
"""

from __future__ import annotations

{chr(10).join(imports)}

INPUT_NAMES = {tuple(flat.input_names)!r}
INPUT_SHAPES = {{{shapes}}}
OUTPUT_NAMES = {tuple(flat.output_names)!r}
#: Inputs of the Caffe net that no output depends on: accepted and ignored.
UNUSED_INPUTS = {dropped!r}


class Net(nn.Module):
    """The net's forward pass in plain torch; parameters under the source net's state_dict names."""

    def __init__(self) -> None:
        super().__init__()
{init}

    def forward(self, *args: torch.Tensor, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the net on its inputs by blob name (or positionally, in INPUT_NAMES order)."""
        given = dict(zip(INPUT_NAMES, args))
        given.update(inputs)
        unknown = sorted(set(given) - set(INPUT_NAMES) - set(UNUSED_INPUTS))
        missing = [name for name in INPUT_NAMES if name not in given]
        if unknown or missing:
            raise TypeError(
                f"the net's inputs are {{list(INPUT_NAMES)}}; unknown {{unknown}}, missing {{missing}}"
            )
        for name, expected in INPUT_SHAPES.items():
            shape = tuple(given[name].shape)
            if len(shape) != len(expected) or any(e is not None and e != d for e, d in zip(expected, shape)):
                raise ValueError(
                    f"input '{{name}}' has shape {{list(shape)}}; "
                    f"this net takes {{list(expected)}} (None: any size)"
                )
        return self.graph({arguments})

{_indent(body, "    ")}


def load(weights_path: str | os.PathLike | None = None) -> Net:
    """Build the net and load its weights (default: {weights_name} beside this file)."""
    if weights_path is None:
        weights_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), {weights_name!r})
    with torch.device("meta"):
        net = Net()
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, assign=True)
    return net.eval()
'''


def write(flat: FlatNet, code_path: Path, weights_path: Path, net_name: str, source: str) -> None:
    """Write the code and its weights (the caller stages both paths)."""
    stem = code_path.stem
    if not stem.isidentifier() or keyword.iskeyword(stem):
        raise ExportError(f"{code_path.name}: the file name must be a Python module name (e.g. net.py)")
    text = generate(flat, weights_path.name, net_name, source)
    try:
        compile(text, str(code_path), "exec")
    except SyntaxError as exc:  # pragma: no cover - would be a bug in the generator
        raise ExportError(f"internal error: the generated code does not compile: {exc}") from None
    code_path.write_text(text, encoding="utf-8")
    torch.save(weights(flat), weights_path)


def import_file(path: Path) -> ModuleType:
    """Import a generated module from its path under a unique name (not left in sys.modules)."""
    name = f"_caffe_compat_generated_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def run(path: Path, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Import the generated module, ``load()`` it and run it on ``inputs``."""
    module = import_file(path)
    net = module.load()
    with torch.no_grad():
        return net(**inputs)
