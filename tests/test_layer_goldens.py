"""Every golden layer case (tests/goldens/layers, found by listing its folders), forward, parameter
blobs after forward, and backward against real Caffe (happynear/caffe-windows)."""

import pytest
from layer_cases import case_names, run_case


@pytest.mark.parametrize("case", case_names())
def test_layer_matches_caffe(case: str) -> None:
    run_case(case)


def test_every_case_is_run() -> None:
    """All 160 cases of the real-Caffe goldens (more when they grow), none left out."""
    assert len(case_names()) >= 160
