"""The face layers' golden cases (NormFace, AM-Softmax, SphereFace), forward and backward against
real Caffe (happynear/caffe-windows). Several also run InnerProduct (``normalize: true``), Scale
and SoftmaxWithLoss, as the AM-Softmax head does."""

import pytest
from layer_cases import run_case

FACE_CASES = [
    "normalize_l2",
    "normalize_l1",
    "normalize_l2_spatial",
    "normalize_bp_norm",
    "ip_normalize",
    "label_specific_add_train",
    "label_specific_add_test",
    "label_specific_add_transform_test",
    "label_specific_add_small_margin",
    "label_specific_add_big_margin",
    "label_specific_add_anneal",
    "amsoftmax_head",
    "amsoftmax_head_small_margin",
    "channel_scale",
    "flip",
    "margin_ip_single",
    "margin_ip_double",
    "margin_ip_quadruple",
    "margin_ip_lambda",
    "inner_distance",
    "inner_distance_l2_normalize",
    "inner_distance_two_bottoms",
    "general_contrastive_loss",
    "general_triplet_loss",
]


@pytest.mark.parametrize("case", FACE_CASES)
def test_face_layer_matches_caffe(case: str) -> None:
    run_case(case)
