"""``caffe.Detector``: classify windows of images, warped to the net's input size with optional
context padding as in R-CNN (BVLC's ``python/caffe/detector.py``).

Window coordinates are ``(ymin, xmin, ymax, xmax)``; boxes are rounded to whole pixels before
slicing (BVLC's code slices with float boxes, which numpy no longer accepts).
``detect_selective_search`` needs the external ``selective_search_ijcv_with_python`` module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from caffe_compat.proto import caffe_pb2
from caffe_compat.pycaffe import io
from caffe_compat.pycaffe.classifier import _configured_transformer
from caffe_compat.pycaffe.net import Net


class Detector(Net):
    """Windowed detection with a TEST net.

    Args:
        model_file, pretrained_file: the deploy prototxt and its caffemodel.
        mean, input_scale, raw_scale, channel_swap: the Transformer's settings.
        context_pad: pixels of surrounding context in the warped input (R-CNN's padding).
    """

    def __init__(
        self,
        model_file: str | os.PathLike,
        pretrained_file: str | os.PathLike,
        mean: np.ndarray | None = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
        context_pad: int | None = None,
    ) -> None:
        Net.__init__(self, model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = _configured_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows: Iterable[tuple[str, Sequence[Sequence[int]]]]) -> list[dict]:
        """``[{'window', 'prediction', 'filename'}]`` for every window of every image file."""
        images_windows = list(images_windows)
        crops = []
        for filename, windows in images_windows:
            image = io.load_image(filename).astype(np.float32)
            for window in windows:
                crops.append(self.crop(image, window))
        name = self.inputs[0]
        batch = np.zeros((len(crops), crops[0].shape[2]) + self.blobs[name].data.shape[2:], dtype=np.float32)
        for index, crop in enumerate(crops):
            batch[index] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: batch})[self.outputs[0]]
        detections, index = [], 0
        for filename, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[index], "filename": filename})
                index += 1
        return detections

    def detect_selective_search(self, image_fnames: Sequence[str]) -> list[dict]:
        """Detect over Selective Search proposals (needs ``selective_search_ijcv_with_python``)."""
        import selective_search_ijcv_with_python as selective_search

        names = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(names, cmd="selective_search_rcnn")
        return self.detect_windows(zip(names, windows, strict=True))

    def crop(self, im: np.ndarray, window: Sequence[int]) -> np.ndarray:
        """The window of the image, with ``context_pad`` pixels of context (mean-filled where the
        padded box leaves the image) when configured."""
        window = np.asarray(window)
        crop = im[int(window[0]) : int(window[2]), int(window[1]) : int(window[3])]
        if not self.context_pad:
            return crop
        size = self.blobs[self.inputs[0]].width  # square inputs assumed, as in R-CNN
        scale = size / (1.0 * size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        centre = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(centre, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = size / (box[2] - box[0] + 1)
        scale_w = size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0, -box[0]) * scale_h))
        pad_x = int(round(max(0, -box[1]) * scale_w))
        height, width = im.shape[:2]
        box = np.clip(box, 0.0, [height, width, height, width])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        assert clip_h > 0 and clip_w > 0
        crop_h = min(int(round(clip_h * scale_h)), size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), size - pad_x)
        context = im[int(box[0]) : int(box[2]), int(box[1]) : int(box[3])]
        context = io.resize_image(context, (crop_h, crop_w))
        result = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        result[pad_y : pad_y + crop_h, pad_x : pad_x + crop_w] = context
        return result

    def configure_crop(self, context_pad: int | None) -> None:
        """The crop size and, with context padding, the mean that fills padding outside images."""
        name = self.inputs[0]
        transpose = self.transformer.transpose[name]
        inverse = [transpose[t] for t in transpose]
        self.crop_dims = np.array(self.blobs[name].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        mean = self.transformer.mean.get(name)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(inverse)
        order = self.transformer.channel_swap.get(name)
        if order is not None:
            crop_mean = crop_mean[:, :, [list(order).index(i) for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(name)
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean
