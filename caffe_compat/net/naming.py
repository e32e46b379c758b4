"""Mapping Caffe layer names to valid, collision-free module attribute names.

Caffe names may contain ``/``, ``-`` or ``.`` or start with a digit; a module name must be an
identifier and must not shadow an attribute of the Net. Each module keeps ``caffe_name``.
"""

from __future__ import annotations

import keyword
import re

_INVALID = re.compile(r"\W")


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
