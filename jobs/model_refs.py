"""What a Replicate model reference looks like: ``owner/name``, ``owner/name:<version>``, or a
bare 64-hex version id. Shared by the ingress (validation) and the media worker (routing).

Every pattern is applied with ``fullmatch`` and ASCII classes: ``$`` also matches before a final
newline, and ``\\w`` takes any Unicode letter, so ``owner/name\\n`` or a look-alike name would pass
validation and reach Replicate's URL path.
"""

from __future__ import annotations

import re

VERSION_RE = re.compile(r"[0-9a-f]{64}")
MODEL_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(:[0-9a-f]{64})?", re.ASCII)

# Both, as one JSON Schema pattern for /openapi.json (ASCII classes spelled out).
MODEL_PATTERN = r"^([0-9a-f]{64}|[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9a-f]{64})?)$"


def is_version(model: str) -> bool:
    return VERSION_RE.fullmatch(model) is not None


def valid_model(model: str) -> bool:
    return is_version(model) or MODEL_RE.fullmatch(model) is not None
