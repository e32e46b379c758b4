"""Class-sharded (model-parallel) classifiers for prototxt nets: PartialFC on Caffe layers.

``shard_classifiers(train_net, test_nets, ["fc6"], replicas)`` replaces the classifier layer
``fc6`` of each net by a module that holds only this rank's block of classes (its weight rows,
and bias) and outputs the (G, C/N) block of the global batch's logits (G = N x batch_size: the
embeddings are gathered from all ranks). Every layer that consumes those logits is replaced by
its class-sharded form, which reduces over the ranks where the one-process layer reduces over
the classes. Supported:

- classifiers: ``InnerProduct`` (``normalize: true`` or not; axis 1, weight as a blob),
  ``MarginInnerProduct`` (SphereFace, Caffe's hand-written backward) and ``MarginHead`` (every
  head kind of ``caffe_compat.losses``; ``sample_rate < 1`` samples classes in TRAIN);
- downstream: ``LabelSpecificAdd`` (AM-Softmax's margin), ``Scale`` (a per-class blob is split
  too, a single value stays whole), ``SoftmaxWithLoss`` (one top, no weight bottom; row maxima and
  exponential sums over the ranks) and ``Accuracy`` (one top; counts of classes beating the label,
  summed over the ranks).

Each output equals the one-process layer's output on the global batch (its columns for this
rank's classes; the losses and accuracies whole), the blob gradients equal its gradients (rows
for this rank), and the backbone gets its rows' gradient times the world size, for DDP to average.
A loss computed here is the loss of the whole global batch on every rank, so the logged mean over
the ranks is the one-process loss.

Snapshots: ``full_blobs`` swaps in the gathered whole blobs (or zero placeholders to load into)
while a caffemodel is written or read, so files are the one-process files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caffe_compat.distributed.collectives import (
    ClassShard,
    gather_batch,
    gather_labels,
    replicated,
    sum_over_ranks,
)
from caffe_compat.distributed.partial_fc import ClassSampler, sharded_cross_entropy, sharded_head_logits
from caffe_compat.distributed.runtime import Replicas, gather_rows
from caffe_compat.errors import LayerError
from caffe_compat.layers.base import CaffeLayer
from caffe_compat.layers.face.sphereface import _psi_coefficients, margin_psi
from caffe_compat.layers.inner_product import normalize_rows_, normalized_rows
from caffe_compat.layers.loss import _normalizer
from caffe_compat.losses.heads import NORM_EPS, NormFaceHead
from caffe_compat.net.net import Net

CLASSIFIERS = ("InnerProduct", "MarginInnerProduct", "MarginHead")
DOWNSTREAM = ("LabelSpecificAdd", "Scale", "SoftmaxWithLoss", "Accuracy")


class ClassShardedLayer(CaffeLayer):
    """Base of the replacements: the one-process layer's blobs, those in ``split_axes`` cut by
    class along the given axis (``{"weight": 0}``); ``producer`` is the classifier whose logits
    the layer reads (itself for a classifier)."""

    family = "distributed"

    def __init__(self, original: CaffeLayer, shard: ClassShard) -> None:
        super().__init__()
        self.caffe_name = original.caffe_name
        self.caffe_type = original.caffe_type  # the one-process type, for messages and summaries
        self.caffe_blobs = type(original).caffe_blobs
        self.shard = shard
        self.split_axes: dict[str, int] = {}
        object.__setattr__(self, "producer", self)

    def split_tensors(self) -> list[Tensor]:
        """This rank's blocks of the split blobs."""
        return [t for name in self.split_axes if (t := getattr(self, name, None)) is not None]

    def _cut(self, name: str, whole: Tensor) -> Tensor:
        axis = self.split_axes[name]
        return whole.narrow(axis, self.shard.start, self.shard.size)

    def slice_of(self, name: str, whole: Tensor) -> Tensor:
        """This rank's block of a whole blob (or of its solver history)."""
        return self._cut(name, whole)

    def whole_of(self, name: str, block: Tensor, gather: bool) -> Tensor:
        """The whole blob from the ranks' blocks (``gather``), or a zero placeholder of its shape."""
        axis = self.split_axes[name]
        if not gather:
            shape = list(block.shape)
            shape[axis] = self.shard.num_classes
            return block.new_zeros(shape)
        moved = block.detach().movedim(axis, 0).contiguous()
        whole = gather_rows(moved, self.shard.sizes, self.shard.group)
        return whole.movedim(0, axis).contiguous()

    def targets(self, labels: Tensor) -> Tensor:
        """Each global label's column in the last output block (-1 when not in it)."""
        return self.shard.local_targets(labels)

    def column_classes(self) -> Tensor:
        """The class of each column of the last output block."""
        return torch.arange(self.shard.start, self.shard.stop)


def _install_blobs(module: ClassShardedLayer, original: CaffeLayer, shared: dict[str, Tensor]) -> None:
    """Give ``module`` the original's blobs: split ones cut (or taken from ``shared``, the blocks
    of the same layer in another net), others as they are."""
    for spec in type(original).caffe_blobs:
        value = getattr(original, spec.name, None)
        if value is None:
            module.set_blob(spec.name, None)
            continue
        if spec.name in module.split_axes:
            if spec.name not in shared:
                block = module._cut(spec.name, value.detach()).clone()
                shared[spec.name] = (
                    nn.Parameter(block, requires_grad=value.requires_grad) if spec.learnable else block
                )
            module.set_blob(spec.name, shared[spec.name])
        else:
            module.set_blob(spec.name, value)


# ---------------------------------------------------------------------------------------------
# classifiers


class ShardedInnerProduct(ClassShardedLayer):
    """``InnerProduct`` with output ``[start, stop)`` of the global batch (weight rows and bias cut)."""

    def __init__(self, original: CaffeLayer, shard: ClassShard, shared: dict[str, Tensor]) -> None:
        super().__init__(original, shard)
        if original.num_bottoms != 1 or original.transpose or original.axis != 1:
            raise _unsupported(
                original, "only an InnerProduct with its weight as a blob, axis 1 and no transpose"
            )
        self.input_size, self.normalize, self.exact_grad = (
            original.input_size,
            original.normalize,
            original.exact_grad,
        )
        self.split_axes = {"weight": 0, "bias": 0}
        _install_blobs(self, original, shared)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], self.input_size)
        xg = gather_batch(flat, self.shard)
        weight = self.weight
        if self.normalize:
            if self.exact_grad:
                weight = normalized_rows(weight, self.shard.size)
            else:
                normalize_rows_(weight, self.shard.size)
        return F.linear(xg, weight, self.bias)


class _ShardedMarginIP(torch.autograd.Function):
    """SphereFace's logits on a block of classes with Caffe's hand-written backward (as
    ``layers.face.sphereface._MarginInnerProductFunction``, the target terms on the rank holding
    the label)."""

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, targets: Tensor, lam: Tensor, margin: int) -> Tensor:
        xw = rows @ weight.t()
        owned = (targets >= 0).nonzero().squeeze(1)
        columns = targets[owned]
        ctx.margin = margin
        if margin == 1:
            ctx.save_for_backward(rows, weight, owned, columns, lam, None, None)
            return xw
        x_norm = rows.square().sum(dim=1).sqrt()
        cos = xw[owned, columns] * (1.0 / x_norm[owned])
        base = xw.clone()
        base[owned, columns] = x_norm[owned] * margin_psi(cos, margin)
        ctx.save_for_backward(rows, weight, owned, columns, lam, cos, x_norm)
        return (lam * xw + base) * (1.0 / (1.0 + lam))

    @staticmethod
    def backward(ctx, dy: Tensor):
        rows, weight, owned, columns, lam, cos, x_norm = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[1]:
            dw = dy.t() @ rows
        if ctx.needs_input_grad[0]:
            if ctx.margin == 1:
                dx = dy @ weight
            else:
                inv = 1.0 / (1.0 + lam)
                dy_target = dy[owned, columns]
                others = dy.clone()
                others[owned, columns] = 0.0
                dx = (others * inv + dy * (lam * inv)) @ weight
                coeff_w, coeff_x = _psi_coefficients(cos, x_norm[owned], ctx.margin)
                factor = (inv * dy_target).unsqueeze(1)
                extra = (
                    factor * coeff_w.unsqueeze(1) * weight[columns]
                    + factor * coeff_x.unsqueeze(1) * rows[owned]
                )
                dx = dx.index_add(0, owned, extra)
        return dx, dw, None, None, None


class ShardedMarginInnerProduct(ClassShardedLayer):
    """``MarginInnerProduct`` (SphereFace) on this rank's classes; the margin acts on the rank
    that holds each label, ``|x|`` comes with the gathered row."""

    def __init__(self, original: CaffeLayer, shard: ClassShard, shared: dict[str, Tensor]) -> None:
        super().__init__(original, shard)
        if original.axis != 1:
            raise _unsupported(original, "only axis 1")
        for name in (
            "in_features",
            "margin",
            "output_lambda",
            "exact_grad",
            "base",
            "gamma",
            "power",
            "lambda_min",
        ):
            setattr(self, name, getattr(original, name))
        self._lambda_at = type(original).lambda_at  # a function of these attributes and iter_count
        self.register_buffer("iter_count", original.iter_count)
        self.split_axes = {"weight": 0}
        _install_blobs(self, original, shared)

    def forward(self, x: Tensor, label: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        with torch.no_grad():
            self.iter_count.add_(1)
        lam = self._lambda_at(self, self.iter_count)
        with torch.no_grad():
            self.weight.mul_(1.0 / self.weight.square().sum(dim=1, keepdim=True).sqrt())
        rows = gather_batch(x.reshape(x.shape[0], self.in_features), self.shard)
        targets = self.targets(gather_labels(label.reshape(-1)[: x.shape[0]], self.shard))
        lam_x = lam.to(rows.dtype)
        if self.exact_grad:
            y = _exact_margin_logits(rows, self.weight, targets, lam_x, self.margin)
        else:
            y = _ShardedMarginIP.apply(rows, self.weight, targets, lam_x, self.margin)
        if self.output_lambda:
            return y, lam.detach().reshape(1).to(x.dtype)
        return y


def _exact_margin_logits(rows: Tensor, weight: Tensor, targets: Tensor, lam: Tensor, margin: int) -> Tensor:
    """The differentiable form of ``_ShardedMarginIP``'s forward (``exact_grad``)."""
    xw = rows @ weight.t()
    if margin == 1:
        return xw
    owned = (targets >= 0).nonzero().squeeze(1)
    columns = targets[owned]
    x_norm = rows.square().sum(dim=1).sqrt()
    cos = xw[owned, columns] / x_norm[owned]
    base = xw.index_put((owned, columns), x_norm[owned] * margin_psi(cos, margin))
    return (lam * xw + base) * (1.0 / (1.0 + lam))


class ShardedMarginHead(ClassShardedLayer):
    """``MarginHead`` on this rank's classes (any head kind), with optional class sampling in TRAIN."""

    def __init__(
        self, original: CaffeLayer, shard: ClassShard, shared: dict[str, Tensor], sample_rate: float = 1.0
    ) -> None:
        super().__init__(original, shard)
        self.head, self.kind, self.train_phase = original.head, original.kind, original.train_phase
        self.split_axes = {"weight": 0}
        _install_blobs(self, original, shared)
        rate = sample_rate if self.train_phase else 1.0
        self.sampler = ClassSampler(shard.size, rate, shard.rank) if rate < 1.0 else None
        self._columns: Tensor | None = None

    def targets(self, labels: Tensor) -> Tensor:
        local = self.shard.local_targets(labels)
        if self._columns is None:
            return local
        remapped = torch.searchsorted(self._columns, local.clamp_min(0))
        found = (local >= 0) & (remapped < self._columns.numel())
        found &= self._columns[remapped.clamp_max(self._columns.numel() - 1)] == local
        return torch.where(found, remapped, torch.full_like(remapped, -1))

    def column_classes(self) -> Tensor:
        if self._columns is None:
            return super().column_classes()
        return self._columns.cpu() + self.shard.start

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        if self.train_phase:
            self.head.step()
        flat = x.flatten(1)
        if isinstance(self.head, NormFaceHead) and self.head.normalize_embeddings:
            flat = F.normalize(flat, dim=1, eps=NORM_EPS)
        xg = gather_batch(flat, self.shard)
        targets = self.shard.local_targets(gather_labels(label.reshape(-1), self.shard))
        weight = self.weight
        self._columns = None
        if self.sampler is not None:
            self._columns, targets = self.sampler(targets)
            weight = weight.index_select(0, self._columns)
        logits = sharded_head_logits(self.head, xg, weight, targets, self.shard, margin=self.train_phase)
        if self.scale is not None:
            logits = logits * replicated(self.scale, self.shard)
        return logits


# ---------------------------------------------------------------------------------------------
# downstream layers


class ShardedLabelSpecificAdd(ClassShardedLayer):
    """``LabelSpecificAdd`` on a block of logits: the margin lands on the rank holding the label."""

    def __init__(self, original: CaffeLayer, shard: ClassShard, producer: ClassShardedLayer) -> None:
        super().__init__(original, shard)
        object.__setattr__(self, "producer", producer)
        for name in ("train_phase", "anneal", "output_bias", "bias", "bias_base", "bias_gamma", "bias_power"):
            setattr(self, name, getattr(original, name))
        self.bias_min, self.bias_max = original.bias_min, original.bias_max
        self._current_bias = type(original).current_bias  # a function of these attributes and iter_count
        self.register_buffer("iter_count", original.iter_count)

    def forward(self, x: Tensor, label: Tensor, *ignored: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if not self.train_phase:
            return (x, x.new_zeros(1)) if self.output_bias else x
        bias = self._current_bias(self)
        if self.anneal:
            with torch.no_grad():
                self.iter_count.add_(1)
        targets = self.producer.targets(
            gather_labels(label.reshape(-1)[: x.shape[0] // self.shard.world], self.shard)
        )
        bias = bias.to(x.dtype)
        owned = targets >= 0
        index = targets.clamp_min(0).unsqueeze(1)
        target = x.gather(1, index)
        add = torch.where(owned.unsqueeze(1) & (target > -bias), bias, torch.zeros_like(bias)).to(x.dtype)
        y = x.scatter_add(1, index, add)
        if self.output_bias:
            return y, bias.detach().reshape(1)
        return y


class ShardedScale(ClassShardedLayer):
    """``Scale`` of a block of logits: a per-class blob is cut, a single value stays whole (its
    gradient summed over the ranks)."""

    def __init__(
        self, original: CaffeLayer, shard: ClassShard, producer: ClassShardedLayer, shared: dict[str, Tensor]
    ) -> None:
        super().__init__(original, shard)
        object.__setattr__(self, "producer", producer)
        self.min_value, self.max_value = original.min_value, original.max_value
        columns = shard.num_classes
        for name in ("weight", "bias"):
            value = getattr(original, name, None)
            if value is None or value.numel() == 1:
                continue
            if original.axis != 1 or tuple(value.shape) != (columns,):
                raise _unsupported(original, f"its {name} must be one value or one per class ({columns})")
            self.split_axes[name] = 0
        _install_blobs(self, original, shared)

    def _operand(self, name: str) -> Tensor | None:
        value = getattr(self, name)
        if value is None:
            return None
        if name == "weight" and (self.min_value is not None or self.max_value is not None):
            with torch.no_grad():
                value.clamp_(min=self.min_value, max=self.max_value)
        if name in self.split_axes:
            columns = self.producer.column_classes()
            if columns.numel() != self.shard.size or int(columns[0]) != self.shard.start:
                value = value.index_select(0, (columns - self.shard.start).to(value.device))
            return value.reshape(1, -1)
        return replicated(value, self.shard).reshape(())

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        if scale is not None:
            raise LayerError(
                f"layer '{self.caffe_name}' (Scale): a scale bottom is not supported on sharded logits"
            )
        y = x * self._operand("weight")
        bias = self._operand("bias")
        return y if bias is None else y + bias


class ShardedSoftmaxWithLoss(ClassShardedLayer):
    """``SoftmaxWithLoss`` of a block of logits: the loss of the global batch, on every rank."""

    is_loss = True

    def __init__(self, original: CaffeLayer, shard: ClassShard, producer: ClassShardedLayer) -> None:
        super().__init__(original, shard)
        if original.num_tops != 1 or original.axis != 1 or original.class_weight is not None:
            raise _unsupported(original, "only one top, axis 1 and no class_weight")
        object.__setattr__(self, "producer", producer)
        self.ignore_label, self.normalization = original.ignore_label, original.normalization

    def forward(self, x: Tensor, label: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is not None:
            raise LayerError(
                f"layer '{self.caffe_name}' (SoftmaxWithLoss): a weight bottom is not supported "
                "on class-sharded logits"
            )
        labels = gather_labels(label, self.shard).long()
        use = (
            torch.ones_like(labels, dtype=torch.bool)
            if self.ignore_label is None
            else labels != self.ignore_label
        )
        bad = use & ((labels < 0) | (labels >= self.shard.num_classes))
        if bool(bad.any()):
            raise LayerError(
                f"layer '{self.caffe_name}' (SoftmaxWithLoss): label {int(labels[bad][0])} is out of range "
                f"[0, {self.shard.num_classes}) (and not the ignore_label)"
            )
        targets = torch.where(use, self.producer.targets(torch.where(use, labels, 0)), -1)
        nll = sharded_cross_entropy(x, targets, self.shard, caffe_floor=True)  # ignored rows: masked below
        count = use.sum().to(x.dtype)
        return torch.where(use, nll, 0.0).sum() / _normalizer(self.normalization, labels.numel(), 1, count)


class ShardedAccuracy(ClassShardedLayer):
    """``Accuracy`` of a block of scores: classes beating the label counted on every rank, summed."""

    def __init__(self, original: CaffeLayer, shard: ClassShard, producer: ClassShardedLayer) -> None:
        super().__init__(original, shard)
        if original.num_tops != 1 or original.axis != 1:
            raise _unsupported(original, "only one top and axis 1")
        object.__setattr__(self, "producer", producer)
        self.top_k, self.ignore_label, self.min_is_better = (
            original.top_k,
            original.ignore_label,
            original.min_is_better,
        )

    @torch.no_grad()
    def forward(self, x: Tensor, label: Tensor, weight: Tensor | None = None) -> Tensor:
        labels = gather_labels(label, self.shard).long()
        use = (
            torch.ones_like(labels, dtype=torch.bool)
            if self.ignore_label is None
            else labels != self.ignore_label
        )
        if weight is not None:
            use &= gather_labels(weight, self.shard) != 0
        labels = torch.where(use, labels, 0)
        targets = self.producer.targets(labels)
        owned = targets >= 0
        scores = x.detach()
        target = torch.where(owned, scores.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1), 0.0)
        target = sum_over_ranks(target, self.shard).unsqueeze(1)
        classes = self.producer.column_classes().to(x.device).unsqueeze(0)
        wanted = labels.unsqueeze(1)
        if self.min_is_better:
            ahead = (scores < target) | ((scores == target) & (classes < wanted))
        else:
            ahead = (scores > target) | ((scores == target) & (classes > wanted))
        beaten = sum_over_ranks(ahead.sum(dim=1).to(torch.int64), self.shard)
        correct = use & (beaten < self.top_k)
        return correct.sum().to(x.dtype) / use.sum().to(x.dtype)


# ---------------------------------------------------------------------------------------------
# wiring


def _unsupported(original: CaffeLayer, why: str) -> LayerError:
    kind = getattr(original, "caffe_type", type(original).__name__)
    return LayerError(f"layer '{original.caffe_name}' ({kind}): cannot be sharded by class: {why}")


def replace_layer(net: Net, key: str, module: nn.Module) -> None:
    """Put ``module`` in place of layer ``key`` in the net and in its generated graph."""
    attribute = net.module_names[key]
    setattr(net, attribute, module)
    setattr(net._graph_module, attribute, module)
    net.layers[key] = module


def _classifier(original: CaffeLayer, shard: ClassShard, shared: dict[str, Tensor], sample_rate: float):
    kind = getattr(original, "caffe_type", "")
    if sample_rate != 1.0 and kind != "MarginHead":
        raise _unsupported(
            original, "class sampling (sample_rate < 1) applies to MarginHead classifiers only"
        )
    if kind == "InnerProduct":
        return ShardedInnerProduct(original, shard, shared)
    if kind == "MarginInnerProduct":
        return ShardedMarginInnerProduct(original, shard, shared)
    return ShardedMarginHead(original, shard, shared, sample_rate)


def _shard_net(
    net: Net,
    names: Sequence[str],
    replicas: Replicas,
    blocks: dict[str, dict[str, Tensor]],
    sample_rate: float,
) -> list[ClassShardedLayer]:
    group = replicas.head_group if replicas.head_group is not None else replicas.group
    keys = list(net.layers)
    done: list[ClassShardedLayer] = []
    producers: dict[str, ClassShardedLayer] = {}
    for layer_param, key in zip(net.net_param.layer, keys, strict=True):
        original = net.layers[key]
        if key in names:
            if getattr(original, "caffe_type", "") not in CLASSIFIERS:
                raise _unsupported(original, f"the classifier must be one of {', '.join(CLASSIFIERS)}")
            count = original.caffe_blob_tensors()[0].shape[0] if original.caffe_blob_tensors() else 0
            try:
                shard = ClassShard(count, replicas.rank, replicas.world_size, group)
            except ValueError as exc:
                raise _unsupported(original, str(exc)) from None
            module = _classifier(original, shard, blocks.setdefault(key, {}), sample_rate)
            replace_layer(net, key, module)
            done.append(module)
            producers[layer_param.top[0]] = module
            continue
        inputs = [b for b in layer_param.bottom if b in producers]
        if not inputs:
            for top in layer_param.top:
                producers.pop(top, None)
            continue
        kind = getattr(original, "caffe_type", "")
        producer = producers[inputs[0]]
        if kind not in DOWNSTREAM or layer_param.bottom[0] != inputs[0] or len(inputs) > 1:
            raise LayerError(
                f"layer '{key}' ({kind}) reads the class-sharded blob '{inputs[0]}' of "
                f"'{producer.caffe_name}'; a class-sharded classifier may feed {', '.join(DOWNSTREAM)} "
                "only (as their first bottom)"
            )
        shard = producer.shard
        if kind == "LabelSpecificAdd":
            module = ShardedLabelSpecificAdd(original, shard, producer)
        elif kind == "Scale":
            module = ShardedScale(original, shard, producer, blocks.setdefault(key, {}))
        elif kind == "SoftmaxWithLoss":
            module = ShardedSoftmaxWithLoss(original, shard, producer)
        else:
            module = ShardedAccuracy(original, shard, producer)
        replace_layer(net, key, module)
        done.append(module)
        for top in layer_param.top:
            producers.pop(top, None)
        if kind in ("LabelSpecificAdd", "Scale"):
            producers[layer_param.top[0]] = producer
    outputs = sorted(set(producers) & set(net.output_names))
    if outputs:
        raise LayerError(
            f"the class-sharded blob '{outputs[0]}' is a net output; feed it to SoftmaxWithLoss or Accuracy "
            "(no rank holds all of its columns)"
        )
    return done


def shard_classifiers(
    train_net: Net,
    test_nets: Sequence[Net],
    names: Sequence[str],
    replicas: Replicas,
    sample_rate: float = 1.0,
) -> list[ClassShardedLayer]:
    """Shard the named classifier layers of the train net and the test nets by class (see the
    module docstring); layers of the same name share their blocks. Returns the replacements."""
    missing = [name for name in names if name not in train_net.layers]
    if missing:
        raise LayerError(f"model-parallel layer '{missing[0]}' is not a layer of the train net")
    blocks: dict[str, dict[str, Tensor]] = {}
    done = _shard_net(train_net, names, replicas, blocks, sample_rate)
    for net in test_nets:
        done.extend(_shard_net(net, names, replicas, blocks, 1.0))
    return done


class _Whole:
    def __init__(self) -> None:
        self.owners: dict[int, tuple[ClassShardedLayer, str]] = {}

    def owner(self, block: Tensor) -> tuple[ClassShardedLayer, str]:
        return self.owners[id(block)]


@contextmanager
def full_blobs(layers: Sequence[ClassShardedLayer], gather: bool, write_back: bool) -> Iterator[_Whole]:
    """While the block runs, the split blobs of ``layers`` are whole tensors: gathered from the
    ranks, or zeros (``gather=False``); on exit ``write_back`` copies each rank's rows of the whole
    tensors into its blocks, and the blocks are put back."""
    whole = _Whole()
    swapped: list[tuple[ClassShardedLayer, str, Tensor]] = []
    made: dict[int, Tensor] = {}
    try:
        for layer in layers:
            for name in layer.split_axes:
                block = getattr(layer, name, None)
                if block is None:
                    continue
                if id(block) not in made:
                    full = layer.whole_of(name, block, gather)
                    if isinstance(block, nn.Parameter):
                        full = nn.Parameter(full, requires_grad=block.requires_grad)
                        if gather and block.grad is not None:
                            full.grad = layer.whole_of(name, block.grad, True)
                    made[id(block)] = full
                    whole.owners[id(block)] = (layer, name)
                swapped.append((layer, name, block))
                layer.set_blob(name, made[id(block)])
        yield whole
    finally:
        written: set[int] = set()
        for layer, name, block in swapped:
            full = getattr(layer, name)
            if write_back and id(block) not in written:
                with torch.no_grad():
                    block.copy_(layer.slice_of(name, full.detach()))
                written.add(id(block))
            layer.set_blob(name, block)


def sharded_memory(layers: Sequence[ClassShardedLayer]) -> int:
    """Bytes of the class blocks this rank holds."""
    seen, total = set(), 0
    for layer in layers:
        for tensor in layer.split_tensors():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


__all__ = [
    "CLASSIFIERS",
    "DOWNSTREAM",
    "ClassShardedLayer",
    "full_blobs",
    "replace_layer",
    "shard_classifiers",
    "sharded_memory",
]
