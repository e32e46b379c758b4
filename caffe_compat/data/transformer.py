"""Caffe's ``DataTransformer`` (the fork's ``src/caffe/data_transformer.cpp``) on numpy arrays.

For one image ``(C, H, W)`` (uint8 pixels or float data), in Caffe's order:
1. ``do_mirror = mirror && Rand(2)``: a random horizontal flip whenever ``mirror: true``, in the
   TEST phase too (Caffe does not look at the phase here);
2. the crop (``crop_size``, or the fork's ``crop_h``/``crop_w``): a random offset
   (``Rand(H - crop_h + 1)``, then ``Rand(W - crop_w + 1)``) in TRAIN unless the fork's
   ``center_crop``; the centre (``(H - crop_h) / 2``) otherwise;
3. the fork's random erasing (``erase_ratio``, ``scale_min/max``, ``aspect_min/max``): a rectangle
   of the crop gets random pixel values ``Rand(255)``;
4. ``(pixel - mean) * scale`` in float32, with the ``mean_file`` value at the *un-mirrored source
   position* ``(c, h_off + h, w_off + w)`` or the per-channel ``mean_value`` (one value is
   replicated over the channels), or ``pixel * scale`` with neither;
5. the mirrored pixel is written at ``W - 1 - w``.

The arithmetic is float32, element for element Caffe's, so outputs are bit-identical.

Deliberate deviation: random numbers come from the ``numpy.random.Generator`` the caller passes
(one per image, derived from a seed and the image's position in the stream), not from Caffe's
boost generator, so draws are reproducible from a seed whatever the number of loader workers.
The fork seeds its erasing generator with ``time(NULL)``; here it is the same generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import read_blobproto

_MAX_ERASE_TRIES = 10000
_SAMPLE_STREAM = 4


def sample_generator(seed: int, position: int) -> np.random.Generator:
    """The generator of one image's random transform: a function of the layer's seed and the
    image's position in the layer's stream only, so any number of workers draws the same."""
    return np.random.default_rng([seed, _SAMPLE_STREAM, position])


def transform_into_batch(
    transformer: DataTransformer,
    batch: np.ndarray | None,
    item: int,
    batch_size: int,
    image: np.ndarray,
    seed: int,
    position: int,
    what: str,
    noun: str,
    hint: str,
) -> np.ndarray:
    """Transform the sample at ``position`` of a layer's stream into row ``item`` of ``batch``
    (allocated, float32, by the first sample; later samples must transform to its shape).

    Random draws come from ``sample_generator(seed, position)``. Returns the batch array.
    """
    if batch is not None and transformer.output_shape(image.shape) != batch.shape[1:]:
        raise CaffeCompatError(
            f"{what} has shape {list(image.shape)} (CxHxW) but the batch's first {noun} gives "
            f"{list(batch.shape[1:])}: {hint}"
        )
    rng = sample_generator(seed, position) if transformer.needs_random else None
    out = transformer(image, rng, what)
    if batch is None:
        batch = np.empty((batch_size, *out.shape), dtype=np.float32)
    batch[item] = out
    return batch


def _legacy_chw(array: np.ndarray) -> tuple[int, int, int]:
    """``(channels, height, width)`` as Caffe's ``Blob::LegacyShape`` reads them (axes past the
    blob's count read as 1)."""
    shape = array.shape
    if len(shape) > 4:
        raise CaffeCompatError(f"a mean blob has at most 4 axes, this one has shape {list(shape)}")

    def legacy(index: int) -> int:
        return shape[index] if index < len(shape) else 1

    return legacy(1), legacy(2), legacy(3)


class DataTransformer:
    """One layer's ``transform_param`` applied to ``(C, H, W)`` arrays.

    Args:
        param: the layer's TransformationParameter (copied).
        phase: ``caffe_pb2.TRAIN`` or ``TEST`` (decides random versus centre crops).
        mean_path: the resolved ``mean_file`` path (read on first use); None when not set.
        where: a prefix for error messages, e.g. ``"layer 'data' (ImageData)"``.
    """

    def __init__(
        self,
        param: caffe_pb2.TransformationParameter,
        phase: int,
        mean_path: Path | None = None,
        where: str = "transform_param",
    ) -> None:
        if param.HasField("mean_file") and param.mean_value:
            raise CaffeCompatError(f"{where}: cannot specify mean_file and mean_value at the same time")
        if param.force_color and param.force_gray:
            raise CaffeCompatError(f"{where}: cannot set both force_color and force_gray")
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        crop_h = crop_w = int(param.crop_size)
        if param.HasField("crop_h"):
            crop_h = int(param.crop_h)
        if param.HasField("crop_w"):
            crop_w = int(param.crop_w)
        if (crop_h == 0) != (crop_w == 0):
            raise CaffeCompatError(
                f"{where}: crop_h and crop_w must both be set (or crop_size), "
                f"got crop_h {crop_h}, crop_w {crop_w}"
            )
        self.crop = (crop_h, crop_w) if crop_h else None
        self.random_crop = phase == caffe_pb2.TRAIN and not param.center_crop
        self.erase_ratio = float(param.erase_ratio) if param.HasField("erase_ratio") else None
        self.erase_scale = (float(param.scale_min), float(param.scale_max))
        self.erase_aspect = (float(param.aspect_min), float(param.aspect_max))
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        self.mean_path = Path(mean_path) if param.HasField("mean_file") and mean_path is not None else None
        if param.HasField("mean_file") and mean_path is None:
            self.mean_path = Path(param.mean_file)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        self.where = where
        self._mean: np.ndarray | None = None

    # -- configuration -------------------------------------------------------------------------
    @property
    def needs_random(self) -> bool:
        """Caffe's ``InitRand`` rule: random numbers are drawn for mirroring, TRAIN crops that are
        not centred, and erasing."""
        return self.mirror or (self.crop is not None and self.random_crop) or self.erase_ratio is not None

    @property
    def mean(self) -> np.ndarray | None:
        """The mean image ``(C, H, W)`` float32 from ``mean_file`` (read once), or None."""
        if self.mean_path is None:
            return None
        if self._mean is None:
            try:
                blob = read_blobproto(self.mean_path)
            except CaffeCompatError as exc:
                raise CaffeCompatError(f"{self.where}: mean_file: {exc}") from None
            chw = _legacy_chw(blob)
            count = int(np.prod(chw))
            self._mean = np.ascontiguousarray(blob.reshape(-1)[:count].astype(np.float32).reshape(chw))
        return self._mean

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``InferBlobShape``: ``(C, crop_h or H, crop_w or W)`` of an input ``(C, H, W)``."""
        channels, height, width = shape
        if self.crop is None:
            return channels, height, width
        return channels, self.crop[0], self.crop[1]

    def check(self, shape: tuple[int, ...], what: str) -> None:
        """Caffe's CHECKs on one input: the crop fits, the mean image and values match."""
        channels, height, width = shape
        if self.crop is not None and (height < self.crop[0] or width < self.crop[1]):
            raise CaffeCompatError(
                f"{what} is {height}x{width} (HxW), smaller than the crop {self.crop[0]}x{self.crop[1]}"
            )
        mean = self.mean
        if mean is not None and mean.shape != (channels, height, width):
            raise CaffeCompatError(
                f"{what} has shape {[channels, height, width]} (CxHxW) but the mean_file "
                f"'{self.mean_path}' has {list(mean.shape)}: Caffe subtracts the mean pixel by pixel "
                "before cropping, so it must have the images' size (or use mean_value)"
            )
        if self.mean_values.size not in (0, 1, channels):
            raise CaffeCompatError(
                f"{self.where}: give 1 mean_value or one per channel ({channels}), "
                f"got {self.mean_values.size}"
            )

    # -- the transform -------------------------------------------------------------------------
    def _erase_box(
        self, height: int, width: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int] | None:
        """The fork's erase rectangle ``(y0, y1, x0, x1)`` (inclusive bounds) or None."""
        if rng.random(dtype=np.float32) >= self.erase_ratio:
            return None
        for _ in range(_MAX_ERASE_TRIES):
            scale = rng.uniform(*self.erase_scale)
            erase_width = int(np.float32(width) * np.float32(scale))
            aspect = rng.uniform(*self.erase_aspect)
            erase_height = int(np.float32(erase_width) * np.float32(aspect))
            x0 = int(rng.integers(0, width + 1))
            y0 = int(rng.integers(0, height + 1))
            x1, y1 = x0 + erase_width - 1, y0 + erase_height - 1
            if x1 < width and y1 < height:
                return y0, y1, x0, x1
        raise CaffeCompatError(
            f"{self.where}: no erase rectangle fits a {height}x{width} image with scale "
            f"{list(self.erase_scale)} and aspect {list(self.erase_aspect)} (Caffe would loop forever)"
        )

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator | None = None, what: str = "image"
    ) -> np.ndarray:
        """Transform one ``(C, H, W)`` array to a new float32 array, as Caffe's ``Transform``.

        ``rng`` must be given when ``needs_random``; ``what`` names the image in errors.
        """
        if image.ndim != 3:
            raise CaffeCompatError(f"{what}: expected a (C, H, W) array, got shape {list(image.shape)}")
        self.check(image.shape, what)
        if self.needs_random and rng is None:
            raise CaffeCompatError(f"{self.where}: random transforms need a random generator")
        channels, height, width = image.shape
        do_mirror = self.mirror and int(rng.integers(2)) == 1
        h_off = w_off = 0
        out_h, out_w = height, width
        if self.crop is not None:
            out_h, out_w = self.crop
            if self.random_crop:
                h_off = int(rng.integers(height - out_h + 1))
                w_off = int(rng.integers(width - out_w + 1))
            else:
                h_off, w_off = (height - out_h) // 2, (width - out_w) // 2
        box = self._erase_box(out_h, out_w, rng) if self.erase_ratio is not None else None
        pixels = image[:, h_off : h_off + out_h, w_off : w_off + out_w].astype(np.float32)
        if box is not None:
            y0, y1, x0, x1 = box
            shape = (channels, y1 - y0 + 1, x1 - x0 + 1)
            pixels[:, y0 : y1 + 1, x0 : x1 + 1] = rng.integers(0, 255, size=shape).astype(np.float32)
        mean = self.mean
        if mean is not None:
            pixels -= mean[:, h_off : h_off + out_h, w_off : w_off + out_w]
        elif self.mean_values.size:
            values = (
                np.broadcast_to(self.mean_values, (channels,))
                if self.mean_values.size == 1
                else self.mean_values
            )
            pixels -= values.reshape(channels, 1, 1)
        pixels *= self.scale
        if do_mirror:
            pixels = np.ascontiguousarray(pixels[:, :, ::-1])
        return pixels
