"""Face-recognition layers, one module per origin.

- ``normface``: NormFace (Normalize, InnerDistance, ChannelScale);
- ``amsoftmax``: AM-Softmax (LabelSpecificAdd, GlobalLSEMargin, Flip);
- ``sphereface``: SphereFace (MarginInnerProduct);
- ``metric_losses``: metric-learning losses (GeneralContrastiveLoss, GeneralTripletLoss).

Each class follows happynear/caffe-windows (commit 967eedf2), the Caffe the goldens come from.
"""

from caffe_compat.layers.face import amsoftmax, metric_losses, normface, sphereface  # noqa: F401
from caffe_compat.layers.face.amsoftmax import Flip, GlobalLSEMargin, LabelSpecificAdd, mean_shift
from caffe_compat.layers.face.metric_losses import GeneralContrastiveLoss, GeneralTripletLoss
from caffe_compat.layers.face.normface import ChannelScale, InnerDistance, Normalize
from caffe_compat.layers.face.sphereface import MarginInnerProduct, margin_logits, margin_psi

__all__ = [
    "ChannelScale",
    "Flip",
    "GeneralContrastiveLoss",
    "GeneralTripletLoss",
    "GlobalLSEMargin",
    "InnerDistance",
    "LabelSpecificAdd",
    "MarginInnerProduct",
    "Normalize",
    "margin_logits",
    "margin_psi",
    "mean_shift",
]
