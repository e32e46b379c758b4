"""A memory budget, checked against what a file declares before anything is allocated.

A one-line prototxt (``dim: 200000 dim: 3 dim: 90000 dim: 80000``) or a few bytes of a binary file
can declare petabytes. Every size a file declares is checked here first, with a one-line error
naming what asked for the memory, so nothing is allocated for a file that cannot fit:

- ``check_bytes(nbytes, what)``: the readers' check (file sizes, caffemodel and solverstate blobs,
  Datum records, HDF5 datasets, image headers);
- ``within_budget``: decorates ``Net.__init__``. While the net is built, every tensor a layer
  creates (parameter blobs, fillers' buffers) is checked before it is allocated
  (``AllocationGuard``, a ``TorchFunctionMode`` on torch's factory functions, counting the
  tensors still alive); once built, the blobs' and parameters' float32 data is checked
  (``check_net``: each blob name once, the gradients not counted), naming the largest blob, its
  layer and shape.

The budget is ``$CAFFE_COMPAT_MEMORY_BUDGET`` (bytes, or with a unit: ``512M``, ``8G``, ``1.5T``;
``0`` or ``off`` disables the check) or ``set_memory_budget(n)`` / ``memory_budget_limit(n)``;
by default the machine's memory (the container's limit when lower). It is a bound against
hostile or mistyped files, not a prediction of the peak: a net that fits can still need more
during training (gradients, autograd's saved tensors).

Torch is imported only when a net is built, so the file readers that use this module do not
load it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from caffe_compat.errors import CaffeCompatError

BUDGET_ENV = "CAFFE_COMPAT_MEMORY_BUDGET"
#: Caffe's ``kMaxBlobAxes``: a blob has at most 32 axes.
MAX_BLOB_AXES = 32
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
_override: int | None = None


class MemoryBudgetError(CaffeCompatError):
    """A file declares more memory than the budget allows."""


def format_bytes(nbytes: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; bytes below 1 KiB are given exactly."""
    if nbytes < 1024:
        return f"{int(nbytes)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        nbytes /= 1024.0
        if nbytes < 1024 or unit == "EiB":
            return f"{nbytes:.1f} {unit}"
    raise AssertionError("unreachable")


def parse_size(text: str, what: str = BUDGET_ENV) -> int | None:
    """``'8G'`` -> 8 GiB in bytes; ``'0'``/``'off'``/``'none'`` -> None (no limit)."""
    if text.strip().lower() in ("0", "off", "none", "unlimited"):
        return None
    match = _SIZE.match(text)
    if match is None:
        raise CaffeCompatError(
            f"{what}={text!r} is not a size: give bytes or a number with K, M, G, T or P (e.g. 8G), or 'off'"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def machine_memory() -> int:
    """Physical memory, or the cgroup (container) limit when lower; 16 GiB if neither is known."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file, encoding="ascii") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total if total else 16 << 30


def memory_budget() -> int | None:
    """The budget in bytes (None: no limit): the override, else the environment, else the machine."""
    if _override is not None:
        return _override if _override > 0 else None
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        return parse_size(text)
    return machine_memory()


def set_memory_budget(nbytes: int | None) -> None:
    """Set the budget for this process (None: back to the environment or the machine; 0: off)."""
    global _override
    _override = None if nbytes is None else int(nbytes)


@contextlib.contextmanager
def memory_budget_limit(nbytes: int) -> Iterator[None]:
    """Use ``nbytes`` as the budget inside the block (0: no limit)."""
    global _override
    saved, _override = _override, int(nbytes)
    try:
        yield
    finally:
        _override = saved


def _over(nbytes: int, what: str, budget: int) -> MemoryBudgetError:
    return MemoryBudgetError(
        f"{what} needs {format_bytes(nbytes)}, more than the memory budget of {format_bytes(budget)} "
        f"(set {BUDGET_ENV} to change it)"
    )


def check_bytes(nbytes: int, what: str) -> None:
    """Raise MemoryBudgetError if ``nbytes`` exceed the budget; ``what`` names the file and thing."""
    budget = memory_budget()
    if budget is not None and nbytes > budget:
        raise _over(nbytes, what, budget)


def check_shape(shape: Sequence[int], what: str, itemsize: int = 4) -> int:
    """Check a declared shape (non-negative dims, at most 32 axes, within the budget); its count."""
    dims = [int(d) for d in shape]
    if len(dims) > MAX_BLOB_AXES:
        raise CaffeCompatError(f"{what}: has {len(dims)} axes; Caffe allows at most {MAX_BLOB_AXES}")
    if any(d < 0 for d in dims):
        raise CaffeCompatError(f"{what}: shape {dims} has a negative dimension")
    count = math.prod(dims)
    check_bytes(count * itemsize, f"{what} (shape {dims})")
    return count


# --------------------------------------------------------------------------------------------
# nets


def _building_layer() -> str | None:
    """``layer 'x' (Type)`` of the layer being built: the nearest frame holding a BuildContext."""
    from caffe_compat.layers.base import BuildContext

    frame = sys._getframe(1)
    while frame is not None:
        ctx = frame.f_locals.get("ctx")
        if isinstance(ctx, BuildContext):
            return f"layer '{ctx.layer.name}' ({ctx.layer.type})"
        frame = frame.f_back
    return None


def _guard_class() -> type:
    import torch
    from torch.overrides import TorchFunctionMode

    factories = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint}

    def requested(func: Callable, args: tuple, kwargs: dict) -> tuple[list[int], Any] | None:
        if func is torch.randint:  # randint(high, size) / randint(low, high, size)
            size = kwargs.get("size", args[-1] if args else None)
        elif func is torch.full:
            size = kwargs.get("size", args[0] if args else None)
        elif "size" in kwargs:
            size = kwargs["size"]
        elif len(args) == 1 and not isinstance(args[0], int):
            size = args[0]
        else:
            size = args
        try:
            dims = [int(d) for d in size]
        except (TypeError, ValueError):
            return None
        device = kwargs.get("device")
        device = torch.device(device) if device is not None else torch.get_default_device()
        if device.type == "meta":
            return None
        dtype = kwargs.get("dtype") or (torch.int64 if func is torch.randint else torch.get_default_dtype())
        return dims, dtype

    class AllocationGuard(TorchFunctionMode):
        """Checks each tensor torch's factory functions are asked for against the budget, counting
        the memory of the tensors this guard let through that is still alive."""

        def __init__(self, budget: int) -> None:
            super().__init__()
            self.budget = budget
            self.live = [0]  # a list, so finalizers of tensors that outlive the guard stay harmless

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            if func not in factories:
                return func(*args, **kwargs)
            found = requested(func, args, kwargs)
            if found is None:
                return func(*args, **kwargs)
            dims, dtype = found
            nbytes = math.prod(max(d, 0) for d in dims) * dtype.itemsize
            if self.live[0] + nbytes > self.budget:
                where = _building_layer() or "building the net"
                held = f" with {format_bytes(self.live[0])} held already" if self.live[0] else ""
                raise MemoryBudgetError(
                    f"{where}: a blob of shape {dims} needs {format_bytes(nbytes)}{held}, more than the "
                    f"memory budget of {format_bytes(self.budget)} (set {BUDGET_ENV} to change it)"
                )
            tensor = func(*args, **kwargs)
            if nbytes:
                self.live[0] += nbytes
                # the storage, not the tensor: a Parameter made from the tensor shares it
                weakref.finalize(tensor.untyped_storage(), _release, self.live, nbytes)
            return tensor

    return AllocationGuard


def _release(live: list[int], nbytes: int) -> None:
    live[0] -= nbytes


@functools.cache
def _guard_type() -> type:
    return _guard_class()


@contextlib.contextmanager
def allocation_guard() -> Iterator[None]:
    """Inside the block, tensors torch's factory functions create are checked against the budget."""
    budget = memory_budget()
    if budget is None:
        yield
        return
    with _guard_type()(budget):
        yield


def _blob_producers(net: Any) -> dict[str, str]:
    producers: dict[str, str] = {}
    for name, layer in net.layer_params.items():
        for top in layer.top:
            producers.setdefault(top, f"layer '{name}' ({layer.type})")
    return producers


def check_net(net: Any) -> None:
    """Check a built net's blobs (float32, each name once) and parameter blobs against the budget."""
    budget = memory_budget()
    if budget is None:
        return
    blobs = {name: math.prod(shape) * 4 for name, shape in net.blob_shapes.items()}
    seen: set[int] = set()
    params = 0
    for entry in net.param_entries:
        if id(entry.tensor) not in seen:
            seen.add(id(entry.tensor))
            params += entry.tensor.numel() * entry.tensor.element_size()
    total = sum(blobs.values()) + params
    if total <= budget:
        return
    detail = ""
    if blobs:
        largest = max(blobs, key=blobs.__getitem__)
        producer = _blob_producers(net).get(largest, "an input")
        detail = (
            f" (the largest, blob '{largest}' of {producer}, has shape {list(net.blob_shapes[largest])}: "
            f"{format_bytes(blobs[largest])})"
        )
    raise MemoryBudgetError(
        f"the net's blobs and parameters need {format_bytes(total)}{detail}, more than the memory budget "
        f"of {format_bytes(budget)} (set {BUDGET_ENV} to change it)"
    )


def within_budget(init: Callable) -> Callable:
    """Decorates ``Net.__init__``: the build runs under ``allocation_guard`` and ends with
    ``check_net``."""

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        with allocation_guard():
            init(self, *args, **kwargs)
        check_net(self)

    return wrapper
