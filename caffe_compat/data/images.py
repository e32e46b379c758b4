"""Image decoding and ``Datum`` conversion exactly as Caffe's ``src/caffe/util/io.cpp`` does them.

Rules followed:
- ``ReadImageToCVMat``: OpenCV decodes the file in colour (``IMREAD_COLOR``: 3 channels, BGR) or
  grey (``IMREAD_GRAYSCALE``), then ``cv::resize(img, Size(width, height))`` (bilinear) when both
  sizes are positive.
- ``DecodeDatumToCVMat`` / ``DecodeDatumToCVMatNative``: an encoded ``Datum`` is decoded in colour,
  in grey, or as stored (``IMREAD_UNCHANGED``).
- ``CVMatToDatum``: a raw ``Datum`` holds ``channels``/``height``/``width`` and the pixels in
  channel-major (C, H, W) order as bytes, with ``encoded: false`` written explicitly.

Arrays here are channel-major ``(C, H, W)``: ``uint8`` for decoded images and byte Datums,
``float32`` for Datums that carry ``float_data``. Files are read into memory and decoded with
``cv2.imdecode`` (the same decoder ``cv2.imread`` uses, EXIF orientation included), so a missing
file and an undecodable one give different errors.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from caffe_compat.errors import CaffeCompatError
from caffe_compat.net.budget import check_bytes
from caffe_compat.proto import caffe_pb2


class ImageReadError(CaffeCompatError):
    """An image file that is missing or that OpenCV cannot decode."""

    def __init__(self, message: str, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def _to_chw(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image[np.newaxis]
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` a PNG, JPEG or BMP header declares (None for other formats or a header
    too short to tell), read without decoding, so a small file declaring a gigantic image is
    refused before OpenCV allocates it."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(height), abs(width)
    if data[:2] == b"\xff\xd8":
        position = 2
        while position + 4 <= len(data):
            if data[position] != 0xFF:
                return None
            marker = data[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                position += 2
                continue
            (length,) = struct.unpack(">H", data[position + 2 : position + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                if position + 9 > len(data):
                    return None
                height, width = struct.unpack(">HH", data[position + 5 : position + 9])
                return height, width
            position += 2 + length
    return None


def check_declared_size(data: bytes, what: str) -> None:
    """Refuse an image whose header declares more pixels than the memory budget holds (counting
    4 bytes per pixel: up to four 8-bit channels)."""
    size = header_size(data)
    if size is not None:
        height, width = size
        check_bytes(height * width * 4, f"{what}: its header declares {width}x{height} pixels, which")


def decode_image(
    data: bytes, is_color: bool | None, height: int = 0, width: int = 0, what: str = "image"
) -> np.ndarray | None:
    """Decode encoded image bytes to a ``(C, H, W)`` array (None if OpenCV cannot decode them).

    ``is_color`` True/False decodes in colour/grey; None keeps the stored channels and depth
    (``IMREAD_UNCHANGED``). ``height``/``width`` both positive resize bilinearly, as Caffe does.
    The size the header declares is checked against the memory budget first (``what`` names the
    image in that error).
    """
    check_declared_size(data, what)
    flag = (
        cv2.IMREAD_UNCHANGED if is_color is None else (cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    )
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, flag) if buffer.size else None
    except cv2.error:  # OpenCV raises (rather than returns None) on some malformed headers
        return None
    if image is None:
        return None
    if height > 0 and width > 0:
        image = cv2.resize(image, (width, height))
    return _to_chw(image)


def read_image(path: str | os.PathLike, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray:
    """Caffe's ``ReadImageToCVMat``: the image at ``path`` as ``(C, H, W)`` uint8 (BGR).

    Raises:
        ImageReadError: the file cannot be read (``missing``) or decoded.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError(f"cannot read image '{path}' (not a regular file)", missing=False)
        check_bytes(info.st_size, f"image '{path}': reading its {info.st_size} bytes")
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ImageReadError(f"cannot read image '{path}' ({reason})", missing=True) from None
    image = decode_image(data, is_color, height, width, what=f"image '{path}'")
    if image is None:
        raise ImageReadError(
            f"cannot decode image '{path}' ({len(data)} bytes): not an image format OpenCV reads",
            missing=False,
        )
    return image


def check_8bit(image: np.ndarray, what: str) -> np.ndarray:
    """Caffe's transformer reads pixels as unsigned bytes (or floats): reject other depths."""
    if image.dtype not in (np.uint8, np.float32):
        raise CaffeCompatError(
            f"{what} decodes to {image.dtype} pixels; Caffe reads 8-bit images only (re-save it as 8-bit)"
        )
    return image


def datum_to_array(
    datum: caffe_pb2.Datum, force_color: bool = False, force_gray: bool = False, what: str = "datum"
) -> np.ndarray:
    """The pixels of a ``Datum`` as ``(C, H, W)``: decoded if ``encoded`` (in colour with
    ``force_color``, grey with ``force_gray``, as stored otherwise), else the raw bytes
    (``uint8``) or ``float_data`` (``float32``), as ``DataTransformer::Transform(Datum)`` reads them.
    """
    if datum.encoded:
        if force_color and force_gray:
            raise CaffeCompatError("transform_param: cannot set both force_color and force_gray")
        is_color = True if force_color else (False if force_gray else None)
        image = decode_image(datum.data, is_color, what=what)
        if image is None:
            raise CaffeCompatError(f"{what}: the encoded image ({len(datum.data)} bytes) cannot be decoded")
        return check_8bit(image, what)
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) <= 0:
        raise CaffeCompatError(f"{what}: a raw Datum needs positive channels/height/width, got {list(shape)}")
    count = math.prod(shape)
    if datum.data:
        if len(datum.data) != count:
            raise CaffeCompatError(f"{what}: holds {len(datum.data)} bytes but {list(shape)} needs {count}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise CaffeCompatError(
            f"{what}: holds {len(datum.float_data)} floats but {list(shape)} needs {count}"
        )
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def array_to_datum(image: np.ndarray, label: int, datum: caffe_pb2.Datum | None = None) -> caffe_pb2.Datum:
    """Caffe's ``CVMatToDatum`` then ``set_label``: a raw byte Datum of a ``(C, H, W)`` uint8 array."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise CaffeCompatError(
            f"a raw Datum holds (C, H, W) uint8 pixels, got {image.dtype} {list(image.shape)}"
        )
    datum = caffe_pb2.Datum() if datum is None else datum
    datum.channels, datum.height, datum.width = (int(d) for d in image.shape)
    datum.ClearField("float_data")
    datum.data = np.ascontiguousarray(image).tobytes()
    datum.encoded = False
    datum.label = int(label)
    return datum


def encode_image(image: np.ndarray, extension: str, what: str = "image") -> bytes:
    """``cv::imencode`` of a ``(C, H, W)`` uint8 array; ``extension`` like ``".png"`` or ``"jpg"``
    (OpenCV picks the encoder by the text after the last dot)."""
    name = extension if "." in extension else "." + extension
    hwc = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    try:
        ok, buffer = cv2.imencode(name[name.rfind(".") :], np.ascontiguousarray(hwc))
    except cv2.error:
        ok = False
    if not ok:
        raise CaffeCompatError(f"{what}: OpenCV cannot encode as '{extension}'")
    return buffer.tobytes()
