"""``convert``: one Caffe net and its weights to pt, safetensors, py, onnx, torchscript or caffemodel.

Steps: read the prototxt (in deploy form for the traced formats, or when asked); build the Net
in the TEST phase; load the weights (``.caffemodel`` streamed blob by blob, or a ``.pt`` /
``.safetensors`` state dict), refusing weights that do not fit (every differing layer listed);
write the artifact into a staging folder; verify it (unless told not to): the source Net and the
artifact run on the same inputs (random normal, labels zero, or given) and every output's max
absolute and relative error is reported; a caffemodel is also compared blob for blob. Only a
verified artifact is moved to its destination: on any failure nothing is left behind.

Memory: the Net is built without filling its blobs (``build.net_for_weights``), the weights are
read straight into its tensors, every artifact is written from those tensors without a serialized
copy, and the source Net is released before the artifact is loaded for verification: a
conversion holds one copy of the weights, two while the artifact is loaded back (benchmarks/
bench_convert.py measures it).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from caffe_compat.errors import CaffeCompatError
from caffe_compat.export import caffemodel as caffemodel_io
from caffe_compat.export import onnx as onnx_io
from caffe_compat.export import standalone, state_dict, torchscript
from caffe_compat.export.build import net_for_weights
from caffe_compat.export.deploy import TRAINING_TYPES, apply_input_shapes, deploy_net
from caffe_compat.export.errors import ExportError, VerificationError
from caffe_compat.export.files import StagedOutputs, write_failure
from caffe_compat.export.trace import (
    BatchFixed,
    FlatNet,
    batch_inputs,
    example_inputs,
    flatten,
    flatten_any_batch,
    net_input_shapes,
)
from caffe_compat.export.verify import DEFAULT_TOL, Verification, compare
from caffe_compat.net.net import Net
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import format_text, read_net

#: Formats and what each writes.
FORMATS = {
    "pt": "PyTorch state_dict (.pt) + the prototxt that rebuilds the Net",
    "safetensors": "the same state_dict as .safetensors (needs the safetensors package)",
    "py": "standalone PyTorch source (net.py) + its weights (net.pt)",
    "onnx": "ONNX model of the deploy net (Caffe blob names as input/output names)",
    "torchscript": "TorchScript module (torch.jit.trace of the deploy net)",
    "caffemodel": "binary caffemodel Caffe loads (same layer names, blob order and shapes)",
}
#: Formats made by tracing the net: always in deploy form; every axis but the batch is fixed.
TRACED = frozenset({"py", "onnx", "torchscript"})
#: The batch size conversions are verified at when no ``batch`` is given (not one of the traced
#: sizes, so a traced export that runs there runs at any batch size); small, so converting a
#: deploy net that declares batch 100 needs little memory.
VERIFY_BATCH = 4
#: Layer types whose second and later bottoms are labels (zeros in random verification inputs).
LABEL_CONSUMERS = TRAINING_TYPES

Shape = tuple[int, ...]


class _Notes(list):
    """A list of notes that also passes each one to ``log`` as it is added."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        super().__init__()
        self.log = log

    def append(self, note: str) -> None:
        super().append(note)
        if self.log is not None:
            self.log(f"note: {note}")

    def extend(self, notes: object) -> None:
        for note in notes:  # type: ignore[attr-defined]
            self.append(note)


@dataclass
class ConversionResult:
    """What a conversion wrote and how it checked.

    Attributes:
        format: the output format.
        outputs: the files written.
        notes: what changed on the way (dropped layers, ignored weights, shapes, opset).
        verification: the output comparison (None with ``verify=False``).
        seconds: wall time of each stage (build, weights, write, verify).
    """

    format: str
    outputs: list[Path]
    notes: list[str] = field(default_factory=list)
    verification: Verification | None = None
    seconds: dict[str, float] = field(default_factory=dict)


#: The file name extension of each format, for ``-o FOLDER``.
EXTENSIONS = {
    "pt": ".pt",
    "safetensors": ".safetensors",
    "py": ".py",
    "onnx": ".onnx",
    "torchscript": ".ts",
    "caffemodel": ".caffemodel",
}


def output_file(fmt: str, output: str | os.PathLike, model_file: Path | None = None) -> Path:
    """The file ``-o output`` names: ``output`` itself, or a file in it when it names a folder (an
    existing folder, a name ending in a path separator, or for ``py`` a name without a suffix):
    ``net.py`` for py, ``<prototxt name>.<extension>`` for the others."""
    text = os.fspath(output)
    path = Path(text)
    is_folder = (
        path.is_dir() or text.endswith(("/", os.sep)) or (fmt == "py" and not path.suffix and text != "")
    )
    if not is_folder:
        return path
    stem = "net" if fmt == "py" or model_file is None else model_file.stem
    return path / f"{stem}{EXTENSIONS[fmt]}"


def output_paths(fmt: str, output: Path, deploy: bool) -> list[Path]:
    """Every file a conversion to ``fmt`` writes for ``-o output``."""
    if fmt in ("pt", "safetensors"):
        return [output, output.with_suffix(".prototxt")]
    if fmt == "py":
        if output.suffix != ".py":
            raise ExportError(f"-o {output}: the py format writes a Python module: give a name ending in .py")
        return [output, output.with_suffix(".pt")]
    if fmt == "caffemodel" and deploy:
        return [output, output.with_suffix(".prototxt")]
    return [output]


def _is_state_dict(path: Path) -> bool:
    return path.suffix in (".pt", ".pth", ".safetensors")


def load_weights(
    net: Net, weights: str | os.PathLike, allow_missing: bool = False, progress: bool = False
) -> list[str]:
    """Load a caffemodel or state dict into ``net`` (all misfits listed in one error); notes."""
    path = Path(weights)
    if _is_state_dict(path):
        report = state_dict.load_into(net, state_dict.read(path), str(path), allow_missing)
    else:
        index = caffemodel_io.CaffemodelIndex(path)
        report = caffemodel_io.load_into(dict(net.params), index, allow_missing, progress)
    notes = []
    if report.ignored:
        shown = report.ignored[: caffemodel_io.MAX_LISTED]
        more = f" and {len(report.ignored) - len(shown)} more" if len(report.ignored) > len(shown) else ""
        notes.append(
            f"{len(report.ignored)} layer(s)/key(s) of the weights are not in the net, ignored: {shown}{more}"
        )
    if report.missing:
        notes.append(f"no weights for {report.missing}: they keep their fillers' values (--allow-missing)")
    return notes


def label_inputs(net: Net) -> set[str]:
    """Inputs that layers read as labels (loss layers' and margin layers' later bottoms)."""
    labels = set()
    for name, layer in net.layers.items():
        param = net.layer_params[name]
        if type(layer).is_loss or param.type in LABEL_CONSUMERS:
            labels.update(b for b in param.bottom[1:] if b in net.input_names)
    return labels


def with_batch(shapes: dict[str, Shape], batch: int) -> dict[str, Shape]:
    """``shapes`` with the batch axis (the first, of the inputs that share the first input's
    batch size) set to ``batch``."""
    batched = set(batch_inputs({name: torch.empty(shape, device="meta") for name, shape in shapes.items()}))
    return {name: (batch, *shape[1:]) if name in batched else shape for name, shape in shapes.items()}


def verification_inputs(net: Net, shapes: dict[str, Shape], seed: int = 0) -> dict[str, torch.Tensor]:
    """Standard-normal inputs of the given shapes, with label inputs set to class 0."""
    inputs = example_inputs(shapes, seed)
    for name in label_inputs(net) & set(inputs):
        inputs[name] = torch.zeros_like(inputs[name])
    return inputs


def _model_file(model: object) -> Path | None:
    """The prototxt's path, or None when ``model`` is prototxt text or a NetParameter."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    try:
        path = Path(model)
        return path if path.is_file() else None
    except (OSError, ValueError):  # text too long or odd to be a file name
        return None


def _prepare_net(
    model: str | os.PathLike | caffe_pb2.NetParameter,
    fmt: str,
    deploy: bool,
    input_shapes: dict[str, Shape],
    batch: int | None,
) -> tuple[caffe_pb2.NetParameter | str | os.PathLike, list[str]]:
    param = read_net(model)
    path = _model_file(model)
    net_dir = path.resolve().parent if path is not None else None
    if deploy or fmt in TRACED:
        return deploy_net(param, input_shapes, batch, net_dir)
    if not input_shapes and batch is None:
        return model, []
    notes = apply_input_shapes(param, input_shapes, batch)
    return param, notes


def _trace(
    fmt: str, net: Net, inputs: dict[str, torch.Tensor], any_batch: bool, fallback: Callable[[], dict]
) -> tuple[FlatNet, dict[str, torch.Tensor], str]:
    """The flat graph to export, the inputs to verify it on, and a note on the batch size.

    With ``any_batch`` the graph is made for any batch size (:func:`flatten_any_batch`); a net
    that cannot be is traced at the inputs ``fallback()`` gives (its declared batch size)."""
    onnx_pooling = fmt == "onnx"
    if any_batch:
        try:
            flat = flatten_any_batch(net, inputs, onnx_pooling)
            return flat, inputs, "any batch size (the batch axis is dynamic; --batch N fixes it)"
        except BatchFixed as exc:
            inputs = fallback()
            flat = flatten(net, inputs, onnx_pooling)
            size = next(iter(flat.input_shapes.values()), (0,))[0] if flat.input_shapes else "?"
            return flat, inputs, f"batch size {size} only, as the prototxt declares: {exc}"
    flat = flatten(net, inputs, onnx_pooling)
    return flat, inputs, "the given batch size only (--batch)"


def _write(
    fmt: str,
    net: Net,
    paths: list[Path],
    inputs: dict[str, torch.Tensor],
    source: str,
    opset: int | None,
    progress: bool,
    notes: list[str],
    any_batch: bool = False,
    fallback: Callable[[], dict] | None = None,
) -> dict[str, torch.Tensor]:
    """Write the artifact; returns the inputs to verify it on (changed when a traced export
    falls back to the declared batch size)."""
    if fmt in ("pt", "safetensors"):
        state_dict.write(net, paths[0], paths[1], fmt)
    elif fmt == "caffemodel":
        caffemodel_io.write_caffemodel_streaming(net.net_param, dict(net.params), paths[0], progress)
        if len(paths) > 1:
            paths[1].write_text(format_text(net.net_param), encoding="utf-8")
        problems = caffemodel_io.compare_blobs(paths[0], dict(net.params))
        if problems:
            raise VerificationError(f"the written caffemodel differs from the net's blobs: {problems[:10]}")
        notes.append("caffemodel re-read: every blob equal to the net's (names, order, shapes, values)")
    else:
        flat, inputs, batch_note = _trace(fmt, net, inputs, any_batch, fallback or (lambda: inputs))
        if flat.dropped_inputs:
            notes.append(f"inputs {flat.dropped_inputs} feed no output: left out of the export")
        for layer, state in flat.state_updates.items():
            notes.append(
                f"layer '{layer}' ({flat.layer_types.get(layer, '?')}) updates {state} in place in forward: "
                "the "
                "export computes the updated values from the stored ones and does not write them back"
            )
        if fmt == "py":
            standalone.write(flat, paths[0], paths[1], net.net_param.name, source)
        elif fmt == "onnx":
            try:
                used = onnx_io.write(flat, paths[0], inputs, opset, progress)
            except onnx_io.DynamicBatchError as exc:
                inputs = (fallback or (lambda: inputs))()
                flat = flatten(net, inputs, onnx_pooling=True)
                used = onnx_io.write(flat, paths[0], inputs, opset, progress)
                batch_note = (
                    f"batch size {_batch_of(flat.input_shapes)} only: with a dynamic batch axis {exc}"
                )
            notes.append(f"ONNX opset {used}")
        else:
            torchscript.write(flat, paths[0], inputs)
        spec = {name: ["N" if d is None else d for d in shape] for name, shape in flat.shape_spec().items()}
        notes.append(f"input shapes {spec}: runs at {batch_note}")
    return inputs


def _batch_of(shapes: dict[str, Shape]) -> int:
    """The batch size of the first input with a batch axis (0 when none has one)."""
    return next((int(shape[0]) for shape in shapes.values() if shape), 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reference(net: Net, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    net.keep_blobs = False  # only the outputs are compared
    with torch.no_grad():
        return {k: v.detach().clone() for k, v in net(**inputs).items()}


def _run_artifact(
    fmt: str,
    paths: list[Path],
    rebuild: caffe_pb2.NetParameter,
    shapes: dict[str, Shape],
    inputs: dict[str, torch.Tensor],
    output_names: list[str],
) -> dict[str, torch.Tensor]:
    if fmt in ("pt", "safetensors"):
        return state_dict.run(paths[1], paths[0], inputs, shapes)
    if fmt == "caffemodel":
        net = net_for_weights(rebuild, shapes)
        caffemodel_io.load_into(dict(net.params), caffemodel_io.CaffemodelIndex(paths[0]))
        net.keep_blobs = False  # only the outputs are compared
        with torch.no_grad():
            return net(**inputs)
    if fmt == "py":
        return standalone.run(paths[0], inputs)
    if fmt == "onnx":
        return onnx_io.run(paths[0], inputs, output_names)
    return torchscript.run(paths[0], inputs)


def convert(
    model: str | os.PathLike | caffe_pb2.NetParameter,
    weights: str | os.PathLike | None,
    to: str,
    output: str | os.PathLike,
    *,
    deploy: bool = False,
    input_shapes: dict[str, Shape] | None = None,
    batch: int | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
    verify: bool = True,
    tol: float = DEFAULT_TOL,
    opset: int | None = None,
    allow_missing: bool = False,
    progress: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> ConversionResult:
    """Convert ``model`` (prototxt) with ``weights`` to the format ``to`` at ``output``.

    Args:
        model: the net prototxt (TRAIN/TEST or deploy; a path, prototxt text or a NetParameter).
        weights: ``.caffemodel``, or a ``.pt``/``.safetensors`` state dict (None: the fillers' values).
        to: one of :data:`FORMATS`.
        output: the output file (``py``: ``net.py``, with ``net.pt`` written beside it), or a
            folder to write it in (see :func:`output_file`); missing folders are created.
        deploy: convert the deploy form (data layers -> Input, loss/label layers dropped); always
            done for the traced formats (py, onnx, torchscript).
        input_shapes: shapes of inputs by blob name (data layers whose source is unavailable).
        batch: the first axis of every input; traced formats are then fixed to it. Without it,
            traced formats take any batch size (unless the net's graph depends on it: then they
            are fixed to the declared one, with a note saying why) and every format is verified
            at a small batch size (:data:`VERIFY_BATCH`).
        inputs: the verification inputs by blob name (default: random, seeded by ``seed``).
        verify: run the source and the artifact and compare every output.
        tol: the largest relative error accepted.
        opset: the ONNX opset (default: the newest supported).
        allow_missing: accept weights lacking some of the net's layers (they keep filler values).
        progress: show tqdm bars for large weight transfers.
        log: called with each note and the verification table as they come (e.g. ``print``).

    Raises:
        CaffeCompatError: bad input (a WeightsError listing misfits, an ExportError naming an
            unexportable layer or an unwritable output); VerificationError above ``tol``.
    """
    fmt = to.lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{to}'; choose one of {', '.join(FORMATS)}")
    if batch is not None and batch <= 0:
        raise ExportError(f"the batch size must be positive, got {batch}")
    model_file = _model_file(model)
    output = output_file(fmt, output, model_file)
    destinations = output_paths(fmt, output, deploy)
    protected = ([model_file] if model_file is not None else []) + (
        [Path(weights)] if weights is not None else []
    )
    result = ConversionResult(fmt, destinations, notes=_Notes(log))
    input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    clock = time.perf_counter()
    with StagedOutputs(destinations, protected) as staged:
        definition, notes = _prepare_net(model, fmt, deploy, input_shapes, batch)
        result.notes.extend(notes)
        if weights is not None and not allow_missing:
            net = net_for_weights(definition, input_shapes or None)
        else:
            net = Net(definition, phase="TEST", input_shapes=input_shapes or None)
        result.seconds["build"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if weights is not None:
            result.notes.extend(load_weights(net, weights, allow_missing, progress))
        else:
            result.notes.append("no weights given: the layers hold their fillers' values")
        result.seconds["weights"] = time.perf_counter() - clock
        clock = time.perf_counter()
        shapes = net_input_shapes(net, batch)
        declared = dict(shapes)
        small = inputs is None and batch is None and bool(shapes)
        if inputs is None:
            if small:
                shapes = with_batch(
                    shapes, VERIFY_BATCH if fmt in TRACED else min(_batch_of(shapes), VERIFY_BATCH)
                )
            inputs = verification_inputs(net, shapes, seed)
        else:
            missing = [name for name in net.input_names if name not in inputs]
            if missing:
                raise ExportError(
                    f"verification inputs lack {missing}; the net's inputs are {net.input_names}"
                )
            extra = sorted(set(inputs) - set(net.input_names))
            if extra:
                result.notes.append(f"given inputs {extra} are not inputs of the converted net: ignored")
            inputs = {name: inputs[name] for name in net.input_names}
            shapes = {name: tuple(inputs[name].shape) for name in net.input_names}
        staged_paths = [staged.path(p) for p in destinations]
        try:
            source = model_file.name if model_file is not None else "a NetParameter"
            inputs = _write(
                fmt,
                net,
                staged_paths,
                inputs,
                source,
                opset,
                progress,
                result.notes,
                any_batch=batch is None,
                fallback=(lambda: verification_inputs(net, declared, seed)) if small else None,
            )
        except OSError as exc:
            raise write_failure(output, exc) from None
        shapes = {name: tuple(tensor.shape) for name, tensor in inputs.items()}
        result.seconds["write"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if verify:
            try:
                reference = _reference(net, inputs)
            except (CaffeCompatError, RuntimeError) as exc:
                if not small or fmt in TRACED or shapes == declared:
                    raise
                result.notes.append(
                    f"the net does not run at batch size {_batch_of(shapes)} ({_first_line(exc)}): "
                    f"verified at the declared {_batch_of(declared)}"
                )
                inputs, shapes = verification_inputs(net, declared, seed), declared
                reference = _reference(net, inputs)
            rebuild = caffe_pb2.NetParameter()
            rebuild.CopyFrom(net.net_param)
            del net
            gc.collect()
            actual = _run_artifact(fmt, staged_paths, rebuild, shapes, inputs, list(reference))
            result.verification = compare(
                f"{fmt} ({output.name}) against the source net", reference, actual, tol
            )
            result.seconds["verify"] = time.perf_counter() - clock
            if log is not None:
                log(result.verification.table())
            if not result.verification.ok:
                failed = [c.name for c in result.verification.checks if not c.ok]
                raise VerificationError(
                    f"outputs {failed} of the {fmt} conversion differ from the source net beyond the "
                    "relative "
                    f"tolerance {tol:g}; nothing was written (--no-verify writes it unchecked)"
                )
        else:
            del net
        staged.commit()
    gc.collect()
    return result
