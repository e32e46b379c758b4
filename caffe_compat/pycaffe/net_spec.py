"""``caffe.net_spec``: write nets in Python and get their NetParameter (``caffe.NetSpec``,
``caffe.layers``, ``caffe.params``, ``caffe.to_proto``), as BVLC's ``python/caffe/net_spec.py``.

``L.Convolution(bottom, kernel_size=3, num_output=8)`` returns a ``Top``; keyword arguments go
into the layer's own ``<type>_param`` message when it has that field (``InnerProduct`` ->
``inner_product_param``), else into the LayerParameter (``param``, ``loss_weight``, ``include``,
any ``*_param``); ``ntop`` sets the number of tops (0 returns the ``Function``), ``in_place``
makes the top the bottom. Lists fill repeated fields, dicts fill messages, a single value given to
a repeated field becomes a one-element list. Names: a ``NetSpec`` attribute names the layer and
its first top; other tops and layers get ``<Type><k>`` names counted per type.
``P.Pooling.MAX`` is ``PoolingParameter.MAX``. The message types are caffe-compat's
``caffe.proto`` (BVLC's plus the forks' fields), so the forks' layers can be written too.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from caffe_compat.proto import caffe_pb2


def param_name_dict() -> dict[str, str]:
    """Layer type -> the stem of its parameter field (``InnerProduct`` -> ``inner_product``),
    derived from the ``*_param`` fields of LayerParameter and their message type names, plus the
    types that read another type's message (Deconvolution, Im2col: ``convolution_param``; BVLC's
    net_spec lacks these and wants ``convolution_param=dict(...)``, which still works)."""
    mapping = {"Deconvolution": "convolution", "Im2col": "convolution"}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if not field.name.endswith("_param") or field.message_type is None:
            continue
        type_name = field.message_type.name
        if type_name.endswith("Parameter"):
            mapping[type_name[: -len("Parameter")]] = field.name[: -len("_param")]
    return mapping


def assign_proto(proto: Any, name: str, value: Any) -> None:
    """Set field ``name`` of ``proto`` from a Python value (lists, dicts, scalars; recursively)."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                message = field.add()
                for key, inner in item.items():
                    assign_proto(message, key, inner)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for key, inner in value.items():
            assign_proto(field, key, inner)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a layer (the ``n``-th top of ``fn``)."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, its input Tops and its parameters."""

    def __init__(self, type_name: str, inputs: tuple, params: dict) -> None:
        self.type_name = type_name
        for index, value in enumerate(inputs):
            if not isinstance(value, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(value)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for value in self.inputs:
            value._to_proto(layers, names, autonames)
            bottoms.append(layers[value.fn].top[value.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        stem = _param_names.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param") or stem is None:
                assign_proto(layer, key, value)
                continue
            try:
                assign_proto(getattr(layer, f"{stem}_param"), key, value)
            except (AttributeError, KeyError):
                assign_proto(layer, key, value)
        layers[self] = layer


class NetSpec:
    """Named Tops: ``n.conv1 = L.Convolution(n.data, ...)``; ``to_proto()`` gives the net with
    the layers needed for every assigned Top, named after the attributes."""

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value: Any) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, key: str) -> Any:
        return self.tops[key]

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute the given Tops (automatic names)."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class Layers:
    """``caffe.layers``: ``L.<Type>(*bottoms, **params)`` makes a layer of that type."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def make(*args: Top, **kwargs: Any) -> Any:
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        return make


class Parameters:
    """``caffe.params``: ``P.<Type>.<CONSTANT>`` is ``<Type>Parameter.<CONSTANT>``."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        message = getattr(caffe_pb2, f"{type_name}Parameter")

        class Constants:
            def __getattr__(self, constant: str) -> Any:
                return getattr(message, constant)

        return Constants()


_param_names = param_name_dict()
layers = Layers()
params = Parameters()
