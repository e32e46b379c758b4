"""Caffe-format logs: writing glog lines, parsing logs, plotting and comparing them."""
