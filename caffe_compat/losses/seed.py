"""The SV-X-Softmax seed's ``FC`` interface (xiaoboCASIA/SV-X-Softmax ``fc_layers.py``) on our heads.

``from_seed(fc_type="MV-AM", margin=0.35, t=0.2, scale=32, embedding_size=512, num_class=72690,
easy_margin=True)`` takes the seed's arguments with the seed's defaults and returns the matching
head of ``caffe_compat.losses.heads``, set up as the seed computes:

* the embeddings are taken as given (the seed expects them L2-normalized by the caller);
* ``fc_type`` ``FC`` is the seed's plain cosine head (``scale * cos``), i.e. our ``normface``;
  ``SphereFace``, ``AM``, ``Arc``, ``MV-AM``, ``MV-Arc`` map to ``sphereface``, ``am``, ``arc``,
  ``mv-am``, ``mv-arc`` with the MV heads' adaptive re-weighting, the seed's;
* the seed stores its weight as ``(embedding_size, num_class)`` (``x @ W``); ours is
  ``(num_class, embedding_size)`` like ``nn.Linear``. The returned head accepts the seed's
  checkpoints: ``load_state_dict`` transposes a ``weight`` of the seed's shape.

One deliberate deviation: for ``SphereFace`` the seed indexes its Chebyshev table with
``int(margin)``, so its shared default 0.35 gives the degenerate multiplier 0; ``from_seed`` asks
for an integer margin there (SphereFace's paper uses 4) instead of reproducing that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from caffe_compat.losses.heads import MarginHead, NormFaceHead, make_head

#: The seed's ``fc_type`` strings and our head kinds.
SEED_FC_TYPES = {
    "FC": "normface",
    "SphereFace": "sphereface",
    "AM": "am",
    "Arc": "arc",
    "MV-AM": "mv-am",
    "MV-Arc": "mv-arc",
}


def _transpose_seed_weight(head: MarginHead, embedding_size: int, num_class: int) -> None:
    """Make ``head.load_state_dict`` accept a weight stored the seed's way, (embedding, classes)."""

    def hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        key = prefix + "weight"
        weight = state_dict.get(key)
        seed_shape = (embedding_size, num_class)
        if (
            isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == seed_shape
            and embedding_size != num_class
        ):
            state_dict[key] = weight.t().contiguous()

    head._register_load_state_dict_pre_hook(hook, with_module=True)


def from_seed(
    fc_type: str = "MV-AM",
    margin: float = 0.35,
    t: float = 0.2,
    scale: float = 32,
    embedding_size: int = 512,
    num_class: int = 72690,
    easy_margin: bool = True,
) -> NormFaceHead:
    """The head the seed's ``FC(fc_type, margin, t, scale, embedding_size, num_class, easy_margin)``
    builds, with its defaults; ``head(x, label)`` gives the seed's logits for normalized ``x``.

    Raises:
        ValueError: an unknown ``fc_type`` (the seed's "unknown fc type!"), or a non-integer
            SphereFace margin.
    """
    try:
        kind = SEED_FC_TYPES[fc_type]
    except KeyError:
        raise ValueError(
            f"unknown fc_type {fc_type!r}; the seed's types are {', '.join(SEED_FC_TYPES)}"
        ) from None
    params: dict[str, Any] = {"s": float(scale)}
    if kind == "sphereface":
        if float(margin) != int(margin) or int(margin) < 1:
            raise ValueError(
                f"SphereFace needs an integer margin >= 1 (the seed's int({margin}) would use "
                f"{int(margin)}); SphereFace's paper uses 4"
            )
        params["m"] = int(margin)
    elif kind != "normface":
        params.update(m=float(margin), easy_margin=bool(easy_margin))
        if kind.startswith("mv-"):
            params.update(t=float(t), mode="adaptive")
    head = make_head(kind, embedding_size, num_class, **params)
    head.normalize_embeddings = False
    _transpose_seed_weight(head, embedding_size, num_class)
    return head  # type: ignore[return-value]
