"""POST /v1/embeddings: passed through to OpenRouter or OpenAI (the routing rule of
``ingress/v1/routing.py``), run by the chat pool like a chat completion, charged
``price_embeddings`` and refunded by the same rules."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from ingress.admission import admit_v1
from ingress.api_models import V1Embeddings
from ingress.api_spec import IDEMPOTENCY, PAID, api
from ingress.responses import JSON
from ingress.state import state
from ingress.submit import submit
from ingress.v1.answer import timed_out
from jobs.names import EMBEDDINGS, EMBEDDINGS_OPENAI

MAX_INPUTS = 2048  # OpenAI's own limit per request
_MANY = Field(min_length=1, max_length=MAX_INPUTS)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=200)
    # The same bounds _non_empty checks (with its messages), stated per shape for /openapi.json.
    input: (Annotated[str, Field(min_length=1)] | Annotated[list[str], _MANY] | Annotated[list[int], _MANY]
            | Annotated[list[list[int]], _MANY])

    @field_validator("input", mode="before")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if not v:
            raise ValueError("input must not be empty")
        if isinstance(v, list) and len(v) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request")
        return v


@api("Embeddings through OpenRouter or OpenAI, passed through", tags=("v1",), auth="bearer",
     body=EmbeddingsRequest, webhooks=True, headers=IDEMPOTENCY, ok={200: V1Embeddings}, errors=PAID)
async def embeddings(request: Request) -> Response:
    st = state(request)
    a = await admit_v1(request, EmbeddingsRequest, EMBEDDINGS, EMBEDDINGS_OPENAI)
    who, req, r = a.who, a.req, a.route
    first = req.input if isinstance(req.input, str) else req.input[0]
    sub = await submit(st, who, r.kind, model=r.model, prompt=first[:500] if isinstance(first, str) else "",
                       request=a.raw, idempotency_key=a.idempotency_key, webhook=a.hook, wait=True)
    if sub.result is None:
        raise timed_out(sub.job_id, sub.task_id)
    return JSON(sub.result.raise_for_failure(sub.job_id).output)
