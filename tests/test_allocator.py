"""``keep_freed_memory``: large blocks freed by one forward pass are reused by the next without page
faults, and nothing numeric changes. Each case runs in a fresh interpreter, so the test process's
own allocator is left as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    import caffe_compat as cc
    from caffe_compat.net.allocator import freed_memory_kept, keep_freed_memory

    torch.manual_seed(0)
    net = cc.Net(cc.read_net('''
        input: "data" input_shape { dim: 2 dim: 3 dim: 64 dim: 64 }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
        layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" }
    '''), phase="TEST")
    x = torch.randn(2, 3, 64, 64)
    before = net(data=x)["conv"].clone()

    def passes():
        # like a forward pass at a large batch: 8 activations of 40 MB, touched, then freed
        blocks = [torch.empty(40 << 18).fill_(1.0) for _ in range(8)]
        del blocks

    def faults_of_reused_passes():
        passes()  # the first pass maps its memory in any case
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            passes()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    default_faults = faults_of_reused_passes()
    kept = keep_freed_memory(sys.argv[1] == "keep")
    kept_faults = faults_of_reused_passes()
    after = net(data=x)["conv"]
    print(json.dumps({"kept": kept, "reported": freed_memory_kept(), "default_faults": default_faults,
                      "kept_faults": kept_faults, "equal": bool(torch.equal(before, after))}))
    """
)


def _probe(mode: str, **env: str) -> dict:
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=environment, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    from caffe_compat.net.allocator import _libc

    return _libc() is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_page_faults_and_results_are_unchanged() -> None:
    if not _glibc():
        pytest.skip("not glibc")
    result = _probe("keep")
    assert result["kept"] and result["reported"]
    pages = 5 * 8 * (40 << 20) // 4096
    # glibc by default maps every 40 MB block afresh on each pass: every page faults again
    assert result["default_faults"] >= 0.9 * pages
    # kept: the freed blocks' pages stay mapped and the next passes reuse (nearly all of) them
    assert result["kept_faults"] <= 0.25 * pages
    assert result["equal"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_the_environment_opts_out_and_false_restores_the_defaults() -> None:
    if not _glibc():
        pytest.skip("not glibc")
    opted_out = _probe("keep", CAFFE_COMPAT_MALLOC="default")
    assert not opted_out["kept"] and not opted_out["reported"]
    pages = 5 * 8 * (40 << 20) // 4096
    assert opted_out["kept_faults"] >= 0.9 * pages
    restored = _probe("default")
    assert not restored["kept"] and restored["kept_faults"] >= 0.9 * pages
    assert opted_out["equal"] and restored["equal"]
