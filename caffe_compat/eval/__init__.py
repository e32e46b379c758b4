"""Face verification: pairs files, feature extraction with the mirror trick, k-fold metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from caffe_compat.eval.pairs import read_pairs
from caffe_compat.eval.verification import evaluate_pairs

if TYPE_CHECKING:
    from caffe_compat.eval.features import extract_features

__all__ = ["evaluate_pairs", "extract_features", "read_pairs"]


def __getattr__(name: str) -> Any:
    # features imports torch: loaded on first use so the metrics stay torch-free.
    if name == "extract_features":
        from caffe_compat.eval.features import extract_features

        return extract_features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
