"""Feature extraction from a deploy net, in batches, with the horizontal-mirror trick.

``mirror`` combines the features of each image and of its left-right mirror image:
``"sum"`` adds them (AM-Softmax's deploy net and InsightFace), ``"concat"`` stacks them as
``[original, mirrored]`` along the feature axis (SphereFace's ``evaluation.m``:
``[res{1}; res_{1}]``), ``None`` uses the original image only.

When the net does the mirroring itself (a ``Flip`` layer fed by the net's input, as in
``face_deploy_mirror_normalize.prototxt``: Flip, Concat on the batch axis, ..., Slice, Eltwise SUM,
Normalize), images are run once and never flipped again: a blob holding 2N rows (originals then
mirrors, e.g. ``fc5`` there) is combined as ``mirror`` says; a blob holding N rows (``norm1``, after
the net's own sum) is returned as the net computed it, whatever ``mirror`` says.

Images given as paths are read the way Caffe's data layers read them (``cv2.imread``, BGR, color
or grayscale after the net's input channels), must already have the net's input size (aligned face
crops), and are preprocessed as Caffe's ``transform_param`` does: ``(pixel - mean) * scale``. The
defaults are the AM-Softmax training config's (``mean_value: 128``, ``scale: 0.0078125``);
SphereFace's ``evaluation.m`` uses ``(img - 127.5) / 128`` (``mean=127.5``, same scale).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError

if TYPE_CHECKING:
    from caffe_compat.net.net import Net

MIRROR_MODES = ("sum", "concat", None)
AMSOFTMAX_MEAN = 128.0
AMSOFTMAX_SCALE = 0.0078125


def net_mirrors_input(net: Net) -> bool:
    """Whether a ``Flip`` layer of ``net`` reads one of its inputs (the deploy mirror trick)."""
    inputs = set(net.input_names)
    return any(param.type == "Flip" and set(param.bottom) & inputs for param in net.layer_params.values())


def _channel_values(value: float | Sequence[float], channels: int, what: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32).reshape(-1)
    if array.size not in (1, channels):
        raise CaffeCompatError(f"{what} has {array.size} values; give 1 or one per channel ({channels})")
    return array.reshape(-1, 1, 1)


def load_images(
    paths: Sequence[str | os.PathLike],
    shape: tuple[int, int, int],
    mean: float | Sequence[float] = AMSOFTMAX_MEAN,
    scale: float = AMSOFTMAX_SCALE,
) -> np.ndarray:
    """Read images with OpenCV (BGR) into a float32 (N, C, H, W) batch, ``(pixel - mean) * scale``.

    Raises:
        CaffeCompatError: an image that is missing, unreadable or not ``shape``'s size.
    """
    import cv2

    channels, height, width = shape
    if channels not in (1, 3):
        raise CaffeCompatError(f"the net's input has {channels} channels; images can fill 1 or 3")
    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    mean_values = _channel_values(mean, channels, "mean")
    batch = np.empty((len(paths), channels, height, width), dtype=np.float32)
    for i, path in enumerate(paths):
        if not os.path.isfile(path):
            raise CaffeCompatError(f"image not found: {path}")
        image = cv2.imread(os.fspath(path), flag)
        if image is None:
            raise CaffeCompatError(f"cannot decode image {path}")
        if image.shape[:2] != (height, width):
            raise CaffeCompatError(
                f"image {path} is {image.shape[1]}x{image.shape[0]} (WxH); "
                f"the net takes {width}x{height} crops"
            )
        pixels = image.reshape(height, width, -1).transpose(2, 0, 1).astype(np.float32)
        batch[i] = (pixels - mean_values) * np.float32(scale)
    return batch


def _combine(features: np.ndarray, mirrored: np.ndarray | None, mirror: str | None) -> np.ndarray:
    if mirrored is None or mirror is None:
        return features
    if mirror == "sum":
        return features + mirrored
    return np.concatenate([features, mirrored], axis=1)


def extract_features(
    net: Net,
    images: np.ndarray | torch.Tensor | Sequence[str | os.PathLike],
    blob: str = "fc5",
    mirror: str | None = "sum",
    batch_size: int = 64,
    mean: float | Sequence[float] = AMSOFTMAX_MEAN,
    scale: float = AMSOFTMAX_SCALE,
    progress: bool | None = None,
) -> np.ndarray:
    """Features of ``images`` at ``blob`` of ``net`` (a TEST-phase :class:`caffe_compat.Net`).

    Args:
        net: the deploy net; its first input receives the images.
        images: an (N, C, H, W) array or tensor, already preprocessed, or a list of image paths
            (read and preprocessed with ``mean``/``scale``, see the module docstring).
        blob: the blob to read (flattened to one row per image).
        mirror: ``"sum"``, ``"concat"`` or ``None`` (see the module docstring).
        batch_size: images per forward pass (the net's own mirror doubles it inside the net).
        progress: show a tqdm progress bar (``None``: only on a terminal).

    Returns:
        float32 (N, D) array (D doubled by ``"concat"``).

    Raises:
        CaffeCompatError: an unknown mirror mode or blob, a bad image, or a wrongly shaped batch.
    """
    from tqdm import tqdm

    if mirror not in MIRROR_MODES:
        raise CaffeCompatError(f"unknown mirror mode '{mirror}'; choose sum, concat or none")
    if batch_size < 1:
        raise CaffeCompatError(f"batch size must be positive, got {batch_size}")
    input_name = net.input_names[0]
    input_shape = tuple(net.blob_shapes.get(input_name, ()))
    from_paths = not isinstance(images, (np.ndarray, torch.Tensor))
    if from_paths:
        if len(input_shape) != 4:
            raise CaffeCompatError(
                f"the net's input '{input_name}' has shape {input_shape}; images need (N, C, H, W)"
            )
        paths = [Path(path) for path in images]
        total = len(paths)
    else:
        array = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        if array.dim() != 4:
            raise CaffeCompatError(f"images must be an (N, C, H, W) batch, got shape {tuple(array.shape)}")
        total = array.shape[0]
    in_net = net_mirrors_input(net)
    device = next((tensor.device for tensor in [*net.parameters(), *net.buffers()]), torch.device("cpu"))
    chunks: list[np.ndarray] = []
    disable = None if progress is None else not progress
    with torch.no_grad(), tqdm(total=total, unit="img", disable=disable, leave=False) as bar:
        for start in range(0, total, batch_size):
            if from_paths:
                batch = torch.from_numpy(
                    load_images(paths[start : start + batch_size], input_shape[1:], mean, scale)
                )
            else:
                batch = array[start : start + batch_size].float()
            count = batch.shape[0]
            features = _forward(net, input_name, batch.to(device), blob)
            if in_net:
                if features.shape[0] == 2 * count:
                    chunks.append(_combine(features[:count], features[count:], mirror))
                else:
                    chunks.append(features)
            else:
                mirrored = None
                if mirror is not None:
                    mirrored = _forward(net, input_name, torch.flip(batch, dims=[3]).to(device), blob)
                chunks.append(_combine(features, mirrored, mirror))
            bar.update(count)
    if not chunks:
        raise CaffeCompatError("no images to extract features from")
    return np.concatenate(chunks, axis=0)


def _forward(net: Net, input_name: str, batch: torch.Tensor, blob: str) -> np.ndarray:
    if blob not in net.blob_shapes:
        known = ", ".join(sorted(net.blob_shapes))
        raise CaffeCompatError(f"the net has no blob '{blob}'; its blobs are: {known}")
    kept = net.keep_blobs
    net.keep_blobs = {blob}  # the other blobs are freed as the forward goes
    try:
        net(**{input_name: batch})
    finally:
        net.keep_blobs = kept
    value = net.blobs[blob]
    return value.detach().reshape(value.shape[0], -1).float().cpu().numpy()
