"""Caffe data pipeline: the DataTransformer and the image-list, LMDB and memory sources."""
