"""``caffe.coord_map``: how spatial coordinates map between the tops of a ``NetSpec`` net, to
crop and align feature maps (BVLC's ``python/caffe/coord_map.py``, used by FCN).

A map is ``(axis, a, b)``: output coordinate ``a * x + b`` for input coordinate ``x`` (``a`` and
``b`` arrays over the spatial axes from ``axis`` on; ``axis`` None for point-wise layers).
Convolution/Pooling/Im2col map with ``a = 1/stride``, ``b = (pad - (k_eff - 1)/2) / stride``
(``k_eff`` the dilated kernel), Deconvolution inversely, Crop shifts by ``-offset``, point-wise
layers are the identity; any other layer stops the walk.
"""

from __future__ import annotations

import numpy as np

from caffe_compat.pycaffe.net_spec import Top, layers

PASS_THROUGH_LAYERS = [
    "AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp", "MVN",
    "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold",
]  # fmt: skip


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping."""


class AxisMismatchException(Exception):
    """Two mappings on different axes cannot be composed."""


def conv_params(fn) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(axis, stride, effective kernel size, pad)`` of a Convolution-like or Pooling layer."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)
    assert not legacy, "cropping does not support legacy _h/_w params"
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (
        params.get("axis", 1),
        np.array(params.get("stride", 1), ndmin=1),
        (kernel - 1) * dilation + 1,
        np.array(params.get("pad", 0), ndmin=1),
    )


def crop_params(fn) -> tuple[int, np.ndarray]:
    """``(axis, offset)`` of a Crop layer (axis 2 by default)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn) -> tuple:
    """The mapping one layer applies, from its bottom's coordinates to its top's."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset
    raise UndefinedMapException


def compose(base_map: tuple, next_map: tuple) -> tuple:
    """``base`` after ``next``: scales multiply, ``next``'s shift is scaled by ``base``'s scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException
    return axis, a1 * a2, a1 * b2 + b1


def inverse(mapping: tuple) -> tuple:
    """The inverse mapping (for going from a top back to a bottom)."""
    axis, a, b = mapping
    return axis, 1 / a, -b / a


def _mappable_bottoms(top: Top) -> tuple:
    """The bottoms a walk may follow (a Crop layer's reference bottom is not mapped)."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def coord_map_from_to(top_from: Top, top_to: Top) -> tuple:
    """The mapping from ``top_from``'s coordinates to ``top_to``'s, through their nearest common
    ancestor. Raises RuntimeError when no spatial path connects them."""
    from_maps = {top_from: (None, 1, 0)}
    frontier = {top_from}
    while frontier:
        top = frontier.pop()
        try:
            for bottom in _mappable_bottoms(top):
                from_maps[bottom] = compose(from_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            pass
    to_maps = {top_to: (None, 1, 0)}
    frontier = {top_to}
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            for bottom in _mappable_bottoms(top):
                to_maps[bottom] = compose(to_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            continue
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer cropping ``top_from`` to ``top_to``, its axis and offsets from the mapping."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    assert np.all(a == 1), f"scale mismatch on crop (a = {a})"
    assert np.all(b <= 0), f"cannot crop negative offset (b = {b})"
    assert np.all(np.round(b) == b), f"cannot crop noninteger offset (b = {b})"
    offsets = [int(x) for x in -np.round(np.atleast_1d(b)).astype(int)]
    return layers.Crop(top_from, top_to, crop_param={"axis": axis + 1, "offset": offsets})
