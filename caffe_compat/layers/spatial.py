"""Spatial resampling layers of happynear/caffe-windows: SPP, Resize, Transformer, SubRegion.

Each class follows the fork's C++ (``spp_layer.cpp``, ``resize_layer.cpp`` with
``util/util_img.cpp``, ``transformer_layer.cpp``, ``subregion_layer.cpp``) including the float32
arithmetic that decides integer positions (floors of scaled coordinates), so the sampled cells are
Caffe's. Shapes are recomputed from the bottoms at every forward, as Caffe's ``Reshape`` does.
"""

from __future__ import annotations

import numpy as np
import torch

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.pooling import Pooling
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_SPP = caffe_pb2.SPPParameter
_SPP_METHODS = {_SPP.MAX: "MAX", _SPP.AVE: "AVE", _SPP.STOCHASTIC: "STOCHASTIC"}


def _numpy_dtype(dtype: torch.dtype) -> type[np.floating]:
    """The numpy scalar type that repeats Caffe's ``Dtype`` arithmetic for a tensor dtype."""
    return np.float64 if dtype == torch.float64 else np.float32


class _SpatialLayer(CaffeLayer):
    """Errors naming the layer and its type."""

    def _error(self, message: str) -> LayerError:
        return LayerError(f"layer '{self.caffe_name or '?'}' ({self.caffe_type}): {message}")


# -- SPP -------------------------------------------------------------------------------------------


@register("SPP")
class SPP(_SpatialLayer):
    """Spatial pyramid pooling (``spp_layer.cpp``).

    Level ``l`` (0 ... ``pyramid_height`` - 1) runs Caffe's Pooling layer with kernel
    ``ceil(H / 2^l)``, stride = kernel and pad ``(kernel * 2^l - H + 1) / 2`` (same for W): the
    geometry, its ceil rounding, clip, padding rules and backward are those of
    :class:`~caffe_compat.layers.pooling.Pooling`, which runs each level. Levels are flattened and
    concatenated: top ``(N, C * sum of bins)``. With ``pyramid_height: 1`` the single level's
    4-D pooled top is the top (Caffe skips the flatten there). A level whose pad reaches its
    kernel fails as Caffe's Pooling ``CHECK`` does. The pyramid is rebuilt for each bottom size.

    Args:
        pyramid_height: number of levels (>= 1).
        method: "MAX", "AVE" or "STOCHASTIC" (TEST phase only, as for Pooling).
        train: the net's phase is TRAIN.
    """

    family = "spatial"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 9 } } }
layer { name: "spp" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 } }
"""

    def __init__(self, pyramid_height: int, method: str = "MAX", train: bool = True) -> None:
        super().__init__()
        if pyramid_height < 1:
            raise LayerError(f"pyramid_height must be at least 1, got {pyramid_height}")
        if method not in ("MAX", "AVE", "STOCHASTIC"):
            raise LayerError(f"unknown pooling method '{method}' (MAX, AVE or STOCHASTIC)")
        self.pyramid_height = int(pyramid_height)
        self.method = method
        self.train_phase = bool(train)
        self._levels_cache: dict[tuple[int, int], list[Pooling]] = {}

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> SPP:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        p = layer.spp_param
        if p.pool not in _SPP_METHODS:
            raise ctx.error(f"unknown pooling method {p.pool}")
        if p.pyramid_height < 1:
            raise ctx.error(f"spp_param.pyramid_height must be at least 1, got {p.pyramid_height}")
        shape = ctx.bottom_shapes[0]
        if len(shape) != 4:
            raise ctx.error(f"input must have 4 axes (num, channels, height, width), got shape {list(shape)}")
        module = cls(p.pyramid_height, _SPP_METHODS[p.pool], ctx.train)
        module.caffe_name = layer.name
        module.levels(shape[2], shape[3])
        return module

    @staticmethod
    def level_geometry(level: int, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``SPPLayer::GetPoolingParam``: (kernel, pad) of one level; the stride is the kernel."""
        bins = 2**level
        kernel_h, kernel_w = -(-height // bins), -(-width // bins)
        pad_h = (kernel_h * bins - height + 1) // 2
        pad_w = (kernel_w * bins - width + 1) // 2
        return (kernel_h, kernel_w), (pad_h, pad_w)

    def levels(self, height: int, width: int) -> list[Pooling]:
        """The Pooling layer of each level for a bottom of this size (built once per size)."""
        key = (int(height), int(width))
        cached = self._levels_cache.get(key)
        if cached is not None:
            return cached
        if min(key) <= 0:
            raise self._error(f"input dimensions cannot be zero, got {list(key)}")
        pools = []
        for level in range(self.pyramid_height):
            kernel, pad = self.level_geometry(level, *key)
            try:
                pool = Pooling(self.method, kernel, kernel, pad, True, False, self.train_phase)
                pool.output_size(*key)
            except LayerError as exc:
                raise self._error(
                    f"pyramid level {level} (kernel {list(kernel)}, pad {list(pad)}) on a {key[0]}x{key[1]} "
                    f"input: {exc}"
                ) from None
            pool.caffe_name = self.caffe_name
            pools.append(pool)
        self._levels_cache[key] = pools
        return pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise self._error(f"input must have 4 axes, got {list(x.shape)}")
        pools = self.levels(int(x.shape[2]), int(x.shape[3]))
        if self.pyramid_height == 1:
            return pools[0].forward(x)
        num = int(x.shape[0])
        return torch.cat([pool.forward(x).reshape(num, -1) for pool in pools], dim=1)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        num, channels, height, width = bottom_shapes[0]
        sizes = [pool.output_size(height, width) for pool in self.levels(height, width)]
        if self.pyramid_height == 1:
            return [(num, channels, *sizes[0])]
        return [(num, channels * sum(h * w for h, w in sizes))]

    def extra_repr(self) -> str:
        details = f"{self.method}, pyramid_height={self.pyramid_height}"
        base = super().extra_repr()
        return f"{base}, {details}" if base else details


# -- Resize ----------------------------------------------------------------------------------------


def caffe_resize_matrix(src: int, dst: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (dst, src) bilinear weights of one axis, as ``GetBiLinearResizeMatRules_cpu`` makes them.

    Source coordinate ``f = d * (src / dst)`` in ``Dtype`` (no half-pixel shift), ``i = floor(f)``;
    weight ``|1 - (f - i)|`` on ``i`` and ``|f - i|`` on ``i + 1`` unless ``i + 1`` is past the
    last cell (that weight is then dropped, not moved).
    """
    scale = torch.tensor(src, dtype=dtype, device=device) / torch.tensor(dst, dtype=dtype, device=device)
    position = torch.arange(dst, dtype=dtype, device=device) * scale
    first = torch.floor(position)
    frac = position - first
    cells = torch.arange(src, dtype=dtype, device=device)
    near = (cells[None, :] == first[:, None]).to(dtype) * torch.abs(1.0 - frac)[:, None]
    far = (cells[None, :] == (first + 1.0)[:, None]).to(dtype) * torch.abs(frac)[:, None]
    return near + far


@register("Resize")
class Resize(_SpatialLayer):
    """Bilinear resize (``resize_layer.cpp``, ``ResizeBlob_cpu`` in ``util/util_img.cpp``).

    Output ``(height, width)`` from ``resize_param``, or with ``is_pyramid_test`` ``int(scale * in)``
    for each axis (float32 product, truncated). Each output cell reads ``d * (in / out)`` (no
    half-pixel shift) with weights ``(1 - f, f)``; neighbours past the last row/column are
    dropped with their weight (not renormalized). Computed as ``A_h @ x @ A_w^T`` with one weight
    matrix per axis; the autograd gradient scatters with the same weights, which is Caffe's backward.

    Args:
        size: the fixed output (height, width), or None with ``scales``.
        scales: the (height, width) factors of ``is_pyramid_test``.
    """

    family = "spatial"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "resize" type: "Resize" bottom: "x" top: "y" resize_param { height: 9 width: 4 } }
"""

    def __init__(
        self, size: tuple[int, int] | None = None, scales: tuple[float, float] | None = None
    ) -> None:
        super().__init__()
        if (size is None) == (scales is None):
            raise LayerError("give either a fixed output size or the pyramid scales")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.scales = None if scales is None else (float(scales[0]), float(scales[1]))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Resize:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        p = layer.resize_param
        if p.is_pyramid_test:
            if not p.HasField("out_height_scale") or not p.HasField("out_width_scale"):
                raise ctx.error("with is_pyramid_test both out_height_scale and out_width_scale are required")
            module = cls(scales=(p.out_height_scale, p.out_width_scale))
        else:
            if not p.HasField("height") or not p.HasField("width"):
                raise ctx.error("resize_param.height and resize_param.width (the output size) are required")
            module = cls(size=(p.height, p.width))
        module.caffe_name = layer.name
        if len(ctx.bottom_shapes[0]) != 4:
            raise ctx.error(f"input must have 4 axes, got shape {list(ctx.bottom_shapes[0])}")
        module.output_size(ctx.bottom_shapes[0][2], ctx.bottom_shapes[0][3])
        return module

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Caffe's ``out_height_``, ``out_width_`` for a bottom of this size."""
        if self.size is not None:
            out = self.size
        else:
            assert self.scales is not None
            out = (
                int(np.float32(self.scales[0]) * np.float32(height)),
                int(np.float32(self.scales[1]) * np.float32(width)),
            )
        if min(out) < 1 or min(height, width) < 1:
            raise self._error(
                f"resizing {height}x{width} to {out[0]}x{out[1]}: every size must be at least 1"
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise self._error(f"input must have 4 axes, got {list(x.shape)}")
        height, width = int(x.shape[2]), int(x.shape[3])
        out_h, out_w = self.output_size(height, width)
        rows = caffe_resize_matrix(height, out_h, x.dtype, x.device)
        cols = caffe_resize_matrix(width, out_w, x.dtype, x.device)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        num, channels, height, width = bottom_shapes[0]
        return [(num, channels, *self.output_size(height, width))]


# -- Transformer -----------------------------------------------------------------------------------


@register("Transformer")
class Transformer(_SpatialLayer):
    """Spatial transformer with bilinear sampling (``transformer_layer.cpp``, CPU).

    Bottoms x (N, C, H, W) and theta (N, 6) (read as 6 values per item). Target grid
    ``t0 = i / H * 2 - 1`` (row), ``t1 = j / W * 2 - 1`` (column), source ``s = theta (t0, t1, 1)``,
    pixel position ``u = s0 * H / 2 + H / 2``, ``v = s1 * W / 2 + W / 2``; the output sums
    ``x[a, b] (1 - |u - a|)(1 - |v - b|)`` over ``a in {floor u, ceil u}``, ``b in {floor v, ceil v}``
    and is 0 unless ``0 <= u <= H - 1`` and ``0 <= v <= W - 1``.

    Caffe writes the target grid at ``i * H + j`` (H for both axes): for W > H rows overlap and the
    last write wins, which is reproduced; H > W makes Caffe write past its buffer and is refused.
    Backward is Caffe's (here by autograd, which gives the same values): the sampled weights for
    x, and for theta ``sign(a - u)`` derivatives of the weights, 0 at integer positions.
    """

    family = "spatial"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "theta" type: "Input" top: "theta" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "st" type: "Transformer" bottom: "x" bottom: "theta" top: "y" }
"""

    def __init__(self) -> None:
        super().__init__()
        self._grids: dict[tuple[int, int, type], np.ndarray] = {}

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Transformer:
        ctx.check_bottoms(2)
        if len(layer.top) < 1:
            raise ctx.error("produces at least 1 top blob, got 0")
        if len(layer.top) > 1:
            raise ctx.error(f"only its first top is written by Caffe; got {len(layer.top)} tops")
        module = cls()
        module.caffe_name = layer.name
        module.top_shapes(list(ctx.bottom_shapes))
        return module

    def _check(self, x_shape: Shape, theta_shape: Shape) -> None:
        if len(x_shape) != 4:
            raise self._error(f"x must have 4 axes (N, C, H, W), got {list(x_shape)}")
        if len(theta_shape) < 2 or theta_shape[1] != 6:
            raise self._error(f"theta's dimension must be 6 (shape (N, 6)), got {list(theta_shape)}")
        if int(np.prod(theta_shape)) < 6 * x_shape[0]:
            raise self._error(f"theta {list(theta_shape)} holds fewer than 6 values per item of x")
        if x_shape[2] > x_shape[3]:
            raise self._error(
                f"Caffe's Transformer indexes its target grid with H for both axes and writes past its "
                f"buffer when H > W; got H={x_shape[2]}, W={x_shape[3]}"
            )

    def target_grid(self, height: int, width: int, dtype: torch.dtype) -> np.ndarray:
        """Caffe's ``CoordinateTarget`` (3, H * W), with its ``i * H + j`` layout."""
        scalar = _numpy_dtype(dtype)
        key = (height, width, scalar)
        grid = self._grids.get(key)
        if grid is None:
            grid = np.zeros((3, height * width), dtype=scalar)
            rows = np.arange(height, dtype=scalar) / scalar(height) * scalar(2) - scalar(1)
            cols = np.arange(width, dtype=scalar) / scalar(width) * scalar(2) - scalar(1)
            for i in range(height):  # Caffe's loop order: later rows overwrite overlapping cells
                grid[0, i * height : i * height + width] = rows[i]
                grid[1, i * height : i * height + width] = cols
                grid[2, i * height : i * height + width] = 1
            self._grids[key] = grid
        return grid

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        self._check(tuple(x.shape), tuple(theta.shape))
        num, channels, height, width = (int(d) for d in x.shape)
        grid = torch.from_numpy(self.target_grid(height, width, x.dtype)).to(device=x.device)
        th = theta.reshape(-1)[: 6 * num].reshape(num, 2, 3).to(x.dtype)
        # caffe_cpu_gemm (2 x 3) @ (3 x HW), summed in k order
        source = th[:, :, 0:1] * grid[0] + th[:, :, 1:2] * grid[1] + th[:, :, 2:3] * grid[2]
        u = source[:, 0] * height / 2 + height / 2  # row position, (N, HW)
        v = source[:, 1] * width / 2 + width / 2  # column position
        inside = ((u >= 0) & (u <= height - 1) & (v >= 0) & (v <= width - 1)).detach()
        flat = x.reshape(num, channels, height * width)
        top = None
        for a, first_a in _corners(u):
            for b, first_b in _corners(v):
                weight = (1 - torch.abs(u - a)) * (1 - torch.abs(v - b))
                keep = inside
                if not first_a:
                    keep = keep & (a != torch.floor(u)).detach()
                if not first_b:
                    keep = keep & (b != torch.floor(v)).detach()
                weight = torch.where(keep, weight, torch.zeros_like(weight))
                index = (a.clamp(0, height - 1) * width + b.clamp(0, width - 1)).long()
                sampled = torch.gather(flat, 2, index[:, None, :].expand(num, channels, height * width))
                term = sampled * weight[:, None, :]
                top = term if top is None else top + term
        assert top is not None
        return top.reshape(num, channels, height, width)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        self._check(tuple(bottom_shapes[0]), tuple(bottom_shapes[1]))
        return [tuple(bottom_shapes[0])]


def _corners(position: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
    """``floor`` and ``ceil`` of a sampling position (detached), each with whether it is the first
    (the ceil term is dropped where it equals the floor, as Caffe's ``xx <= ceil(x)`` loop runs once)."""
    return [(torch.floor(position).detach(), True), (torch.ceil(position).detach(), False)]


# -- SubRegion -------------------------------------------------------------------------------------


class _ZeroBottomDiff(torch.autograd.Function):
    """Return ``value``; ``source`` gets a zero gradient (Caffe's SubRegion backward writes into its
    top's diff, leaving the bottom's diff zero)."""

    @staticmethod
    def forward(ctx, source: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.source_shape = source.shape
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad_output.new_zeros(ctx.source_shape), None


@register("SubRegion")
class SubRegion(_SpatialLayer):
    """Crops around points (``subregion_layer.cpp``).

    Bottoms data (N, C, H, W), points (N, 2P) as (x, y) pairs in data coordinates centred on 0, and
    ground-truth points (N, 2P). Each crop is ``region_height x region_width`` at
    ``x0 = floor((p_x / data_width + 0.5) * W - region_width / 2)`` (integer halving; same for y),
    zero outside the map: top ``(N, C * P, h, w)`` with ``as_dim`` != 0 (channel ``C * i + c``) or
    ``(N * P, C, h, w)`` with ``as_dim: 0`` (row ``N * i + n``). With three tops, top 2 holds the crop
    centres in data coordinates ``(x0 + w / 2 + 0.5) / W * data_width`` and top 1
    ``gt + data_width / 2`` (integer halving) minus top 2.

    Caffe's backward writes into the top's diff instead of the bottom's, so every bottom gets a
    zero diff; reproduced (the crop's gradient to data is zero). Tops 1 and 2 carry no gradient.
    """

    family = "spatial"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "p" type: "Input" top: "p" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "gt" type: "Input" top: "gt" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "sr" type: "SubRegion" bottom: "x" bottom: "p" bottom: "gt" top: "y" top: "offset" top: "center"
        sub_region_param { region_height: 3 region_width: 3 data_height: 40 data_width: 56 } }
"""

    def __init__(
        self,
        region: tuple[int, int],
        data_size: tuple[int, int],
        as_dim: int = 1,
        three_tops: bool = False,
    ) -> None:
        super().__init__()
        self.region = (int(region[0]), int(region[1]))
        self.data_size = (int(data_size[0]), int(data_size[1]))
        self.as_dim = int(as_dim)
        self.three_tops = bool(three_tops)
        if min(self.region) < 1:
            raise LayerError(f"region_height and region_width must be positive, got {list(self.region)}")
        if min(self.data_size) < 1:
            raise LayerError(f"data_height and data_width must be positive, got {list(self.data_size)}")

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> SubRegion:
        ctx.check_bottoms(3)
        ctx.check_tops(1, 3)
        p = layer.sub_region_param
        try:
            module = cls(
                (p.region_height, p.region_width),
                (p.data_height, p.data_width),
                p.as_dim,
                len(layer.top) == 3,
            )
        except LayerError as exc:
            raise ctx.error(str(exc)) from None
        module.caffe_name = layer.name
        module.top_shapes(list(ctx.bottom_shapes))
        return module

    def _num_points(self, shapes: list[Shape]) -> int:
        data, points, truth = shapes[0], shapes[1], shapes[2]
        if len(data) != 4:
            raise self._error(f"input must have 4 axes (num, channels, height, width), got {list(data)}")
        if len(points) < 2 or points[1] % 2:
            raise self._error(f"the points blob's channels must be divisible by 2, got shape {list(points)}")
        for blob, shape in (("points", points), ("ground-truth points", truth)):
            if int(np.prod(shape)) < data[0] * points[1]:
                raise self._error(
                    f"the {blob} blob {list(shape)} holds fewer than {points[1]} values for each of the "
                    f"{data[0]} items"
                )
        return points[1] // 2

    def forward(
        self, x: torch.Tensor, points: torch.Tensor, truth: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        count = self._num_points([tuple(x.shape), tuple(points.shape), tuple(truth.shape)])
        num, channels, height, width = (int(d) for d in x.shape)
        region_h, region_w = self.region
        data_h, data_w = self.data_size
        dtype = x.dtype
        # Caffe reads value 2 i (+ 1) of item n at n * shape(1) + 2 i of the flat buffer
        pairs = points.detach().to(dtype).reshape(-1)[: num * 2 * count].reshape(num, count, 2)
        # center = (p / data_size + 0.5) * size: the quotient in Dtype, the rest in double, stored in Dtype
        center_x = ((pairs[..., 0] / data_w).double() + 0.5) * width
        center_y = ((pairs[..., 1] / data_h).double() + 0.5) * height
        x0 = torch.floor(center_x.to(dtype) - (region_w // 2))
        y0 = torch.floor(center_y.to(dtype) - (region_h // 2))
        rows = y0[..., None] + torch.arange(region_h, dtype=dtype, device=x.device)  # (N, P, h)
        cols = x0[..., None] + torch.arange(region_w, dtype=dtype, device=x.device)  # (N, P, w)
        rows_in = (rows >= 0) & (rows <= height - 1)
        cols_in = (cols >= 0) & (cols <= width - 1)
        valid = rows_in[..., :, None] & cols_in[..., None, :]
        row_at = rows.clamp(0, height - 1).long()
        col_at = cols.clamp(0, width - 1).long()
        index = row_at[..., :, None] * width + col_at[..., None, :]
        flat = x.detach().reshape(num, channels, height * width)
        gathered = torch.gather(
            flat, 2, index.reshape(num, 1, count * region_h * region_w).expand(num, channels, -1)
        ).reshape(num, channels, count, region_h, region_w)
        crops = gathered * valid[:, None].to(dtype)
        if self.as_dim == 0:
            top = crops.permute(2, 0, 1, 3, 4).reshape(count * num, channels, region_h, region_w)
        else:
            top = crops.permute(0, 2, 1, 3, 4).reshape(num, count * channels, region_h, region_w)
        if torch.is_grad_enabled() and x.requires_grad:
            top = _ZeroBottomDiff.apply(x, top)
        if not self.three_tops:
            return top
        # top 2: (Dtype)(x0 + (Dtype)w / 2 + 0.5) / (Dtype)W * data_width
        centre_x = ((x0 + region_w / 2).double() + 0.5).to(dtype) / width * data_w
        centre_y = ((y0 + region_h / 2).double() + 0.5).to(dtype) / height * data_h
        centre = torch.stack([centre_x, centre_y], dim=-1)  # (N, P, 2)
        truth_pairs = truth.detach().to(dtype).reshape(-1)[: num * 2 * count].reshape(num, count, 2)
        half = torch.tensor([data_w // 2, data_h // 2], dtype=dtype, device=x.device)
        offset = (truth_pairs + half) - centre
        shape = tuple(int(d) for d in points.shape)
        return top, _like(offset, shape), _like(centre, shape)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        count = self._num_points(bottom_shapes)
        num, channels = bottom_shapes[0][0], bottom_shapes[0][1]
        if self.as_dim == 0:
            top: Shape = (num * count, channels, *self.region)
        else:
            top = (num, channels * count, *self.region)
        return [top, tuple(bottom_shapes[1]), tuple(bottom_shapes[1])] if self.three_tops else [top]


def _like(values: torch.Tensor, shape: Shape) -> torch.Tensor:
    """(N, P, 2) values laid out flat in a blob shaped like the points (``ReshapeLike``); cells
    past ``N * 2P`` (points blobs with more axes) are never written by Caffe and stay zero."""
    flat = values.reshape(-1)
    total = int(np.prod(shape))
    if flat.shape[0] < total:
        flat = torch.cat([flat, flat.new_zeros(total - flat.shape[0])])
    return flat.reshape(shape)
