"""Element-wise (neuron) layers: ReLU, Sigmoid, TanH, PReLU, ELU, AbsVal, BNLL, Power, Exp, Log,
Threshold, Dropout, Swish, Clip (each follows its ``<name>_layer.cpp``).

Each takes one bottom and gives one top of the same shape; in place (top == bottom) is a rebind
in the graph, never an in-place tensor op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


@register("ReLU")
class ReLU(CaffeLayer):
    """``y = max(x, 0) + negative_slope * min(x, 0)`` (Caffe's ReLU with ``negative_slope``)."""

    family = "activation"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.1 } }
"""

    def __init__(self, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ReLU:
        ctx.check_bottoms(1)
        return cls(layer.relu_param.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)


@register("Sigmoid")
class Sigmoid(CaffeLayer):
    """``y = 1 / (1 + exp(-x))``."""

    family = "activation"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "sigmoid" type: "Sigmoid" bottom: "x" top: "y" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Sigmoid:
        ctx.check_bottoms(1)
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@register("TanH")
class TanH(CaffeLayer):
    """``y = tanh(x)``."""

    family = "activation"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "tanh" type: "TanH" bottom: "x" top: "y" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> TanH:
        ctx.check_bottoms(1)
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


_ONE_BLOB = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
"""


@register("PReLU")
class PReLU(CaffeLayer):
    """``y = max(x, 0) + a_c * min(x, 0)`` with a learned slope per channel (``prelu_layer.cpp``).

    The blob ``weight`` holds the slopes: shape ``(C,)`` with ``C = bottom.shape[1]``, or a 0-D
    scalar when ``channel_shared`` (Caffe stores a shapeless blob). The default filler is
    ``constant 0.25``. Caffe's backward uses ``x > 0`` for the identity branch, so the gradient at
    ``x == 0`` is the slope, as ``F.prelu``'s.
    """

    family = "activation"

    caffe_blobs = (Blob("weight"),)
    example = (
        _ONE_BLOB
        + """layer { name: "prelu" type: "PReLU" bottom: "x" top: "y" }
"""
    )

    def __init__(
        self, channels: int, channel_shared: bool = False, slope: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.channel_shared = bool(channel_shared)
        shape: tuple[int, ...] = () if self.channel_shared else (int(channels),)
        if slope is None:
            slope = torch.full(shape, 0.25)
        if tuple(slope.shape) != shape:
            raise ValueError(f"PReLU slope must have shape {list(shape)}, got {list(slope.shape)}")
        self.set_blob("weight", slope)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> PReLU:
        ctx.check_bottoms(1)
        shape = ctx.bottom_shapes[0]
        if len(shape) < 2:
            raise ctx.error(f"the bottom must have at least 2 axes (N, C, ...), got shape {list(shape)}")
        param = layer.prelu_param
        if param.HasField("filler"):
            filler = param.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        blob_shape: tuple[int, ...] = () if param.channel_shared else (shape[1],)
        slope = fill(blob_shape, filler, f"layer '{layer.name}'")
        return cls(shape[1], param.channel_shared, slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight.reshape(-1))


@register("ELU")
class ELU(CaffeLayer):
    """``y = max(x, 0) + alpha * (exp(min(x, 0)) - 1)`` (``elu_layer.cpp``); the gradient at 0 is
    ``alpha``, as Caffe's ``x <= 0`` branch gives."""

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "elu" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 0.5 } }
"""
    )

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ELU:
        ctx.check_bottoms(1)
        return cls(layer.elu_param.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, self.alpha)


@register("AbsVal")
class AbsVal(CaffeLayer):
    """``y = |x|`` (``absval_layer.cpp``); the gradient is ``sign(x)`` (0 at 0)."""

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "abs" type: "AbsVal" bottom: "x" top: "y" }
"""
    )

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> AbsVal:
        ctx.check_bottoms(1)
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


@register("BNLL")
class BNLL(CaffeLayer):
    """``y = log(1 + exp(x))`` (``bnll_layer.cpp``).

    Caffe evaluates the stable form ``x + log(1 + exp(-x))`` for ``x > 0`` and differentiates as
    ``sigmoid(min(x, 50))``; ``F.softplus`` with threshold 50 gives the same values in float32
    (above 50 both the value is ``x`` and the gradient 1).
    """

    family = "activation"

    THRESHOLD = 50.0
    example = (
        _ONE_BLOB
        + """layer { name: "bnll" type: "BNLL" bottom: "x" top: "y" }
"""
    )

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> BNLL:
        ctx.check_bottoms(1)
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, beta=1.0, threshold=self.THRESHOLD)


@register("Power")
class Power(CaffeLayer):
    """``y = (shift + scale * x) ^ power`` (``power_layer.cpp``).

    As in Caffe, when ``power * scale == 0`` the input is ignored: the top is the constant
    ``1`` (power 0) or ``shift ^ power``, and the bottom's gradient is zero.
    """

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "pow" type: "Power" bottom: "x" top: "y"
        power_param { power: 2 scale: 0.5 shift: 1 } }
"""
    )

    def __init__(self, power: float = 1.0, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.power = float(power)
        self.scale = float(scale)
        self.shift = float(shift)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Power:
        ctx.check_bottoms(1)
        param = layer.power_param
        return cls(param.power, param.scale, param.shift)

    def _constant(self) -> float:
        """Caffe's value when the input is ignored: 1 for power 0, else ``shift ^ power`` in
        float32 (NaN or inf where C's ``pow`` gives them)."""
        if self.power == 0.0:
            return 1.0
        return torch.tensor(self.shift, dtype=torch.float32).pow(self.power).item()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.power * self.scale == 0.0:
            return torch.full_like(x, self._constant())
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        if self.power != 1.0:
            y = y.square() if self.power == 2.0 else y.pow(self.power)
        return y


def _natural_log(base: float) -> float:
    """``ln(base)``, ``base = -1`` meaning e (exactly 1), with Caffe's check that a given base is
    strictly positive."""
    if base == -1.0:
        return 1.0
    if not base > 0.0:
        raise ValueError(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register("Exp")
class Exp(CaffeLayer):
    """``y = base ^ (shift + scale * x)`` (``exp_layer.cpp``), ``base = -1`` meaning e.

    Computed as Caffe does: ``outer * exp(inner * x)`` with ``inner = ln(base) * scale`` and
    ``outer = base ^ shift``.
    """

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "exp" type: "Exp" bottom: "x" top: "y"
        exp_param { base: 2 scale: 0.5 shift: 0.1 } }
"""
    )

    def __init__(self, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        log_base = _natural_log(base)
        self.base = float(base)
        self.inner_scale = log_base * float(scale)
        if shift == 0.0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if base == -1.0 else math.pow(base, shift)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Exp:
        ctx.check_bottoms(1)
        param = layer.exp_param
        try:
            return cls(param.base, param.scale, param.shift)
        except ValueError as exc:
            raise ctx.error(str(exc)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x if self.inner_scale == 1.0 else x * self.inner_scale)
        return y if self.outer_scale == 1.0 else y * self.outer_scale


@register("Log")
class Log(CaffeLayer):
    """``y = log_base(shift + scale * x)`` (``log_layer.cpp``), ``base = -1`` meaning e."""

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "log" type: "Log" bottom: "x" top: "y" log_param { scale: 0.5 shift: 10 } }
"""
    )

    def __init__(self, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        log_base = _natural_log(base)
        if log_base == 0.0:
            raise ValueError("base 1 has no logarithm (1 / log(base) is infinite)")
        self.base = float(base)
        self.base_scale = 1.0 / log_base
        self.scale = float(scale)
        self.shift = float(shift)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Log:
        ctx.check_bottoms(1)
        param = layer.log_param
        try:
            return cls(param.base, param.scale, param.shift)
        except ValueError as exc:
            raise ctx.error(str(exc)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        y = torch.log(y)
        return y if self.base_scale == 1.0 else y * self.base_scale


@register("Threshold")
class Threshold(CaffeLayer):
    """``y = 1 if x > threshold else 0`` (``threshold_layer.cpp``). Caffe has no backward for it;
    here the top carries no gradient."""

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "th" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.2 } }
"""
    )

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = float(threshold)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Threshold:
        ctx.check_bottoms(1)
        return cls(layer.threshold_param.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)


@register("Dropout")
class Dropout(CaffeLayer):
    """Caffe's Dropout (``dropout_layer.cpp`` of happynear/caffe-windows).

    TRAIN: each element is kept with probability ``1 - dropout_ratio`` and the kept ones are
    multiplied by ``1 / (1 - dropout_ratio)`` (its square root with the fork's ``sqrt_scale``);
    the gradient uses the same mask and scale. TEST: the identity. The phase is fixed when the
    net is built. The mask comes from torch's generator, not Caffe's random stream.
    """

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.3 } }
"""
    )

    def __init__(self, dropout_ratio: float = 0.5, train: bool = True, sqrt_scale: bool = False) -> None:
        super().__init__()
        if not 0.0 <= dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio}")
        self.dropout_ratio = float(dropout_ratio)
        self.train_phase = bool(train)
        scale = 1.0 / (1.0 - self.dropout_ratio)
        self.scale = math.sqrt(scale) if sqrt_scale else scale

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Dropout:
        ctx.check_bottoms(1)
        param = layer.dropout_param
        try:
            return cls(param.dropout_ratio, ctx.train, param.sqrt_scale)
        except ValueError as exc:
            raise ctx.error(str(exc)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.train_phase or self.dropout_ratio == 0.0:
            return x
        keep = torch.rand_like(x) >= self.dropout_ratio
        return x * (keep.to(x.dtype) * self.scale)

    def extra_repr(self) -> str:
        phase = "TRAIN" if self.train_phase else "TEST"
        return f"{super().extra_repr()}, dropout_ratio={self.dropout_ratio}, phase={phase}".lstrip(", ")


@register("Swish")
class Swish(CaffeLayer):
    """``y = x * sigmoid(beta * x)`` (BVLC's ``swish_layer.cpp``; its backward is the exact
    gradient)."""

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "swish" type: "Swish" bottom: "x" top: "y" swish_param { beta: 1.5 } }
"""
    )

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = float(beta)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Swish:
        ctx.check_bottoms(1)
        return cls(layer.swish_param.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta == 1.0:
            return F.silu(x)
        return x * torch.sigmoid(x * self.beta)


@register("Clip")
class Clip(CaffeLayer):
    """``y = max(min, min(x, max))`` (BVLC's ``clip_layer.cpp``); the gradient passes where
    ``min <= x <= max``. With ``min > max`` Caffe's formula gives ``min`` everywhere (and no
    gradient), which is reproduced."""

    family = "activation"

    example = (
        _ONE_BLOB
        + """layer { name: "clip" type: "Clip" bottom: "x" top: "y" clip_param { min: -0.5 max: 0.5 } }
"""
    )

    def __init__(self, min: float, max: float) -> None:  # noqa: A002  (Caffe's field names)
        super().__init__()
        self.min = float(min)
        self.max = float(max)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Clip:
        ctx.check_bottoms(1)
        param = layer.clip_param
        missing = [name for name in ("min", "max") if not param.HasField(name)]
        if missing:
            raise ctx.error(f"clip_param must give {' and '.join(missing)} (required fields)")
        return cls(param.min, param.max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.min <= self.max:
            return torch.clamp(x, self.min, self.max)
        return torch.clamp(x, max=self.max).clamp(min=self.min)
