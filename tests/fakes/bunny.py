"""A fake of Bunny's Storage HTTP API: PUT/GET/DELETE ``/{zone}/{path}`` with an ``AccessKey``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ZONES = {"sn-zone": "bunny-zone-password"}
FILES: dict[str, tuple[bytes, str]] = {}


def _denied(request: Request) -> Response | None:
    zone = request.path_params["zone"]
    if zone not in ZONES:
        return JSONResponse({"HttpCode": 404, "Message": "Storage zone not found"}, status_code=404)
    if request.headers.get("accesskey") != ZONES[zone]:
        return JSONResponse({"HttpCode": 401, "Message": "Unauthorized"}, status_code=401)
    return None


async def obj(request: Request) -> Response:
    if (denied := _denied(request)) is not None:
        return denied
    key = f"{request.path_params['zone']}/{request.path_params['path']}"
    if request.method == "PUT":
        FILES[key] = (await request.body(), request.headers.get("content-type", ""))
        return JSONResponse({"HttpCode": 201, "Message": "File uploaded."}, status_code=201)
    if key not in FILES:
        return JSONResponse({"HttpCode": 404, "Message": "Object Not Found"}, status_code=404)
    if request.method == "DELETE":
        del FILES[key]
        return JSONResponse({"HttpCode": 200, "Message": "File deleted successfuly."})
    return Response(FILES[key][0], media_type=FILES[key][1])


app = Starlette(routes=[Route("/{zone}/{path:path}", obj, methods=["GET", "PUT", "DELETE"])])
