"""What the Replicate simulator's predictions output, and the routes that serve those files.

``input["sim"]["output"]`` picks the output: ``file`` (default: one PNG URL) | ``files`` |
``nested`` | ``text`` | ``nul`` | ``broken`` (a URL that always 500s) | ``big`` (a 3 MB file) |
hostile output: ``deep`` (a file URL nested ``depth`` lists deep, default 300) | ``bigint``
(2**70 next to a file) | ``surrogate`` (lone surrogates in a value and a key) | ``many``
(``count`` file URLs, default 10,000) | ``sized`` (``count`` files of ``size`` bytes, streamed
without a length) | ``declared`` (``count`` files that declare ``size`` bytes and stream zeros
lazily) | ``svg_data`` (a ``data:image/svg+xml`` URL with script) | ``svg_file`` (an SVG file
with script) | ``unreadable`` (nesting 5,000 deep and a 5,000-digit integer: past the stdlib
parser's limits) | ``delivery`` (a public file on ``http://<host>:<port>/delivery/…``, ``host``
default ``files.replicate.delivery``: tests resolve it to the simulator).

Output files are served at ``/files/…`` and require the creating key (``KEYS``); ``/delivery/…``
(the public CDN) requires none. Every file request is logged with the Authorization header it
carried (``DOWNLOADS``), and ``SENT["file_bytes"]`` counts the bytes actually sent.
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4"
       b"\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND"
       b"\xaeB`\x82")

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(document.domain)"><script>alert(1)</script></svg>'

KEYS: dict[str, str] = {}  # prediction id → the API key that created it (its files need it)
DOWNLOADS: list[dict[str, Any]] = []
SENT = {"file_bytes": 0}


def reset() -> None:
    KEYS.clear()
    DOWNLOADS.clear()
    SENT["file_bytes"] = 0


_HOSTILE = frozenset({"deep", "unreadable", "bigint", "surrogate", "many", "sized", "declared", "svg_data",
                      "svg_file", "delivery"})


def _hostile(base: str, pid: str, kind: str, sim: dict[str, Any]) -> Any:
    url = f"{base}/files/{pid}"
    count = int(sim.get("count", 10_000))
    if kind == "deep":
        out: Any = f"{url}/out-0.png"
        for _ in range(int(sim.get("depth", 300))):
            out = [out]
        return out
    if kind == "unreadable":
        sim["raw"] = "[" * 5000 + "1" * 5000 + "]" * 5000  # spliced in by get(): json.dumps can't
        return "__raw__"
    if kind == "bigint":
        return {"seed": 2**70, "image": f"{url}/out-0.png"}
    if kind == "surrogate":
        return {"caption": "bad \ud800 text", "\udc00key": f"{url}/out-0.png"}
    if kind == "many":
        return [f"{url}/out-{i}.png" for i in range(count)]
    if kind in ("sized", "declared"):
        return [f"{url}/{kind}-{int(sim['size'])}-{i}.bin" for i in range(count)]
    if kind == "svg_data":
        return "data:image/svg+xml;base64," + base64.b64encode(SVG).decode()
    if kind == "svg_file":
        return f"{url}/evil.svg"
    port = base.rsplit(":", 1)[1]
    return f"http://{sim.get('host', 'files.replicate.delivery')}:{port}/delivery/{pid}/out-0.png"


def output(base: str, pid: str, kind: str, sim: dict[str, Any]) -> Any:
    if kind in _HOSTILE:
        return _hostile(base, pid, kind, sim)
    url = f"{base}/files/{pid}"
    return {"file": f"{url}/out-0.png", "files": [f"{url}/out-0.png", f"{url}/out-1.png"],
            "nested": {"image": f"{url}/out-0.png", "extra": {"thumbs": [f"{url}/thumb.png"]}, "seed": 7},
            "text": "hello from the simulator", "nul": ["tok\u0000en", "s"], "broken": f"{url}/broken.png",
            "big": f"{url}/big.bin"}[kind]


def _zeros(request: Request, n: int) -> Any:
    async def gen() -> Any:
        left = n
        while left > 0:
            # uvicorn drops writes to a closed connection silently: stop when the client left,
            # so file_bytes counts what a client could have read, not what was generated.
            if await request.is_disconnected():
                return
            chunk = b"\x00" * min(left, 64 << 10)
            left -= len(chunk)
            SENT["file_bytes"] += len(chunk)
            yield chunk
    return gen()


def _sized(request: Request, name: str) -> Response:
    kind, size, _ = name.split("-", 2)
    headers = {"Content-Length": size} if kind == "declared" else None
    return StreamingResponse(_zeros(request, int(size)), media_type="application/octet-stream", headers=headers)


async def delivery(request: Request) -> Response:
    """The public CDN (replicate.delivery): no key needed, so none should arrive."""
    DOWNLOADS.append({"path": request.url.path, "authorization": request.headers.get("authorization")})
    SENT["file_bytes"] += len(PNG)
    return Response(PNG, media_type="image/png")


async def files(request: Request) -> Response:
    pid, name = request.path_params["id"], request.path_params["name"]
    DOWNLOADS.append({"path": request.url.path, "authorization": request.headers.get("authorization")})
    if pid not in KEYS:
        return Response(status_code=404)
    if request.headers.get("authorization") != f"Bearer {KEYS[pid]}":
        return Response(b"missing or wrong Authorization", status_code=401)
    if name.startswith(("sized-", "declared-")):
        return _sized(request, name)
    if name == "evil.svg":
        return Response(SVG, media_type="image/svg+xml")
    if name == "broken.png":
        return Response(b"upstream exploded", status_code=500)
    if name == "big.bin":
        return Response(b"\x00" * (3 << 20), media_type="application/octet-stream")
    return Response(PNG + name.encode(), media_type="application/octet-stream")
