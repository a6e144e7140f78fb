"""GET /files/{path}: outputs hosted on the operator's local storage (no S3/Bunny configured).

This is the gateway's own origin, so nothing served here may run script: the type comes from
the passive allow-list by extension (never a guess from the name: ``.svg`` would be
``image/svg+xml``), anything else is an octet-stream attachment, and every answer carries
``Content-Security-Policy: sandbox`` and ``nosniff`` in case a browser renders it anyway.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ingress.api_requests import FilePath
from ingress.api_spec import Raw, api
from ingress.state import state
from jobs.errors import NotFound
from storage.files.sniff import OCTET_STREAM, PASSIVE_EXTENSIONS

_HEADERS = {
    # Names are <job_id>/<n>.<ext> and never rewritten with other content: cache for long.
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
}


@api("An output file hosted by the gateway itself (no S3/Bunny configured)", tags=("files",), auth="none",
     path=FilePath, ok={200: Raw("application/octet-stream", {}, "The file (passive types inline, others as "
                                 "attachment)")}, errors=(404,))
async def serve(request: Request) -> Response:
    root = (state(request).settings.data_dir / "files").resolve()
    path = (root / request.path_params["path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.name.endswith(".part"):
        raise NotFound("No such file")
    passive = PASSIVE_EXTENSIONS.get(path.suffix[1:].lower())
    if passive is not None:
        return FileResponse(path, media_type=passive, headers=_HEADERS)
    return FileResponse(path, media_type=OCTET_STREAM, headers=_HEADERS, content_disposition_type="attachment",
                        filename=path.name)
