"""An image's dimensions from its first bytes, without Pillow: a bounded walk over a prefix.

Pillow's ``Image.open`` reads every metadata block before the pixel data, in Python (a GIF
comment is even concatenated quadratically), so 10 MiB of crafted metadata costs seconds of
event-loop time. This walk costs microseconds: fixed offsets for PNG, WebP and BMP, and a hop
from marker to marker for JPEG and GIF. Images whose dimensions it cannot reach within
``PREFIX`` bytes are refused; formats it does not parse (AVIF, HEIC) return None and are judged
by the decoder process alone.
"""

from __future__ import annotations

import struct

from jobs.errors import BadRequest

PREFIX = 256 << 10
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def dimensions(data: bytes, mime: str) -> tuple[int, int] | None:
    """(width, height), or None for a format this module does not read; BadRequest when the
    header is malformed or the size is not found within ``PREFIX`` bytes."""
    head = data[:PREFIX]
    try:
        if mime == "image/png":
            return _png(head)
        if mime == "image/jpeg":
            return _jpeg(head)
        if mime == "image/gif":
            return _gif(head)
        if mime == "image/webp":
            return _webp(head)
        if mime == "image/bmp":
            return _bmp(head)
    except struct.error:
        raise BadRequest(f"the image header is truncated: it does not decode as {mime}")
    return None


def _bmp(head: bytes) -> tuple[int, int]:
    (dib,) = struct.unpack_from("<I", head, 14)
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        w, h = struct.unpack_from("<HH", head, 18)
        return w, h
    if dib not in (40, 52, 56, 64, 108, 124):
        raise BadRequest("the image does not decode as image/bmp; is it truncated or corrupt?")
    w, h = struct.unpack_from("<ii", head, 18)
    return abs(w), abs(h)


def _png(head: bytes) -> tuple[int, int]:
    if head[12:16] != b"IHDR":
        raise BadRequest("the PNG has no IHDR header")
    w, h = struct.unpack_from(">II", head, 16)
    return w, h


def _jpeg(head: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            raise BadRequest("the JPEG markers are malformed")
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack_from(">H", head, i + 2)
        if marker in _JPEG_SOF:
            h, w = struct.unpack_from(">HH", head, i + 5)
            return w, h
        if marker == 0xDA:
            break  # pixel data before any frame header
        i += 2 + length
    raise BadRequest(f"the JPEG frame header is not within its first {PREFIX >> 10} KiB")


def _gif(head: bytes) -> tuple[int, int]:
    w, h, flags = struct.unpack_from("<HHB", head, 6)
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while i < len(head):
        block = head[i]
        if block == 0x2C:  # the first frame: its extent may exceed the logical screen
            x, y, fw, fh = struct.unpack_from("<HHHH", head, i + 1)
            return max(w, x + fw), max(h, y + fh)
        if block != 0x21:
            raise BadRequest("the GIF blocks are malformed")
        i += 2
        while i < len(head) and head[i]:  # extension sub-blocks
            i += head[i] + 1
        i += 1
    raise BadRequest(f"the GIF's first frame is not within its first {PREFIX >> 10} KiB")


def _webp(head: bytes) -> tuple[int, int]:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack_from("<HH", head, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = int.from_bytes(head[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    raise BadRequest("the WebP header is malformed")
