"""Caffe's data tools: ``convert_imageset`` (tools/convert_imageset.cpp) and
``compute_image_mean`` (tools/compute_image_mean.cpp), writing files real Caffe reads.

Rules followed:
- ``convert_imageset ROOTFOLDER/ LISTFILE DB_NAME``: each ``path label`` line (split at the last
  space) is read as ``ROOTFOLDER + path`` (joined as text) by ``ReadImageToDatum``: decoded in
  colour (grey with ``gray``), resized when both sizes are positive, stored raw (``CVMatToDatum``),
  or encoded with ``encoded``/``encode_type``: the file's own bytes when no resize is asked, the
  decoded channels agree with the colour mode and the file's extension matches the encoding
  (Caffe compares the extension *with its dot* to ``encode_type``, so an explicit
  ``encode_type`` always re-encodes), else ``cv::imencode``. Keys are ``%08d_<path>`` with the
  line's index; images that cannot be read are skipped with a warning, as Caffe does;
  ``shuffle`` permutes the lines first; ``check_size`` requires one data size for all records.
- ``compute_image_mean INPUT_DB [OUTPUT_FILE]``: the per-pixel mean of every record (encoded ones
  decoded as stored), accumulated in float32 in record order then divided by the count in
  float32, written as a BlobProto with ``num: 1`` and the channels/height/width of the first record.

Deliberate deviations: a label that is not an integer is an error naming the line (Caffe's
``atoi`` reads 0); the shuffle uses ``seed`` (Caffe's is unseeded); outputs are written
atomically (a temporary folder or file renamed at the end), and an existing ``DB_NAME`` is an
error (as Caffe's ``mkdir``), so a failure leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe_compat.data.image_list import read_image_list
from caffe_compat.data.images import (
    ImageReadError,
    array_to_datum,
    datum_to_array,
    encode_image,
    read_image,
)
from caffe_compat.data.lmdb_source import DatumDB, DatumWriter, backend_name, parse_datum
from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import write_bytes_atomic

logger = logging.getLogger("caffe_compat")


def _matches_extension(filename: str, encoding: str) -> bool:
    """Caffe's ``matchExt``: the file's extension *including its dot*, lower-cased, equals the
    encoding (``jpg`` also matching ``jpeg``, which can never happen for the same reason)."""
    dot = filename.rfind(".")
    extension = (filename[dot:] if dot >= 0 else filename).lower()
    encoding = encoding.lower()
    return extension == encoding or (encoding == "jpg" and extension == "jpeg")


def read_image_to_datum(
    path: Path, label: int, height: int, width: int, is_color: bool, encoding: str
) -> caffe_pb2.Datum:
    """Caffe's ``ReadImageToDatum``; raises ImageReadError when the image cannot be read."""
    image = read_image(path, height, width, is_color)
    if not encoding:
        return array_to_datum(image, label)
    datum = caffe_pb2.Datum()
    if (
        (image.shape[0] == 3) == is_color
        and not height
        and not width
        and _matches_extension(str(path), encoding)
    ):
        datum.data = path.read_bytes()
    else:
        datum.data = encode_image(image, "." + encoding, f"image '{path}'")
    datum.label = int(label)
    datum.encoded = True
    return datum


@dataclass
class ConvertReport:
    """What ``convert_imageset`` wrote: records written, lines skipped (unreadable images)."""

    written: int
    skipped: list[str]


def convert_imageset(
    root_folder: str,
    list_file: str | os.PathLike,
    db_name: str | os.PathLike,
    resize_height: int = 0,
    resize_width: int = 0,
    gray: bool = False,
    shuffle: bool = False,
    backend: str = "lmdb",
    check_size: bool = False,
    encoded: bool = False,
    encode_type: str = "",
    seed: int | None = None,
) -> ConvertReport:
    """Write the images of ``list_file`` into a new LMDB/LevelDB of Datum records, as Caffe's
    ``convert_imageset`` (see the module docstring)."""
    backend = backend_name(backend)
    images = read_image_list(list_file)
    order = np.arange(len(images.names))
    if shuffle:
        order = np.random.default_rng(seed).permutation(order)
    if encode_type and not encoded:
        logger.info("encode_type specified, assuming encoded=true.")
    encoded = encoded or bool(encode_type)
    resize_height, resize_width = max(0, resize_height), max(0, resize_width)
    skipped: list[str] = []
    data_size: int | None = None
    with DatumWriter(db_name, backend) as writer:
        for line_id, index in enumerate(order):
            name = images.names[index]
            encoding = encode_type
            if encoded and not encoding:
                dot = name.rfind(".")
                if dot < 0:
                    logger.warning("Failed to guess the encoding of '%s'", name)
                encoding = name[dot:].lower() if dot >= 0 else name.lower()
            path = Path(root_folder + name)
            try:
                datum = read_image_to_datum(
                    path, int(images.labels[index]), resize_height, resize_width, not gray, encoding
                )
            except ImageReadError as exc:
                logger.warning("skipping %s (%s): %s", name, images.where(index), exc)
                skipped.append(name)
                continue
            if check_size:
                size = len(datum.data) if datum.data else len(datum.float_data)
                if data_size is None:
                    data_size = datum.channels * datum.height * datum.width
                elif size != data_size:
                    raise CaffeCompatError(
                        f"check_size: '{name}' ({images.where(index)}) has data size {size}, the first "
                        f"image has {data_size}"
                    )
            key = f"{line_id:08d}_{name}".encode("utf-8", "surrogateescape")
            writer.put(key, datum.SerializeToString())
            if writer.count % 1000 == 0:
                logger.info("Processed %d files.", writer.count)
        written = writer.count
    logger.info("Processed %d files.", written)
    return ConvertReport(written, skipped)


def compute_image_mean(
    input_db: str | os.PathLike, output_file: str | os.PathLike | None = None, backend: str = "lmdb"
) -> np.ndarray:
    """The mean image ``(1, C, H, W)`` float32 of a Datum database, as Caffe's
    ``compute_image_mean`` computes it; written to ``output_file`` (a BlobProto) when given."""
    db = DatumDB(input_db, backend)
    total: np.ndarray | None = None
    count = 0
    shape: tuple[int, int, int] | None = None
    try:
        for key, value in db.items():
            what = f"record {key.decode('utf-8', 'replace')!r} of {db.path}"
            pixels = datum_to_array(parse_datum(value, what), what=what)
            if total is None:
                shape = pixels.shape
                total = np.zeros(pixels.size, dtype=np.float32)
            if pixels.size != total.size:
                raise CaffeCompatError(
                    f"{what} has {pixels.size} values {list(pixels.shape)}, the first record has "
                    f"{total.size} {list(shape)}: every record must have one size"
                )
            total += pixels.reshape(-1).astype(np.float32)
            count += 1
            if count % 10000 == 0:
                logger.info("Processed %d files.", count)
    finally:
        db.close()
    if total is None or shape is None:
        raise CaffeCompatError(f"the {db.backend} database '{db.path}' holds no record")
    mean = total / np.float32(count)
    if output_file is not None:
        blob = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
        blob.data.extend(mean.tolist())
        write_bytes_atomic(output_file, blob.SerializeToString())
    per_channel = mean.reshape(shape[0], -1).astype(np.float64).sum(axis=1) / (shape[1] * shape[2])
    for channel, value in enumerate(per_channel):
        logger.info("mean_value channel [%d]: %g", channel, value)
    return mean.reshape(1, *shape)
