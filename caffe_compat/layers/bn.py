"""The happynear/caffe-windows ``BN`` layer (``bn_layer.cpp``): batch normalization with its own
scale and shift and a moving average of the inverse standard deviation.
"""

from __future__ import annotations

from typing import Any

import torch

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


class _Normalize(torch.autograd.Function):
    """``x_hat = (x - mean) * inv_std`` per channel with Caffe's BN backward
    ``dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))`` (means over every axis
    but 1), whatever ``mean`` and ``inv_std`` were: the exact gradient when they are the batch's,
    not when they are the stored statistics (TEST phase). ``mean`` and ``inv_std`` get no gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
        x_hat = (x - mean) * inv_std
        ctx.save_for_backward(x_hat, inv_std)
        return x_hat

    @staticmethod
    def backward(ctx: Any, d_x_hat: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x_hat, inv_std = ctx.saved_tensors
        dims = [0, *range(2, x_hat.dim())]
        centred = d_x_hat - d_x_hat.mean(dim=dims, keepdim=True)
        return inv_std * (centred - x_hat * (d_x_hat * x_hat).mean(dim=dims, keepdim=True)), None, None


@register("BN")
class BN(CaffeLayer):
    """The fork's batch normalization with scale and shift (``bn_layer.cpp``).

    Blobs, all (1, C): ``slope``, ``bias`` (learnable; ``slope_filler``/``bias_filler``, default
    constant 0), ``moving_mean`` and ``moving_inv_std`` (statistics, 0 and 1 at set-up). ``bn_param``:
    ``momentum`` (0.9), ``eps`` (1e-5), ``frozen`` (false).

    * TRAIN, not frozen: the batch mean and biased variance over every axis but 1 give
      ``y = slope * (x - mean) / sqrt(var + eps) + bias``, and the statistics are updated in place:
      ``moving_mean = (1 - momentum) * mean + momentum * moving_mean``, ``moving_inv_std =
      (1 - momentum) / sqrt(var + eps) + momentum * moving_inv_std``. Backward: the exact gradient.
    * TEST or frozen: ``y = slope * (x - moving_mean) * moving_inv_std + bias``, no update.
      Backward, frozen: ``dx = dy * slope * moving_inv_std`` and no parameter diffs; TEST (not
      frozen): Caffe's batch-statistics formula applied to the stored statistics (see
      ``_Normalize``), with the slope and bias diffs.

    The statistics blobs never get a diff (Caffe gives them zeros). The bottom has 2 to 4 axes
    (Caffe reads num, channels, height, width).
    """

    family = "normalization"

    caffe_blobs = (
        Blob("slope"),
        Blob("bias"),
        Blob("moving_mean", learnable=False),
        Blob("moving_inv_std", learnable=False),
    )
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "bn" type: "BN" bottom: "x" top: "y"
  bn_param { slope_filler { type: "constant" value: 1 } momentum: 0.8 } }
"""

    def __init__(
        self,
        channels: int,
        use_stored: bool = False,
        frozen: bool = False,
        momentum: float = 0.9,
        eps: float = 1e-5,
        slope: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.channels = int(channels)
        self.use_stored = bool(use_stored or frozen)
        self.frozen = bool(frozen)
        self.momentum = float(momentum)
        self.eps = float(eps)
        shape = (1, self.channels)
        self.set_blob("slope", slope if slope is not None else torch.zeros(shape))
        self.set_blob("bias", bias if bias is not None else torch.zeros(shape))
        self.set_blob("moving_mean", torch.zeros(shape))
        self.set_blob("moving_inv_std", torch.ones(shape))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> BN:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        shape = ctx.bottom_shapes[0]
        if not 2 <= len(shape) <= 4:
            raise ctx.error(
                "the bottom must have 2 to 4 axes (num, channels[, height[, width]]), "
                f"got shape {list(shape)}"
            )
        param = layer.bn_param
        where = f"layer '{layer.name}'"
        channels = int(shape[1])
        slope = fill((1, channels), param.slope_filler, where)
        bias = fill((1, channels), param.bias_filler, where)
        return cls(channels, not ctx.train, param.frozen, param.momentum, param.eps, slope, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, self.channels) + (1,) * (x.dim() - 2)
        slope, bias = self.slope.reshape(view), self.bias.reshape(view)
        if self.frozen:
            mean, inv_std = self.moving_mean.reshape(view), self.moving_inv_std.reshape(view)
            return (x - mean) * inv_std * slope.detach() + bias.detach()
        if self.use_stored:
            mean, inv_std = self.moving_mean.reshape(view), self.moving_inv_std.reshape(view)
        else:
            dims = [0, *range(2, x.dim())]
            with torch.no_grad():
                var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
                inv_std = (var + self.eps).rsqrt()
                keep = 1.0 - self.momentum
                self.moving_mean.mul_(self.momentum).add_(
                    mean.reshape(1, -1).to(self.moving_mean.dtype), alpha=keep
                )
                self.moving_inv_std.mul_(self.momentum).add_(
                    inv_std.reshape(1, -1).to(self.moving_inv_std.dtype), alpha=keep
                )
        x_hat = _Normalize.apply(x, mean.to(x.dtype), inv_std.to(x.dtype))
        return x_hat * slope + bias

    def extra_repr(self) -> str:
        mode = "frozen" if self.frozen else ("stored statistics" if self.use_stored else "batch statistics")
        text = f"channels={self.channels}, {mode}, momentum={self.momentum}, eps={self.eps}"
        return f"{super().extra_repr()}, {text}".lstrip(", ")
