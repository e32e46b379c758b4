"""Caffe's recurrent layers: ``LSTM``, ``RNN`` (``recurrent_layer.cpp``, ``lstm_layer.cpp``,
``rnn_layer.cpp``) and ``LSTMUnit`` (``lstm_unit_layer.cpp``), as in BVLC Caffe and
happynear/caffe-windows.

Caffe builds an unrolled net of InnerProduct, Scale, Eltwise, LSTMUnit/TanH, Slice and Concat
layers; the modules here compute the same math natively in a time loop over the ``T`` steps:

* bottoms ``x`` (T, N, ...) and ``cont`` (T, N) (the sequence-continuation indicators), an optional
  static input ``x_static`` (N, ...), and with ``expose_hidden`` the start state (LSTM: ``h0``,
  ``c0``; RNN: ``h0``), each (1, N, num_output);
* tops ``h`` (LSTM) or ``o`` (RNN), (T, N, num_output), and with ``expose_hidden`` the final state
  (LSTM: ``hT``, ``cT``; RNN: ``hT``);
* the parameter blobs are the unrolled net's InnerProduct blobs in the order Caffe creates them.

Without ``expose_hidden`` each forward starts from the previous forward's final state (zeros at
first), which Caffe keeps in its unrolled net; here it lives in buffers that are not Caffe blobs.
No gradient crosses forwards, and with ``expose_hidden`` the start state bottoms get no diff (Caffe
shares their data only) and the diffs of the final-state tops are ignored. ``cont`` gets no diff.

Deliberate deviations: when the number of streams N grows again after shrinking, the carried state
restarts at zeros (Caffe would read stale memory beyond the last N); the carried state is not saved
in caffemodels (it is not a blob), and an exported graph starts from the state held at export time.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


# -- the LSTM step ---------------------------------------------------------------------------------
class _LSTMStep(torch.autograd.Function):
    """One LSTM step on (N, H) states and (N, 4H) gate pre-activations in the order i, f, o, g,
    with ``cont`` (N, 1): Caffe's ``LSTMUnitLayer`` forward and hand-written backward.

    ``f = cont * sigmoid(x_f)`` (exactly 0 where ``cont == 0``), ``c = f * c_prev + i * g``,
    ``h = o * tanh(c)``. The backward uses ``f * (1 - f)`` for the forget gate's derivative, which
    is the exact gradient only for ``cont`` in {0, 1}; ``cont`` gets no gradient.
    """

    @staticmethod
    def forward(
        ctx: Any, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_i, x_f, x_o, x_g = gates.chunk(4, dim=-1)
        i = torch.sigmoid(x_i)
        f = torch.where(cont == 0, torch.zeros_like(x_f), cont * torch.sigmoid(x_f))
        o = torch.sigmoid(x_o)
        g = torch.tanh(x_g)
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        h = o * tanh_c
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, h

    @staticmethod
    def backward(
        ctx: Any, dc: torch.Tensor, dh: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_term = dc + dh * o * (1 - tanh_c * tanh_c)
        d_c_prev = c_term * f if ctx.needs_input_grad[0] else None
        d_gates = None
        if ctx.needs_input_grad[1]:
            d_gates = torch.cat(
                (
                    c_term * g * i * (1 - i),
                    c_term * c_prev * f * (1 - f),
                    dh * tanh_c * o * (1 - o),
                    c_term * i * (1 - g * g),
                ),
                dim=-1,
            )
        return d_c_prev, d_gates, None


def lstm_step(
    c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's LSTMUnit on (N, H) ``c_prev``, (N, 4H) ``gates`` and (N,) ``cont``: returns (c, h)
    with Caffe's backward (see ``_LSTMStep``)."""
    cont = cont.detach().to(gates.dtype).reshape(-1, 1)
    return _LSTMStep.apply(c_prev, gates, cont)


@register("LSTMUnit")
class LSTMUnit(CaffeLayer):
    """One LSTM step (``lstm_unit_layer.cpp``): bottoms ``c_prev`` (1, N, H), ``x`` (1, N, 4H) the
    gate pre-activations in order i, f, o, g, ``cont`` (1, N); tops ``c`` and ``h`` (1, N, H).

    ``i, o = sigmoid``, ``g = tanh``, ``f = cont * sigmoid(x_f)`` (0 where ``cont`` is 0),
    ``c = f * c_prev + i * g``, ``h = o * tanh(c)``. Caffe's backward (exact for ``cont`` in
    {0, 1}; for other values the forget gate's derivative is ``f * (1 - f)``, as in Caffe);
    ``cont`` gets no diff (Caffe aborts if asked for one).
    """

    family = "recurrent"

    example = """
layer { name: "c_prev" type: "Input" top: "c_prev" input_param { shape { dim: 1 dim: 3 dim: 5 } } }
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 20 } } }
layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> LSTMUnit:
        ctx.check_bottoms(3)
        ctx.check_tops(2)
        c_prev, x, cont = (tuple(s) for s in ctx.bottom_shapes)
        for index, (shape, axes) in enumerate(((c_prev, 3), (x, 3), (cont, 2))):
            if len(shape) != axes:
                raise ctx.error(f"bottom[{index}] must have {axes} axes, got shape {list(shape)}")
            if shape[0] != 1:
                raise ctx.error(
                    f"bottom[{index}] must hold a single timestep (shape(0) = 1), got {list(shape)}"
                )
            if shape[1] != c_prev[1]:
                raise ctx.error(
                    f"bottom[{index}] has {shape[1]} streams (shape(1)), bottom[0] {c_prev[1]}: "
                    f"shapes {list(c_prev)}, {list(x)}, {list(cont)}"
                )
        if x[2] != 4 * c_prev[2]:
            raise ctx.error(
                f"bottom[1] (the gate inputs) must have 4 * {c_prev[2]} = {4 * c_prev[2]} channels, "
                f"got shape {list(x)}"
            )
        return cls()

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0]), tuple(bottom_shapes[0])]

    def forward(
        self, c_prev: torch.Tensor, x: torch.Tensor, cont: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shape = c_prev.shape
        c, h = lstm_step(c_prev.reshape(shape[1], -1), x.reshape(shape[1], -1), cont)
        return c.reshape(shape), h.reshape(shape)


# -- LSTM and RNN ----------------------------------------------------------------------------------
def _count(shape: Shape, start: int) -> int:
    return math.prod(int(d) for d in shape[start:])


class _Recurrent(CaffeLayer):
    """What ``RecurrentLayer`` shares between LSTM and RNN: bottoms, tops, the start state.

    Subclasses set ``state_names`` (the recurrent blobs, Caffe's ``RecurrentInputBlobNames``
    order) and implement ``_blob_shapes`` and ``_run``.
    """

    family = "recurrent"
    state_names: ClassVar[tuple[str, ...]] = ()
    #: the blobs of the step's pre-activation ``W_h (cont_t h_{t-1}) + W_x x_t + b [+ W_static
    #: x_static]``, as (W_x, b, W_static, W_h)
    pre_activation_blobs: ClassVar[tuple[str, str, str, str]]

    def __init__(
        self,
        num_output: int,
        num_timesteps: int,
        num_streams: int,
        input_dim: int,
        static_dim: int | None = None,
        expose_hidden: bool = False,
        blobs: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if num_output <= 0:
            raise LayerError("num_output must be positive")
        self.num_output = int(num_output)
        self.num_timesteps = int(num_timesteps)
        self.input_dim = int(input_dim)
        self.static_dim = None if static_dim is None else int(static_dim)
        self.expose_hidden = bool(expose_hidden)
        shapes = self._blob_shapes()
        blobs = blobs or {}
        for spec in self.caffe_blobs:
            shape = shapes.get(spec.name)
            value = None if shape is None else blobs.get(spec.name, torch.zeros(shape))
            self.set_blob(spec.name, value)
        if not self.expose_hidden:
            # the previous forward's final state (Caffe's unrolled-net recurrent outputs): not blobs
            for name in self.state_names:
                self.register_buffer(
                    f"{name}_state", torch.zeros(1, int(num_streams), self.num_output), persistent=False
                )

    def _blob_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    @classmethod
    def _filler_of(cls, blob_name: str, param: caffe_pb2.RecurrentParameter) -> caffe_pb2.FillerParameter:
        return param.bias_filler if blob_name.startswith("b_") else param.weight_filler

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> _Recurrent:
        param = layer.recurrent_param
        expose = param.expose_hidden
        num_state = len(cls.state_names) if expose else 0
        ctx.check_bottoms(2 + num_state, 3 + num_state)
        ctx.check_tops(1 + num_state)
        if param.num_output <= 0:
            raise ctx.error("num_output must be positive")
        shapes = [tuple(int(d) for d in s) for s in ctx.bottom_shapes]
        x, cont = shapes[0], shapes[1]
        if len(x) < 3:
            raise ctx.error(
                f"bottom[0] must have at least 3 axes (#timesteps, #streams, input...), got shape {list(x)}"
            )
        num_timesteps, num_streams = x[0], x[1]
        if cont != (num_timesteps, num_streams):
            raise ctx.error(
                f"bottom[1] (the sequence indicators) must have shape (#timesteps, #streams) = "
                f"{[num_timesteps, num_streams]}, got {list(cont)}"
            )
        static = len(shapes) > 2 + num_state
        static_dim = None
        if static:
            x_static = shapes[2]
            if len(x_static) < 2 or x_static[0] != num_streams:
                raise ctx.error(
                    f"bottom[2] (the static input) must have shape ({num_streams}, ...) with at least "
                    f"2 axes, got {list(x_static)}"
                )
            static_dim = _count(x_static, 1)
        state_shape = (1, num_streams, int(param.num_output))
        for offset, name in enumerate(cls.state_names if expose else ()):
            index = 2 + int(static) + offset
            if shapes[index] != state_shape:
                raise ctx.error(
                    f"bottom[{index}] ({name}0) shape must match the hidden state input shape "
                    f"{list(state_shape)}, got {list(shapes[index])}"
                )
        module = cls(param.num_output, num_timesteps, num_streams, _count(x, 2), static_dim, expose)
        where = f"layer '{layer.name}'"
        with torch.no_grad():
            for spec in module.present_blob_specs():
                blob = getattr(module, spec.name)
                blob.copy_(fill(tuple(blob.shape), cls._filler_of(spec.name, param), where))
        return module

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        timesteps, streams = int(bottom_shapes[0][0]), int(bottom_shapes[0][1])
        state = (1, streams, self.num_output)
        return [(timesteps, streams, self.num_output)] + (
            [state] * len(self.state_names) if self.expose_hidden else []
        )

    # -- the start state ---------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Zero the carried state (Caffe's ``RecurrentLayer::Reset``)."""
        if not self.expose_hidden:
            with torch.no_grad():
                for name in self.state_names:
                    getattr(self, f"{name}_state").zero_()

    def _carried(self, name: str, streams: int, like: torch.Tensor) -> torch.Tensor:
        """The state the last forward left, as (N, H). When the number of streams shrank, the first
        streams' states (Caffe reuses the blob's memory); when it grew, zeros (a fresh blob)."""
        state = getattr(self, f"{name}_state")
        if state.shape[1] >= streams:
            start = state[0, :streams].clone()  # the buffer is overwritten after this forward
        else:
            start = torch.zeros(streams, self.num_output, dtype=state.dtype, device=state.device)
        return start.to(dtype=like.dtype, device=like.device)

    def _keep(self, name: str, final: torch.Tensor) -> None:
        state = getattr(self, f"{name}_state")
        final = final.detach().reshape(1, -1, self.num_output)
        with torch.no_grad():
            if state.shape == final.shape:
                state.copy_(final)
            else:
                self.register_buffer(f"{name}_state", final.to(state.dtype).clone(), persistent=False)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor) -> Any:
        timesteps, streams = int(x.shape[0]), int(x.shape[1])
        if timesteps != self.num_timesteps:
            raise LayerError(
                f"layer '{self.caffe_name}' ({self.caffe_type}): input number of timesteps changed "
                f"({self.num_timesteps} at set-up, {timesteps} now)"
            )
        has_static = self.static_dim is not None
        x_static = rest[0] if has_static else None
        if self.expose_hidden:
            hidden = rest[int(has_static) :]
            start = [h.detach().reshape(streams, self.num_output) for h in hidden]
        else:
            start = [self._carried(name, streams, x) for name in self.state_names]
        cont = cont.detach().to(x.dtype).reshape(timesteps, streams)
        x = x.reshape(timesteps, streams, -1)
        if x_static is not None:
            x_static = x_static.reshape(streams, -1)
        output, final = self._run(x, cont, x_static, start)
        finals = [f.detach().reshape(1, streams, self.num_output) for f in final]
        if self.expose_hidden:
            return (output, *finals)
        for name, value in zip(self.state_names, finals, strict=True):
            self._keep(name, value)
        return output

    def _run(
        self,
        x: torch.Tensor,
        cont: torch.Tensor,
        x_static: torch.Tensor | None,
        start: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The unrolled net on (T, N, D) ``x``, (T, N) ``cont``, (N, Ds) ``x_static`` and the (N, H)
        start states: returns the (T, N, H) output and the final states. Each step computes the
        pre-activation ``W_h (cont_t h_{t-1}) + W_x x_t + b [+ W_static x_static]`` (``h`` the first
        state) and hands it to ``_step``."""
        w_x, b, w_static, w_h = (getattr(self, name) for name in self.pre_activation_blobs)
        x_pre = F.linear(x, w_x, b)
        static_pre = None if x_static is None else F.linear(x_static, w_static)
        state = start
        outputs = []
        for t in range(x.shape[0]):
            pre = F.linear(cont[t].unsqueeze(1) * state[0], w_h) + x_pre[t]
            if static_pre is not None:
                pre = pre + static_pre
            state, output = self._step(pre, cont[t], state)
            outputs.append(output)
        return torch.stack(outputs), state

    def _step(
        self, pre: torch.Tensor, cont: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One time step from its pre-activation, (N,) ``cont`` and the states: the new states and
        the step's output."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        text = (
            f"num_output={self.num_output}, timesteps={self.num_timesteps}, "
            f"expose_hidden={self.expose_hidden}"
        )
        return f"{super().extra_repr()}, {text}".lstrip(", ")


_LSTM_EXAMPLE = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 dim: 3 dim: 2 } } }
layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "x_static" type: "Input" top: "x_static" input_param { shape { dim: 2 dim: 5 } } }
"""


@register("LSTM")
class LSTM(_Recurrent):
    """BVLC's LSTM (``lstm_layer.cpp``, ``recurrent_layer.cpp``).

    Blobs (Caffe order): ``W_xc`` (4H, D), ``b_c`` (4H,), ``W_xc_static`` (4H, Ds) with a static
    input, ``W_hc`` (4H, H); gates in the order i, f, o, g. For t = 1 … T::

        gates_t = W_xc x_t + b_c + W_hc (cont_t h_{t-1}) [+ W_xc_static x_static]
        c_t, h_t = LSTMUnit(c_{t-1}, gates_t, cont_t)

    with ``D = count(x, 2)`` (InnerProduct axis 2) and ``Ds = count(x_static, 1)``. Top ``h``
    (T, N, H) and, with ``expose_hidden``, ``hT`` and ``cT`` (1, N, H). The start state is the
    bottoms ``h0``, ``c0`` (expose_hidden) or the previous forward's final state (buffers
    ``h_state``, ``c_state``; ``reset_state()`` zeroes them). Backward: Caffe's LSTMUnit backward
    inside the exact gradient of the rest; no diff to ``h0``/``c0``/``cont``, none from ``hT``/``cT``.
    ``debug_info`` (logging of the unrolled net) is ignored.
    """

    family = "recurrent"

    caffe_blobs = (
        Blob("W_xc"),
        Blob("b_c"),
        Blob("W_xc_static", optional=True),
        Blob("W_hc"),
    )
    state_names = ("h", "c")
    pre_activation_blobs = ("W_xc", "b_c", "W_xc_static", "W_hc")
    example = (
        _LSTM_EXAMPLE
        + """layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "x_static" top: "h"
  recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.5 max: 0.5 } } }
"""
    )

    def _blob_shapes(self) -> dict[str, tuple[int, ...]]:
        gates = 4 * self.num_output
        shapes = {"W_xc": (gates, self.input_dim), "b_c": (gates,), "W_hc": (gates, self.num_output)}
        if self.static_dim is not None:
            shapes["W_xc_static"] = (gates, self.static_dim)
        return shapes

    def _step(
        self, gates: torch.Tensor, cont: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        c, h = lstm_step(state[1], gates, cont)
        return [h, c], h


@register("RNN")
class RNN(_Recurrent):
    """BVLC's simple RNN (``rnn_layer.cpp``, ``recurrent_layer.cpp``).

    Blobs (Caffe order): ``W_xh`` (H, D), ``b_h`` (H,), ``W_xh_static`` (H, Ds) with a static
    input, ``W_hh`` (H, H), ``W_ho`` (H, H), ``b_o`` (H,). For t = 1 … T::

        h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
        o_t = tanh(W_ho h_t + b_o)

    Top ``o`` (T, N, H) and, with ``expose_hidden``, ``hT`` (1, N, H). The start state is the bottom
    ``h0`` (expose_hidden) or the previous forward's final ``h`` (buffer ``h_state``). Backward: the
    exact gradient, with no diff to ``h0``/``cont`` and none from ``hT``.
    """

    family = "recurrent"

    caffe_blobs = (
        Blob("W_xh"),
        Blob("b_h"),
        Blob("W_xh_static", optional=True),
        Blob("W_hh"),
        Blob("W_ho"),
        Blob("b_o"),
    )
    state_names = ("h",)
    pre_activation_blobs = ("W_xh", "b_h", "W_xh_static", "W_hh")
    example = (
        _LSTM_EXAMPLE
        + """layer { name: "h0" type: "Input" top: "h0" input_param { shape { dim: 1 dim: 2 dim: 3 } } }
layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" bottom: "x_static" bottom: "h0" top: "o" top: "hT"
  recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: "gaussian" std: 0.3 } } }
"""
    )

    def _blob_shapes(self) -> dict[str, tuple[int, ...]]:
        hidden = self.num_output
        shapes = {
            "W_xh": (hidden, self.input_dim),
            "b_h": (hidden,),
            "W_hh": (hidden, hidden),
            "W_ho": (hidden, hidden),
            "b_o": (hidden,),
        }
        if self.static_dim is not None:
            shapes["W_xh_static"] = (hidden, self.static_dim)
        return shapes

    def _step(
        self, pre: torch.Tensor, cont: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        h = torch.tanh(pre)
        return [h], torch.tanh(F.linear(h, self.W_ho, self.b_o))
