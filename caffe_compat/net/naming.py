"""Layer keys and module attribute names.

Caffe does not require layer names to be unique (BVLC's ``mnist_autoencoder.prototxt`` has two
layers named ``loss``). Its ``Net::layer_names_index_`` maps a name to the *last* layer of that
name, so ``CopyTrainedLayersFrom``, ``ShareTrainedLayersWith``, pycaffe's ``net.params[name]`` and
``net.layer_dict[name]`` all reach the last one. ``layer_keys`` keeps that rule: the last layer of
a name is keyed by the plain name, each earlier one by ``name#k`` (k = its 0-based occurrence), so
``Net.layers``/``Net.params`` list every layer in prototxt order under a unique key.

Caffe names may contain ``/``, ``-`` or ``.`` or start with a digit; a module name must be an
identifier and must not shadow an attribute of the Net. Each module keeps ``caffe_name``.
"""

from __future__ import annotations

import keyword
import re

_INVALID = re.compile(r"\W")


def layer_keys(names: list[str]) -> list[str]:
    """Unique keys for layer names in prototxt order: the last of a name keeps it, earlier ones
    become ``name#0``, ``name#1``, ... (see the module docstring)."""
    last = {name: index for index, name in enumerate(names)}
    seen: dict[str, int] = {}
    keys: list[str] = []
    for index, name in enumerate(names):
        occurrence = seen.get(name, 0)
        seen[name] = occurrence + 1
        keys.append(name if last[name] == index else f"{name}#{occurrence}")
    taken = set(names)
    for index, key in enumerate(keys):
        if key != names[index] and key in taken:  # a layer literally named like a key: keep unique
            while key in taken:
                key += "#"
            keys[index] = key
        taken.add(key)
    return keys


def python_name(name: str, taken: set[str], reserved: set[str] = frozenset()) -> str:
    """Return an identifier for ``name`` not in ``taken`` or ``reserved``, and add it to ``taken``."""
    base = _INVALID.sub("_", name) or "layer"
    if base[0].isdigit() or keyword.iskeyword(base) or base in reserved or base.startswith("_"):
        base = f"layer_{base}"
    candidate, n = base, 1
    while candidate in taken or candidate in reserved:
        candidate = f"{base}_{n}"
        n += 1
    taken.add(candidate)
    return candidate
