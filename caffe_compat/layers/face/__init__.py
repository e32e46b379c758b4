"""Face-recognition layers, one module per origin.

- ``normface``: NormFace (Normalize, InnerDistance, ChannelScale);
- ``amsoftmax``: AM-Softmax (LabelSpecificAdd, GlobalLSEMargin, Flip);
- ``sphereface``: SphereFace (MarginInnerProduct);
- ``metric_losses``: metric-learning losses (GeneralContrastiveLoss, GeneralTripletLoss);
- ``center_loss``: the center loss of Wen et al. 2016 (CenterLoss);
- ``distance_losses``: happynear's losses over distance matrices (BatchContrastiveLoss, NCALoss,
  SoftContrastiveLoss);
- ``lsoftmax``: L-Softmax of Liu et al. ICML 2016 (LargeMarginInnerProduct);
- ``moving_normalize``: NormFace's feature scaling by a running mean norm (MovingNormalize).

Each class follows happynear/caffe-windows (commit 967eedf2), the Caffe the goldens come from.
"""

from caffe_compat.layers.face import (  # noqa: F401
    amsoftmax,
    center_loss,
    distance_losses,
    lsoftmax,
    metric_losses,
    moving_normalize,
    normface,
    sphereface,
)
from caffe_compat.layers.face.amsoftmax import Flip, GlobalLSEMargin, LabelSpecificAdd, mean_shift
from caffe_compat.layers.face.center_loss import CenterLoss
from caffe_compat.layers.face.distance_losses import BatchContrastiveLoss, NCALoss, SoftContrastiveLoss
from caffe_compat.layers.face.lsoftmax import LargeMarginInnerProduct, lsoftmax_logits
from caffe_compat.layers.face.metric_losses import GeneralContrastiveLoss, GeneralTripletLoss
from caffe_compat.layers.face.moving_normalize import MovingNormalize
from caffe_compat.layers.face.normface import ChannelScale, InnerDistance, Normalize
from caffe_compat.layers.face.sphereface import MarginInnerProduct, margin_logits, margin_psi

__all__ = [
    "BatchContrastiveLoss",
    "CenterLoss",
    "ChannelScale",
    "Flip",
    "GeneralContrastiveLoss",
    "GeneralTripletLoss",
    "GlobalLSEMargin",
    "InnerDistance",
    "LabelSpecificAdd",
    "LargeMarginInnerProduct",
    "MarginInnerProduct",
    "MovingNormalize",
    "NCALoss",
    "Normalize",
    "SoftContrastiveLoss",
    "lsoftmax_logits",
    "margin_logits",
    "margin_psi",
    "mean_shift",
]
