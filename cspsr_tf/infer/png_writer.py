"""A PNG encoder that takes the image a band of rows at a time (for frames beyond memory).

OpenCV encodes a PNG only from a whole image in memory; a 16000x16000 RGB output is 768 MB
as uint8 and twice that again while encoding. PNG itself is a stream: a header chunk, then
zlib-compressed rows, each led by a filter byte (PNG specification, ISO/IEC 15948). Here
each row uses the "Up" filter (its difference to the row above, byte-wise), which numpy
computes for a whole band at once and which compresses photographs about as well as
libpng's adaptive choice; zlib level 1 trades a little size for speed, like OpenCV's default.
"""

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (grey, RGB)
_FILTER_UP = 2


def _chunk(kind, data):
    return (
        struct.pack(">I", len(data)) + kind + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


class PngWriter:
    """Writes a grey or RGB, 8- or 16-bit PNG to a binary file, band by band.

    Args:
        file: a binary file object open for writing.
        width, height: image size in pixels.
        channels: 1 (grey) or 3 (RGB, in RGB order).
        dtype: uint8 or uint16.
        level: zlib compression level, default 1.

    Example:
        writer = PngWriter(f, width, height, 3, np.uint8)
        for band in bands:  # [rows, width, 3] uint8, top to bottom
            writer.write_rows(band)
        writer.close()
    """

    def __init__(self, file, width, height, channels, dtype, level=1):
        dtype = np.dtype(dtype)
        if channels not in _COLOR_TYPES:
            raise ValueError(f"channels must be 1 or 3. Received: {channels}")
        if dtype not in (np.uint8, np.uint16):
            raise ValueError(f"dtype must be uint8 or uint16. Received: {dtype}")
        if width < 1 or height < 1:
            raise ValueError(f"The image must not be empty. Received: {width}x{height}")
        self._file = file
        self._shape = (width, channels)
        self._dtype = dtype
        self._height = height
        self._rows = 0
        self._compressor = zlib.compressobj(level)
        self._previous = np.zeros(width * channels * dtype.itemsize, np.uint8)
        header = struct.pack(
            ">IIBBBBB", width, height, 8 * dtype.itemsize, _COLOR_TYPES[channels], 0, 0, 0
        )
        file.write(_SIGNATURE + _chunk(b"IHDR", header))

    def write_rows(self, rows):
        """Appends rows [n, width(, channels)] of the image's dtype, top to bottom."""
        rows = np.asarray(rows)
        width, channels = self._shape
        if rows.dtype != self._dtype:
            raise ValueError(f"Expected {self._dtype} rows. Received: {rows.dtype}")
        rows = rows.reshape(rows.shape[0], -1)
        if rows.shape[1] != width * channels:
            raise ValueError(
                f"Expected rows of {width} pixels x {channels} channels. "
                f"Received: shape={rows.shape}"
            )
        if not rows.shape[0]:
            return
        if self._rows + rows.shape[0] > self._height:
            raise ValueError(f"More rows than the image's height {self._height}.")
        # PNG samples are big-endian; the filter works on bytes.
        data = rows.astype(rows.dtype.newbyteorder(">"), copy=False).view(np.uint8)
        above = np.concatenate([self._previous[np.newaxis], data[:-1]])
        filtered = np.empty((data.shape[0], data.shape[1] + 1), np.uint8)
        filtered[:, 0] = _FILTER_UP
        np.subtract(data, above, out=filtered[:, 1:])  # wraps modulo 256, as PNG wants
        self._previous = data[-1].copy()
        self._rows += rows.shape[0]
        compressed = self._compressor.compress(filtered.tobytes())
        if compressed:
            self._file.write(_chunk(b"IDAT", compressed))

    def close(self):
        """Ends the image; raises ValueError if fewer rows than its height were written."""
        if self._rows != self._height:
            raise ValueError(f"Wrote {self._rows} of {self._height} rows.")
        self._file.write(_chunk(b"IDAT", self._compressor.flush()) + _chunk(b"IEND", b""))
