"""Caffe layer types as native PyTorch modules, one small module per family.

Importing this package registers every built-in type; ``register`` adds a user's own.
"""

from caffe_compat.layers import (  # noqa: F401  (importing a family registers its types)
    activation,
    conv,
    data,
    detection,
    face,
    image_data,
    inner_product,
    input,
    loss,
    margin_heads,
    normalization,
    pooling,
    shape,
    spatial,
)
from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer
from caffe_compat.layers.registry import layer_class, register, registered_types

__all__ = ["Blob", "BuildContext", "CaffeLayer", "layer_class", "register", "registered_types"]
