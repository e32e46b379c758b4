"""Caffe-format logs: writing glog lines, parsing logs, plotting and comparing them."""

from caffe_compat.log.parse import parse_log

__all__ = ["parse_log"]
