"""The base class every Caffe layer module derives from.

A layer module is a plain ``nn.Module`` whose ``forward(*bottoms)`` returns its top (or a tuple
of tops). It declares its parameter blobs *in Caffe order* (``caffe_blobs``) and stores each in
Caffe's own shape, so weight conversion and caffemodel round trips are generic (``weights.py``).
``from_caffe`` reads the LayerParameter (defaults come from the protobuf message) and the bottom
shapes, the way Caffe's ``LayerSetUp``/``Reshape`` do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from caffe_compat.errors import LayerError
from caffe_compat.proto import caffe_pb2

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Blob:
    """One parameter blob of a layer, in Caffe order.

    Attributes:
        name: attribute name on the module (``weight``, ``bias``, ``mean_sum`` ...).
        learnable: an ``nn.Parameter`` when True; a buffer (statistics, counters) when False.
        optional: may be absent (e.g. ``bias`` with ``bias_term: false``); absent blobs are None.
    """

    name: str
    learnable: bool = True
    optional: bool = False


@dataclass
class BuildContext:
    """What a layer may know when it is built: its parameters, bottom shapes, phase, paths."""

    layer: caffe_pb2.LayerParameter
    bottom_shapes: list[Shape]
    phase: int = caffe_pb2.TRAIN
    net_dir: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def train(self) -> bool:
        return self.phase == caffe_pb2.TRAIN

    def error(self, message: str) -> LayerError:
        """An error naming this layer and its type, e.g. ``layer 'fc6' (InnerProduct): ...``."""
        return LayerError(f"layer '{self.layer.name}' ({self.layer.type}): {message}")

    def resolve_path(self, path: str) -> Path:
        """Resolve a path in a layer parameter as Caffe does: against the working directory,
        falling back to the prototxt's folder."""
        candidate = Path(path)
        if candidate.is_absolute() or candidate.exists() or self.net_dir is None:
            return candidate
        fallback = self.net_dir / candidate
        return fallback if fallback.exists() else candidate

    def check_bottoms(self, *allowed: int) -> None:
        """Raise unless the number of bottoms is one of ``allowed`` (Caffe's ExactNumBottomBlobs)."""
        count = len(self.layer.bottom)
        if count not in allowed:
            wanted = " or ".join(str(a) for a in allowed)
            raise self.error(f"takes {wanted} bottom blob(s), got {count}")

    def check_tops(self, *allowed: int) -> None:
        """Raise unless the number of tops is one of ``allowed``."""
        count = len(self.layer.top)
        if count not in allowed:
            wanted = " or ".join(str(a) for a in allowed)
            raise self.error(f"produces {wanted} top blob(s), got {count}")


def canonical_axis(axis: int, num_axes: int, ctx: BuildContext | None = None) -> int:
    """Caffe's ``Blob::CanonicalAxisIndex``: negative axes count from the end."""
    if not -num_axes <= axis < num_axes:
        message = f"axis {axis} is out of range for a {num_axes}-D blob"
        raise ctx.error(message) if ctx is not None else LayerError(message)
    return axis + num_axes if axis < 0 else axis


class CaffeLayer(nn.Module):
    """Base of all layer modules.

    Class attributes set by subclasses:
        caffe_type: the Caffe type string (set by ``@register``).
        caffe_blobs: the parameter blobs in Caffe order.
        family: the group the type belongs to in the docs (``activation``, ``NormFace``, ...), set
            explicitly by every built-in class.
        fork_gpu_only: the fork implements the type in CUDA only (its CPU Forward is
            NOT_IMPLEMENTED); this class follows the ``.cu`` code on every device.
        is_loss: a loss layer (its first top has loss weight ``default_loss_weight`` unless the
            prototxt says otherwise, Caffe's ``LossLayer::LayerSetUp``); deploy nets drop it.
        default_loss_weight: the loss weight of a loss layer's first top when the prototxt gives
            none: 1, as ``LossLayer::LayerSetUp`` sets it; 0 for a loss layer whose own LayerSetUp
            never calls that (the fork's CenterLoss). Ignored unless ``is_loss``.
        is_data: a data layer (no bottoms; its tops are the net's inputs unless fed by the caller);
            it implements ``next_batch() -> tuple[Tensor, ...]`` (CPU tensors, one per top).
    """

    caffe_type: ClassVar[str] = ""
    caffe_blobs: ClassVar[tuple[Blob, ...]] = ()
    family: ClassVar[str] = ""
    fork_gpu_only: ClassVar[bool] = False
    is_loss: ClassVar[bool] = False
    default_loss_weight: ClassVar[float] = 1.0
    is_data: ClassVar[bool] = False
    #: A minimal net (Input layers + this layer) used by the registry-driven tests and the docs.
    example: ClassVar[str] = ""
    #: ``input_shapes`` to build ``example`` with (data layers whose source need not exist).
    example_input_shapes: ClassVar[dict[str, tuple[int, ...]]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.caffe_name: str = ""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> CaffeLayer:
        """Build the module from its LayerParameter and bottom shapes."""
        raise NotImplementedError(f"{cls.__name__}.from_caffe")

    # -- blobs ---------------------------------------------------------------------------------
    def set_blob(self, name: str, value: torch.Tensor | None) -> None:
        """Install a declared blob (a Parameter for learnable blobs, a buffer otherwise)."""
        spec = next((b for b in self.caffe_blobs if b.name == name), None)
        if spec is None:
            raise KeyError(f"{type(self).__name__} declares no blob '{name}'")
        if value is None:
            if spec.learnable:
                self.register_parameter(name, None)
            else:
                self.register_buffer(name, None)
        elif spec.learnable:
            param = value if isinstance(value, nn.Parameter) else nn.Parameter(value)
            self.register_parameter(name, param)
        else:
            self.register_buffer(name, value)

    def caffe_blob_tensors(self) -> list[torch.Tensor]:
        """The blobs present, in Caffe order (absent optional blobs are skipped)."""
        tensors = []
        for spec in self.caffe_blobs:
            value = getattr(self, spec.name, None)
            if value is not None:
                tensors.append(value)
        return tensors

    def present_blob_specs(self) -> list[Blob]:
        """Declarations of the blobs present, aligned with ``caffe_blob_tensors``."""
        return [spec for spec in self.caffe_blobs if getattr(self, spec.name, None) is not None]

    @classmethod
    def param_specs(cls, layer: caffe_pb2.LayerParameter, num_blobs: int) -> list[caffe_pb2.ParamSpec]:
        """The ParamSpec (lr_mult, decay_mult, name) of each blob present, Caffe's defaults filled
        in for blobs the prototxt gives no ``param`` for (``Net::AppendParam``)."""
        specs = []
        for i in range(num_blobs):
            spec = caffe_pb2.ParamSpec()
            if i < len(layer.param):
                spec.CopyFrom(layer.param[i])
            specs.append(spec)
        return specs

    # -- shapes --------------------------------------------------------------------------------
    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        """Top shapes for the given bottom shapes (Caffe's ``Reshape``).

        The default runs ``forward`` on meta tensors (no data, no compute, module state
        untouched); layers whose forward depends on data values override this.
        """
        meta_state = {
            name: torch.empty_like(value, device="meta")
            for name, value in [*self.named_parameters(), *self.named_buffers()]
        }
        bottoms = [torch.empty(shape, device="meta") for shape in bottom_shapes]
        with torch.no_grad():
            tops = torch.func.functional_call(self, meta_state, tuple(bottoms))
        if isinstance(tops, torch.Tensor):
            tops = (tops,)
        return [tuple(top.shape) for top in tops]

    def extra_repr(self) -> str:
        return f"caffe_name={self.caffe_name!r}" if self.caffe_name else ""
