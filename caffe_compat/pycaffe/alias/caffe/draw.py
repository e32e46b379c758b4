"""``caffe.draw``: alias of ``caffe_compat.pycaffe.draw`` (needs the optional pydot)."""

import sys as _sys

from caffe_compat.pycaffe import draw as _draw

_sys.modules[__name__] = _draw
