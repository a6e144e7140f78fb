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
