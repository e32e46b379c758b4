"""Command-line front end for ``caffe-compat convert`` (being written)."""

from __future__ import annotations

COMMANDS: dict = {}
