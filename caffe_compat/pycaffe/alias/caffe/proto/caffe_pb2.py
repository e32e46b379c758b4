"""``caffe.proto.caffe_pb2``: the very module ``caffe_compat.proto.caffe_pb2``."""

import sys as _sys

from caffe_compat.proto import caffe_pb2 as _caffe_pb2

_sys.modules[__name__] = _caffe_pb2
