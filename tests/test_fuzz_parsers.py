"""The fuzz targets of ``fuzz_targets.py`` for a fixed, deterministic budget (derandomized
hypothesis, no example database): every reader of untrusted files raises nothing but a one-line
CaffeCompatError on mutated and random input, in bounded memory. ``REGRESSIONS`` holds the
crashing inputs fuzzing found (each fixed); they run first, always.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_targets import TARGETS, inputs
from hypothesis import HealthCheck, given, settings

#: (target, input) of every crash fuzzing found (tests/fuzz_crashes/<target>-<sha1>.bin), each fixed.
REGRESSIONS: list[tuple[str, bytes]] = [
    (path.name.rsplit("-", 1)[0], path.read_bytes())
    for path in sorted((Path(__file__).resolve().parent / "fuzz_crashes").glob("*.bin"))
]

#: Examples per target in the normal test command (about 30 s in all on a 2-core machine).
EXAMPLES = {
    "net_prototxt": 150,
    "solver_prototxt": 200,
    "caffemodel": 200,
    "solverstate": 200,
    "solverstate_restore": 100,
    "binaryproto": 200,
    "side_file": 100,
    "datum": 300,
    "image": 200,
    "npz_inputs": 100,
}


def test_every_target_has_a_budget() -> None:
    assert set(EXAMPLES) == set(TARGETS)


def test_there_are_regressions() -> None:
    assert REGRESSIONS and all(target in TARGETS for target, _ in REGRESSIONS)


@pytest.mark.parametrize(
    ("target", "data"), REGRESSIONS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(REGRESSIONS)]
)
def test_regression(target: str, data: bytes) -> None:
    TARGETS[target](data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target(target: str) -> None:
    @settings(
        max_examples=EXAMPLES[target],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=inputs(target))
    def run(data: bytes) -> None:
        TARGETS[target](data)

    run()
