"""AM-Softmax's layers (Wang et al. 2018, happynear/caffe-windows): ``LabelSpecificAdd`` (the
additive cosine margin on the target logit), ``GlobalLSEMargin`` (its margin chosen from the
batch; only a CUDA implementation exists in the fork, followed here on any device) and ``Flip``
(the horizontal mirror of the deploy net's mirror trick).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape
from caffe_compat.layers.face.common import (
    FLT_MAX,
    check_labels,
    check_legacy,
    count_of,
    int_labels,
    legacy_shape,
)
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

# -- LabelSpecificAdd ----------------------------------------------------------------------------


@register("LabelSpecificAdd")
class LabelSpecificAdd(CaffeLayer):
    """AM-Softmax's additive margin (``label_specific_add.cpp``): ``y = x``, then for each sample
    ``y[i, label_i] += bias`` where ``x[i, label_i] > -bias`` (so with ``bias = -m`` the target
    cosine becomes ``cos - m`` only where ``cos > m``). Rows are ``count / num`` wide.

    Backward is the identity (the label gets no diff). In TEST phase the layer is the identity
    whatever ``transform_test`` says (the fork sets ``transform_test_ = transform_test && TRAIN``)
    and its optional second top keeps Caffe's zero-initialised value. With ``bias_base`` set, the
    TRAIN forward anneals the bias: ``bias = clip(bias_base + (1 + bias_gamma * it)^bias_power - 1,
    bias_min, bias_max)`` (``max`` with ``bias_min`` first, then ``min`` with ``bias_max``) at the
    current counter ``it`` (starting at ``iteration``), then advances the counter. The optional
    second top (shape (1,)) carries the bias used. The counter is the int64 buffer ``iter_count``
    (in ``state_dict``, not a Caffe blob: Caffe restarts it at ``iteration`` on resume).
    """

    family = "AM-Softmax"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "lsa" type: "LabelSpecificAdd" bottom: "x" bottom: "label" top: "y" top: "bias"
  label_specific_add_param { bias_base: 0 bias_gamma: -5e-5 bias_power: 1 bias_min: -0.35 } }
"""

    iter_count: torch.Tensor

    def __init__(
        self,
        bias: float = 0.0,
        train: bool = True,
        anneal: bool = False,
        bias_base: float = 0.0,
        bias_gamma: float = 0.0,
        bias_power: float = 1.0,
        bias_min: float = 0.0,
        bias_max: float = 0.0,
        iteration: int = 0,
        output_bias: bool = False,
    ) -> None:
        super().__init__()
        self.bias = float(bias)
        self.train_phase = bool(train)
        self.anneal = bool(anneal)
        self.bias_base = float(bias_base)
        self.bias_gamma = float(bias_gamma)
        self.bias_power = float(bias_power)
        self.bias_min = float(bias_min)
        self.bias_max = float(bias_max)
        self.output_bias = bool(output_bias)
        self.register_buffer("iter_count", torch.tensor(int(iteration), dtype=torch.int64))

    @property
    def iteration(self) -> int:
        """The annealing counter (the ``iteration_`` member of Caffe's layer)."""
        return int(self.iter_count)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> LabelSpecificAdd:
        if len(layer.bottom) < 2:
            raise ctx.error(f"takes the logits and the labels (at least 2 bottoms), got {len(layer.bottom)}")
        ctx.check_tops(1, 2)
        shape, label_shape = ctx.bottom_shapes[0], ctx.bottom_shapes[1]
        if not shape:
            raise ctx.error("the logits bottom must have a batch axis")
        check_labels(ctx, label_shape, shape[0])
        p = layer.label_specific_add_param
        return cls(
            bias=p.bias,
            train=ctx.train,
            anneal=p.HasField("bias_base"),
            bias_base=p.bias_base,
            bias_gamma=p.bias_gamma,
            bias_power=p.bias_power,
            bias_min=p.bias_min,
            bias_max=p.bias_max,
            iteration=p.iteration,
            output_bias=len(layer.top) == 2,
        )

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] + ([(1,)] if self.output_bias else [])

    def current_bias(self) -> torch.Tensor:
        """The bias the next TRAIN forward adds (a float32 scalar tensor); does not advance."""
        if not self.anneal:
            return torch.tensor(self.bias, dtype=torch.float32, device=self.iter_count.device)
        it = self.iter_count.to(torch.float32)
        bias = self.bias_base + torch.pow(1.0 + self.bias_gamma * it, self.bias_power) - 1.0
        return bias.clamp(min=self.bias_min).clamp(max=self.bias_max)

    def forward(
        self, x: torch.Tensor, label: torch.Tensor, *ignored: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.train_phase:
            return (x, x.new_zeros(1)) if self.output_bias else x
        bias = self.current_bias()
        if self.anneal:
            with torch.no_grad():
                self.iter_count.add_(1)
        num = x.shape[0]
        rows = x.reshape(num, -1)
        index = int_labels(label, num).unsqueeze(1)
        bias = bias.to(rows.dtype)
        target = rows.gather(1, index)
        add = torch.where(target > -bias, bias, torch.zeros_like(bias)).to(rows.dtype)
        y = rows.scatter_add(1, index, add.expand_as(target)).reshape(x.shape)
        if self.output_bias:
            return y, bias.detach().reshape(1)
        return y


# -- Flip ----------------------------------------------------------------------------------------


@register("Flip")
class Flip(CaffeLayer):
    """``Flip`` (``flip_layer.cpp``): mirror along the width (``flip_width``, default true) and/or
    the height (``flip_height``), read through Caffe's legacy accessors (a missing axis is 1, so a
    2-D or 3-D bottom has nothing to flip along the missing ones). Backward is the same flip."""

    family = "AM-Softmax"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "flip" type: "Flip" bottom: "x" top: "y" flip_param { flip_height: true } }
"""

    def __init__(self, flip_width: bool = True, flip_height: bool = False) -> None:
        super().__init__()
        self.flip_width = bool(flip_width)
        self.flip_height = bool(flip_height)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Flip:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        check_legacy(ctx, ctx.bottom_shapes[0])
        return cls(layer.flip_param.flip_width, layer.flip_param.flip_height)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = ([2] if self.flip_height else []) + ([3] if self.flip_width else [])
        if not dims:
            return x.clone()
        return torch.flip(x.reshape(legacy_shape(x.shape)), dims).reshape(x.shape)


# -- GlobalLSEMargin -----------------------------------------------------------------------------


def mean_shift(margins: np.ndarray, mu: float, loop: int = 1) -> float:
    """``GlobalLSEMarginLayer::MeanShift``: average the margins within 0.1 of ``mu``, repeat up to
    ``loop`` times until the mean moves by less than 0.001; when none is near, restart from the mean
    of all (float32 arithmetic).

    Deviation: where Caffe would loop forever (no margin within 0.1 of the overall mean either),
    this returns that mean.
    """
    values = np.asarray(margins, dtype=np.float32).reshape(-1)
    mu32 = np.float32(mu)
    last = mu32
    restarted = False
    while loop > 0:
        loop -= 1
        near = np.abs(values - mu32).astype(np.float64) < 0.1
        count = int(near.sum())
        if count == 0:
            mu32 = np.float32(values.sum(dtype=np.float32) / np.float32(values.size))
            if restarted:
                return float(mu32)
            restarted, last, loop = True, mu32, loop + 1
            continue
        mu32 = np.float32(values[near].sum(dtype=np.float32) / np.float32(count))
        if abs(float(np.float32(last - mu32))) < 0.001:
            break
        last = mu32
    return float(mu32)


@register("GlobalLSEMargin")
class GlobalLSEMargin(CaffeLayer):
    """AM-Softmax's experimental automatic margin (``global_lse_margin_layer.cu``; the fork has no
    CPU implementation, so its CUDA kernels are followed). Bottoms: cosines, labels and optionally
    the feature norms ("original norm" mode); tops: the scaled logits and optionally 5 statistics.

    Blobs: the scale ``s`` (``scale_param.filler`` or 30; clipped in place to ``[min_value,
    max_value]`` each forward) and the margin ``m`` (a running statistic, initially 0; default
    ``lr_mult`` 0). Each forward (any phase): ``lse_i = log(sum_{j != y} exp(s_i (cos_ij - a_i))) /
    s_i + a_i`` with ``a_i = max(-1, max_{j != y} cos_ij)`` and ``s_i`` the scale or the sample's
    feature norm; the batch margin is a mean shift (``mean_shift``) of ``cos_iy - lse_i``, which
    sets ``m`` when it is 0 (20 iterations from the batch mean) and otherwise moves it to ``0.9 m +
    0.1 * shift`` (one iteration from ``m``). Then ``y = s_i * (cos - m * onehot(y))`` where ``m >
    0`` (``cos`` elsewhere). Statistics: [mean norm or s, mean target cosine, mean lse, mean
    ``a_i``, m].

    Backward (Caffe's, the exact gradient with ``m`` held constant): ``dcos = s_i dy``;
    ``ds = sum dy * y / s``; with three bottoms ``dnorm_i = sum_j dy * y / norm_i`` and no scale diff.
    """

    family = "AM-Softmax"
    fork_gpu_only = True

    caffe_blobs = (Blob("scale"), Blob("margin", learnable=False))
    example = """
layer { name: "cos" type: "Input" top: "cos" input_param { shape { dim: 4 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "lse" type: "GlobalLSEMargin" bottom: "cos" bottom: "label" top: "logit" top: "statistics" }
"""

    scale: torch.nn.Parameter
    margin: torch.Tensor

    def __init__(
        self,
        scale: float | torch.Tensor = 30.0,
        min_scale: float = 0.0,
        max_scale: float = FLT_MAX,
        original_norm: bool = False,
        output_statistics: bool = False,
    ) -> None:
        super().__init__()
        scale_tensor = (
            scale.reshape(1).float() if isinstance(scale, torch.Tensor) else torch.full((1,), float(scale))
        )
        self.set_blob("scale", scale_tensor)
        self.set_blob("margin", torch.zeros(1))
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.original_norm = bool(original_norm)
        self.output_statistics = bool(output_statistics)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> GlobalLSEMargin:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        shape = ctx.bottom_shapes[0]
        if not shape:
            raise ctx.error("the cosine bottom must have a batch axis")
        check_labels(ctx, ctx.bottom_shapes[1], shape[0])
        if len(layer.bottom) == 3 and count_of(ctx.bottom_shapes[2]) != shape[0]:
            raise ctx.error(
                f"the feature-norm bottom {list(ctx.bottom_shapes[2])} must hold one value per sample "
                f"({shape[0]})"
            )
        p = layer.scale_param
        scale = fill((1,), p.filler, f"layer '{layer.name}'") if p.HasField("filler") else 30.0
        return cls(
            scale,
            p.min_value if p.HasField("min_value") else 0.0,
            p.max_value if p.HasField("max_value") else FLT_MAX,
            len(layer.bottom) == 3,
            len(layer.top) == 2,
        )

    @classmethod
    def param_specs(cls, layer: caffe_pb2.LayerParameter, num_blobs: int) -> list[caffe_pb2.ParamSpec]:
        specs = super().param_specs(layer, num_blobs)
        if not layer.param:
            specs[0].lr_mult = 0.0 if len(layer.bottom) == 3 else 1.0
            specs[0].decay_mult = 0.0
        if len(layer.param) <= 1:
            specs[1].lr_mult, specs[1].decay_mult = 0.0, 0.0
        return specs

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] + ([(5,)] if self.output_statistics else [])

    def _update_margin(self, margins: torch.Tensor) -> None:
        values = margins.detach().float().cpu().numpy()
        current = float(self.margin[0])
        if current == 0.0:
            mean = float(np.float32(values.sum(dtype=np.float32) / np.float32(values.size)))
            batch = mean_shift(values, mean, 20)
            new = batch
        else:
            batch = mean_shift(values, current, 1)
            new = 0.9 * current + 0.1 * batch
        if not math.isnan(batch):
            self.margin.fill_(float(np.float32(new)))

    def forward(
        self, cos: torch.Tensor, label: torch.Tensor, norm: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = cos.shape[0]
        rows = cos.reshape(num, -1)
        index = int_labels(label, num).unsqueeze(1)
        onehot = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, index, True)
        with torch.no_grad():
            self.scale.clamp_(min=self.min_scale).clamp_(max=self.max_scale)
            if self.original_norm:
                per_row = norm.detach().reshape(-1)[:num].to(rows.dtype)
            else:
                per_row = self.scale.detach().to(rows.dtype).expand(num)
            data = rows.detach()
            target = data.gather(1, index).squeeze(1)
            max_negative = data.masked_fill(onehot, -math.inf).amax(dim=1).clamp(min=-1.0)
            exps = torch.exp(per_row.unsqueeze(1) * (data - max_negative.unsqueeze(1))).masked_fill(
                onehot, 0.0
            )
            lse = torch.log(exps.sum(dim=1)) / per_row + max_negative
            self._update_margin(target - lse)
            margin = float(self.margin[0])
        shifted = rows - onehot.to(rows.dtype) * margin if margin > 0 else rows
        if self.original_norm:
            y = shifted * norm.reshape(-1)[:num].to(rows.dtype).unsqueeze(1)
        else:
            y = shifted * self.scale.to(rows.dtype)
        y = y.reshape(cos.shape)
        if not self.output_statistics:
            return y
        with torch.no_grad():
            first = per_row.mean() if self.original_norm else self.scale.detach()[0].to(rows.dtype)
            stats = torch.stack(
                [first, target.mean(), lse.mean(), max_negative.mean(), self.margin[0].to(rows.dtype)]
            )
        return y, stats
