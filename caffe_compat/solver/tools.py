"""``caffe test`` and ``caffe time`` (tools/caffe.cpp ``test`` and ``time``) on a Net.

``score``: build the net in TEST phase, copy the weights, run ``iterations`` batches, log each
batch's outputs (``Batch i, name = v``), the mean loss (``Loss: L``) and each output's mean with its
weighted loss, as Caffe does.

``benchmark``: one clean forward/backward pass, then ``iterations`` timed passes; per layer the
mean forward and backward time, plus the data layers' batch reading as their forward time. The
timed passes are ordinary forward/backward passes with one timestamp per layer and direction, so
the whole-net figure is the plain pass's time and the per-layer figures partition it: a layer's
forward runs from its forward pre-hook to the next layer's (the last one to the end of the
forward), its backward from the moment autograd reaches the node that produced its top (a
pre-hook on that node) to the next such moment. (Full backward hooks would wrap every layer's
inputs and outputs in extra autograd nodes and copies, and inflate what they measure.) Nets
with ``Input`` layers are fed zeros of the declared shapes. Times on CUDA are taken after a
synchronize.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError, name_file
from caffe_compat.log.glog import GlogWriter, format_number
from caffe_compat.net.net import Net
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import read_net
from caffe_compat.solver.snapshot import load_weights

_f32 = np.float32


NetTransform = Callable[[caffe_pb2.NetParameter, int], caffe_pb2.NetParameter]


def build_tool_net(
    model: str | os.PathLike,
    phase: str,
    level: int,
    stages: Sequence[str],
    net_transform: NetTransform | None,
    allow_python_layers: bool = False,
) -> Net:
    """The net a tool runs: ``model`` in ``phase`` with the command line's overrides applied.

    Raises:
        CaffeCompatError: the net has no layers (an empty prototxt), or none in this phase.
    """
    stages = [s for s in stages if s] or ()
    param = read_net(model)
    if not param.layer:
        raise CaffeCompatError(f"{model}: the net has no layers: nothing to run")
    try:
        if net_transform is not None:
            param = net_transform(param, caffe_pb2.TRAIN if phase == "TRAIN" else caffe_pb2.TEST)
        folder = Path(model).resolve().parent if Path(str(model)).is_file() else None
        net = Net(
            param,
            phase=phase,
            level=level,
            stages=stages,
            source_dir=folder,
            allow_python_layers=allow_python_layers,
        )
    except CaffeCompatError as exc:
        raise name_file(exc, str(model)) from None
    if not net.layers:
        raise CaffeCompatError(
            f"{model}: none of the net's {len(param.layer)} layers is in the {phase} phase"
        )
    return net


def score(
    model: str | os.PathLike,
    weights: str | os.PathLike,
    iterations: int,
    log: GlogWriter,
    device: torch.device | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
    net_transform: NetTransform | None = None,
    allow_python_layers: bool = False,
) -> dict[str, np.ndarray]:
    """Caffe's ``caffe test``; returns each output's mean."""
    if iterations <= 0:
        raise CaffeCompatError(f"-iterations must be positive, got {iterations}")
    device = device or torch.device("cpu")
    log.info(
        "Use CPU." if device.type == "cpu" else f"Use GPU with device ID {device.index or 0}", "caffe.cpp:290"
    )
    net = build_tool_net(model, "TEST", level, stages, net_transform, allow_python_layers)
    with log.capture("caffe_compat"):
        load_weights(net, weights)
    net.to(device)
    log.info(f"Running for {iterations} iterations.", "caffe.cpp:304")
    sums: dict[str, np.ndarray] = {}
    loss = _f32(0)
    for i in range(iterations):
        with torch.no_grad():
            outputs = net(**_zero_inputs(net, device))
            iter_loss = _f32(net.loss(outputs).item()) if net.loss_weights else _f32(0)
        loss = _f32(loss + iter_loss)
        for name in net.output_names:
            values = outputs[name].detach().cpu().numpy().astype(np.float32).reshape(-1)
            sums[name] = values.copy() if i == 0 else (sums[name] + values).astype(np.float32)
            for value in values:
                log.info(f"Batch {i}, {name} = {format_number(value)}", "caffe.cpp:318")
    loss = _f32(loss / _f32(iterations))
    log.info(f"Loss: {format_number(loss)}", "caffe.cpp:323")
    means = {}
    for name in net.output_names:
        weight = _f32(net.loss_weights.get(name, 0.0))
        means[name] = (sums[name] / _f32(iterations)).astype(np.float32)
        for value in means[name]:
            extra = (
                f" (* {format_number(weight)} = {format_number(_f32(weight * value))} loss)" if weight else ""
            )
            log.info(f"{name} = {format_number(value)}{extra}", "caffe.cpp:332")
    return means


def _zero_inputs(net: Net, device: torch.device) -> dict[str, torch.Tensor]:
    """Zeros for the net's Input-layer tops (data layers read their own batches)."""
    fed = set()
    for name in net.data_layer_names:
        fed.update(net.layer_params[name].top)
    return {
        name: torch.zeros(net.blob_shapes[name], device=device) for name in net.input_names if name not in fed
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _add_spans(totals: dict[str, float], marks: list[tuple[str, float]], end: float) -> None:
    """Each mark's layer gets the time up to the next mark (the last one: up to ``end``), in ms."""
    for (name, start), (_, stop) in zip(marks, [*marks[1:], ("", end)], strict=False):
        totals[name] += max(stop - start, 0.0) * 1e3


def benchmark(
    model: str | os.PathLike,
    iterations: int,
    log: GlogWriter,
    device: torch.device | None = None,
    phase: str = "TRAIN",
    level: int = 0,
    stages: Sequence[str] = (),
    net_transform: NetTransform | None = None,
    allow_python_layers: bool = False,
) -> dict[str, tuple[float, float]]:
    """Caffe's ``caffe time``; returns layer -> (forward ms, backward ms) per iteration."""
    if iterations <= 0:
        raise CaffeCompatError(f"-iterations must be positive, got {iterations}")
    device = device or torch.device("cpu")
    log.info(
        "Use CPU." if device.type == "cpu" else f"Use GPU with device ID {device.index or 0}", "caffe.cpp:367"
    )
    net = build_tool_net(model, phase, level, stages, net_transform, allow_python_layers)
    net.to(device)
    inputs = _zero_inputs(net, device)
    if not net.loss_weights:
        # nothing to back-propagate (a deploy net): forward passes without autograd's saved
        # tensors, and each blob freed after its last use
        net.keep_blobs = False
        with torch.no_grad():
            return _benchmark_passes(net, inputs, iterations, log, device)
    return _benchmark_passes(net, inputs, iterations, log, device)


def _benchmark_passes(
    net: Net, inputs: dict[str, torch.Tensor], iterations: int, log: GlogWriter, device: torch.device
) -> dict[str, tuple[float, float]]:
    log.info("Performing Forward", "caffe.cpp:375")
    outputs = net(**inputs)
    loss = net.loss(outputs) if net.loss_weights else None
    log.info(
        f"Initial loss: {format_number(_f32(loss.item()) if loss is not None else 0.0)}", "caffe.cpp:380"
    )
    log.info("Performing Backward", "caffe.cpp:381")
    if loss is not None and loss.requires_grad:
        loss.backward()

    forward_ms: dict[str, float] = defaultdict(float)
    backward_ms: dict[str, float] = defaultdict(float)
    forward_marks: list[tuple[str, float]] = []
    backward_marks: list[tuple[str, float]] = []
    claimed: set[int] = set()  # autograd nodes already marking a layer (identity layers pass theirs on)
    handles = []

    def forward_pre(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            _sync(device)
            forward_marks.append((name, time.perf_counter()))

        return hook

    def backward_mark(name: str):
        def hook(grad_outputs: tuple) -> None:
            _sync(device)
            backward_marks.append((name, time.perf_counter()))

        return hook

    def forward_post(name: str):
        # the layer's backward starts when autograd reaches the node that made its (first) top
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            tops = output if isinstance(output, (tuple, list)) else (output,)
            for top in tops:
                node = top.grad_fn if isinstance(top, torch.Tensor) else None
                if node is not None:
                    if id(node) not in claimed:
                        claimed.add(id(node))
                        node.register_prehook(backward_mark(name))
                    break

        return hook

    originals = {}
    for name, module in net.layers.items():
        if name in net.data_layer_names:
            originals[name] = module.next_batch

            def timed(name: str = name, read=module.next_batch):
                begin = time.perf_counter()
                batch = read()
                forward_ms[name] += (time.perf_counter() - begin) * 1e3
                return batch

            module.next_batch = timed
            continue
        if getattr(type(module), "is_input", False):
            continue
        handles.append(module.register_forward_pre_hook(forward_pre(name)))
        handles.append(module.register_forward_hook(forward_post(name)))

    log.info("*** Benchmark begins ***", "caffe.cpp:390")
    log.info(f"Testing for {iterations} iterations.", "caffe.cpp:391")
    total_forward = total_backward = 0.0
    total_begin = time.perf_counter()
    try:
        for j in range(iterations):
            net.zero_grad(set_to_none=True)
            forward_marks.clear()
            backward_marks.clear()
            claimed.clear()
            _sync(device)
            begin = time.perf_counter()
            outputs = net(**inputs)
            loss = net.loss(outputs) if net.loss_weights else None
            _sync(device)
            middle = time.perf_counter()
            if loss is not None and loss.requires_grad:
                loss.backward()
            _sync(device)
            end = time.perf_counter()
            del outputs, loss
            _add_spans(forward_ms, forward_marks, middle)
            _add_spans(backward_ms, backward_marks, end)
            total_forward += (middle - begin) * 1e3
            total_backward += (end - middle) * 1e3
            log.info(
                f"Iteration: {j + 1} forward-backward time: {format_number((end - begin) * 1e3)} ms.",
                "caffe.cpp:415",
            )
    finally:
        for handle in handles:
            handle.remove()
        for name in originals:
            del net.layers[name].next_batch
    total_ms = (time.perf_counter() - total_begin) * 1e3
    log.info("Average time per layer: ", "caffe.cpp:418")
    result = {}
    for name in net.layers:
        if getattr(type(net.layers[name]), "is_input", False):
            continue
        fwd, bwd = forward_ms[name] / iterations, backward_ms[name] / iterations
        result[name] = (fwd, bwd)
        log.info(f"{name:>10}\tforward: {format_number(fwd)} ms.", "caffe.cpp:421")
        log.info(f"{name:>10}\tbackward: {format_number(bwd)} ms.", "caffe.cpp:424")
    log.info(f"Average Forward pass: {format_number(total_forward / iterations)} ms.", "caffe.cpp:429")
    log.info(f"Average Backward pass: {format_number(total_backward / iterations)} ms.", "caffe.cpp:431")
    log.info(f"Average Forward-Backward: {format_number(total_ms / iterations)} ms.", "caffe.cpp:433")
    log.info(f"Total Time: {format_number(total_ms)} ms.", "caffe.cpp:435")
    log.info("*** Benchmark ends ***", "caffe.cpp:436")
    return result
