"""Content type from a file's first bytes: the provider's headers and URL suffixes can't be trusted."""

from __future__ import annotations

_SIGNATURES: list[tuple[bytes, int, str, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", "png"),
    (b"\xff\xd8\xff", 0, "image/jpeg", "jpg"),
    (b"GIF87a", 0, "image/gif", "gif"),
    (b"GIF89a", 0, "image/gif", "gif"),
    (b"BM", 0, "image/bmp", "bmp"),
    (b"%PDF-", 0, "application/pdf", "pdf"),
    (b"\x1a\x45\xdf\xa3", 0, "video/webm", "webm"),
    (b"OggS", 0, "audio/ogg", "ogg"),
    (b"fLaC", 0, "audio/flac", "flac"),
    (b"ID3", 0, "audio/mpeg", "mp3"),
    (b"\xff\xfb", 0, "audio/mpeg", "mp3"),
    (b"PK\x03\x04", 0, "application/zip", "zip"),
    (b"glTF", 0, "model/gltf-binary", "glb"),
]

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif",
                         "image/heic"})


def sniff(head: bytes) -> tuple[str, str]:
    """(content type, file extension) of a file starting with ``head`` (16+ bytes is enough)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav", "wav"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif", "avif"
        if brand in (b"heic", b"heix", b"mif1"):
            return "image/heic", "heic"
        if brand == b"qt  ":
            return "video/quicktime", "mov"
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4", "m4a"
        return "video/mp4", "mp4"
    for magic, offset, ctype, ext in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return ctype, ext
    stripped = head.lstrip()
    if stripped[:4].lower() == b"<svg" or stripped[:5] == b"<?xml":
        return "image/svg+xml", "svg"
    if stripped[:1] in (b"{", b"["):
        return "application/json", "json"
    return "application/octet-stream", "bin"


# What a hosted file may be served as, inline: raster images, audio and video, which a browser
# only displays. Anything else (SVG, HTML, XML, PDF, unknown bytes) could run script, or be
# sniffed into something that does, on the origin serving it (ours, the operator's bucket or
# CDN), so it is stored and served as an attachment of type application/octet-stream.
# Extension → passive type: how /files/ types a stored file (never mimetypes' guess from a name).
PASSIVE_EXTENSIONS = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp",
                      "webp": "image/webp", "avif": "image/avif", "heic": "image/heic", "webm": "video/webm",
                      "ogg": "audio/ogg", "flac": "audio/flac", "mp3": "audio/mpeg", "wav": "audio/wav",
                      "m4a": "audio/mp4", "mp4": "video/mp4", "mov": "video/quicktime"}
PASSIVE_TYPES = frozenset(PASSIVE_EXTENSIONS.values())
# Non-passive files keep these extensions (no CDN serves them as script); any other gets .bin,
# since a CDN such as Bunny types a file by its name, whatever type it was uploaded with.
_KEPT_EXTENSIONS = frozenset({"zip", "json", "glb"})
OCTET_STREAM = "application/octet-stream"


def is_passive(content_type: str) -> bool:
    return content_type in PASSIVE_TYPES


def hosted_type(head: bytes) -> tuple[str, str]:
    """(content type to store, extension) for a file to host: its sniffed type if passive,
    else application/octet-stream (stores add ``Content-Disposition: attachment``)."""
    ctype, ext = sniff(head)
    if is_passive(ctype):
        return ctype, ext
    return OCTET_STREAM, ext if ext in _KEPT_EXTENSIONS else "bin"


def stored_as(content_type: str) -> tuple[str, str | None]:
    """(Content-Type, Content-Disposition or None) a store writes a file of this type with:
    every store applies it, whatever its caller passed."""
    return (content_type, None) if is_passive(content_type) else (OCTET_STREAM, "attachment")
