"""``caffe``: an alias of ``caffe_compat.pycaffe`` (found only when ``caffe-compat pycaffe-path``
is on PYTHONPATH). Its submodules are the very module objects of caffe-compat."""

import sys as _sys

from caffe_compat import pycaffe as _pycaffe
from caffe_compat.pycaffe import *  # noqa: F403
from caffe_compat.pycaffe import __version__  # noqa: F401

_pycaffe_modules = {
    "io": "caffe_compat.pycaffe.io",
    "net_spec": "caffe_compat.pycaffe.net_spec",
    "coord_map": "caffe_compat.pycaffe.coord_map",
    "classifier": "caffe_compat.pycaffe.classifier",
    "detector": "caffe_compat.pycaffe.detector",
    "pycaffe": "caffe_compat.pycaffe",
    "_caffe": "caffe_compat.pycaffe",
}
for _name, _target in _pycaffe_modules.items():
    __import__(_target)
    _sys.modules[f"{__name__}.{_name}"] = _sys.modules[_target]
    globals()[_name] = _sys.modules[_target]
del _name, _target, _pycaffe
