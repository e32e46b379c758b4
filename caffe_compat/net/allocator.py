"""Keeping freed activation memory in the process, so a forward pass does not page-fault it again.

glibc's malloc serves every block above its mmap threshold (dynamic, at most 32 MB on 64-bit)
with a fresh ``mmap`` and gives it back with ``munmap`` when freed. A deploy net at batch 100
allocates dozens of activations larger than that on every forward pass, and the kernel faults in
and zeroes each of their pages again each time: about a third of the pass's time on 2 cores.
Caffe allocates its blobs once and reuses them; the equivalent here is to tell malloc to serve
large blocks from its heap (``M_MMAP_MAX = 0``) and to keep freed heap memory instead of trimming
it (``M_TRIM_THRESHOLD``), so the next pass reuses pages already mapped. Nothing numeric changes:
only where the bytes live. The cost: memory freed after a peak stays in the process (RSS does not
fall back), as it does in Caffe.

``keep_freed_memory()`` is called by the ``caffe-compat`` command line and the demo, not on import
(a library should not change its host's allocator unasked); call it from your own scripts, or set
``CAFFE_COMPAT_MALLOC=default`` to keep glibc's behaviour. Elsewhere than glibc (macOS, Windows,
musl) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: glibc's defaults, restored by ``keep_freed_memory(False)``.
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
#: The largest trim threshold mallopt takes (an int): freed heap memory is in practice never trimmed.
_KEEP_TRIM_THRESHOLD = 2**31 - 1

ENV = "CAFFE_COMPAT_MALLOC"

_state: dict[str, bool] = {"kept": False}


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None  # not glibc
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory(enabled: bool = True) -> bool:
    """Serve large blocks from malloc's heap and keep freed memory for reuse (see the module
    docstring); ``enabled=False`` restores glibc's defaults. Returns whether the setting is now in
    effect (False without glibc, or when ``CAFFE_COMPAT_MALLOC=default`` and ``enabled``)."""
    libc = _libc()
    if libc is None:
        return False
    if enabled and os.environ.get(ENV, "").strip().lower() == "default":
        return False
    trim = _KEEP_TRIM_THRESHOLD if enabled else _DEFAULT_TRIM_THRESHOLD
    mmap_max = 0 if enabled else _DEFAULT_MMAP_MAX
    applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, trim)) and bool(libc.mallopt(_M_MMAP_MAX, mmap_max))
    _state["kept"] = enabled and applied
    return _state["kept"]


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _state["kept"]
