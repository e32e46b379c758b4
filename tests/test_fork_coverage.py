"""Every layer type happynear/caffe-windows registers (commit 967eedf2, the Caffe the goldens come
from: its ``REGISTER_LAYER_CLASS``/``REGISTER_LAYER_CREATOR`` lines) builds here, except
``Python``, which runs code a prototxt names and is refused."""

from __future__ import annotations

import pytest

from caffe_compat.layers.registry import builtin_types

FORK_TYPES = [
    "AbsVal",
    "Accuracy",
    "Arccos",
    "ArgMax",
    "Axpy",
    "BN",
    "BNLL",
    "BatchContrastiveLoss",
    "BatchNorm",
    "BatchReindex",
    "Bias",
    "CenterLoss",
    "ChannelScale",
    "Concat",
    "ConfidencePenaltyLoss",
    "ContrastiveLoss",
    "Convolution",
    "CorrelationLoss",
    "Cosine",
    "Crop",
    "Data",
    "Deconvolution",
    "Dropout",
    "DummyData",
    "ELU",
    "Eltwise",
    "Embed",
    "EuclideanLoss",
    "Exp",
    "FCNAccuracy",
    "Filter",
    "Flatten",
    "Flip",
    "FocalLoss",
    "GeneralContrastiveLoss",
    "GeneralTripletLoss",
    "GlobalLSEMargin",
    "Gram",
    "HDF5Data",
    "HDF5Output",
    "HingeLoss",
    "Hotspot",
    "Im2col",
    "ImageData",
    "InfogainLoss",
    "InnerDistance",
    "InnerProduct",
    "Input",
    "Insanity",
    "LRN",
    "LSTM",
    "LSTMUnit",
    "LabelSpecificAdd",
    "LargeMarginInnerProduct",
    "Local",
    "Log",
    "MVN",
    "MarginInnerProduct",
    "MemoryData",
    "MovingNormalize",
    "MultiLabelImageData",
    "MultinomialLogisticLoss",
    "NCALoss",
    "Noise",
    "Normalize",
    "PReLU",
    "PSROIPooling",
    "Pairwise",
    "Parameter",
    "Permute",
    "Pooling",
    "Power",
    "PredictBox",
    "Proposal",
    "Python",
    "RNN",
    "ROIPooling",
    "ReLU",
    "Reduction",
    "Reshape",
    "Resize",
    "SPP",
    "Scale",
    "Sigmoid",
    "SigmoidCrossEntropyLoss",
    "Silence",
    "Slice",
    "Slope",
    "SmoothL1Loss",
    "SoftContrastiveLoss",
    "SoftTruncation",
    "Softmax",
    "SoftmaxWithLoss",
    "Split",
    "SubRegion",
    "TanH",
    "Threshold",
    "Tile",
    "Transformer",
    "TripletLoss",
    "Truncation",
    "WindowData",
]


def test_the_fork_registers_102_types() -> None:
    assert len(FORK_TYPES) == len(set(FORK_TYPES)) == 102


@pytest.mark.parametrize("type_name", [t for t in FORK_TYPES if t != "Python"])
def test_fork_type_is_registered(type_name: str) -> None:
    assert type_name in builtin_types()


def test_python_is_the_one_fork_type_left_to_an_explicit_opt_in() -> None:
    assert "Python" not in builtin_types()
    assert sorted(set(builtin_types()) - set(FORK_TYPES)) == ["Clip", "MarginHead", "Swish"]


@pytest.mark.parametrize("type_name", sorted(t for t, c in builtin_types().items() if c.fork_gpu_only))
def test_types_the_fork_has_only_in_cuda_say_so(type_name: str) -> None:
    cls = builtin_types()[type_name]
    assert "CUDA" in (cls.__doc__ or "") or ".cu" in (cls.__doc__ or ""), cls.__qualname__


def test_the_gpu_only_types_are_the_ones_the_goldens_list() -> None:
    gpu_only = sorted(t for t, c in builtin_types().items() if c.fork_gpu_only)
    assert gpu_only == ["GlobalLSEMargin", "MovingNormalize", "PSROIPooling", "SmoothL1Loss"]
