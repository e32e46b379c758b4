"""``caffe.io``: protobuf <-> array conversion, the ``Transformer`` that prepares images for a
net, image loading, resizing and oversampling, as BVLC's ``python/caffe/io.py`` defines them.

BVLC's module reads images with ``skimage.io`` and resizes with ``skimage.transform.resize``;
this one needs neither (only numpy and OpenCV, which caffe-compat already uses) and reproduces
scikit-image 0.19+'s results:

- ``load_image``: decoded by OpenCV (``IMREAD_UNCHANGED``, channels turned to RGB), scaled to
  [0, 1] as ``img_as_float`` does (by 255 or 65535); ``color=False`` gives ``rgb2gray``
  (0.2125 R + 0.7154 G + 0.0721 B, RGBA first blended on white as ``rgba2rgb`` does);
- ``resize_image`` of a 1- or 3-channel image: normalized to [0, 1], anti-aliased with a Gaussian
  of sigma ``(factor - 1) / 2`` per down-sampled axis (truncated at 4 sigma, zeros beyond the
  border), interpolated on the pixel grid (``grid_mode``) with zeros beyond the border, clipped
  to [0, 1] and scaled back; other channel counts use ``scipy.ndimage.zoom``'s corner-aligned
  grid. Orders 0 (nearest) and 1 (linear) are implemented; higher orders need scikit-image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from caffe_compat.proto import caffe_pb2

# -- proto / datum / ndarray conversion ---------------------------------------------------------


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The data (or diff) of a BlobProto as an array of its shape (legacy 4-D fields first)."""
    values = np.array(blob.diff if return_diff else blob.data)
    if any(blob.HasField(name) for name in ("num", "channels", "height", "width")):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(blob.shape.dim)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto with the array's shape and values (and ``diff``'s values when given)."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(np.asarray(arr).astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: Sequence[np.ndarray]) -> bytes:
    """A serialized BlobProtoVector of the arrays."""
    vector = caffe_pb2.BlobProtoVector()
    vector.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vector.SerializeToString()


def blobprotovector_str_to_arraylist(serialized: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vector = caffe_pb2.BlobProtoVector()
    vector.ParseFromString(serialized)
    return [blobproto_to_array(blob) for blob in vector.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """A Datum of a (C, H, W) array: uint8 arrays as bytes in ``data``, others as ``float_data``."""
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """The (C, H, W) array of a Datum (uint8 from ``data``, float from ``float_data``)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.array(datum.float_data).astype(float).reshape(shape)


# -- pre-processing -----------------------------------------------------------------------------


class Transformer:
    """Prepare arrays for a net's inputs (``caffe.io.Transformer``).

    Args:
        inputs: input blob name -> its shape (``{'data': net.blobs['data'].data.shape}``).

    ``preprocess(name, image)`` takes an (H', W', K) image and, in this order: converts it to
    float32, resizes it to the input's (H, W), transposes, swaps channels, multiplies by
    ``raw_scale``, subtracts the mean, multiplies by ``input_scale``. ``deprocess`` undoes it.
    """

    def __init__(self, inputs: dict[str, Sequence[int]]) -> None:
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict[str, Sequence[int]] = {}
        self.channel_swap: dict[str, Sequence[int]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check_input(self, name: str) -> None:
        if name not in self.inputs:
            raise Exception(f"{name} is not one of the net inputs: {self.inputs}")

    def preprocess(self, name: str, data: np.ndarray) -> np.ndarray:
        """An (H', W', K) array as the input blob ``name`` wants it (K, H, W)."""
        self._check_input(name)
        result = np.asarray(data).astype(np.float32, copy=False)
        size = self.inputs[name][2:]
        if result.shape[:2] != size:
            result = resize_image(result, size)
        if name in self.transpose:
            result = result.transpose(self.transpose[name])
        if name in self.channel_swap:
            result = result[list(self.channel_swap[name]), :, :]
        if name in self.raw_scale:
            result *= self.raw_scale[name]
        if name in self.mean:
            result -= self.mean[name]
        if name in self.input_scale:
            result *= self.input_scale[name]
        return result

    def deprocess(self, name: str, data: np.ndarray) -> np.ndarray:
        """Undo ``preprocess`` (except the resize)."""
        self._check_input(name)
        result = np.asarray(data).copy().squeeze()
        if name in self.input_scale:
            result /= self.input_scale[name]
        if name in self.mean:
            result += self.mean[name]
        if name in self.raw_scale:
            result /= self.raw_scale[name]
        if name in self.channel_swap:
            result = result[np.argsort(self.channel_swap[name]), :, :]
        if name in self.transpose:
            result = result.transpose(np.argsort(self.transpose[name]))
        return result

    def set_transpose(self, name: str, order: Sequence[int]) -> None:
        """The axis order, e.g. (2, 0, 1) turns (H, W, K) images into (K, H, W)."""
        self._check_input(name)
        if len(order) != len(self.inputs[name]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[name] = order

    def set_channel_swap(self, name: str, order: Sequence[int]) -> None:
        """The channel order after transposing, e.g. (2, 1, 0) for RGB to BGR."""
        self._check_input(name)
        if len(order) != self.inputs[name][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[name] = order

    def set_raw_scale(self, name: str, scale: float) -> None:
        """Multiply the (resized, reordered) input by ``scale`` before the mean (255 for [0, 1]
        images and nets trained on [0, 255])."""
        self._check_input(name)
        self.raw_scale[name] = scale

    def set_mean(self, name: str, mean: np.ndarray) -> None:
        """Subtract a per-channel (K,) or elementwise (K, H, W) mean; an elementwise mean of
        another size is resized to the input's."""
        self._check_input(name)
        shape = mean.shape
        if mean.ndim == 1:
            if shape[0] != self.inputs[name][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(shape) == 2:
                shape = (1, *shape)
            if len(shape) != 3:
                raise ValueError("Mean shape invalid")
            wanted = self.inputs[name][1:]
            if shape != wanted:
                low, high = mean.min(), mean.max()
                normal = (mean - low) / (high - low)
                mean = (
                    resize_image(normal.transpose((1, 2, 0)), wanted[1:]).transpose((2, 0, 1)) * (high - low)
                    + low
                )
        self.mean[name] = mean

    def set_input_scale(self, name: str, scale: float) -> None:
        """Multiply the input by ``scale`` after the mean is subtracted."""
        self._check_input(name)
        self.input_scale[name] = scale


# -- images -------------------------------------------------------------------------------------


def _as_float(image: np.ndarray) -> np.ndarray:
    """skimage's ``img_as_float`` for the types image files hold (to float64 in [0, 1])."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float64) / 65535.0
    if image.dtype == bool:
        return image.astype(np.float64)
    if np.issubdtype(image.dtype, np.floating):
        return image
    info = np.iinfo(image.dtype)
    return image.astype(np.float64) / info.max


def load_image(filename: str | os.PathLike, color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1]: (H, W, 3) RGB, or (H, W, 1) intensity with
    ``color=False`` (a colour image is converted as ``rgb2gray`` does)."""
    import cv2

    image = cv2.imread(os.fspath(filename), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot read image file {os.fspath(filename)}")
    if image.ndim == 3:
        if image.shape[2] == 3:
            image = image[:, :, ::-1]
        elif image.shape[2] == 4:
            image = image[:, :, [2, 1, 0, 3]]
    image = _as_float(np.ascontiguousarray(image))
    if not color and image.ndim == 3:
        if image.shape[2] == 4:
            alpha = image[:, :, 3:]
            image = np.clip((1 - alpha) * 1.0 + image[:, :, :3] * alpha, 0, 1)
        image = image[:, :, :3] @ np.array([0.2125, 0.7154, 0.0721])
    image = image.astype(np.float32)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
        if color:
            image = np.tile(image, (1, 1, 3))
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return image


def _gaussian_1d(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """scipy's ``gaussian_filter1d`` (truncate 4, zeros beyond the border), result in the input's
    dtype."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / (sigma * sigma) * offsets**2)
    kernel /= kernel.sum()
    moved = np.moveaxis(values.astype(np.float64), axis, 0)
    padded = np.concatenate(
        [np.zeros((radius,) + moved.shape[1:]), moved, np.zeros((radius,) + moved.shape[1:])]
    )
    result = np.zeros_like(moved)
    for k, weight in enumerate(kernel):
        result += weight * padded[k : k + moved.shape[0]]
    return np.moveaxis(result, 0, axis).astype(values.dtype)


def _taps(size_in: int, size_out: int, order: int, grid: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each output index along one axis: input indices and weights (2 taps for linear, 1
    for nearest); indices outside the input get weight 0 (the constant border)."""
    out = np.arange(size_out, dtype=np.float64)
    if grid:
        coords = (out + 0.5) * (size_in / size_out) - 0.5
    elif size_out > 1:
        coords = out * ((size_in - 1) / (size_out - 1))
    else:
        coords = out * 0.0
    if order == 0:
        index = np.floor(coords + 0.5).astype(np.int64)[:, None]
        weight = np.ones_like(index, dtype=np.float64)
    else:
        low = np.floor(coords).astype(np.int64)
        frac = coords - low
        index = np.stack([low, low + 1], axis=1)
        weight = np.stack([1.0 - frac, frac], axis=1)
    inside = (index >= 0) & (index < size_in)
    return np.clip(index, 0, size_in - 1), np.where(inside, weight, 0.0)


def _interpolate(image: np.ndarray, size: tuple[int, int], order: int, grid: bool) -> np.ndarray:
    """Separable spline interpolation of the first two axes (order 0 or 1), in float64."""
    rows, row_weights = _taps(image.shape[0], size[0], order, grid)
    cols, col_weights = _taps(image.shape[1], size[1], order, grid)
    source = image.astype(np.float64)
    result = np.zeros((size[0], size[1]) + image.shape[2:], dtype=np.float64)
    for i in range(rows.shape[1]):
        for j in range(cols.shape[1]):
            weight = row_weights[:, i][:, None] * col_weights[:, j][None, :]
            picked = source[rows[:, i]][:, cols[:, j]]
            result += weight.reshape(weight.shape + (1,) * (image.ndim - 2)) * picked
    return result


def _skimage_resize(image: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """scikit-image's ``resize(image, size, order, mode='constant')`` of an image in [0, 1]."""
    factors = [image.shape[0] / size[0], image.shape[1] / size[1]]
    filtered = image
    if size[0] < image.shape[0] or size[1] < image.shape[1]:
        for axis, factor in enumerate(factors):
            sigma = max(0.0, (factor - 1) / 2)
            if sigma > 1e-15:
                filtered = _gaussian_1d(filtered, sigma, axis)
    result = _interpolate(filtered, size, order, grid=True).astype(image.dtype)
    return np.clip(result, image.min(), image.max())


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resize an (H, W, K) image to ``new_dims`` (height, width); float32 result."""
    size = (int(new_dims[0]), int(new_dims[1]))
    if interp_order not in (0, 1):
        return _resize_with_skimage(im, size, interp_order)
    if im.shape[-1] in (1, 3):
        low, high = im.min(), im.max()
        if high > low:
            normal = (im - low) / (high - low)
            return (_skimage_resize(normal, size, interp_order) * (high - low) + low).astype(np.float32)
        result = np.empty((size[0], size[1], im.shape[-1]), dtype=np.float32)
        result.fill(low)
        return result
    zoomed = _interpolate(im, size, interp_order, grid=False).astype(im.dtype)
    return zoomed.astype(np.float32)


def _resize_with_skimage(im: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    try:
        from scipy.ndimage import zoom
        from skimage.transform import resize
    except ImportError:
        raise ValueError(
            f"interp_order {order} needs scikit-image and scipy (orders 0 and 1 are built in)"
        ) from None
    if im.shape[-1] in (1, 3):
        low, high = im.min(), im.max()
        if high > low:
            normal = (im - low) / (high - low)
            return (resize(normal, size, order=order, mode="constant") * (high - low) + low).astype(
                np.float32
            )
        return np.full((size[0], size[1], im.shape[-1]), low, dtype=np.float32)
    scale = tuple(np.array(size, dtype=float) / np.array(im.shape[:2]))
    return zoom(im, scale + (1,), order=order).astype(np.float32)


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """The four corner crops and the centre crop of each image, then their mirrors:
    (10 N, h, w, K)."""
    shape = np.array(images[0].shape)
    crop = np.array(crop_dims)
    centre = shape[:2] / 2.0
    boxes = np.empty((5, 4), dtype=int)
    position = 0
    for top in (0, shape[0] - crop[0]):
        for left in (0, shape[1] - crop[1]):
            boxes[position] = (top, left, top + crop[0], left + crop[1])
            position += 1
    boxes[4] = np.tile(centre, (1, 2)) + np.concatenate([-crop / 2.0, crop / 2.0])
    boxes = np.tile(boxes, (2, 1))
    crops = np.empty((10 * len(images), crop[0], crop[1], shape[-1]), dtype=np.float32)
    index = 0
    for image in images:
        for box in boxes:
            crops[index] = image[box[0] : box[2], box[1] : box[3], :]
            index += 1
        crops[index - 5 : index] = crops[index - 5 : index, :, ::-1, :]
    return crops


__all__ = [
    "Transformer",
    "array_to_blobproto",
    "array_to_datum",
    "arraylist_to_blobprotovector_str",
    "blobproto_to_array",
    "blobprotovector_str_to_arraylist",
    "datum_to_array",
    "load_image",
    "oversample",
    "resize_image",
]
