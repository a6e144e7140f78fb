"""The decode check, run in a child process:
``python -m ingress.image_check <mime> <max_pixels> <cpu_seconds>``
reads the image on stdin and answers one JSON line, ``{"ok": true}`` or ``{"error": "…"}``.

Why a process: a decode cannot be interrupted inside a thread, and crafted files (a progressive
JPEG of thousands of scans, metadata Pillow parses quadratically) cost minutes of CPU within any
pixel cap. A child can be killed when its time is up, and runs under an RLIMIT_CPU of its own,
so the slot it held really comes back and the ingress's event loop never runs Pillow.
"""

from __future__ import annotations

import io
import json
import resource
import sys

# The format Pillow must report for each type we accept.
DECODED_AS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP",
              "image/bmp": "BMP", "image/avif": "AVIF"}


def check(data: bytes, mime: str, max_pixels: int) -> str | None:
    """None if ``data`` decodes as ``mime`` within ``max_pixels``; else what is wrong."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            if DECODED_AS.get(mime) != im.format:
                return f"the image does not decode as {mime}"
            w, h = im.size
            if w * h > max_pixels:
                return f"the image is {w}x{h}: more than {max_pixels} pixels"
            # A JPEG decodes at 1/8 scale just as well for a truncation check, 10x cheaper.
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except UnidentifiedImageError:
        return f"the image does not decode as {mime}; is it truncated or corrupt?"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"the image does not decode ({e}); is it truncated or corrupt?"
    return None


def main() -> int:
    mime, max_pixels, cpu_seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # Set by the child itself (no pre-exec hook in a threaded parent): the kernel ends a runaway.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    error = check(sys.stdin.buffer.read(), mime, max_pixels)
    sys.stdout.write(json.dumps({"ok": True} if error is None else {"error": error}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
