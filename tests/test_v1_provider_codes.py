"""A provider's OpenAI-style ``error.code`` / ``error.param`` reach the OpenAI SDK's exception under
/v1 (``e.code == "model_not_found"``), checked on the way; the reference API's answer has no place
for them and stays as it was."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.fixtures.accounts import Account, audit
from tests.fixtures.v1 import OpenAIClient, worker_settings
from workers.providers.errors import MAX_FIELD_CHARS, error_field

MISSING = {"message": "The model `x` does not exist", "type": "invalid_request_error", "param": "model",
           "code": "model_not_found"}
TOO_LONG = {"message": "Too many tokens", "type": "invalid_request_error", "param": "messages",
            "code": "context_length_exceeded"}


def user(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


async def _chat_error(client: Any, status: int, error: Any, *, stream: bool = False) -> openai.APIStatusError:
    """The SDK's exception for a chat completion the fake provider refuses with ``error``."""
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model=f"error-{status}", messages=user(f"c {uuid.uuid4()}"),
                                             stream=stream, extra_body={"fake_error": error})
    return e.value


@pytest.mark.parametrize(("status", "error"), [(404, MISSING), (400, TOO_LONG)], ids=["404", "400"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_providers_code_and_param_reach_the_sdk(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any, status: int, error: dict[str, str],
        stream: bool) -> None:
    e = await _chat_error(oai(funded, max_retries=0), status, error, stream=stream)
    assert isinstance(e, openai.BadRequestError)  # the caller's fault, as every provider 4xx is
    assert (e.code, e.param, e.type) == (error["code"], error["param"], "invalid_request_error")
    assert error["message"] in e.message
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)  # refunded, as before


async def test_embeddings_pass_on_the_providers_code_and_param(oai: OpenAIClient, funded: Account,
                                                               chat_worker: Any) -> None:
    error = {**MISSING, "message": "The model `text-embedding-4` does not exist"}
    with pytest.raises(openai.BadRequestError) as e:
        await oai(funded, max_retries=0).embeddings.create(model="error-404", input="x",
                                                           extra_body={"fake_error": error})
    assert (e.value.code, e.value.param) == ("model_not_found", "model")
    assert "text-embedding-4" in e.value.message


@pytest.mark.parametrize(("code", "param"), [
    pytest.param(404, ["model"], id="not-strings"),
    pytest.param("c" * 10_000, "p" * (MAX_FIELD_CHARS + 1), id="huge"),
    pytest.param("model_not_found\n\x1b[31mpwned", "model\u202e", id="control-characters"),
    pytest.param({"nested": "object"}, "", id="object-and-empty"),
])
async def test_a_hostile_code_or_param_is_dropped(oai: OpenAIClient, funded: Account, chat_worker: Any,
                                                  code: Any, param: Any) -> None:
    error = {"message": "refused", "type": "invalid_request_error", "param": param, "code": code,
             "metadata": {"raw": "provider internals"}}
    e = await _chat_error(oai(funded, max_retries=0), 400, error)
    assert isinstance(e, openai.BadRequestError)
    assert (e.code, e.param) == ("invalid_request_error", None)  # today's answer
    # Nothing else of the provider's error object comes along.
    assert isinstance(e.body, dict) and sorted(e.body) == ["code", "job_id", "message", "param", "type"]


async def test_a_provider_error_without_code_keeps_todays_answer(oai: OpenAIClient, funded: Account,
                                                                 chat_worker: Any) -> None:
    client = oai(funded, max_retries=0)
    e = await _chat_error(client, 400, {"message": "no code here", "type": "invalid_request_error"})
    assert isinstance(e, openai.BadRequestError)
    assert (e.code, e.param, e.type) == ("invalid_request_error", None, "invalid_request_error")
    with worker_settings(chat_worker, provider_max_retries=0):
        # A 5xx's code is not passed on: the 502 is our verdict after retries, not the provider's.
        e5 = await _chat_error(client, 500, {"message": "boom", "type": "server_error", "code": "overloaded"})
    assert isinstance(e5, openai.InternalServerError)
    assert (e5.status_code, e5.code, e5.param) == (502, "server_error", None)


async def test_the_reference_api_answer_is_unchanged(client: httpx.AsyncClient, funded: Account,
                                                     chat_worker: Any) -> None:
    # The fake's reject-400 carries code "model_not_found": the reference shape has no place for it.
    r = await client.post("/chat-completion", headers=funded.headers,
                          json={"model": "reject-400", "prompt": f"ref {uuid.uuid4()}"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "OpenRouter (400): invalid model ID"
    assert "code" not in body and "param" not in body and "model_not_found" not in r.text


@pytest.mark.parametrize(("value", "kept"), [
    ("model_not_found", True), ("messages[0].content", True), ("x" * MAX_FIELD_CHARS, True),
    ("x" * (MAX_FIELD_CHARS + 1), False), ("", False), ("a\nb", False), ("a\x00b", False), ("rtl\u202e", False),
    (400, False), (None, False), (["model"], False), (True, False),
])
def test_error_field_keeps_only_short_printable_strings(value: Any, kept: bool) -> None:
    assert error_field(value) == (value if kept else None)
