"""Caffe layer types as native PyTorch modules, one small module per family.

Importing this package registers every built-in type; ``register`` adds a user's own.
"""

from caffe_compat.layers import (  # noqa: F401  (importing a family registers its types)
    activation,
    bn,
    classification_losses,
    combine,
    conv,
    data,
    detection,
    embedding_losses,
    face,
    hdf5_output,
    im2col,
    image_data,
    inner_product,
    input,
    loss,
    margin_heads,
    math_ops,
    multilabel_data,
    normalization,
    pooling,
    recurrent,
    regression_losses,
    reorder,
    shape,
    spatial,
    window_data,
)
from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer
from caffe_compat.layers.registry import layer_class, register, registered_types

__all__ = ["Blob", "BuildContext", "CaffeLayer", "layer_class", "register", "registered_types"]
