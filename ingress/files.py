"""GET /files/{path}: outputs hosted on the operator's local storage (no S3/Bunny configured)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ingress.state import state
from jobs.errors import NotFound


async def serve(request: Request) -> Response:
    root = (state(request).settings.data_dir / "files").resolve()
    path = (root / request.path_params["path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.name.endswith(".part"):
        raise NotFound("No such file")
    # Names are <job_id>/<n>.<ext> and never rewritten with other content: cache for long.
    return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable",
                                       "X-Content-Type-Options": "nosniff"})
