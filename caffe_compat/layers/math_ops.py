"""Element-wise math layers of happynear/caffe-windows: Arccos, Cosine, Truncation, SoftTruncation,
Insanity (randomized leaky ReLU) and Noise (each follows its ``<name>_layer.cpp``).

Each takes one bottom and gives one top of the same shape (Caffe's ``NeuronLayer``). Where the
fork's hand-written backward is not the exact gradient of its forward (Arccos' clip, Cosine's
ignored top diff, SoftTruncation's ``(1 - y) / c``), a ``torch.autograd.Function`` reproduces it;
the exporters trace those functions' forward.

Randomness: Insanity and Noise draw from torch's generator in TRAIN (``torch.manual_seed`` makes
a run repeatable), not from Caffe's Boost/MT19937 stream, so TRAIN outputs match Caffe in
distribution, not value by value. TEST outputs are deterministic and exact.
"""

from __future__ import annotations

import math

import torch

from caffe_compat.layers.base import BuildContext, CaffeLayer
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_ONE_BLOB = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
"""


def _neuron(ctx: BuildContext) -> None:
    """Caffe's ``NeuronLayer``: exactly one bottom and one top."""
    ctx.check_bottoms(1)
    ctx.check_tops(1)


# -- Arccos ----------------------------------------------------------------------------------------


class _ArccosFunction(torch.autograd.Function):
    """``acos(x)`` with ``arccos_layer.cpp``'s backward ``dy * -1 / sqrt(1 - min(x, 0.99)^2)``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.acos(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        fixed = torch.clamp(x, max=Arccos.CLIP)
        return -dy / torch.sqrt(1.0 - fixed * fixed)


@register("Arccos")
class Arccos(CaffeLayer):
    """``y = acos(x)`` (``arccos_layer.cpp``).

    Caffe's backward clips ``x`` at 0.99 from above only: ``dx = -dy / sqrt(1 - min(x, 0.99)^2)``,
    so the gradient stays finite near ``x = 1`` but is ``-inf`` at ``x = -1``. Inputs outside
    ``[-1, 1]`` give NaN, as ``acosf`` does.
    """

    family = "math"

    #: ``Dtype(1.0) - Dtype(0.01)``: the upper clip of x in the backward.
    CLIP = 0.99
    example = (
        _ONE_BLOB
        + """layer { name: "acos" type: "Arccos" bottom: "x" top: "y" }
"""
    )

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Arccos:
        _neuron(ctx)
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ArccosFunction.apply(x)


# -- Cosine ----------------------------------------------------------------------------------------


class _CosineFunction(torch.autograd.Function):
    """``cos(x)`` whose backward is ``cosine_layer.cpp``'s ``dx = -sin(x)``: the top diff is ignored."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.cos(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return -torch.sin(x)


@register("Cosine")
class Cosine(CaffeLayer):
    """``y = cos(x)`` (``cosine_layer.cpp``).

    Caffe's backward writes ``dx = -sin(x)`` and never reads the top diff, so the gradient is not
    scaled by what comes from above (a loss weight of 2 or a zero diff give the same ``dx``). This
    is reproduced.
    """

    family = "math"

    example = (
        _ONE_BLOB
        + """layer { name: "cos" type: "Cosine" bottom: "x" top: "y" }
"""
    )

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Cosine:
        _neuron(ctx)
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CosineFunction.apply(x)


# -- Truncation / SoftTruncation -------------------------------------------------------------------


@register("Truncation")
class Truncation(CaffeLayer):
    """``y = min(max(x, lower_bound), upper_bound)`` (``truncation_layer.cpp``; defaults 0 and 5).

    The diff passes only where ``lower_bound < x < upper_bound`` (strictly: at a bound it is 0,
    unlike ``torch.clamp``'s gradient). With ``lower_bound > upper_bound`` every output is
    ``upper_bound`` and no diff passes, as Caffe's formula gives.
    """

    family = "math"

    example = (
        _ONE_BLOB
        + """layer { name: "trunc" type: "Truncation" bottom: "x" top: "y"
        truncation_param { lower_bound: -0.5 upper_bound: 0.5 } }
"""
    )

    def __init__(self, lower_bound: float = 0.0, upper_bound: float = 5.0) -> None:
        super().__init__()
        self.lower_bound = float(lower_bound)
        self.upper_bound = float(upper_bound)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Truncation:
        _neuron(ctx)
        param = layer.truncation_param
        return cls(param.lower_bound, param.upper_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = torch.clamp(torch.clamp(x.detach(), min=self.lower_bound), max=self.upper_bound)
        inside = (x > self.lower_bound) & (x < self.upper_bound)
        return torch.where(inside, x, value)

    def extra_repr(self) -> str:
        text = f"lower_bound={self.lower_bound}, upper_bound={self.upper_bound}"
        return f"{super().extra_repr()}, {text}".lstrip(", ")


class _SoftTruncationFunction(torch.autograd.Function):
    """``y = 1 - exp(x / -c)`` with ``soft_truncation_layer.cpp``'s backward ``dy * (1 - y) / c``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, c: float) -> torch.Tensor:
        y = 1.0 - torch.exp(x / -c)
        ctx.save_for_backward(y)
        ctx.c = c
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return dy * (1.0 - y) / ctx.c, None


@register("SoftTruncation")
class SoftTruncation(CaffeLayer):
    """``y = 1 - exp(-x / c)`` (``soft_truncation_layer.cpp``; ``c`` defaults to 2).

    The backward is Caffe's ``dx = dy * (1 - y) / c``, computed from the stored top: the exact
    gradient up to float rounding, except that it is exactly 0 where ``exp(-x / c)`` is below
    float precision of 1 (where ``y`` rounds to 1). ``c = 0`` (a division by zero in Caffe) is
    rejected.
    """

    family = "math"

    example = (
        _ONE_BLOB
        + """layer { name: "soft" type: "SoftTruncation" bottom: "x" top: "y"
        soft_truncation_param { c: 1.5 } }
"""
    )

    def __init__(self, c: float = 2.0) -> None:
        super().__init__()
        if c == 0.0:
            raise ValueError("soft_truncation_param.c must not be 0 (the layer divides by it)")
        self.c = float(c)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> SoftTruncation:
        _neuron(ctx)
        try:
            return cls(layer.soft_truncation_param.c)
        except ValueError as exc:
            raise ctx.error(str(exc)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SoftTruncationFunction.apply(x, self.c)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c={self.c}".lstrip(", ")


# -- Insanity --------------------------------------------------------------------------------------


@register("Insanity")
class Insanity(CaffeLayer):
    """Randomized leaky ReLU (``insanity_layer.cpp``): ``y = max(x, 0) + min(x, 0) / a``.

    TRAIN: ``a`` is drawn per element from ``U(lb, ub)`` at every forward, from **torch's**
    generator (Caffe's RNG stream is not reproduced: seed with ``torch.manual_seed``); the backward
    is Caffe's ``dy * ((x > 0) + (x <= 0) / a)`` with the slopes of that forward (the slope also
    applies at ``x = 0``). TEST: ``a`` is the fixed ``(ub - lb) / (ln|ub| - ln|lb|)`` (infinite when
    ``|ub| = |lb|``, which makes the layer a ReLU). Defaults ``lb`` 5, ``ub`` 10; ``ub > lb`` and
    both non-zero are required, as Caffe checks.

    Deviation: in TEST Caffe's backward divides by slopes it never drew (zeros), giving ``inf``/NaN
    diffs; here the TEST backward is the gradient of the TEST forward, ``dy / a`` for ``x <= 0``.
    The phase is fixed when the net is built.
    """

    family = "math"

    example = (
        _ONE_BLOB
        + """layer { name: "rrelu" type: "Insanity" bottom: "x" top: "y" insanity_param { lb: 3 ub: 8 } }
"""
    )

    def __init__(self, lb: float = 5.0, ub: float = 10.0, train: bool = True) -> None:
        super().__init__()
        if not ub > lb:
            raise ValueError(
                f"insanity_param: upper bound ub ({ub}) must be greater than lower bound lb ({lb})"
            )
        if lb * ub == 0:
            raise ValueError(f"insanity_param: lower and upper bound must not be 0 (lb {lb}, ub {ub})")
        self.lb = float(lb)
        self.ub = float(ub)
        self.train_phase = bool(train)
        denominator = math.log(abs(self.ub)) - math.log(abs(self.lb))
        self.mean_slope = (self.ub - self.lb) / denominator if denominator != 0 else math.inf

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Insanity:
        _neuron(ctx)
        if len(ctx.bottom_shapes[0]) < 2:
            raise ctx.error(f"the bottom must have at least 2 axes, got shape {list(ctx.bottom_shapes[0])}")
        param = layer.insanity_param
        try:
            return cls(param.lb, param.ub, ctx.train)
        except ValueError as exc:
            raise ctx.error(str(exc)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.train_phase:
            slope = torch.rand_like(x) * (self.ub - self.lb) + self.lb
            return torch.where(x > 0, x, x / slope)
        return torch.where(x > 0, x, x / self.mean_slope)

    def extra_repr(self) -> str:
        phase = "TRAIN" if self.train_phase else "TEST"
        return f"{super().extra_repr()}, lb={self.lb}, ub={self.ub}, phase={phase}".lstrip(", ")


# -- Noise -----------------------------------------------------------------------------------------


@register("Noise")
class Noise(CaffeLayer):
    """Additive noise (``noise_layer.cpp``); must run in place (``top == bottom``), as in Caffe,
    whose Reshape never shapes a separate top.

    TRAIN: with ``gaussian_std`` set, adds Gaussian noise of mean ``bias`` and standard deviation
    ``gaussian_std * sqrt(mean(x^2))``; else with ``uniform_range`` set, uniform noise in
    ``[bias - uniform_range, bias + uniform_range)``; with neither (``bias`` alone) nothing is
    added (Caffe adds a noise blob it never fills). The noise comes from **torch's** generator,
    not Caffe's RNG stream. TEST: the identity. The backward is the identity in both phases (the
    noise scale is not differentiated, as in Caffe).

    A ``gaussian_std`` or ``uniform_range`` below 0, or a ``gaussian_std`` of 0, is rejected (Caffe's
    RNG aborts on them). Where Caffe would abort on an all-zero bottom (standard deviation 0), the
    noise is ``bias``.
    """

    family = "math"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "noise" type: "Noise" bottom: "x" top: "x" noise_param { gaussian_std: 0.1 } }
"""

    def __init__(
        self,
        gaussian_std: float | None = None,
        uniform_range: float | None = None,
        bias: float = 0.0,
        train: bool = True,
    ) -> None:
        super().__init__()
        if gaussian_std is not None and not gaussian_std > 0:
            raise ValueError(f"noise_param.gaussian_std must be greater than 0, got {gaussian_std}")
        if uniform_range is not None and not uniform_range >= 0:
            raise ValueError(f"noise_param.uniform_range must not be negative, got {uniform_range}")
        self.gaussian_std = None if gaussian_std is None else float(gaussian_std)
        self.uniform_range = None if uniform_range is None else float(uniform_range)
        self.bias = float(bias)
        self.train_phase = bool(train)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Noise:
        _neuron(ctx)
        if layer.top[0] != layer.bottom[0]:
            raise ctx.error(
                f"must run in place (top '{layer.top[0]}' must be its bottom '{layer.bottom[0]}'): "
                "Caffe's Noise layer never shapes a separate top"
            )
        param = layer.noise_param
        gaussian = param.gaussian_std if param.HasField("gaussian_std") else None
        uniform = param.uniform_range if param.HasField("uniform_range") else None
        try:
            return cls(gaussian, uniform, param.bias, ctx.train)
        except ValueError as exc:
            raise ctx.error(str(exc)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.train_phase:
            return x
        if self.gaussian_std is not None:
            with torch.no_grad():
                magnitude = torch.sqrt(torch.mean(x.detach() * x.detach()))
                noise = torch.randn_like(x) * (magnitude * self.gaussian_std) + self.bias
        elif self.uniform_range is not None:
            with torch.no_grad():
                low = self.bias - self.uniform_range
                noise = torch.rand_like(x) * (2.0 * self.uniform_range) + low
        else:
            return x
        return x + noise

    def extra_repr(self) -> str:
        phase = "TRAIN" if self.train_phase else "TEST"
        text = f"gaussian_std={self.gaussian_std}, uniform_range={self.uniform_range}, bias={self.bias}"
        return f"{super().extra_repr()}, {text}, phase={phase}".lstrip(", ")
