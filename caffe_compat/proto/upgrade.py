"""Upgrade legacy Caffe net and solver messages to the current format.

A port of ``src/caffe/util/upgrade_proto.cpp`` (BVLC Caffe, identical in happynear/caffe-windows
apart from the snapshot-prefix rewrite). :func:`upgrade_net` runs the same steps, in the same order,
as ``UpgradeNetAsNeeded``:

1. V0 -> V1 (``layers { layer { ... } }``), with ``padding`` layers folded into the conv/pool
   layers that read them (``UpgradeV0Net``, ``UpgradeV0PaddingLayers``);
2. transformation fields of V1 data layers moved into ``transform_param``
   (``UpgradeNetDataTransformation``);
3. V1 -> V2 (``layers`` with enum types -> ``layer`` with string types, ``UpgradeV1Net``);
4. net-level ``input``/``input_dim``/``input_shape`` -> a leading ``Input`` layer
   (``UpgradeNetInput``);
5. old-style BatchNorm layers with three ``param`` specs get zero ``lr_mult``/``decay_mult``
   (``UpgradeNetBatchNorm``).

Where Caffe aborts (``LOG(FATAL)``/``CHECK``) or reports that part of a V0/V1 layer could not be
converted, :class:`~caffe_compat.errors.UpgradeError` is raised instead, naming the source and the
layer. Inputs are never modified; upgraded copies are returned.
"""

from __future__ import annotations

from caffe_compat.errors import UpgradeError
from caffe_compat.proto import caffe_pb2

__all__ = [
    "net_needs_upgrade",
    "solver_needs_upgrade",
    "upgrade_blob_shape",
    "upgrade_net",
    "upgrade_solver",
    "v1_layer_type_name",
]

_V1 = caffe_pb2.V1LayerParameter
_V0 = caffe_pb2.V0LayerParameter

# V1 enum value -> V2 type string (UpgradeV1LayerType), plus the fork's extra enum values mapped
# to the type names their layers register under in happynear/caffe-windows.
_V1_TYPE_NAMES: dict[int, str] = {
    _V1.NONE: "",
    _V1.ABSVAL: "AbsVal",
    _V1.ACCURACY: "Accuracy",
    _V1.ARGMAX: "ArgMax",
    _V1.BNLL: "BNLL",
    _V1.CONCAT: "Concat",
    _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution",
    _V1.DECONVOLUTION: "Deconvolution",
    _V1.DATA: "Data",
    _V1.DROPOUT: "Dropout",
    _V1.DUMMY_DATA: "DummyData",
    _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise",
    _V1.EXP: "Exp",
    _V1.FLATTEN: "Flatten",
    _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output",
    _V1.HINGE_LOSS: "HingeLoss",
    _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData",
    _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct",
    _V1.LRN: "LRN",
    _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    _V1.MVN: "MVN",
    _V1.POOLING: "Pooling",
    _V1.POWER: "Power",
    _V1.RELU: "ReLU",
    _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax",
    _V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    _V1.SPLIT: "Split",
    _V1.SLICE: "Slice",
    _V1.TANH: "TanH",
    _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
    # happynear/caffe-windows additions
    _V1.LOCAL: "Local",
    _V1.BN: "BN",
    _V1.NORMALIZE: "Normalize",
    _V1.INSANITY: "Insanity",
    _V1.TRIPLET_LOSS: "TripletLoss",
    _V1.ROIPOOLING: "ROIPooling",
    _V1.BATCH_NORM: "BatchNorm",
    _V1.ELTWISE_AFFINE: "EltwiseAffine",
}

# V0 string type -> V1 enum (UpgradeV0LayerType).
_V0_TYPES: dict[str, int] = {
    "accuracy": _V1.ACCURACY,
    "bnll": _V1.BNLL,
    "concat": _V1.CONCAT,
    "conv": _V1.CONVOLUTION,
    "data": _V1.DATA,
    "dropout": _V1.DROPOUT,
    "euclidean_loss": _V1.EUCLIDEAN_LOSS,
    "flatten": _V1.FLATTEN,
    "hdf5_data": _V1.HDF5_DATA,
    "hdf5_output": _V1.HDF5_OUTPUT,
    "im2col": _V1.IM2COL,
    "images": _V1.IMAGE_DATA,
    "infogain_loss": _V1.INFOGAIN_LOSS,
    "innerproduct": _V1.INNER_PRODUCT,
    "lrn": _V1.LRN,
    "multinomial_logistic_loss": _V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": _V1.POOLING,
    "relu": _V1.RELU,
    "sigmoid": _V1.SIGMOID,
    "softmax": _V1.SOFTMAX,
    "softmax_loss": _V1.SOFTMAX_LOSS,
    "split": _V1.SPLIT,
    "tanh": _V1.TANH,
    "window_data": _V1.WINDOW_DATA,
}

# Scalar V0 fields: V0 field -> {V0 type: (V1 sub-message, field in it, repeated?)}.
# A V0 field set on a layer whose type is not listed is one Caffe cannot convert.
_V0_FIELD_RULES: dict[str, dict[str, tuple[str, str, bool]]] = {
    "num_output": {
        "conv": ("convolution_param", "num_output", False),
        "innerproduct": ("inner_product_param", "num_output", False),
    },
    "biasterm": {
        "conv": ("convolution_param", "bias_term", False),
        "innerproduct": ("inner_product_param", "bias_term", False),
    },
    "pad": {
        "conv": ("convolution_param", "pad", True),
        "pool": ("pooling_param", "pad", False),
    },
    "kernelsize": {
        "conv": ("convolution_param", "kernel_size", True),
        "pool": ("pooling_param", "kernel_size", False),
    },
    "group": {"conv": ("convolution_param", "group", False)},
    "stride": {
        "conv": ("convolution_param", "stride", True),
        "pool": ("pooling_param", "stride", False),
    },
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", False)},
    "local_size": {"lrn": ("lrn_param", "local_size", False)},
    "alpha": {"lrn": ("lrn_param", "alpha", False)},
    "beta": {"lrn": ("lrn_param", "beta", False)},
    "k": {"lrn": ("lrn_param", "k", False)},
    "source": {
        "data": ("data_param", "source", False),
        "hdf5_data": ("hdf5_data_param", "source", False),
        "images": ("image_data_param", "source", False),
        "window_data": ("window_data_param", "source", False),
        "infogain_loss": ("infogain_loss_param", "source", False),
    },
    "batchsize": {
        "data": ("data_param", "batch_size", False),
        "hdf5_data": ("hdf5_data_param", "batch_size", False),
        "images": ("image_data_param", "batch_size", False),
        "window_data": ("window_data_param", "batch_size", False),
    },
    "rand_skip": {
        "data": ("data_param", "rand_skip", False),
        "images": ("image_data_param", "rand_skip", False),
    },
    "shuffle_images": {"images": ("image_data_param", "shuffle", False)},
    "new_height": {"images": ("image_data_param", "new_height", False)},
    "new_width": {"images": ("image_data_param", "new_width", False)},
    "concat_dim": {"concat": ("concat_param", "concat_dim", False)},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", False)},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", False)},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", False)},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", False)},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", False)},
}

# Message-valued V0 fields: V0 field -> {V0 type: V1 sub-message that receives the field}.
_V0_MESSAGE_RULES: dict[str, dict[str, str]] = {
    "weight_filler": {"conv": "convolution_param", "innerproduct": "inner_product_param"},
    "bias_filler": {"conv": "convolution_param", "innerproduct": "inner_product_param"},
}

# V0 fields that become transform_param fields whatever the layer type.
_V0_TRANSFORM_FIELDS = {
    "scale": "scale",
    "meanfile": "mean_file",
    "cropsize": "crop_size",
    "mirror": "mirror",
}

_V0_POOL_METHODS = {
    _V0.MAX: caffe_pb2.PoolingParameter.MAX,
    _V0.AVE: caffe_pb2.PoolingParameter.AVE,
    _V0.STOCHASTIC: caffe_pb2.PoolingParameter.STOCHASTIC,
}

# V1 data layer types whose own parameter message used to carry the transformation fields.
_DATA_TRANSFORM_PARAMS = {
    _V1.DATA: "data_param",
    _V1.IMAGE_DATA: "image_data_param",
    _V1.WINDOW_DATA: "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_SHARE_MODES = {
    _V1.STRICT: caffe_pb2.ParamSpec.STRICT,
    _V1.PERMISSIVE: caffe_pb2.ParamSpec.PERMISSIVE,
}

_SOLVER_TYPE_NAMES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


def _layer_label(index: int, name: str) -> str:
    return f"layer {index} ({name!r})" if name else f"layer {index}"


# --------------------------------------------------------------------------------------------
# detection


def _needs_v0_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """NetNeedsV0ToV1Upgrade: some ``layers`` entry holds a V0 ``layer`` message."""
    return any(conn.HasField("layer") for conn in net.layers)


def _needs_v1_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """NetNeedsV1ToV2Upgrade: the net has any ``layers`` entries at all."""
    return len(net.layers) > 0


def _needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """NetNeedsDataUpgrade: a V1 Data/ImageData/WindowData layer sets scale, mean_file,
    crop_size or mirror in its own parameter message."""
    for layer in net.layers:
        param_name = _DATA_TRANSFORM_PARAMS.get(layer.type)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        if any(param.HasField(field) for field in _TRANSFORM_FIELDS):
            return True
    return False


def _needs_input_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """NetNeedsInputUpgrade: the net declares net-level ``input`` blobs."""
    return len(net.input) > 0


def _needs_batch_norm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """NetNeedsBatchNormUpgrade: a ``BatchNorm`` layer declares exactly three ``param`` specs."""
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Caffe's ``NetNeedsUpgrade``: true when any of the five upgrade steps applies.

    As in Caffe, a BatchNorm layer with three ``param`` specs keeps reporting true even after
    its upgrade (the specs stay, only their multipliers are zeroed).
    """
    return (
        _needs_v0_upgrade(net)
        or _needs_v1_upgrade(net)
        or _needs_data_upgrade(net)
        or _needs_input_upgrade(net)
        or _needs_batch_norm_upgrade(net)
    )


# --------------------------------------------------------------------------------------------
# V0 -> V1


def _fold_padding_layers(net: caffe_pb2.NetParameter, source: str) -> caffe_pb2.NetParameter:
    """UpgradeV0PaddingLayers: drop V0 ``padding`` layers and move their ``pad`` onto the single
    conv/pool layer input that consumed the padded blob, rewiring it to the padding's bottom."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_top: dict[str, int] = {name: -1 for name in net.input}
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise UpgradeError(f"{source}: V0 {_layer_label(i, v0.name)}: unknown bottom blob {blob!r}")
            producer_idx = last_top[blob]
            if producer_idx == -1:
                continue
            producer = net.layers[producer_idx]
            if producer.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise UpgradeError(
                    f"{source}: V0 {_layer_label(i, v0.name)}: padding layer "
                    f"{producer.layer.name!r} feeds a layer of type {v0.type!r}; only conv and "
                    "pool layers can absorb padding"
                )
            if len(conn.bottom) != 1:
                raise UpgradeError(
                    f"{source}: V0 {_layer_label(i, v0.name)}: a layer fed by a padding layer "
                    "must take a single bottom blob"
                )
            if len(producer.bottom) != 1 or len(producer.top) != 1:
                raise UpgradeError(
                    f"{source}: V0 padding layer {producer.layer.name!r} must have exactly one "
                    "bottom and one top blob"
                )
            target = out.layers[-1]
            target.layer.pad = producer.layer.pad
            target.bottom[j] = producer.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def _v0_layer_to_v1(conn: caffe_pb2.V1LayerParameter, index: int, source: str) -> caffe_pb2.V1LayerParameter:
    """UpgradeV0LayerParameter: rewrite one ``layers { layer { ... } }`` entry as a V1 layer.

    Only ``bottom``/``top`` of the connection are kept; everything else comes from the V0
    ``layer``. A V0 field with no V1 home for the layer's type raises (Caffe logs it and marks
    the net as not fully compatible).
    """
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return out
    v0 = conn.layer
    v0_type = v0.type
    label = _layer_label(index, v0.name)
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0_type not in _V0_TYPES:
            raise UpgradeError(f"{source}: V0 {label}: unknown V0 layer type {v0_type!r}")
        out.type = _V0_TYPES[v0_type]
    for blob in v0.blobs:
        out.blobs.add().CopyFrom(blob)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    def incompatible(field: str) -> UpgradeError:
        return UpgradeError(
            f"{source}: V0 {label}: field {field!r} cannot be converted for layer type {v0_type!r}"
        )

    # Visit every set scalar/message field; the order only decides which error is reported.
    for field, value in v0.ListFields():
        name = field.name
        if name in _V0_FIELD_RULES:
            rule = _V0_FIELD_RULES[name].get(v0_type)
            if rule is None:
                raise incompatible(name)
            param_name, target_field, repeated = rule
            param = getattr(out, param_name)
            if repeated:
                getattr(param, target_field).append(value)
            else:
                setattr(param, target_field, value)
        elif name in _V0_MESSAGE_RULES:
            param_name = _V0_MESSAGE_RULES[name].get(v0_type)
            if param_name is None:
                raise incompatible(name)
            getattr(getattr(out, param_name), name).CopyFrom(value)
        elif name in _V0_TRANSFORM_FIELDS:
            setattr(out.transform_param, _V0_TRANSFORM_FIELDS[name], value)
        elif name == "pool":
            if v0_type != "pool":
                raise incompatible(name)
            if value not in _V0_POOL_METHODS:
                raise UpgradeError(f"{source}: V0 {label}: unknown pool method {value}")
            out.pooling_param.pool = _V0_POOL_METHODS[value]
        elif name == "hdf5_output_param":
            if v0_type != "hdf5_output":
                raise incompatible(name)
            out.hdf5_output_param.CopyFrom(value)
            out.hdf5_output_param.SetInParent()
        # name/type/blobs/blobs_lr/weight_decay are handled above; Caffe ignores new_num and
        # new_channels too.
    return out


def _upgrade_v0_net(net: caffe_pb2.NetParameter, source: str) -> caffe_pb2.NetParameter:
    """UpgradeV0Net: fold padding layers, convert every layer, and keep only the net's
    ``name``, ``input``, ``input_dim`` and ``force_backward`` (Caffe drops the rest)."""
    padded = _fold_padding_layers(net, source)
    out = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    for i, conn in enumerate(padded.layers):
        out.layers.add().CopyFrom(_v0_layer_to_v1(conn, i, source))
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    return out


# --------------------------------------------------------------------------------------------
# V1 data transformation fields


def _upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """UpgradeNetDataTransformation: move scale/mean_file/crop_size/mirror of V1 Data, ImageData
    and WindowData layers into their ``transform_param`` (in place).

    Like Caffe (which calls the ``mutable_*`` accessors), every such layer ends up with both its
    own parameter message and ``transform_param`` present, even if they stay empty.
    """
    for layer in net.layers:
        param_name = _DATA_TRANSFORM_PARAMS.get(layer.type)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        param.SetInParent()
        layer.transform_param.SetInParent()
        for field in _TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


# --------------------------------------------------------------------------------------------
# V1 -> V2


def v1_layer_type_name(type_enum: int) -> str:
    """UpgradeV1LayerType: the V2 type string for a ``V1LayerParameter.LayerType`` value.

    ``NONE`` gives ``""`` as in Caffe. The fork's extra values (LOCAL, BN, NORMALIZE, INSANITY,
    TRIPLET_LOSS, ROIPOOLING, BATCH_NORM, ELTWISE_AFFINE) give the type names their layers
    register under. Any other value raises :class:`UpgradeError`.
    """
    try:
        return _V1_TYPE_NAMES[int(type_enum)]
    except KeyError:
        raise UpgradeError(f"unknown V1LayerParameter layer type {type_enum}") from None


def _v1_layer_to_v2(v1: caffe_pb2.V1LayerParameter, index: int, source: str) -> caffe_pb2.LayerParameter:
    """UpgradeV1LayerParameter: convert one V1 ``layers`` entry to a ``layer`` entry.

    Copies bottom/top/name/include/exclude/blobs/loss_weight; maps the type enum to its string;
    turns ``param`` names, ``blob_share_mode``, ``blobs_lr`` and ``weight_decay`` into the i-th
    ``param { name share_mode lr_mult decay_mult }``; copies every ``*_param`` message that also
    exists on ``LayerParameter`` (Caffe's list plus the fork's extra ones).
    """
    label = _layer_label(index, v1.name)
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    for rule in v1.include:
        out.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        out.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        try:
            out.type = v1_layer_type_name(v1.type)
        except UpgradeError as exc:
            raise UpgradeError(f"{source}: V1 {label}: {exc}") from None
    for blob in v1.blobs:
        out.blobs.add().CopyFrom(blob)

    def param_spec(i: int) -> caffe_pb2.ParamSpec:
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        param_spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        if mode not in _SHARE_MODES:
            raise UpgradeError(f"{source}: V1 {label}: unknown blob_share_mode {mode}")
        param_spec(i).share_mode = _SHARE_MODES[mode]
    for i, lr in enumerate(v1.blobs_lr):
        param_spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param_spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)

    target_fields = out.DESCRIPTOR.fields_by_name
    for field, value in v1.ListFields():
        if not field.name.endswith("_param") or field.message_type is None:
            continue
        target = target_fields.get(field.name)
        if target is None or target.message_type is None:
            continue
        if target.message_type.full_name != field.message_type.full_name:
            continue
        getattr(out, field.name).CopyFrom(value)
        getattr(out, field.name).SetInParent()
    if v1.HasField("layer"):
        raise UpgradeError(f"{source}: V1 {label}: still holds a V0 'layer' message")
    return out


def _upgrade_v1_net(net: caffe_pb2.NetParameter, source: str) -> caffe_pb2.NetParameter:
    """UpgradeV1Net: replace ``layers`` by ``layer``, keeping every net-level field. A net that
    mixes ``layer`` and ``layers`` is refused, as in Caffe."""
    if len(net.layer) > 0:
        raise UpgradeError(
            f"{source}: refusing to upgrade a net that has both 'layer' and 'layers' entries; "
            "rewrite it in the 'layer { type: \"Name\" }' format"
        )
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    del out.layer[:]
    for i, v1 in enumerate(net.layers):
        out.layer.add().CopyFrom(_v1_layer_to_v2(v1, i, source))
    return out


# --------------------------------------------------------------------------------------------
# net inputs and BatchNorm


def _upgrade_input(net: caffe_pb2.NetParameter, source: str) -> None:
    """UpgradeNetInput: turn net-level inputs into a layer named ``input`` of type ``Input``,
    placed first (in place).

    ``input_shape`` wins over ``input_dim`` (4 dims per input); inputs with neither (legacy
    caffemodels) are just dropped. Counts that do not match the inputs, or ``input_dim`` that
    disagrees with ``input_shape``, raise (Caffe would read out of range / older Caffe's
    ``Net::Init`` refused them).
    """
    names = list(net.input)
    has_shape = len(net.input_shape) > 0
    has_dim = len(net.input_dim) > 0
    dim_shapes: list[list[int]] = []
    if has_dim:
        if len(net.input_dim) != 4 * len(names):
            raise UpgradeError(
                f"{source}: {len(names)} net input(s) need {4 * len(names)} input_dim values, "
                f"got {len(net.input_dim)}"
            )
        dims = list(net.input_dim)
        dim_shapes = [dims[4 * i : 4 * i + 4] for i in range(len(names))]
    if has_shape:
        if len(net.input_shape) != len(names):
            raise UpgradeError(
                f"{source}: {len(names)} net input(s) need as many input_shape entries, "
                f"got {len(net.input_shape)}"
            )
        if has_dim:
            for name, shape, dims in zip(names, net.input_shape, dim_shapes, strict=True):
                if list(shape.dim) != dims:
                    raise UpgradeError(
                        f"{source}: net input {name!r}: input_shape {list(shape.dim)} conflicts "
                        f"with input_dim {dims}"
                    )
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.input_param.SetInParent()
        for i, name in enumerate(names):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(dim_shapes[i])
        existing = list(net.layer)
        del net.layer[:]
        net.layer.add().CopyFrom(layer)
        for old in existing:
            net.layer.add().CopyFrom(old)
    del net.input[:]
    del net.input_shape[:]
    del net.input_dim[:]


def _upgrade_batch_norm(net: caffe_pb2.NetParameter) -> None:
    """UpgradeNetBatchNorm: for ``BatchNorm`` layers with exactly three ``param`` specs, set
    ``lr_mult`` and ``decay_mult`` of each to 0, keeping names (in place)."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def upgrade_net(
    net: caffe_pb2.NetParameter, source: str = "<net>", in_place: bool = False
) -> caffe_pb2.NetParameter:
    """Caffe's ``UpgradeNetAsNeeded`` on a copy of ``net``: V0->V1, data transformation fields,
    V1->V2, input fields -> ``Input`` layer, BatchNorm params, each only when needed.

    Layer blobs are copied untouched (legacy num/channels/height/width stay); see
    :func:`upgrade_blob_shape`. Raises :class:`UpgradeError` (message starts with ``source``)
    where Caffe would abort or report an incomplete conversion. With ``in_place`` the V2-level
    steps (inputs, BatchNorm) edit ``net`` itself, which saves copying large blobs; legacy
    V0/V1 nets always come back as a new message.
    """
    if in_place:
        out = net
    else:
        out = caffe_pb2.NetParameter()
        out.CopyFrom(net)
    if _needs_v0_upgrade(out):
        out = _upgrade_v0_net(out, source)
    if _needs_data_upgrade(out):
        _upgrade_data_transformation(out)
    if _needs_v1_upgrade(out):
        out = _upgrade_v1_net(out, source)
    if _needs_input_upgrade(out):
        _upgrade_input(out, source)
    if _needs_batch_norm_upgrade(out):
        _upgrade_batch_norm(out)
    return out


# --------------------------------------------------------------------------------------------
# solver and blobs


def solver_needs_upgrade(s: caffe_pb2.SolverParameter) -> bool:
    """SolverNeedsTypeUpgrade: the deprecated ``solver_type`` enum is set."""
    return s.HasField("solver_type")


def upgrade_solver(s: caffe_pb2.SolverParameter, source: str = "<solver>") -> caffe_pb2.SolverParameter:
    """UpgradeSolverType on a copy: ``solver_type`` enum -> ``type`` string (SGD, Nesterov,
    AdaGrad, RMSProp, AdaDelta, Adam) and ``solver_type`` cleared.

    As Caffe's CHECK does, setting both ``solver_type`` and ``type`` raises
    :class:`UpgradeError`, even when they name the same solver.
    """
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(s)
    if not out.HasField("solver_type"):
        return out
    if out.HasField("type"):
        raise UpgradeError(
            f"{source}: the deprecated 'solver_type' enum ({out.solver_type}) and the 'type' "
            f"string ({out.type!r}) cannot both be set"
        )
    name = _SOLVER_TYPE_NAMES.get(out.solver_type)
    if name is None:
        raise UpgradeError(f"{source}: unknown solver_type {out.solver_type}")
    out.type = name
    out.ClearField("solver_type")
    return out


def upgrade_blob_shape(blob: caffe_pb2.BlobProto) -> None:
    """Rewrite legacy 4-D dims as ``shape`` in place, as ``Blob::FromProto`` + ``ToProto`` do.

    When any of num/channels/height/width is set, the shape becomes
    ``(num, channels, height, width)`` (unset ones read as 0) and the legacy fields are cleared,
    replacing any ``shape`` already present (Caffe gives legacy dims precedence). A blob with
    neither is left alone (a 0-D scalar stays 0-D).
    """
    legacy = ("num", "channels", "height", "width")
    if not any(blob.HasField(field) for field in legacy):
        return
    dims = [getattr(blob, field) for field in legacy]
    blob.shape.Clear()
    blob.shape.dim.extend(dims)
    for field in legacy:
        blob.ClearField(field)
