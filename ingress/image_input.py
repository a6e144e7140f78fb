"""An image a user sent (base64) or pointed at (URL), checked before anything is charged:
known format, magic bytes that match the declared type, bytes that really decode."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import sys
from dataclasses import dataclass

from ingress.image_header import dimensions
from jobs.errors import BadRequest, PayloadTooLarge, Unavailable
from jobs.settings import Settings
from storage.files.sniff import sniff as sniff_file

# The formats every moderation backend reads (OpenAI takes PNG, JPEG, GIF and WebP).
_PIL_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
_DATA_URL = re.compile(r"^data:([\w.+/-]+);base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


@dataclass(frozen=True, slots=True)
class ImageBytes:
    data: bytes
    mime: str


def sniff(data: bytes) -> str | None:
    """The image type the magic bytes say, if a moderation backend reads it; else None."""
    ctype, _ = sniff_file(data[:64])
    return ctype if ctype in _PIL_FORMATS.values() else None


def _ci(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


# What normalize_mime accepts, as a JSON Schema pattern (no flags there: case spelled out).
MIME_PATTERN = r"^\s*" + _ci("image") + "/(" + "|".join(
    _ci(m.removeprefix("image/")) for m in sorted({*_PIL_FORMATS.values(), *_ALIASES})) + r")\s*$"
# Base64 as decode_base64 reads it (optionally a data: URL); at least one whole 4-character group.
BASE64_PATTERN = (r"^(data:[\w.+/-]+;base64,)?[ \t\r\n]*(?:[A-Za-z0-9+/][ \t\r\n]*){2}"
                  r"(?:[A-Za-z0-9+/=][ \t\r\n]*){2,}$")


def normalize_mime(mime: str) -> str:
    m = mime.strip().lower()
    m = _ALIASES.get(m, m)
    if m not in _PIL_FORMATS.values():
        raise BadRequest(f"imageMime {mime!r} is not supported: use image/png, image/jpeg, image/gif or "
                         "image/webp")
    return m


def decode_base64(text: str, declared_mime: str | None, max_bytes: int) -> ImageBytes:
    """Strict base64 (no stray characters, right padding); the bytes must be the declared type."""
    if m := _DATA_URL.match(text):
        if declared_mime and normalize_mime(declared_mime) != normalize_mime(m.group(1)):
            raise BadRequest("imageMime does not match the type in the imageBase64 data URL")
        declared_mime = m.group(1)
        text = text[m.end():]
    # Line breaks are how MIME tools wrap base64; anything else outside the alphabet is an error.
    raw = _WHITESPACE.sub(b"", text.encode("ascii", errors="replace"))
    if len(raw) // 4 * 3 > max_bytes:
        raise PayloadTooLarge(f"imageBase64 decodes to more than {max_bytes} bytes")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("imageBase64 is not valid base64")
    if not data:
        raise BadRequest("imageBase64 is empty")
    found = sniff(data)
    if found is None:
        raise BadRequest("imageBase64 is not a PNG, JPEG, GIF or WebP image")
    if declared_mime is not None and normalize_mime(declared_mime) != found:
        said = normalize_mime(declared_mime)
        raise BadRequest(f"imageMime says {said} but the imageBase64 bytes are {found}")
    return ImageBytes(data, found)


def from_fetched(data: bytes) -> ImageBytes:
    """A fetched body: its type is what its bytes say (a server's Content-Type is only a claim)."""
    found = sniff(data)
    if found is None:
        raise BadRequest("imageUrl did not return a PNG, JPEG, GIF or WebP image")
    return ImageBytes(data, found)


_MAX_JPEG_SCANS = 100


def probe(img: ImageBytes, max_pixels: int) -> None:
    """Dimensions from the header (no Pillow, microseconds): a decompression bomb is refused here,
    before any pixel is decoded. A progressive JPEG of thousands of scans, seconds of CPU each
    hundred, is refused by counting its scan markers (0xFFDA cannot occur inside coded data)."""
    size = dimensions(img.data, img.mime)
    if size is not None and size[0] * size[1] > max_pixels:
        raise BadRequest(f"the image is {size[0]}x{size[1]}: more than {max_pixels} pixels")
    if img.mime == "image/jpeg" and img.data.count(b"\xff\xda") > _MAX_JPEG_SCANS:
        raise BadRequest(f"the JPEG has more than {_MAX_JPEG_SCANS} scans")


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_pixels: int
    slots: int
    timeout: float


def decode_limits(s: Settings, max_pixels: int | None = None) -> DecodeLimits:
    return DecodeLimits(max_pixels or s.max_image_pixels, s.image_decode_slots, s.image_decode_timeout_seconds)


_slots: dict[int, asyncio.Semaphore] = {}


async def _decode_in_child(img: ImageBytes, limits: DecodeLimits) -> str | None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingress.image_check", img.mime, str(limits.max_pixels),
        str(math.ceil(limits.timeout) + 1),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(limits.timeout):
            out, _ = await proc.communicate(img.data)
    except TimeoutError:
        raise BadRequest(f"the image took longer than {limits.timeout:g} s to decode")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    try:
        answer = json.loads(out)
    except ValueError:
        raise BadRequest("the image could not be decoded (the decoder stopped: is it too large or corrupt?)")
    return None if answer.get("ok") else str(answer.get("error", "the image does not decode"))


async def check_decodes(img: ImageBytes, limits: DecodeLimits) -> None:
    """Header first, on the loop; then a real decode in a child process (killed at ``limits.timeout``,
    at most ``limits.slots`` at once per ingress process, so memory and CPU stay bounded)."""
    probe(img, limits.max_pixels)
    sem = _slots.setdefault(limits.slots, asyncio.Semaphore(limits.slots))
    try:
        async with asyncio.timeout(limits.timeout):
            await sem.acquire()
    except TimeoutError:
        raise Unavailable("Too many images are being checked right now; try again shortly",
                          headers={"Retry-After": "1"})
    try:
        error = await _decode_in_child(img, limits)
    finally:
        sem.release()
    if error is not None:
        raise BadRequest(error)
