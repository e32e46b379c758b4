"""Every golden layer case of the standard BVLC layers, forward and backward against real Caffe.

The face layers' cases (NormFace, AM-Softmax, SphereFace) are in test_face_goldens.py.
"""

import pytest
from layer_cases import LAYER_GOLDENS, run_case

FACE_PREFIXES = (
    "normalize_",
    "ip_normalize",
    "label_specific_add_",
    "amsoftmax_head",
    "channel_scale",
    "flip",
    "margin_ip_",
    "inner_distance",
    "general_",
)
STANDARD_CASES = sorted(
    p.name for p in LAYER_GOLDENS.iterdir() if p.is_dir() and not p.name.startswith(FACE_PREFIXES)
)


@pytest.mark.parametrize("case", STANDARD_CASES)
def test_standard_layer_matches_caffe(case: str) -> None:
    run_case(case)
