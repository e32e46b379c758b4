"""Detection layers of happynear/caffe-windows: ROIPooling, PSROIPooling, Proposal, PredictBox, Hotspot.

Each class follows the fork's C++/CUDA (``roi_pooling_layer.cpp``/``.cu``,
``psroi_pooling_layer.cu``, ``proposal_layer.cpp`` with ``util/nms.cpp``,
``predict_box_layer.cpp``, ``hotspot_layer.cpp``), repeating the float32 arithmetic that decides
integer positions. Proposal (and PredictBox's box-list top) have data-dependent sizes: they run
eagerly and refuse to be traced for export with an ``ExportError`` naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_L = TypeVar("_L", bound=CaffeLayer)

#: ``-FLT_MAX``, the start value of Caffe's max pooling.
NEG_FLT_MAX = -3.4028234663852886e38


def _numpy_dtype(dtype: torch.dtype) -> type[np.floating]:
    """The numpy scalar type that repeats Caffe's ``Dtype`` arithmetic for a tensor dtype."""
    return np.float64 if dtype == torch.float64 else np.float32


def _traced(*tensors: torch.Tensor) -> bool:
    """Whether the forward runs under a tracer (fx export, ``torch.jit.trace``) rather than eagerly."""
    return torch.jit.is_tracing() or any(isinstance(t, torch.fx.Proxy) for t in tensors)


class _DetectionLayer(CaffeLayer):
    """Errors naming the layer and its type."""

    def _error(self, message: str) -> LayerError:
        return LayerError(f"layer '{self.caffe_name or '?'}' ({self.caffe_type}): {message}")

    def _refuse_export(self, why: str) -> None:
        from caffe_compat.export.errors import ExportError  # here: caffe_compat.export imports the layers

        raise ExportError(
            f"layer '{self.caffe_name or '?'}' ({self.caffe_type}) cannot be exported: {why}; "
            "it runs only eagerly (caffe_compat.Net)"
        )


def _rois_rows(rois: torch.Tensor, what: str, layer: _DetectionLayer) -> torch.Tensor:
    """The (R, 5) ROI rows Caffe reads (``bottom_rois + n * 5``)."""
    if rois.dim() < 2 or int(np.prod(rois.shape[1:])) != 5:
        raise layer._error(
            f"{what} must have shape (R, 5) = (batch index, x1, y1, x2, y2), got {list(rois.shape)}"
        )
    return rois.detach().reshape(rois.shape[0], 5)


def _built(layer: caffe_pb2.LayerParameter, ctx: BuildContext, make: Callable[[], _L]) -> _L:
    """The module ``make()`` builds (its ``LayerError`` reported as a build error), named after
    ``layer`` and checked once against the build-time bottom shapes."""
    try:
        module = make()
    except LayerError as exc:
        raise ctx.error(str(exc)) from None
    module.caffe_name = layer.name
    module.top_shapes(list(ctx.bottom_shapes))
    return module


def _check_batch_index(batch: torch.Tensor, num: int, layer: _DetectionLayer) -> None:
    """Caffe's ``CHECK_GE(roi_batch_ind, 0)``, ``CHECK_LT(roi_batch_ind, batch_size)`` (eager only)."""
    if batch.numel() and (bool((batch < 0).any()) or bool((batch >= num).any())):
        bad = batch[(batch < 0) | (batch >= num)][0].item()
        raise layer._error(f"a roi's batch index {bad} is outside [0, {num})")


# -- ROIPooling ------------------------------------------------------------------------------------


@register("ROIPooling")
class ROIPooling(_DetectionLayer):
    """Fast R-CNN max pooling over regions (``roi_pooling_layer.cpp``; backward ``.cu``).

    Bottoms x (N, C, H, W) and rois (R, 5) = (batch index, x1, y1, x2, y2); top (R, C, pooled_h,
    pooled_w). Corners ``floor(v * spatial_scale + 0.5)``, size ``max(end - start + 1, 1)``, bin
    ``ph`` spans ``[floor(ph * size / pooled), ceil((ph + 1) * size / pooled))`` (float32) offset by
    the start and clipped to the map; an empty bin gives 0. Ties go to the first maximum in
    row-major order. A batch index outside the batch fails (Caffe's CHECK; eager runs only).

    Backward: Caffe has none on CPU; this follows the GPU kernel ``ROIPoolBackward``: each top diff
    goes to its argmax cell, only where that cell lies inside the roi's ``[start, end]`` corners
    (so a roi with ``end < start`` passes no gradient) and the kernel's float32 bin search finds the
    bin again. rois get no gradient. Deviation: NaN inputs propagate (Caffe's ``>`` skips them).
    """

    family = "detection"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 10 } } }
layer { name: "rois" type: "Input" top: "rois" input_param { shape { dim: 4 dim: 5 } } }
layer { name: "roi" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y"
        roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 } }
"""

    def __init__(self, pooled: tuple[int, int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.pooled = (int(pooled[0]), int(pooled[1]))
        self.spatial_scale = float(spatial_scale)
        if min(self.pooled) <= 0:
            raise LayerError(f"pooled_h and pooled_w must be > 0, got {list(self.pooled)}")

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ROIPooling:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        p = layer.roi_pooling_param
        return _built(layer, ctx, lambda: cls((p.pooled_h, p.pooled_w), p.spatial_scale))

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, rois = bottom_shapes[0], bottom_shapes[1]
        if len(x) != 4:
            raise self._error(f"x must have 4 axes (N, C, H, W), got {list(x)}")
        if len(rois) < 2 or int(np.prod(rois[1:])) != 5:
            raise self._error(f"rois must have shape (R, 5), got {list(rois)}")
        return [(rois[0], x[1], *self.pooled)]

    def _corners(self, rois: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(batch, start_w, start_h, end_w, end_h) as int64: ``floorf(v * spatial_scale + 0.5)``."""
        scale = torch.tensor(self.spatial_scale, dtype=rois.dtype, device=rois.device)
        batch = rois[:, 0].long()  # static_cast<int>: toward zero
        corners = torch.floor((rois[:, 1:] * scale + 0.5).float()).long()
        return batch, corners[:, 0], corners[:, 1], corners[:, 2], corners[:, 3]

    @staticmethod
    def _bins(start: torch.Tensor, end: torch.Tensor, pooled: int, size: int, dtype: torch.dtype):
        """Bin bounds (R, pooled) clipped to ``[0, size]``, and the float bin size (R, 1)."""
        length = torch.clamp_min(end - start + 1, 1).to(dtype)
        bin_size = (length / pooled)[:, None]
        index = torch.arange(pooled, device=start.device, dtype=dtype)[None, :]
        low = torch.floor(index * bin_size).long() + start[:, None]
        high = torch.ceil((index + 1) * bin_size).long() + start[:, None]
        return low.clamp(0, size), high.clamp(0, size), bin_size

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        self.top_shapes([tuple(x.shape), tuple(rois.shape)])
        num, channels, height, width = (int(d) for d in x.shape)
        pooled_h, pooled_w = self.pooled
        rows = _rois_rows(rois, "rois", self).to(x.dtype)
        count = int(rows.shape[0])
        batch, start_w, start_h, end_w, end_h = self._corners(rows)
        if not _traced(x, rois):
            _check_batch_index(batch, num, self)
        h_low, h_high, bin_h = self._bins(start_h, end_h, pooled_h, height, x.dtype)
        w_low, w_high, bin_w = self._bins(start_w, end_w, pooled_w, width, x.dtype)
        data = x.detach()[batch]  # (R, C, H, W)
        cells_w = torch.arange(width, device=x.device)
        cells_h = torch.arange(height, device=x.device)
        neg_inf = torch.tensor(-math.inf, dtype=x.dtype, device=x.device)
        # max over each bin's columns, then over its rows: the first maximum in row-major order
        col_max, col_arg = [], []
        for q in range(pooled_w):
            inside = (cells_w[None, :] >= w_low[:, q : q + 1]) & (cells_w[None, :] < w_high[:, q : q + 1])
            values, where = torch.where(inside[:, None, None, :], data, neg_inf).max(dim=3)
            col_max.append(values)
            col_arg.append(where)
        by_col = torch.stack(col_max, dim=3)  # (R, C, H, PW)
        arg_col = torch.stack(col_arg, dim=3)
        best, arg_h, arg_w = [], [], []
        for p in range(pooled_h):
            inside = (cells_h[None, :] >= h_low[:, p : p + 1]) & (cells_h[None, :] < h_high[:, p : p + 1])
            values, where = torch.where(inside[:, None, :, None], by_col, neg_inf).max(dim=2)  # (R, C, PW)
            best.append(values)
            arg_h.append(where)
            arg_w.append(torch.gather(arg_col, 2, where[:, :, None, :]).squeeze(2))
        top_max = torch.stack(best, dim=2)  # (R, C, PH, PW)
        h_at = torch.stack(arg_h, dim=2)
        w_at = torch.stack(arg_w, dim=2)
        empty = (h_high <= h_low)[:, :, None] | (w_high <= w_low)[:, None, :]  # (R, PH, PW)
        empty = empty[:, None]
        found = top_max > NEG_FLT_MAX
        plane = batch[:, None, None, None] * channels + torch.arange(channels, device=x.device)[:, None, None]
        flat_index = (plane * height + h_at) * width + w_at
        sampled = x.reshape(-1)[flat_index.reshape(-1)].reshape(count, channels, pooled_h, pooled_w)
        # the GPU backward's tests: the argmax lies within the roi and its bin search finds this bin
        dh = (h_at - start_h[:, None, None, None]).to(x.dtype)
        dw = (w_at - start_w[:, None, None, None]).to(x.dtype)
        bh, bw = bin_h[:, :, None, None], bin_w[:, :, None, None]
        ph = torch.arange(pooled_h, device=x.device)[None, None, :, None]
        pw = torch.arange(pooled_w, device=x.device)[None, None, None, :]
        ph_first = torch.floor(dh / bh).long().clamp(0, pooled_h)
        ph_last = torch.ceil((dh + 1) / bh).long().clamp(0, pooled_h)
        pw_first = torch.floor(dw / bw).long().clamp(0, pooled_w)
        pw_last = torch.ceil((dw + 1) / bw).long().clamp(0, pooled_w)
        in_roi = (
            (w_at >= start_w[:, None, None, None])
            & (w_at <= end_w[:, None, None, None])
            & (h_at >= start_h[:, None, None, None])
            & (h_at <= end_h[:, None, None, None])
        )
        passes = found & in_roi & (ph >= ph_first) & (ph < ph_last) & (pw >= pw_first) & (pw < pw_last)
        value = torch.where(passes, sampled, sampled.detach())
        value = torch.where(found, value, torch.full_like(value, NEG_FLT_MAX))
        return torch.where(empty, torch.zeros_like(value), value)

    def extra_repr(self) -> str:
        details = f"pooled={list(self.pooled)}, spatial_scale={self.spatial_scale}"
        base = super().extra_repr()
        return f"{base}, {details}" if base else details


# -- PSROIPooling ----------------------------------------------------------------------------------


def _round_half_away(values: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` sends them to even)."""
    whole = values.long().to(values.dtype)  # toward zero
    return whole + torch.sign(values) * (torch.abs(values - whole) >= 0.5).to(values.dtype)


def _fused_bound(index: torch.Tensor, size: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """``index * size + start`` rounded once, as nvcc's fused multiply-add computes it in float32."""
    if size.dtype == torch.float32:
        return (index.double() * size.double() + start.double()).float()
    return index * size + start


@register("PSROIPooling")
class PSROIPooling(_DetectionLayer):
    """R-FCN position-sensitive average pooling (``psroi_pooling_layer.cu``).

    The fork implements it on GPU only (its CPU Forward/Backward are ``NOT_IMPLEMENTED``); this runs
    the CUDA kernels' arithmetic on any device. Bottoms x (N, output_dim * group_size^2, H, W), rois
    (R, 5); top (R, output_dim, group_size, group_size). Roi corners ``round(v) * spatial_scale``
    (``round(v) + 1`` for the end; C rounding, halves away from zero), size at least 0.1, bin bounds
    ``floor(ph * bin + start)`` / ``ceil((ph + 1) * bin + start)`` computed as the kernel's fused
    multiply-add, clipped to the map. Output ``(d, ph, pw)`` averages channel
    ``(d * group_size + ph) * group_size + pw`` over its bin (0 for an empty bin). Backward (exact
    for this forward): each top diff divided by the bin area to every cell of the bin; rois get none.
    """

    family = "detection"
    fork_gpu_only = True

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 8 dim: 6 dim: 7 } } }
layer { name: "rois" type: "Input" top: "rois" input_param { shape { dim: 3 dim: 5 } } }
layer { name: "psroi" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y"
        psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 2 } }
"""

    def __init__(self, output_dim: int, group_size: int, spatial_scale: float) -> None:
        super().__init__()
        self.output_dim = int(output_dim)
        self.group_size = int(group_size)
        self.spatial_scale = float(spatial_scale)
        if self.output_dim <= 0:
            raise LayerError(f"output_dim must be > 0, got {self.output_dim}")
        if self.group_size <= 0:
            raise LayerError(f"group_size must be > 0, got {self.group_size}")

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> PSROIPooling:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        p = layer.psroi_pooling_param
        missing = [name for name in ("spatial_scale", "output_dim", "group_size") if not p.HasField(name)]
        if missing:
            raise ctx.error(f"psroi_pooling_param needs {', '.join(missing)} (required fields)")
        return _built(layer, ctx, lambda: cls(p.output_dim, p.group_size, p.spatial_scale))

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, rois = bottom_shapes[0], bottom_shapes[1]
        if len(x) != 4:
            raise self._error(f"x must have 4 axes (N, C, H, W), got {list(x)}")
        wanted = self.output_dim * self.group_size * self.group_size
        if x[1] != wanted:
            raise self._error(
                f"input channel number does not match layer parameters: {x[1]} channels, output_dim "
                f"{self.output_dim} x group_size^2 {self.group_size**2} = {wanted}"
            )
        if len(rois) < 2 or int(np.prod(rois[1:])) != 5:
            raise self._error(f"rois must have shape (R, 5), got {list(rois)}")
        return [(rois[0], self.output_dim, self.group_size, self.group_size)]

    def _bins(self, start: torch.Tensor, end: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        groups = self.group_size
        length = torch.clamp_min(end - start, 0.1)
        bin_size = (length / groups)[:, None]
        index = torch.arange(groups, dtype=start.dtype, device=start.device)[None, :]
        low = torch.floor(_fused_bound(index, bin_size, start[:, None])).long()
        high = torch.ceil(_fused_bound(index + 1, bin_size, start[:, None])).long()
        return low.clamp(0, size), high.clamp(0, size)

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        self.top_shapes([tuple(x.shape), tuple(rois.shape)])
        num, channels, height, width = (int(d) for d in x.shape)
        rows = _rois_rows(rois, "rois", self).to(x.dtype)
        scale = torch.tensor(self.spatial_scale, dtype=x.dtype, device=x.device)
        batch = rows[:, 0].long()  # static_cast<int>: toward zero
        if not _traced(x, rois):
            _check_batch_index(batch, num, self)
        rounded = _round_half_away(rows[:, 1:])
        start_w, start_h = rounded[:, 0] * scale, rounded[:, 1] * scale
        end_w = (rounded[:, 2].double() + 1.0).to(x.dtype) * scale
        end_h = (rounded[:, 3].double() + 1.0).to(x.dtype) * scale
        h_low, h_high = self._bins(start_h, end_h, height)
        w_low, w_high = self._bins(start_w, end_w, width)
        cells_h = torch.arange(height, device=x.device)
        cells_w = torch.arange(width, device=x.device)
        rows_in = ((cells_h >= h_low[:, :, None]) & (cells_h < h_high[:, :, None])).to(x.dtype)  # (R, G, H)
        cols_in = ((cells_w >= w_low[:, :, None]) & (cells_w < w_high[:, :, None])).to(x.dtype)  # (R, G, W)
        groups = self.group_size
        data = x[batch].reshape(-1, self.output_dim, groups, groups, height, width)
        by_row = torch.einsum("rph,rdpqhw->rdpqw", rows_in, data)
        sums = torch.einsum("rdpqw,rqw->rdpq", by_row, cols_in)
        empty = ((h_high <= h_low)[:, :, None] | (w_high <= w_low)[:, None, :])[:, None]
        area = ((h_high - h_low)[:, :, None] * (w_high - w_low)[:, None, :]).to(x.dtype)[:, None]
        safe = torch.where(empty, torch.ones_like(area), area)
        return torch.where(empty, torch.zeros_like(sums), sums / safe)

    def extra_repr(self) -> str:
        details = (
            f"output_dim={self.output_dim}, group_size={self.group_size}, spatial_scale={self.spatial_scale}"
        )
        base = super().extra_repr()
        return f"{base}, {details}" if base else details


# -- Proposal --------------------------------------------------------------------------------------


def proposal_anchors(
    base_size: int, ratios: list[float], scales: list[float], dtype: torch.dtype
) -> np.ndarray:
    """``generate_anchors`` of ``proposal_layer.cpp``: (A, 4) boxes, ratio-major, in ``Dtype``.

    ``w_r = sqrt(base^2 / ratio)``, ``h_r = w_r * ratio``; half sizes
    ``0.5 * ROUND(w_r * scale / base - 1)`` with ``ROUND(v) = (int)(v + 0.5)`` (the quotient in
    double, note the division by ``base_size``) around ``(base - 1) / 2``.
    """
    real = _numpy_dtype(dtype)
    base_area = real(base_size * base_size)
    center = real(0.5) * (real(base_size) - real(1))
    anchors = []
    for ratio in ratios:
        ratio_w = real(math.sqrt(float(base_area / real(ratio))))
        ratio_h = real(ratio_w * real(ratio))
        for scale in scales:
            half_w = real(0.5) * real(int(float(ratio_w * real(scale)) * 1.0 / base_size - 1.0 + 0.5))
            half_h = real(0.5) * real(int(float(ratio_h * real(scale)) * 1.0 / base_size - 1.0 + 0.5))
            anchors.append([center - half_w, center - half_h, center + half_w, center + half_h])
    return np.asarray(anchors, dtype=real).reshape(-1, 4)


def caffe_sort_boxes(scores: list[float], num_top: int) -> list[int]:
    """The order ``sort_box`` (``proposal_layer.cpp``) leaves the proposals in: Caffe's partial
    quicksort by descending score (first element as pivot), which sorts the first ``num_top``
    positions and leaves ties in its own order. Returns the original index at each position."""
    keys = list(scores)
    order = list(range(len(keys)))
    stack = [(0, len(keys) - 1)] if keys else []
    while stack:
        start, end = stack.pop()
        pivot = keys[start]
        left, right = start + 1, end
        while left <= right:
            while left <= end and keys[left] >= pivot:
                left += 1
            while right > start and keys[right] <= pivot:
                right -= 1
            if left <= right:
                keys[left], keys[right] = keys[right], keys[left]
                order[left], order[right] = order[right], order[left]
                left += 1
                right -= 1
        if right > start:
            keys[start], keys[right] = keys[right], keys[start]
            order[start], order[right] = order[right], order[start]
        if start < right - 1:
            stack.append((start, right - 1))
        if right + 1 < num_top and right + 1 < end:
            stack.append((right + 1, end))
    return order


def caffe_nms(boxes: np.ndarray, threshold: float, max_out: int) -> list[int]:
    """``nms_cpu`` (``util/nms.cpp``): greedy, in order; a box whose IoU (areas with +1) with a kept
    one exceeds ``threshold`` is dropped; stops after ``max_out`` boxes. ``boxes`` (n, >= 4) in
    ``Dtype`` (the IoU is computed in that type)."""
    real = boxes.dtype.type
    one, zero = real(1), real(0)
    thresh = real(threshold)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    dead = np.zeros(len(boxes), dtype=bool)
    kept: list[int] = []
    for i in range(len(boxes)):
        if dead[i]:
            continue
        kept.append(i)
        if len(kept) == max_out:
            break
        rest = slice(i + 1, None)
        apart = (x1[i] > x2[rest]) | (y1[i] > y2[rest]) | (x2[i] < x1[rest]) | (y2[i] < y1[rest])
        width = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        height = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = width * height
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        dead[rest] |= ~apart & (iou > thresh)
    return kept


@register("Proposal")
class Proposal(_DetectionLayer):
    """RPN proposals (``proposal_layer.cpp``, ``util/nms.cpp``); forward only.

    Bottoms scores (N, 2A, H, W) (channels A ... 2A - 1 are the foreground scores), box deltas
    (N, 4A, H, W) and im_info (img_H, img_W, scale_H, scale_W), whose first row serves every image.
    Anchors (:func:`proposal_anchors`, A = ratios x scales) are shifted by ``(w, h) * feat_stride``,
    decoded (centre + d * size, size * exp(d), sizes with +1), clipped to the image, and scored 0
    when narrower or lower than ``min_size * scale``; Caffe's partial quicksort orders them
    (:func:`caffe_sort_boxes`), the first ``pre_nms_topn`` go through greedy NMS, and at most
    ``post_nms_topn`` per image are kept. Tops rois (R, 5) = (image index, x1, y1, x2, y2) and
    optionally scores (R). R depends on the data: the layer runs eagerly (sorting and NMS on the
    CPU) and refuses to be exported. Its tops carry no gradient (Caffe has no backward).
    """

    family = "detection"

    example = """
layer { name: "score" type: "Input" top: "score" input_param { shape { dim: 1 dim: 6 dim: 4 dim: 5 } } }
layer { name: "bbox" type: "Input" top: "bbox" input_param { shape { dim: 1 dim: 12 dim: 4 dim: 5 } } }
layer { name: "im_info" type: "Input" top: "im_info" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "prop" type: "Proposal" bottom: "score" bottom: "bbox" bottom: "im_info"
        top: "rois" top: "scores"
        proposal_param { ratio: 0.5 ratio: 1 ratio: 2 scale: 8 feat_stride: 16 post_nms_topn: 10 } }
"""

    def __init__(
        self,
        ratios: list[float],
        scales: list[float],
        base_size: int = 16,
        feat_stride: int = 16,
        min_size: int = 16,
        pre_nms_topn: int = 6000,
        post_nms_topn: int = 300,
        nms_thresh: float = 0.7,
        with_scores: bool = False,
    ) -> None:
        super().__init__()
        self.ratios = [float(r) for r in ratios]
        self.scales = [float(s) for s in scales]
        self.base_size = int(base_size)
        self.feat_stride = int(feat_stride)
        self.min_size = int(min_size)
        self.pre_nms_topn = int(pre_nms_topn)
        self.post_nms_topn = int(post_nms_topn)
        self.nms_thresh = float(nms_thresh)
        self.with_scores = bool(with_scores)
        if not self.ratios or not self.scales:
            raise LayerError("proposal_param needs at least one ratio and one scale (the anchors)")
        if self.base_size <= 0:
            raise LayerError(f"base_size must be positive, got {self.base_size}")
        if self.post_nms_topn <= 0:
            raise LayerError(f"post_nms_topn must be positive, got {self.post_nms_topn}")

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Proposal:
        ctx.check_bottoms(3)
        ctx.check_tops(1, 2)
        p = layer.proposal_param
        return _built(
            layer,
            ctx,
            lambda: cls(
                list(p.ratio),
                list(p.scale),
                p.base_size,
                p.feat_stride,
                p.min_size,
                p.pre_nms_topn,
                p.post_nms_topn,
                p.nms_thresh,
                len(layer.top) == 2,
            ),
        )

    @property
    def num_anchors(self) -> int:
        return len(self.ratios) * len(self.scales)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        """Caffe's shapes at setup, ``(N * post_nms_topn, 5)``; forward gives the real count."""
        scores, deltas, info = bottom_shapes[0], bottom_shapes[1], bottom_shapes[2]
        anchors = self.num_anchors
        if len(scores) != 4 or scores[1] != 2 * anchors:
            raise self._error(f"scores must be (N, 2 x {anchors} anchors, H, W), got {list(scores)}")
        if tuple(deltas) != (scores[0], 4 * anchors, scores[2], scores[3]):
            raise self._error(
                f"box deltas must be (N, 4 x {anchors} anchors, H, W) = "
                f"{[scores[0], 4 * anchors, scores[2], scores[3]]}, got {list(deltas)}"
            )
        if int(np.prod(info)) < 4:
            raise self._error(f"im_info needs (img_H, img_W, scale_H, scale_W), got shape {list(info)}")
        rows = scores[0] * self.post_nms_topn
        return [(rows, 5), (rows,)] if self.with_scores else [(rows, 5)]

    def forward(
        self, scores: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if _traced(scores, deltas, im_info):
            self._refuse_export("its number of output rois depends on the data (sorting and NMS)")
        self.top_shapes([tuple(scores.shape), tuple(deltas.shape), tuple(im_info.shape)])
        dtype, device = scores.dtype, scores.device
        num, _, height, width = (int(d) for d in scores.shape)
        anchors_count = self.num_anchors
        real = _numpy_dtype(dtype)
        info = im_info.detach().reshape(-1)[:4].to(dtype)
        img_h, img_w, scale_h, scale_w = info[0], info[1], info[2], info[3]
        min_h, min_w = self.min_size * scale_h, self.min_size * scale_w
        anchors = proposal_anchors(self.base_size, self.ratios, self.scales, dtype)
        anchors = torch.from_numpy(anchors).to(device)
        # proposals in Caffe's (h, w, k) order
        shift_x = (torch.arange(width, device=device) * self.feat_stride).to(dtype)
        shift_y = (torch.arange(height, device=device) * self.feat_stride).to(dtype)
        x_grid = shift_x[None, :, None].expand(height, width, anchors_count)
        y_grid = shift_y[:, None, None].expand(height, width, anchors_count)
        box_x1, box_y1 = x_grid + anchors[:, 0], y_grid + anchors[:, 1]
        box_x2, box_y2 = x_grid + anchors[:, 2], y_grid + anchors[:, 3]
        rois, roi_scores = [], []
        for n in range(num):
            d = deltas[n].detach().to(dtype).reshape(anchors_count, 4, height, width).permute(2, 3, 0, 1)
            foreground = scores[n, anchors_count:].detach().to(dtype).permute(1, 2, 0)  # (H, W, A)
            one, half = 1.0, 0.5
            w = box_x2 - box_x1 + one
            h = box_y2 - box_y1 + one
            ctr_x = box_x1 + half * w
            ctr_y = box_y1 + half * h
            pred_ctr_x = d[..., 0] * w + ctr_x
            pred_ctr_y = d[..., 1] * h + ctr_y
            pred_w = torch.exp(d[..., 2]) * w
            pred_h = torch.exp(d[..., 3]) * h
            x1 = torch.clamp(torch.minimum(pred_ctr_x - half * pred_w, img_w - one), min=0)
            y1 = torch.clamp(torch.minimum(pred_ctr_y - half * pred_h, img_h - one), min=0)
            x2 = torch.clamp(torch.minimum(pred_ctr_x + half * pred_w, img_w - one), min=0)
            y2 = torch.clamp(torch.minimum(pred_ctr_y + half * pred_h, img_h - one), min=0)
            big = ((x2 - x1 + one) >= min_w) & ((y2 - y1 + one) >= min_h)
            score = big.to(dtype) * foreground
            proposals = torch.stack([x1, y1, x2, y2, score], dim=-1).reshape(-1, 5).cpu().numpy().astype(real)
            order = caffe_sort_boxes(proposals[:, 4].tolist(), self.pre_nms_topn)
            ranked = proposals[order[: min(len(order), self.pre_nms_topn)]]
            kept = caffe_nms(ranked, self.nms_thresh, self.post_nms_topn)
            chosen = ranked[kept]
            item = np.full((len(kept), 1), n, dtype=real)
            rois.append(np.concatenate([item, chosen[:, :4]], axis=1))
            roi_scores.append(chosen[:, 4])
        top = torch.from_numpy(np.concatenate(rois, axis=0).reshape(-1, 5)).to(device=device, dtype=dtype)
        if not self.with_scores:
            return top
        top_scores = torch.from_numpy(np.concatenate(roi_scores)).to(device=device, dtype=dtype)
        return top, top_scores

    def extra_repr(self) -> str:
        details = (
            f"ratios={self.ratios}, scales={self.scales}, feat_stride={self.feat_stride}, "
            f"pre_nms_topn={self.pre_nms_topn}, post_nms_topn={self.post_nms_topn}, "
            f"nms_thresh={self.nms_thresh}"
        )
        base = super().extra_repr()
        return f"{base}, {details}" if base else details


# -- PredictBox ------------------------------------------------------------------------------------


@register("PredictBox")
class PredictBox(_DetectionLayer):
    """Face-detection box decoding from a score map (``predict_box_layer.cpp``); forward only.

    Bottom 0 scores (N, 2, H, W) (channel 1 used); optional bottom 1 box regression (N, 4, H, W);
    optional bottom 2 with 2 channels = NMS map (keep where ``score > map[:, 1] - 1e-5``, in double)
    or 3 channels = per-position offsets and receptive field (a position whose field is 0 is
    dropped). Top 0 (N, 5, H, W) = (x, y, w, h, score) where kept, else 0:
    ``x = (col * stride - bias_x) / 12 * rf``, ``y`` likewise with the row, ``w = h = rf``; with
    regression and ``bbreg_exp`` ``x += b0 rf, y += b1 rf, w *= exp(b2), h *= exp(b3)``, without
    ``x += b1 rf, y += b0 rf, w += (b3 - b1) rf, h += (b2 - b0) rf``. Optional top 1, filled only
    when N = 1 and some box is kept: the (1, count, 5) list of boxes with score over the threshold
    in column-then-row order (else (N, 1, 5) zeros); its size depends on the data, so a PredictBox
    with two tops runs eagerly and refuses to be exported (one top exports). The ``nms`` and
    ``output_vector`` fields are ignored, as in Caffe (bottom and top counts decide). The tops carry
    no gradient (Caffe has no backward).
    """

    family = "detection"

    example = """
layer { name: "score" type: "Input" top: "score" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 5 } } }
layer { name: "bbreg" type: "Input" top: "bbreg" input_param { shape { dim: 1 dim: 4 dim: 4 dim: 5 } } }
layer { name: "pb" type: "PredictBox" bottom: "score" bottom: "bbreg" top: "bb" top: "boxes" }
"""

    def __init__(
        self,
        stride: int = 2,
        receptive_field: int = 12,
        positive_thresh: float = 0.5,
        bbreg_exp: bool = True,
        output_vector: bool = False,
    ) -> None:
        super().__init__()
        self.stride = int(stride)
        self.receptive_field = int(receptive_field)
        self.positive_thresh = float(positive_thresh)
        self.bbreg_exp = bool(bbreg_exp)
        self.output_vector = bool(output_vector)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> PredictBox:
        ctx.check_bottoms(1, 2, 3)
        ctx.check_tops(1, 2)
        p = layer.predict_box_param
        module = cls(p.stride, p.receptive_field, p.positive_thresh, p.bbreg_exp, len(layer.top) == 2)
        module.caffe_name = layer.name
        module.top_shapes(list(ctx.bottom_shapes))
        return module

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        """Top 0 ``(N, 5, H, W)``; top 1 as set up, ``(N, 1, 5)`` (forward gives the real count)."""
        score = bottom_shapes[0]
        if len(score) != 4 or score[1] != 2:
            raise self._error(f"the score bottom must be (N, 2, H, W), got {list(score)}")
        num, _, height, width = score
        if len(bottom_shapes) >= 2:
            reg = bottom_shapes[1]
            if tuple(reg) != (num, 4, height, width):
                raise self._error(
                    f"the box regression bottom must be {[num, 4, height, width]}, got {list(reg)}"
                )
        if len(bottom_shapes) == 3:
            extra = bottom_shapes[2]
            if (
                len(extra) == 4
                and extra[1] in (2, 3)
                and (extra[0], extra[2], extra[3]) != (num, height, width)
            ):
                raise self._error(
                    f"the third bottom must be (N, 2 or 3, H, W) = ({num}, 2 or 3, {height}, {width}), "
                    f"got {list(extra)}"
                )
        tops: list[Shape] = [(num, 5, height, width)]
        return tops + [(num, 1, 5)] if self.output_vector else tops

    def forward(
        self, score: torch.Tensor, *extra: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.output_vector and _traced(score, *extra):
            self._refuse_export("its second top (the list of kept boxes) has a data-dependent size")
        self.top_shapes([tuple(score.shape), *(tuple(e.shape) for e in extra)])
        dtype = score.dtype
        num, _, height, width = (int(d) for d in score.shape)
        s = score.detach()[:, 1]  # (N, H, W)
        regression = extra[0].detach().to(dtype) if extra else None
        third = extra[1].detach().to(dtype) if len(extra) == 2 else None
        use_nms = third is not None and third.dim() >= 2 and int(third.shape[1]) == 2
        use_stitch = third is not None and third.dim() >= 2 and int(third.shape[1]) == 3
        keep = s > self.positive_thresh
        if use_nms:
            assert third is not None
            keep = keep & (s.double() > third[:, 1].double() - 1e-5)
        cols = (torch.arange(width, device=score.device) * self.stride).to(dtype)[None, None, :]
        rows = (torch.arange(height, device=score.device) * self.stride).to(dtype)[None, :, None]
        if use_stitch:
            assert third is not None
            keep = keep & (third[:, 2] != 0)
            bias_x, bias_y, field = third[:, 0], third[:, 1], third[:, 2]
        else:
            bias_x = bias_y = torch.zeros((), dtype=dtype, device=score.device)
            field = torch.full((), float(self.receptive_field), dtype=dtype, device=score.device)
        x = (cols - bias_x) / 12.0 * field
        y = (rows - bias_y) / 12.0 * field
        w = field.expand(num, height, width)
        h = field.expand(num, height, width)
        if regression is not None:
            b0, b1, b2, b3 = regression[:, 0], regression[:, 1], regression[:, 2], regression[:, 3]
            if self.bbreg_exp:
                x, y = x + b0 * field, y + b1 * field
                w, h = w * torch.exp(b2), h * torch.exp(b3)
            else:
                x, y = x + b1 * field, y + b0 * field
                w, h = w + (b3 - b1) * field, h + (b2 - b0) * field
        boxes = torch.stack([t.expand(num, height, width) for t in (x, y, w, h, s)], dim=1)
        top = torch.where(keep[:, None], boxes, torch.zeros_like(boxes))
        if not self.output_vector:
            return top
        count = int(keep.sum())
        if num == 1 and count > 0:
            listed = top[0].permute(0, 2, 1).reshape(5, -1)  # column-then-row order
            chosen = listed[:, listed[4] > self.positive_thresh].transpose(0, 1)
            if int(chosen.shape[0]) != count:
                raise self._error(
                    f"positive_thresh {self.positive_thresh} < 0 lists {int(chosen.shape[0])} boxes but "
                    f"keeps {count}: Caffe writes past its box-list top here"
                )
            return top, chosen.reshape(1, count, 5)
        return top, torch.zeros(num, 1, 5, dtype=dtype, device=score.device)


# -- Hotspot ---------------------------------------------------------------------------------------


@register("Hotspot")
class Hotspot(_DetectionLayer):
    """Gaussian heat maps around points (``hotspot_layer.cpp``, CPU); forward only.

    Bottom 0 points (N, 2P) as (x, y) pairs in data coordinates (centred on 0 with
    ``mean_removed``); top (N, P, H, W) with ``H, W`` = ``output_height, output_width``, or, when
    their product is 0, the second bottom's height and width. Map ``i`` at (h, w):
    ``g = 1 / (2 pi std^2) exp(-((p1 - w)^2 + (p2 - h)^2) / (2 std^2))`` where
    ``p1 = (x / data_width + 0.5) * W`` (without ``+ 0.5`` unless ``mean_removed``) and ``p2`` likewise,
    or 0 where ``g <= 1e-4``. As in Caffe's CPU code ``p1, p2`` are float32 and the exponential is
    evaluated in double. The top carries no gradient (Caffe has no backward).
    """

    family = "detection"

    example = """
layer { name: "points" type: "Input" top: "points" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "hot" type: "Hotspot" bottom: "points" top: "maps"
        hotspot_param { output_height: 8 output_width: 6 data_height: 64 data_width: 48 gaussian_std: 1.5 } }
"""

    def __init__(
        self,
        size: tuple[int, int],
        data_size: tuple[int, int],
        gaussian_std: float = 1.0,
        mean_removed: bool = True,
    ) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.data_size = (int(data_size[0]), int(data_size[1]))
        self.gaussian_std = float(gaussian_std)
        self.mean_removed = bool(mean_removed)
        if self.data_size[0] * self.data_size[1] <= 0:
            raise LayerError("the data layers' size must be specified (data_height and data_width)")

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Hotspot:
        if len(layer.bottom) < 1:
            raise ctx.error("takes at least 1 bottom blob, got 0")
        ctx.check_tops(1)
        p = layer.hotspot_param
        size = (p.output_height, p.output_width)
        if size[0] * size[1] == 0:
            if len(layer.bottom) != 2:
                raise ctx.error(
                    "when output_height and output_width are not set, a second bottom gives the output size"
                )
            other = ctx.bottom_shapes[1]
            if len(other) != 4:
                raise ctx.error(f"the second bottom must be (N, C, H, W), got {list(other)}")
            size = (other[2], other[3])
        data_size = (p.data_height, p.data_width)
        return _built(layer, ctx, lambda: cls(size, data_size, p.gaussian_std, p.mean_removed))

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        points = bottom_shapes[0]
        if len(points) < 2 or points[1] % 2:
            raise self._error(f"the coordinate blob's channels must be divisible by 2, got {list(points)}")
        return [(points[0], points[1] // 2, *self.size)]

    def forward(self, points: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        self.top_shapes([tuple(points.shape)])
        dtype = points.dtype
        num, count = int(points.shape[0]), int(points.shape[1]) // 2
        height, width = self.size
        data_h, data_w = self.data_size
        pairs = points.detach().reshape(-1)[: num * 2 * count].reshape(num, count, 2)
        offset = 0.5 if self.mean_removed else 0.0
        # float p1 = (x / (Dtype)data_width + offset) * (Dtype)width: the sum and product in double
        p1 = (((pairs[..., 0] / data_w).double() + offset) * width).float().to(dtype)
        p2 = (((pairs[..., 1] / data_h).double() + offset) * height).float().to(dtype)
        cols = torch.arange(width, device=points.device).to(dtype)
        rows = torch.arange(height, device=points.device).to(dtype)
        dx = p1[..., None, None] - cols[None, None, None, :]
        dy = p2[..., None, None] - rows[None, None, :, None]
        squared = dx * dx + dy * dy  # in Dtype
        std = float(np.float32(self.gaussian_std))
        peak = 0.5 / std / std / math.pi
        value = (peak * torch.exp(-0.5 * squared.double() / std / std)).to(dtype)
        eps = torch.tensor(float(np.float32(1e-4)), dtype=dtype, device=points.device)
        return torch.where(value > eps, value, torch.zeros_like(value))

    def extra_repr(self) -> str:
        details = (
            f"size={list(self.size)}, data_size={list(self.data_size)}, gaussian_std={self.gaussian_std}"
        )
        base = super().extra_repr()
        return f"{base}, {details}" if base else details
