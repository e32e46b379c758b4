"""``caffe.proto``: alias of ``caffe_compat.proto`` (``caffe.proto.caffe_pb2``)."""

from caffe_compat.proto import caffe_pb2  # noqa: F401
