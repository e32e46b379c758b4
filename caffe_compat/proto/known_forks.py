"""Fields that other Caffe forks add to the schema and caffe-compat does not read.

When a prototxt names a field our schema lacks, the error says whether a known fork defines it,
so the user learns that the file was written for that fork rather than that it is misspelt.
Keys are (message name, field name); values name the fork and what the field is for.
"""

from __future__ import annotations

_SSD = "the SSD fork (weiliu89/caffe)"
_FRCNN = "the Faster R-CNN fork (rbgirshick/caffe-fast-rcnn)"
_SEG = "the SegNet fork (alexgkendall/caffe-segnet)"
_DEEPLAB = "the DeepLab fork (deeplab-public)"
_NVCAFFE = "NVIDIA's NVCaffe"
_PSP = "the PSPNet fork (hszhao/PSPNet)"
_SHUFFLE = "ShuffleNet forks (farmingyard/ShuffleNet)"
_MOBILE = "MobileNet-SSD forks (chuanqi305/MobileNet-SSD)"
_INTEL = "Intel's Caffe (intel/caffe)"

KNOWN_FORK_FIELDS: dict[tuple[str, str], str] = {
    ("LayerParameter", "norm_param"): f"{_SSD} for its Normalize layer (a different layer from NormFace's)",
    ("LayerParameter", "prior_box_param"): f"{_SSD} for PriorBox",
    ("LayerParameter", "detection_output_param"): f"{_SSD} for DetectionOutput",
    ("LayerParameter", "detection_evaluate_param"): f"{_SSD} for DetectionEvaluate",
    ("LayerParameter", "multibox_loss_param"): f"{_SSD} for MultiBoxLoss",
    ("LayerParameter", "annotated_data_param"): f"{_SSD} for AnnotatedData",
    ("LayerParameter", "video_data_param"): f"{_SSD} for VideoData",
    ("LayerParameter", "smooth_l1_loss_param"): f"{_FRCNN} for SmoothL1Loss",
    ("LayerParameter", "upsample_param"): f"{_SEG} for Upsample",
    ("LayerParameter", "interp_param"): f"{_DEEPLAB} and {_PSP} for Interp",
    ("LayerParameter", "mat_read_param"): f"{_DEEPLAB} for MatRead",
    ("LayerParameter", "seg_accuracy_param"): f"{_DEEPLAB} for SegAccuracy",
    ("LayerParameter", "shuffle_channel_param"): f"{_SHUFFLE} for ShuffleChannel",
    ("LayerParameter", "depthwise_convolution_param"): f"{_MOBILE} for DepthwiseConvolution",
    ("LayerParameter", "box_annotator_ohem_param"): "the R-FCN fork (daijifeng001/caffe-rfcn)",
    ("LayerParameter", "scale_loss_param"): f"{_NVCAFFE}",
    ("LayerParameter", "mn_activation_param"): f"{_INTEL}",
    ("ConvolutionParameter", "cudnn_math_override"): f"{_NVCAFFE}",
    ("PoolingParameter", "torch_pooling"): "the PSPNet fork",
    ("BatchNormParameter", "scale_bias"): f"{_NVCAFFE} (BatchNorm with fused scale and bias)",
    ("SolverParameter", "iter_size_test"): "some detection forks",
    ("SolverParameter", "min_lr"): f"{_NVCAFFE}",
    ("SolverParameter", "rampup_interval"): f"{_NVCAFFE} (LARC/ramp-up)",
    ("SolverParameter", "larc"): f"{_NVCAFFE}",
    ("SolverParameter", "plateau_winsize"): "the 'plateau' lr policy of some forks",
}


def fork_defining(message: str, field: str) -> str | None:
    """Return which known fork defines ``message.field``, or None when none we know does."""
    return KNOWN_FORK_FIELDS.get((message, field))
