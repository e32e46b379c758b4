"""Margin heads at MS-Celeb-1M-v1c scale: caffe_compat.losses against a transcription of the seed.

Target (margin-loss issue): forward + backward (head, softmax cross-entropy, backward to the
embeddings and the weight) of the MV-AM and MV-Arc heads at 86,876 classes, batch 256, 512-d is
at least 1.5x faster and takes at most 0.6x the peak memory of a straightforward transcription of
xiaoboCASIA/SV-X-Softmax ``fc_layers.py`` (``SeedFC`` below: weight (in, out) normalized
by column, ``mm``, ``clamp``, ground truth by advanced indexing, boolean-mask read and
assignment, ``scatter_``, ``*= scale``). AM, Arc and SphereFace are reported beside them.

Time: every variant runs in this one process, interleaved (variant 1, 2, ..., then again), after
one untimed warm-up each; the table shows the median over ``--repeats`` rounds.

Peak memory: each variant runs in a fresh subprocess (``--child``) that builds its weight and
inputs, runs one untimed warm-up step, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``, Linux), runs two forward+backward iterations and reports the peak
resident set (``VmHWM``) minus the resident set at the reset: the peak of everything the step
allocates (activations, saved tensors, gradients, the weight gradient included) above the weight
and inputs. glibc's malloc is told to serve every block of 1 MiB or more with ``mmap``
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the resident set at once and the number is
the live-memory peak rather than an artefact of heap trimming; both sides are measured the same
way. On ``--device cuda`` the child reports ``torch.cuda.max_memory_allocated`` above the
allocation at the same point instead.

At scale (issue 14): every head kind at 1,000,000 classes, batch 256, 512-d, with the softmax loss
computed over class chunks (``caffe_compat.losses.chunked_cross_entropy``, ``--chunk`` classes at a
time), one step per kind in a fresh process: seconds per forward+backward and the peak resident
memory above the weight (2 GB at this size) and inputs, which stays bounded by the chunk size where
the unchunked head would need the 1 GB logits matrix and its gradient on top. ``--quick`` uses
20,000 classes, batch 32, 64-d; ``--skip-scale`` leaves it out.

    python benchmarks/bench_margin_heads.py [--quick] [--repeats 5] [--device cpu]
                                            [--chunk 65536] [--skip-scale]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from caffe_compat.losses import HEAD_KINDS, chunked_cross_entropy, make_head

FULL = {"classes": 86876, "batch": 256, "dim": 512}
QUICK = {"classes": 8192, "batch": 64, "dim": 128}
SCALE = {"classes": 1_000_000, "batch": 256, "dim": 512}
SCALE_QUICK = {"classes": 20_000, "batch": 32, "dim": 64}
#: (label, seed fc_type or None, our kind): ratios compare ours with the seed of the same kind.
VARIANTS = [
    ("seed MV-AM", "MV-AM", None),
    ("ours mv-am", None, "mv-am"),
    ("seed MV-Arc", "MV-Arc", None),
    ("ours mv-arc", None, "mv-arc"),
    ("seed AM", "AM", None),
    ("ours am", None, "am"),
    ("seed Arc", "Arc", None),
    ("ours arc", None, "arc"),
    ("seed SphereFace", "SphereFace", None),
    ("ours sphereface", None, "sphereface"),
]
#: ours -> the seed variant it is compared with.
SEED_OF = {VARIANTS[i + 1][0]: VARIANTS[i][0] for i in range(0, len(VARIANTS), 2)}
M_AM, M_ARC, T, S = 0.35, 0.5, 0.2, 32.0


# -- the transcription of the seed's fc_layers.py ------------------------------------------------
class SeedFC(torch.nn.Module):
    """The seed's ``FC`` forward written the obvious way (weight stored (in, out) as the seed does),
    with ``easy_margin=False`` (the plain formulas; our heads are run with the same) and SphereFace
    at m = 4."""

    def __init__(self, fc_type: str, weight_in_out: torch.Tensor, margin: float) -> None:
        super().__init__()
        self.fc_type, self.margin, self.t, self.scale = fc_type, margin, T, S
        self.weight = torch.nn.Parameter(weight_in_out)
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.iter, self.base, self.alpha, self.power, self.lambda_min = 0, 1000.0, 0.0001, 2, 5.0

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        kernel_norm = F.normalize(self.weight, dim=0)
        cos_theta = torch.mm(x, kernel_norm).clamp(-1, 1)
        gt = cos_theta[torch.arange(0, label.size(0)), label].view(-1, 1)
        if self.fc_type == "SphereFace":
            self.iter += 1
            lam = max(self.lambda_min, self.base * (1 + self.alpha * self.iter) ** (-self.power))
            cos_m_theta = 8 * gt**4 - 8 * gt**2 + 1  # m = 4
            k = ((self.margin * gt.data.acos()) / math.pi).floor()
            phi = ((-1.0) ** k) * cos_m_theta - 2 * k
            final_gt = (lam * gt + phi) / (1 + lam)
        elif self.fc_type in ("AM", "MV-AM"):
            if self.fc_type == "MV-AM":
                mask = cos_theta > gt - self.margin
                hard = cos_theta[mask]
                cos_theta[mask] = (self.t + 1.0) * hard + self.t
            final_gt = gt - self.margin
        else:  # Arc, MV-Arc
            sin_theta = torch.sqrt(1.0 - torch.pow(gt, 2))
            cos_theta_m = gt * self.cos_m - sin_theta * self.sin_m
            if self.fc_type == "MV-Arc":
                mask = cos_theta > cos_theta_m
                hard = cos_theta[mask]
                cos_theta[mask] = (self.t + 1.0) * hard + self.t
            final_gt = cos_theta_m
        cos_theta.scatter_(1, label.data.view(-1, 1), final_gt)
        cos_theta *= self.scale
        return cos_theta


# -- one variant -------------------------------------------------------------------------------
def make_weight(sizes: dict[str, int], device: str) -> torch.Tensor:
    """(classes, dim) unit rows, built in place (no temporaries of the weight's size)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    weight = torch.empty(sizes["classes"], sizes["dim"]).uniform_(-1.0, 1.0, generator=generator)
    weight.div_(torch.linalg.vector_norm(weight, dim=1, keepdim=True))
    return weight.to(device)


def make_inputs(sizes: dict[str, int], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(sizes["batch"], sizes["dim"], generator=generator).to(device).requires_grad_()
    labels = torch.randint(0, sizes["classes"], (sizes["batch"],), generator=generator).to(device)
    return x, labels


def build_step(label: str, weight: torch.Tensor, sizes: dict[str, int]) -> tuple[torch.nn.Module, Callable]:
    """The module and a ``step(x, labels) -> logits`` running forward + loss + backward."""
    _, seed_type, kind = next(v for v in VARIANTS if v[0] == label)
    if seed_type is not None:
        margin = 4.0 if seed_type == "SphereFace" else (M_ARC if "Arc" in seed_type else M_AM)
        module = SeedFC(seed_type, weight.t().contiguous(), margin)

        def step(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = module(F.normalize(x), labels)  # the seed expects normalized embeddings
            F.cross_entropy(logits, labels).backward()
            return logits

    else:
        params = {"s": S}
        if kind in ("am", "mv-am"):
            params["m"] = M_AM
        elif kind in ("arc", "mv-arc"):
            params["m"] = M_ARC
        if kind.startswith("mv"):
            params["t"] = T
        if kind in ("am", "mv-am", "arc", "mv-arc"):
            params["easy_margin"] = False  # the transcription's plain formulas
        module = make_head(kind, sizes["dim"], sizes["classes"], **params).to(weight.device)
        with torch.no_grad():
            module.weight.copy_(weight)

        def step(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = module(x, labels)
            F.cross_entropy(logits, labels).backward()
            return logits

    return module, step


def clear_grads(module: torch.nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def reset_peak_rss() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0) and return that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return proc_status_bytes("VmRSS")


# -- modes -------------------------------------------------------------------------------------
def child(label: str, sizes: dict[str, int], device: str) -> None:
    """Run in a fresh process: print the peak memory (MB) of two steps of ``label``."""
    weight = make_weight(sizes, device)
    x, labels = make_inputs(sizes, device)
    module, step = build_step(label, weight, sizes)
    del weight
    step(x, labels)  # warm-up: one-time allocations (thread pools, kernels' caches) are not counted
    clear_grads(module, x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    for _ in range(2):
        clear_grads(module, x)
        step(x, labels)
    sync(device)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = proc_status_bytes("VmHWM") - base
    print(json.dumps({"peak_mb": peak / 2**20}))


def scale_child(kind: str, sizes: dict[str, int], chunk: int, chunked: bool) -> None:
    """Run in a fresh process: one timed forward+backward of ``kind`` with the softmax loss, chunked
    over classes or not; print its seconds and peak RSS above the weight and inputs (MB)."""
    torch.manual_seed(0)
    head = make_head(kind, sizes["dim"], sizes["classes"])
    x = torch.randn(sizes["batch"], sizes["dim"], requires_grad=True)
    labels = torch.randint(0, sizes["classes"], (sizes["batch"],))
    base = reset_peak_rss()
    start = time.perf_counter()
    if chunked:
        loss = chunked_cross_entropy(head, x, labels, chunk_size=chunk)
    else:
        loss = F.cross_entropy(head(x, labels), labels)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = proc_status_bytes("VmHWM") - base
    print(json.dumps({"seconds": seconds, "peak_mb": peak / 2**20, "loss": loss.item()}))


def run_scale_child(kind: str, sizes: dict[str, int], chunk: int, chunked: bool = True) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    command = [sys.executable, __file__, "--scale-child", kind, "--sizes", json.dumps(sizes)]
    command += ["--chunk", str(chunk)] + ([] if chunked else ["--unchunked"])
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def scale_table(sizes: dict[str, int], chunk: int, kinds: tuple[str, ...] = tuple(HEAD_KINDS)) -> None:
    weight_mb = sizes["classes"] * sizes["dim"] * 4 / 2**20
    logits_mb = sizes["classes"] * sizes["batch"] * 4 / 2**20
    print(
        f"At scale: classes {sizes['classes']}, batch {sizes['batch']}, dim {sizes['dim']}, softmax loss "
        "over "
        f"chunks of {chunk} classes; one step per kind, each in a fresh process (weight {weight_mb:.0f} MB; "
        f"unchunked logits alone would be {logits_mb:.0f} MB)"
    )
    print(f"{'kind':<12}{'fwd+bwd s':>11}{'peak MB above weight+inputs':>30}{'loss':>10}")
    for kind in kinds:
        result = run_scale_child(kind, sizes, chunk)
        print(f"{kind:<12}{result['seconds']:>11.2f}{result['peak_mb']:>30.0f}{result['loss']:>10.3f}")


def peak_memory(label: str, sizes: dict[str, int], device: str) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    command = [sys.executable, __file__, "--child", label, "--device", device, "--sizes", json.dumps(sizes)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def check_agreement(sizes: dict[str, int], device: str) -> list[str]:
    """Ours against the seed transcription: logits and both gradients (max abs differences)."""
    lines = []
    weight = make_weight(sizes, device)
    for ours_label, seed_label in SEED_OF.items():
        results = []
        for label in (seed_label, ours_label):
            x, labels = make_inputs(sizes, device)
            module, step = build_step(label, weight, sizes)
            logits = step(x, labels).detach()
            w_grad = module.weight.grad.t() if label.startswith("seed") else module.weight.grad
            results.append((logits, x.grad, w_grad))
            del module, step
        diffs = [(a - b).abs().max().item() for a, b in zip(*results, strict=True)]
        lines.append(
            f"{ours_label:<16} vs seed: max |diff| logits {diffs[0]:.1e}, x grad {diffs[1]:.1e}, "
            f"weight grad {diffs[2]:.1e}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes {QUICK}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="variant labels to run (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=65536, help="classes per chunk at scale")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the 1M-class table")
    parser.add_argument("--scale-child", help=argparse.SUPPRESS)
    parser.add_argument("--unchunked", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and args.repeats == 5:
        args.repeats = 1
    if args.scale_child:
        scale_child(args.scale_child, json.loads(args.sizes), args.chunk, not args.unchunked)
        return
    sizes = json.loads(args.sizes) if args.sizes else (QUICK if args.quick else FULL)
    if args.child:
        child(args.child, sizes, args.device)
        return
    labels = [v[0] for v in VARIANTS if not args.only or v[0] in args.only]
    print(
        f"classes {sizes['classes']}, batch {sizes['batch']}, dim {sizes['dim']}, device {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    if not args.only:
        for line in check_agreement(sizes, args.device):
            print(line)
    memory = {label: peak_memory(label, sizes, args.device) for label in labels}
    weight = make_weight(sizes, args.device)
    runs = {}
    for label in labels:
        x, targets = make_inputs(sizes, args.device)
        module, step = build_step(label, weight, sizes)
        runs[label] = (module, step, x, targets)
        clear_grads(module, x)
        step(x, targets)  # warm-up
    del weight
    times: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(args.repeats):
        for label in labels:
            module, step, x, targets = runs[label]
            clear_grads(module, x)
            sync(args.device)
            start = time.perf_counter()
            step(x, targets)
            sync(args.device)
            times[label].append(time.perf_counter() - start)
    print()
    print(f"{'variant':<18}{'fwd+bwd ms (median)':>21}{'peak MB':>10}{'speed-up':>10}{'memory ratio':>14}")
    for label in labels:
        ms = 1e3 * statistics.median(times[label])
        seed_label = SEED_OF.get(label)
        if seed_label in times:
            seed_ms = 1e3 * statistics.median(times[seed_label])
            ratio = f"{seed_ms / ms:>9.2f}x{memory[label] / memory[seed_label]:>13.2f}x"
        else:
            ratio = f"{'(baseline)':>10}{'':>14}"
        print(f"{label:<18}{ms:>21.1f}{memory[label]:>10.0f}{ratio}")
    if not args.skip_scale and not args.only:
        print()
        if args.quick:  # three kinds: a smoke test of the table
            scale_table(SCALE_QUICK, min(args.chunk, 4096), ("fc", "am", "mv-arc"))
        else:
            scale_table(SCALE, args.chunk)


if __name__ == "__main__":
    main()
