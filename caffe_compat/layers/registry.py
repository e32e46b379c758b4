"""The layer registry: Caffe type string -> module class.

Rule followed: Caffe's ``LayerRegistry`` (``layer_factory.hpp``) keys layers by the exact type
string; registering a type twice is an error, and an unknown type fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from caffe_compat.errors import LayerError

if TYPE_CHECKING:
    from caffe_compat.layers.base import CaffeLayer

_REGISTRY: dict[str, type[CaffeLayer]] = {}
L = TypeVar("L", bound="type[CaffeLayer]")

HOW_TO_REGISTER = (
    "To add one, subclass caffe_compat.layers.CaffeLayer, decorate it with "
    '@caffe_compat.layers.register("TypeName") and import the module before building the net '
    "(the CLI takes --plugin MODULE)"
)


def register(type_name: str) -> Callable[[L], L]:
    """Class decorator registering a layer module under Caffe's type string."""

    def decorate(cls: L) -> L:
        if type_name in _REGISTRY:
            raise ValueError(
                f"layer type '{type_name}' is already registered by {_REGISTRY[type_name].__qualname__}"
            )
        cls.caffe_type = type_name
        _REGISTRY[type_name] = cls
        return cls

    return decorate


def _ensure_builtin_layers() -> None:
    import caffe_compat.layers  # noqa: F401  (imports every built-in family)


def layer_class(type_name: str, layer_name: str = "?") -> type[CaffeLayer]:
    """Look up a registered type, with an error naming the layer and the known types."""
    _ensure_builtin_layers()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise LayerError(
            f"layer '{layer_name}': unknown layer type '{type_name}'. Known types: {known}. {HOW_TO_REGISTER}"
        ) from None


def registered_types() -> dict[str, type[CaffeLayer]]:
    """A copy of the registry, type string -> class."""
    _ensure_builtin_layers()
    return dict(_REGISTRY)


def builtin_types() -> dict[str, type[CaffeLayer]]:
    """The types caffe-compat itself registers (not a user's or a test's)."""
    return {
        name: cls for name, cls in registered_types().items() if cls.__module__.startswith("caffe_compat.")
    }


def support_table(coverage: dict[str, list[str]] | None = None) -> str:
    """The README's table of supported layer types: type, family, blobs in Caffe order and, given
    ``coverage`` (type -> the golden cases that run it), the real-Caffe cases that check each type.

    A type with no case says so plainly; a type whose fork has only a CUDA implementation says
    that its CUDA semantics run on every device."""
    header = "| Caffe type | family | blobs (Caffe order) |"
    rule = "| --- | --- | --- |"
    if coverage is not None:
        header += " golden cases (real Caffe) |"
        rule += " --- |"
    rows = [header, rule]
    for name, cls in sorted(builtin_types().items(), key=lambda item: item[0].lower()):
        family = cls.family or "-"
        blobs = ", ".join(
            f"{b.name}{'' if b.learnable else ' (buffer)'}{' (optional)' if b.optional else ''}"
            for b in cls.caffe_blobs
        )
        row = f"| `{name}` | {family} | {blobs or '-'} |"
        if coverage is not None:
            row += f" {_coverage_cell(coverage.get(name, []), cls.fork_gpu_only)} |"
        rows.append(row)
    return "\n".join(rows)


def _coverage_cell(cases: list[str], gpu_only: bool, shown: int = 6) -> str:
    note = " (GPU-only in the fork: its CUDA semantics, on every device)" if gpu_only else ""
    if not cases:
        return "**no golden**" + note
    names = ", ".join(f"`{case}`" for case in cases[:shown])
    more = f" and {len(cases) - shown} more" if len(cases) > shown else ""
    return f"{len(cases)}: {names}{more}{note}"
