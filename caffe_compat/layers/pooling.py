"""Caffe's Pooling layer (``pooling_layer.cpp``, ``pooling_layer.cu``, happynear/caffe-windows).

Caffe rules reproduced (each differs from PyTorch's defaults somewhere):

* Output size ``ceil((H + 2p - k) / s) + 1`` by default; ``round_mode: FLOOR`` (BVLC PR #6282) and
  ``ceil_mode: false`` (the fork field of PR #3057) both select ``floor``.
* The last window is dropped when it would start in the padding, ``(out - 1) * s >= H + p``, but
  only when the layer is padded (``pad_h || pad_w``, both axes); PyTorch applies that clip whenever
  ``ceil_mode`` is on, so with pad 0 and stride > kernel Caffe keeps one more output.
* MAX clips each window to the image (padding never wins, a window wholly outside the image
  yields ``-FLT_MAX``); ties go to the first maximum in row-major order, which is also where
  Caffe's backward sends the gradient.
* AVE sums the in-image cells and divides by the window clipped to ``[-p, H + p)`` *before* it is
  clipped to the image: padded cells count, the ceil overhang past the padded border does not.
  A window with an empty or inverted extent divides by Caffe's integer ``pool_size`` as is (0 gives
  NaN, as in Caffe).
* Caffe only requires ``pad < kernel``; PyTorch rejects ``pad > kernel / 2``. Such layers, and every
  layer whose Caffe output shape differs from PyTorch's, run on an explicitly padded input.
* STOCHASTIC in TEST is Caffe's GPU rule ``sum(x^2) / sum(x)`` over the window clipped to the image
  (0 where ``sum(x) <= 0``); TRAIN (random sampling) is not supported.

Deliberate deviations: with ``-inf`` or NaN *inputs* the fused path returns PyTorch's max
(``-inf``, NaN) where Caffe's ``>`` comparison would give ``-FLT_MAX`` or skip the NaN. Caffe's CPU
backward for a wholly out-of-image MAX window writes to ``bottom_diff[-1]`` (out of bounds); here,
as in Caffe's GPU backward, such a window passes no gradient. STOCHASTIC TEST back-propagates the
exact gradient of its forward (Caffe's GPU backward reads stale sampling indices there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_Pool = caffe_pb2.PoolingParameter
#: ``-FLT_MAX``: what Caffe leaves in a MAX output whose window holds no image cell.
NEG_FLT_MAX = -3.4028234663852886e38

METHODS = {_Pool.MAX: "MAX", _Pool.AVE: "AVE", _Pool.STOCHASTIC: "STOCHASTIC"}


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool, padded: bool) -> int:
    """Caffe's pooled extent of one axis (``PoolingLayer::Reshape``).

    Args:
        size: input extent; kernel, stride, pad: the axis' window geometry.
        ceil: round ``(size + 2 pad - kernel) / stride`` up (Caffe's default) instead of down.
        padded: whether the layer has any padding (``pad_h || pad_w``), which enables the clip of
            a last window starting in the padding.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def torch_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """PyTorch's pooled extent (ATen ``pooling_output_shape``): the clip applies whenever ``ceil``."""
    span = size + 2 * pad - kernel
    out = (span + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register("Pooling")
class Pooling(CaffeLayer):
    """Caffe's 2-D pooling (MAX, AVE, STOCHASTIC in TEST) with Caffe's output shape and windows.

    ``kernel`` None means global pooling (the kernel is the bottom's H x W at each call). With
    ``mask_top`` (MAX only) forward also returns Caffe's mask top: the argmax's index ``h * W + w``
    within its plane, as a float tensor (-1 for a window outside the image), carrying no gradient.

    Args:
        method: "MAX", "AVE" or "STOCHASTIC"; kernel, stride, pad: (h, w) pairs.
        ceil_mode: Caffe's default ceil rounding of the output size; False for floor.
        mask_top: also return the mask top (MAX only).
        train: the net's phase is TRAIN (STOCHASTIC is then refused: it samples Caffe's RNG).
    """

    family = "pooling"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "pool" type: "Pooling" bottom: "x" top: "y"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
"""

    def __init__(
        self,
        method: str = "MAX",
        kernel: tuple[int, int] | None = (2, 2),
        stride: tuple[int, int] = (1, 1),
        pad: tuple[int, int] = (0, 0),
        ceil_mode: bool = True,
        mask_top: bool = False,
        train: bool = True,
    ) -> None:
        super().__init__()
        if method not in ("MAX", "AVE", "STOCHASTIC"):
            raise LayerError(f"unknown pooling method '{method}' (MAX, AVE or STOCHASTIC)")
        self.method = method
        self.kernel = None if kernel is None else (int(kernel[0]), int(kernel[1]))
        self.stride = (int(stride[0]), int(stride[1]))
        self.pad = (int(pad[0]), int(pad[1]))
        self.ceil_mode = bool(ceil_mode)
        self.mask_top = bool(mask_top)
        self.train_phase = bool(train)
        problem = self._check()
        if problem:
            raise LayerError(problem)

    def _check(self) -> str:
        """The first Caffe ``CHECK`` of ``LayerSetUp`` these settings fail, or ''."""
        if self.kernel is not None and min(self.kernel) <= 0:
            return "filter dimensions cannot be zero"
        if min(self.stride) <= 0:
            return "stride dimensions cannot be zero"
        if self.kernel is None and (self.pad != (0, 0) or self.stride != (1, 1)):
            return "with global_pooling: true only pad = 0 and stride = 1 are allowed"
        if self.pad != (0, 0):
            if self.method not in ("MAX", "AVE"):
                return "padding is implemented only for AVE and MAX pooling"
            if self.kernel is not None and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
                return f"pad {list(self.pad)} must be smaller than the kernel {list(self.kernel)}"
        if self.mask_top and self.method != "MAX":
            return "only MAX pooling can produce a second (mask) top"
        if self.method == "STOCHASTIC" and self.train_phase:
            return (
                "STOCHASTIC pooling is not supported in TRAIN phase (it samples with Caffe's random "
                "stream); in TEST it is supported"
            )
        return ""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Pooling:
        ctx.check_bottoms(1)
        p = layer.pooling_param
        if p.pool not in METHODS:
            name = _Pool.PoolMethod.Name(p.pool)
            raise ctx.error(
                f"pooling method {name} (a happynear/caffe-windows deformation pooling) is not supported"
            )
        method = METHODS[p.pool]
        if method == "MAX":
            ctx.check_tops(1, 2)
        else:
            ctx.check_tops(1)
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise ctx.error("with global_pooling: true the filter size cannot be specified")
            kernel = None
        else:
            both_hw = p.HasField("kernel_h") and p.HasField("kernel_w")
            if p.HasField("kernel_size") and both_hw:
                raise ctx.error("the filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not p.HasField("kernel_size") and not both_hw:
                raise ctx.error(
                    "needs kernel_size, or both kernel_h and kernel_w (for non-square filters both are "
                    "required), or global_pooling: true"
                )
            kernel = (p.kernel_size, p.kernel_size) if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
        pad = cls._pair(ctx, p, "pad")
        stride = cls._pair(ctx, p, "stride")
        ceil_mode = cls._ceil_mode(ctx, p)
        bottom = list(ctx.bottom_shapes[0])
        if len(bottom) != 4:
            raise ctx.error(f"input must have 4 axes (num, channels, height, width), got shape {bottom}")
        try:
            module = cls(method, kernel, stride, pad, ceil_mode, len(layer.top) == 2, ctx.train)
            module.output_size(ctx.bottom_shapes[0][2], ctx.bottom_shapes[0][3])
        except LayerError as exc:
            raise ctx.error(str(exc)) from None
        return module

    @staticmethod
    def _pair(ctx: BuildContext, p: caffe_pb2.PoolingParameter, name: str) -> tuple[int, int]:
        """``pad``/``stride`` or their ``_h``/``_w`` forms, with Caffe's either-or check."""
        has_h, has_w = p.HasField(f"{name}_h"), p.HasField(f"{name}_w")
        if not ((not p.HasField(name) and has_h and has_w) or (not has_h and not has_w)):
            raise ctx.error(f"{name} is {name} OR {name}_h and {name}_w (both of them); not both")
        if has_h:
            return getattr(p, f"{name}_h"), getattr(p, f"{name}_w")
        value = getattr(p, name)
        return value, value

    @staticmethod
    def _ceil_mode(ctx: BuildContext, p: caffe_pb2.PoolingParameter) -> bool:
        """``round_mode`` (BVLC) and ``ceil_mode`` (PR #3057): either may ask for floor rounding."""
        floor_by_round = p.round_mode == _Pool.FLOOR
        floor_by_ceil = not p.ceil_mode
        if p.HasField("round_mode") and p.HasField("ceil_mode") and floor_by_round != floor_by_ceil:
            raise ctx.error("round_mode and ceil_mode contradict each other; give only one of them")
        return not (floor_by_round or floor_by_ceil)

    # -- geometry ------------------------------------------------------------------------------
    def _kernel_for(self, height: int, width: int) -> tuple[int, int]:
        return (height, width) if self.kernel is None else self.kernel

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Caffe's pooled (height, width) for a bottom of the given size; LayerError if empty."""
        kh, kw = self._kernel_for(height, width)
        padded = self.pad != (0, 0)
        out = tuple(
            caffe_pooled_size(size, k, s, p, self.ceil_mode, padded)
            for size, k, s, p in zip((height, width), (kh, kw), self.stride, self.pad, strict=True)
        )
        if min(out) < 1:
            raise LayerError(
                f"kernel {[kh, kw]} with pad {list(self.pad)} and stride {list(self.stride)} gives an empty "
                f"output {list(out)} on a {height}x{width} input (the kernel is larger than the padded input)"
            )
        return out  # type: ignore[return-value]

    def _fused_ok(self, height: int, width: int, out: tuple[int, int]) -> bool:
        """Whether PyTorch's own padded pooling gives Caffe's shape and windows."""
        kernel = self._kernel_for(height, width)
        for size, k, s, p, o in zip((height, width), kernel, self.stride, self.pad, out, strict=True):
            if 2 * p > k or k > size + 2 * p or torch_pooled_size(size, k, s, p, self.ceil_mode) != o:
                return False
        return True

    def _explicit_pad(self, x: torch.Tensor, out: tuple[int, int], value: float) -> torch.Tensor:
        """Pad (or crop) so that unpadded floor pooling gives exactly ``out`` windows at Caffe's places."""
        height, width = x.shape[2], x.shape[3]
        kh, kw = self._kernel_for(height, width)
        (sh, sw), (ph, pw) = self.stride, self.pad
        right_h = (out[0] - 1) * sh + kh - (height + ph)
        right_w = (out[1] - 1) * sw + kw - (width + pw)
        return F.pad(x, (pw, right_w, ph, right_h), value=value)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            raise LayerError(
                f"layer '{self.caffe_name}' (Pooling): input must have 4 axes, got {list(x.shape)}"
            )
        height, width = int(x.shape[2]), int(x.shape[3])
        try:
            out = self.output_size(height, width)
        except LayerError as exc:
            raise LayerError(f"layer '{self.caffe_name}' (Pooling): {exc}") from None
        if self.method == "MAX":
            return self._max(x, out)
        if self.method == "AVE":
            return self._ave(x, out)
        return self._stochastic_test(x, out)

    def _max(self, x: torch.Tensor, out: tuple[int, int]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        height, width = int(x.shape[2]), int(x.shape[3])
        kernel = self._kernel_for(height, width)
        if self._fused_ok(height, width, out):
            if not self.mask_top:
                return F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=self.ceil_mode)
            top, index = F.max_pool2d(
                x, kernel, self.stride, self.pad, ceil_mode=self.ceil_mode, return_indices=True
            )
            return top, index.to(x.dtype)
        padded = self._explicit_pad(x, out, -math.inf)
        top, index = F.max_pool2d(padded, kernel, self.stride, return_indices=True)
        outside = top == -math.inf
        top = top.clamp_min(NEG_FLT_MAX)
        if not self.mask_top:
            return top
        padded_width = int(padded.shape[3])
        row = torch.div(index, padded_width, rounding_mode="floor") - self.pad[0]
        col = index % padded_width - self.pad[1]
        mask = torch.where(outside, torch.full_like(index, -1), row * width + col)
        return top, mask.to(x.dtype)

    def _divisor(self, height: int, width: int, out: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
        """Caffe's ``pool_size`` of every output, built on ``x``'s device (no host round trip)."""
        kernel = self._kernel_for(height, width)
        factors = []
        for size, k, s, p, o in zip((height, width), kernel, self.stride, self.pad, out, strict=True):
            start = torch.arange(o, device=x.device) * s - p
            factors.append((torch.clamp_max(start + k, size + p) - start).to(x.dtype))
        return factors[0][:, None] * factors[1][None, :]

    def _ave(self, x: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
        height, width = int(x.shape[2]), int(x.shape[3])
        if self.kernel is None:
            return x.mean(dim=(2, 3), keepdim=True)
        if self._fused_ok(height, width, out):
            return F.avg_pool2d(
                x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil_mode, count_include_pad=True
            )
        sums = F.avg_pool2d(self._explicit_pad(x, out, 0.0), self.kernel, self.stride, divisor_override=1)
        return sums / self._divisor(height, width, out, x)

    def _stochastic_test(self, x: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
        height, width = int(x.shape[2]), int(x.shape[3])
        kernel = self._kernel_for(height, width)
        channels = int(x.shape[1])
        both = self._explicit_pad(torch.cat([x, x * x], dim=1), out, 0.0)
        sums = F.avg_pool2d(both, kernel, self.stride, divisor_override=1)
        total, squares = sums[:, :channels], sums[:, channels:]
        positive = total > 0
        safe = torch.where(positive, total, torch.ones_like(total))
        return torch.where(positive, squares / safe, torch.zeros_like(total))

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shape = bottom_shapes[0]
        out = self.output_size(shape[2], shape[3])
        top = (shape[0], shape[1], *out)
        return [top, top] if self.mask_top else [top]

    def extra_repr(self) -> str:
        kernel = "global" if self.kernel is None else list(self.kernel)
        rounding = "ceil" if self.ceil_mode else "floor"
        details = (
            f"{self.method}, kernel={kernel}, stride={list(self.stride)}, pad={list(self.pad)}, {rounding}"
        )
        base = super().extra_repr()
        return f"{base}, {details}" if base else details
