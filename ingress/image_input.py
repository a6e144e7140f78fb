"""An image a user sent (base64) or pointed at (URL), checked before anything is charged:
known format, magic bytes that match the declared type, bytes that really decode."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from jobs.errors import BadRequest, PayloadTooLarge, Unavailable
from jobs.settings import Settings
from storage.files.sniff import sniff as sniff_file

# The formats every moderation backend reads (OpenAI takes PNG, JPEG, GIF and WebP).
_PIL_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
# What a decoded image's format must be for its type: the four above, and more for face swap.
_DECODED_AS = {**_PIL_FORMATS, "BMP": "image/bmp", "AVIF": "image/avif"}
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


def probe(img: ImageBytes, max_pixels: int) -> None:
    """Format and dimensions from the header alone (``Image.open`` is lazy): a decompression bomb
    is refused here in well under a millisecond, before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(img.data)) as im:
            if _DECODED_AS.get(im.format or "") != img.mime:
                raise BadRequest(f"the image does not decode as {img.mime}")
            w, h = im.size
    except BadRequest:
        raise
    except UnidentifiedImageError:
        raise BadRequest(f"the image does not decode as {img.mime}; is it truncated or corrupt?")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadRequest(f"the image does not decode ({e}); is it truncated or corrupt?")
    if w * h > max_pixels:
        raise BadRequest(f"the image is {w}x{h}: more than {max_pixels} pixels")


def _decode(img: ImageBytes) -> None:
    try:
        with Image.open(io.BytesIO(img.data)) as im:
            w, h = im.size
            # A JPEG decodes at 1/8 scale just as well for a truncation check, 10x cheaper.
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadRequest(f"the image does not decode ({e}); is it truncated or corrupt?")


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_pixels: int
    slots: int
    timeout: float


def decode_limits(s: Settings, max_pixels: int | None = None) -> DecodeLimits:
    return DecodeLimits(max_pixels or s.max_image_pixels, s.image_decode_slots, s.image_decode_timeout_seconds)


_slots: dict[int, asyncio.Semaphore] = {}


async def check_decodes(img: ImageBytes, limits: DecodeLimits) -> None:
    """Header first; then a real decode, in a thread, at most ``limits.slots`` at once per process
    (memory stays bounded whatever the concurrency) and within ``limits.timeout``.

    A slot is given back when the decode really ends, not when we stop waiting for it: a thread
    cannot be interrupted, and its memory is only free once it returns."""
    probe(img, limits.max_pixels)
    sem = _slots.setdefault(limits.slots, asyncio.Semaphore(limits.slots))
    try:
        async with asyncio.timeout(limits.timeout):
            await sem.acquire()
    except TimeoutError:
        raise Unavailable("Too many images are being checked right now; try again shortly",
                          headers={"Retry-After": "1"})
    decoding = asyncio.ensure_future(asyncio.to_thread(_decode, img))

    def done(f: asyncio.Future[None]) -> None:
        sem.release()
        if not f.cancelled():
            f.exception()  # retrieved: a decode we stopped waiting for must not log a warning

    decoding.add_done_callback(done)
    try:
        await asyncio.wait_for(asyncio.shield(decoding), limits.timeout)
    except TimeoutError:
        raise BadRequest(f"the image took longer than {limits.timeout:g} s to decode")
