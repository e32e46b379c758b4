"""Which layers a net keeps for a given state (Caffe's ``Net::FilterNet`` / ``StateMeetsRule``).

Rules followed (``src/caffe/net.cpp``): a layer with no include rules is kept unless a state meets
one of its exclude rules; a layer with include rules is kept only if the state meets one of them;
giving both kinds is an error. A rule is met when its phase (if any) equals the state's, the
state's level lies within ``[min_level, max_level]``, every ``stage`` of the rule is among the
state's stages and no ``not_stage`` is.
"""

from __future__ import annotations

from collections.abc import Iterable

from caffe_compat.errors import LayerError
from caffe_compat.proto import caffe_pb2

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


def phase_value(phase: int | str) -> int:
    """Accept ``"TRAIN"``/``"TEST"`` (any case) or the protobuf enum value."""
    if isinstance(phase, str):
        try:
            return PHASES[phase.upper()]
        except KeyError:
            raise ValueError(f"phase must be TRAIN or TEST, got {phase!r}") from None
    if phase not in PHASES.values():
        raise ValueError(f"phase must be TRAIN (0) or TEST (1), got {phase!r}")
    return int(phase)


def make_state(
    base: caffe_pb2.NetState | None, phase: int | str, level: int | None = None, stages: Iterable[str] = ()
) -> caffe_pb2.NetState:
    """The NetState a net is built in: the prototxt's ``state`` with the phase, level and stages
    given by the caller (as Caffe's Net constructor sets them)."""
    state = caffe_pb2.NetState()
    if base is not None:
        state.CopyFrom(base)
    state.phase = phase_value(phase)
    if level is not None:
        state.level = level
    state.stage.extend(s for s in stages if s not in state.stage)
    return state


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """Caffe's ``StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def filter_net(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState) -> caffe_pb2.NetParameter:
    """Return a copy of ``net`` holding only the layers kept in ``state`` (``Net::FilterNet``)."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net)
    del filtered.layer[:]
    filtered.state.CopyFrom(state)
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise LayerError(
                f"layer '{layer.name}' ({layer.type}): specify either include rules or exclude rules, "
                "not both"
            )
        if layer.include:
            kept = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            kept = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if kept:
            filtered.layer.add().CopyFrom(layer)
    return filtered
