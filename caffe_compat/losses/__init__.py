"""Margin heads and losses for face recognition as plain PyTorch modules (no prototxt needed).

``make_head(kind, in_features, num_classes, **params)`` builds a head called as
``head(embeddings, labels) -> logits``; ``make_loss(kind, **params)`` a loss called as
``loss(logits, labels)``. The Caffe layer type ``MarginHead`` (``caffe_compat.layers.margin_heads``)
wraps the same heads. ``chunked_cross_entropy(head, embeddings, labels)`` is the softmax loss of a
head computed over class chunks (bounded memory at a million classes).
"""

from caffe_compat.losses.chunked import chunked_cross_entropy
from caffe_compat.losses.criteria import LOSS_KINDS, FocalLoss, HardMining, SoftmaxLoss, make_loss
from caffe_compat.losses.heads import (
    HEAD_KINDS,
    AMSoftmaxHead,
    ArcFaceHead,
    LinearHead,
    LogitRule,
    MarginHead,
    MVAMHead,
    MVArcHead,
    NormFaceHead,
    SphereFaceHead,
    SVAMHead,
    SVArcHead,
    cosine_margin_logits,
    head_parameters,
    make_head,
)
from caffe_compat.losses.seed import SEED_FC_TYPES, from_seed

__all__ = [
    "HEAD_KINDS",
    "SEED_FC_TYPES",
    "from_seed",
    "LOSS_KINDS",
    "AMSoftmaxHead",
    "ArcFaceHead",
    "FocalLoss",
    "HardMining",
    "LinearHead",
    "LogitRule",
    "MVAMHead",
    "MVArcHead",
    "MarginHead",
    "NormFaceHead",
    "SVAMHead",
    "SVArcHead",
    "SoftmaxLoss",
    "SphereFaceHead",
    "chunked_cross_entropy",
    "cosine_margin_logits",
    "head_parameters",
    "make_head",
    "make_loss",
]
