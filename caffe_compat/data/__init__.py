"""Caffe's data pipeline on numpy/OpenCV/torch, one concern per module:

- ``transformer``: Caffe's DataTransformer (crop, mirror, mean, scale, the fork's erasing);
- ``images``: OpenCV decoding and resizing as ``io.cpp`` does it, ``Datum`` conversions;
- ``image_list``: the ``ImageData`` source (list files, order, shuffling, the fork's balancing);
- ``lmdb_source``: LMDB/LevelDB ``Datum`` databases and the ``Data`` source;
- ``memory``: the ``MemoryData`` store;
- ``loader``: background worker processes (torch DataLoader) with prefetching;
- ``tools``: ``convert_imageset`` and ``compute_image_mean``;
- ``overrides``: ``-set``/``--data-root`` overrides of a NetParameter;
- ``synthetic_faces``: the synthetic identity dataset of ``caffe-compat make-faces``;
- ``commands``: the ``caffe-compat`` subcommands.

The layers themselves are in ``caffe_compat.layers.image_data``. Nothing is imported here, so
the command line starts without OpenCV.
"""
