"""Errors of the exporters (a net, layer or file that cannot be converted)."""

from __future__ import annotations

from caffe_compat.errors import CaffeCompatError


class ExportError(CaffeCompatError):
    """A net that cannot be written in the asked format: an untraceable layer, an unknown format,
    an output that cannot be written, or a converted artifact that disagrees with its source."""


class VerificationError(ExportError):
    """The converted artifact's outputs differ from the source net's beyond the tolerance."""
