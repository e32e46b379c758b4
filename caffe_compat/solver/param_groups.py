"""The solver's view of a net's parameters: Caffe's ``learnable_params_`` with their multipliers.

Rules followed (net.cpp ``AppendParam``, sgd_solver.cpp): the solver updates each *owned* blob once
(a blob shared through ``param { name }`` is updated through its owner), in the order the net
creates them; each carries ``lr_mult`` and ``decay_mult`` (defaults 1). A blob with ``lr_mult: 0``
gets no gradient (``param_propagate_down`` is false) unless the net says ``force_backward: true``;
BatchNorm's statistics are such blobs. Its diff is zero, but weight decay still adds to it, which
matters for the history adaptive solvers keep and for the gradient norm ``clip_gradients`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from caffe_compat.net.net import Net


@dataclass
class LearnableParam:
    """One blob the solver updates.

    Attributes:
        layer: the owning layer's name.
        index: the blob's index in the layer (Caffe order).
        tensor: the blob (an ``nn.Parameter`` or, for statistics, a buffer).
        lr_mult, decay_mult: the multipliers, float32 as Caffe keeps them.
        display_name: Caffe's ``param_display_names_`` entry (the ParamSpec name or the index).
        gets_diff: whether backward gives the blob a gradient.
    """

    layer: str
    index: int
    tensor: torch.Tensor
    lr_mult: np.float32
    decay_mult: np.float32
    display_name: str
    gets_diff: bool

    @property
    def label(self) -> str:
        return f"{self.layer}[{self.index}]"

    def diff(self) -> torch.Tensor:
        """The accumulated gradient as Caffe's diff (float32, zeros where there is none)."""
        grad = self.tensor.grad if self.gets_diff else None
        if grad is None:
            return torch.zeros_like(self.tensor, dtype=torch.float32)
        return grad.detach().to(torch.float32).clone()


def learnable_params(net: Net) -> list[LearnableParam]:
    """The net's learnable blobs in Caffe's ``learnable_params_`` order."""
    force = bool(net.net_param.force_backward)
    params = []
    for entry in net.learnable_params():
        # the module's current tensor: ``Module.to`` replaces buffers (statistics) by new tensors
        tensor = net.layers[entry.layer].caffe_blob_tensors()[entry.index]
        layer_param = net.layer_params[entry.layer]
        spec_name = layer_param.param[entry.index].name if entry.index < len(layer_param.param) else ""
        is_parameter = isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad
        params.append(
            LearnableParam(
                layer=entry.layer,
                index=entry.index,
                tensor=tensor,
                lr_mult=np.float32(entry.lr_mult),
                decay_mult=np.float32(entry.decay_mult),
                display_name=spec_name or str(entry.index),
                gets_diff=is_parameter and (entry.lr_mult != 0 or force),
            )
        )
    return params
