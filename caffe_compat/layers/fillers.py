"""Caffe's weight fillers (``include/caffe/filler.hpp``).

Rules followed: ``fan_in = count / shape[0]`` and ``fan_out = count / shape[1]`` (``count`` for
1-D blobs); xavier is uniform(-sqrt(3/n), sqrt(3/n)) and msra is gaussian(0, sqrt(2/n)) with
``n`` chosen by ``variance_norm`` (FAN_IN, FAN_OUT, AVERAGE); gaussian's ``sparse`` keeps each
weight with probability ``sparse / num_outputs``; positive_unitball makes each row sum to one;
bilinear is the upsampling kernel of deconvolution. Caffe's random stream is not reproduced:
numbers come from torch's generator (seed it with ``torch.manual_seed`` or the solver's
``random_seed``).
"""

from __future__ import annotations

import math

import torch

from caffe_compat.errors import LayerError
from caffe_compat.proto import caffe_pb2

_Filler = caffe_pb2.FillerParameter


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    count = math.prod(shape) if shape else 1
    fan_in = count / shape[0] if shape else count
    fan_out = count / shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    if filler.variance_norm == _Filler.FAN_OUT:
        return fan_out
    if filler.variance_norm == _Filler.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(shape: tuple[int, ...], filler: caffe_pb2.FillerParameter | None, where: str = "") -> torch.Tensor:
    """Return a new float32 tensor of ``shape`` filled as Caffe's filler ``filler`` would."""
    filler = filler if filler is not None else _Filler()
    out = torch.empty(shape, dtype=torch.float32)
    kind = filler.type
    if kind == "constant":
        return out.fill_(filler.value)
    if kind == "uniform":
        return out.uniform_(filler.min, filler.max)
    if kind == "gaussian":
        out.normal_(filler.mean, filler.std)
        if filler.sparse >= 0:
            num_outputs = shape[1] if len(shape) > 1 else 1
            keep = torch.rand(shape) < filler.sparse / num_outputs
            out.mul_(keep)
        return out
    if kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(filler, shape))
        return out.uniform_(-scale, scale)
    if kind == "msra":
        return out.normal_(0.0, math.sqrt(2.0 / _variance_n(filler, shape)))
    if kind == "positive_unitball":
        out.uniform_(0.0, 1.0)
        rows = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
        return out
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise LayerError(
                f"{where}: the bilinear filler needs a 4-D blob with square kernels, got {list(shape)}"
            )
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        idx = torch.arange(k, dtype=torch.float32)
        line = 1 - (idx / f - c).abs()
        out.copy_((line[:, None] * line[None, :]).expand(shape))
        return out
    raise LayerError(f"{where}: unknown filler type '{kind}'")
