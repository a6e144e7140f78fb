"""Request bodies, as the reference names their fields."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from ingress.api_requests import EMAIL_MAX, EMAIL_PATTERN

# Strict: a JSON "5" is not the integer 5 here, as /openapi.json (and every SDK) says.
STRICT = ConfigDict(strict=True)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: str = Field(min_length=1, max_length=32)
    content: str | list[Any] | None = None


class ChatRequest(BaseModel):
    """Reference fields; other OpenAI-compatible parameters (top_p, tools, …) pass through."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"anyOf": [
        # What _messages_or_prompt enforces: messages (a non-empty list), or a non-empty prompt.
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
        {"required": ["prompt"], "properties": {"prompt": {"type": "string", "minLength": 1}}},
    ]})

    uid: str | None = None
    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] | None = Field(None, json_schema_extra={"minItems": 1})
    prompt: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    # Answers here are whole: streaming is /v1's (POST /v1/chat/completions).
    stream: Annotated[bool | None, WithJsonSchema({"enum": [False, None]})] = None

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, v: list[Message] | None) -> list[Message] | None:
        if v is not None and not v:
            raise ValueError("messages must hold at least one message")
        return v

    @model_validator(mode="after")
    def _messages_or_prompt(self) -> ChatRequest:
        if self.messages is None and not self.prompt:
            raise ValueError("Missing messages parameter (or prompt)")
        if self.stream:
            raise ValueError("stream is not supported: poll /prediction-status or wait for the answer")
        return self

    def provider_body(self) -> dict[str, Any]:
        """What the provider gets: the request minus our own fields, prompt as a user message."""
        body = self.model_dump(exclude_none=True, exclude={"uid", "prompt", "stream"})
        if self.messages is None:
            body["messages"] = [{"role": "user", "content": self.prompt}]
        body.pop("stream", None)
        return body

    def prompt_text(self) -> str:
        """The line a task listing shows: the prompt, or the last user message."""
        if self.prompt:
            return self.prompt[:500]
        for m in reversed(self.messages or []):
            if m.role == "user" and isinstance(m.content, str):
                return m.content[:500]
        return ""


class AccountCreate(BaseModel):
    model_config = STRICT

    # Optional; when given, ingress/accounts.py valid_email checks it (one message for every way
    # an account is made), so the length and pattern here only document that rule.
    email: str | None = Field(None, json_schema_extra={"maxLength": EMAIL_MAX, "pattern": EMAIL_PATTERN},
                              description="Kept lower-cased; one account per email (409)")


HALF_MICRO = 0.0000005


class AdminCredit(BaseModel):
    model_config = STRICT

    uid: str = Field(min_length=1)
    # Not zero once in micro-dollars: 0.0000005 and below rounded to a credit of nothing, a ledger row of 0.
    amount: float = Field(ge=-1_000_000, le=1_000_000, json_schema_extra={
        "not": {"minimum": -HALF_MICRO, "maximum": HALF_MICRO}})
    reason: str | None = Field(None, max_length=500)

    @field_validator("amount")
    @classmethod
    def _sane(cls, v: float) -> float:
        if abs(v) <= HALF_MICRO or abs(v) > 1_000_000:
            raise ValueError("amount must be at least 0.000001 and at most 1,000,000 dollars either way")
        return v
