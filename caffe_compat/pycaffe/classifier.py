"""``caffe.Classifier``: a TEST net that classifies images, resizing them to ``image_dims`` and
averaging the predictions over the centre crop or the ten oversampled crops (BVLC's
``python/caffe/classifier.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from caffe_compat.proto import caffe_pb2
from caffe_compat.pycaffe import io
from caffe_compat.pycaffe.net import Net


def _configured_transformer(net: Net, mean, input_scale, raw_scale, channel_swap) -> io.Transformer:
    name = net.inputs[0]
    transformer = io.Transformer({name: net.blobs[name].data.shape})
    transformer.set_transpose(name, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(name, mean)
    if input_scale is not None:
        transformer.set_input_scale(name, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(name, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(name, channel_swap)
    return transformer


class Classifier(Net):
    """Class probabilities for images.

    Args:
        model_file, pretrained_file: the deploy prototxt and its caffemodel.
        image_dims: the (height, width) images are resized to before cropping (default: the
            net's input size, i.e. whole-image crops).
        mean, input_scale, raw_scale, channel_swap: the Transformer's settings.
    """

    def __init__(
        self,
        model_file: str | os.PathLike,
        pretrained_file: str | os.PathLike,
        image_dims: Sequence[int] | None = None,
        mean: np.ndarray | None = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
    ) -> None:
        Net.__init__(self, model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = _configured_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = image_dims if image_dims is not None and len(image_dims) else self.crop_dims

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """(N, classes) probabilities of (H, W, K) images: the mean over the ten crops of
        ``io.oversample``, or the centre crop's."""
        dims = self.image_dims
        resized = np.zeros((len(inputs), dims[0], dims[1], inputs[0].shape[2]), dtype=np.float32)
        for index, image in enumerate(inputs):
            resized[index] = io.resize_image(image, dims)
        if oversample:
            crops = io.oversample(resized, self.crop_dims)
        else:
            centre = np.array(dims) / 2.0
            box = (
                np.tile(centre, (1, 2))[0] + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0])
            ).astype(int)
            crops = resized[:, box[0] : box[2], box[1] : box[3], :]
        name = self.inputs[0]
        batch = np.zeros(np.array(crops.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for index, crop in enumerate(crops):
            batch[index] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: batch})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
