"""The shapes of answers, as pydantic models: what ``/openapi.json`` documents
(``ingress/api_spec.py``) and what the fuzz test checks every answer against. Handlers build
plain dicts on the hot path; these models are the contract those dicts keep."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Status = Literal["in_progress", "completed", "failed", "canceled"]
_OPEN = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    """Every error outside /v1: ``{"error": message}``, sometimes with the task's ids."""

    model_config = _OPEN
    error: str
    job_id: str | None = None


class OpenAIErrorDetail(BaseModel):
    model_config = _OPEN
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every error under /v1, in OpenAI's shape (the SDKs map its status to their exceptions)."""

    error: OpenAIErrorDetail


# Answers.

class Accepted(BaseModel):
    """202 to ``Prefer: respond-async`` (and always for media jobs): poll ``get``."""

    success: bool
    job_id: str
    get: str
    status: Status


class Prediction(BaseModel):
    id: int
    uid: str
    output: Any
    cost: float
    model: str
    status: Status
    job_id: str


class PredictionAnswer(BaseModel):
    prediction: Prediction


class StatusDocument(BaseModel):
    """``GET /prediction-status``, and the body of every completion webhook."""

    job_id: str
    replicate_status: Status
    output: Any
    updated: bool
    error: str | None = None
    hosting_error: str | None = None


class Balance(BaseModel):
    balance: float


class ProviderKeys(BaseModel):
    openrouter_key: str | None
    chatgpt_key: str | None
    replicate_key: str | None
    huggingface_key: str | None


class TaskSummary(BaseModel):
    id: int
    job_id: str
    model: str | None
    prompt: str | None
    status: Status
    cost: float
    created_at: str


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    page: int
    size: int
    total: int


class TaskDetail(TaskSummary):
    kind: str
    output: Any
    error: str | None
    updated_at: str


class TaskDeleted(BaseModel):
    deleted: bool
    id: int


class TaskCanceled(BaseModel):
    id: int
    job_id: str
    status: Status
    refunded: bool


class LedgerEntry(BaseModel):
    id: int
    kind: str
    amount: float
    balance_after: float
    job_id: str | None
    stripe_id: str | None
    reason: str | None
    created_at: str


class BillingHistory(BaseModel):
    history: list[LedgerEntry]
    limit: int
    next_before: int | None


class Threshold(BaseModel):
    threshold: float
    recharge_below: float
    enabled: bool
    card_on_file: bool
    failures: int
    disabled_reason: str | None


class Card(BaseModel):
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None


class CardSetup(BaseModel):
    client_secret: str | None
    publishable_key: str | None
    setup_intent: str
    customer: str


class CardDeleted(BaseModel):
    deleted: bool


class TopUp(BaseModel):
    balance: float
    amount: float
    payment_intent: str | None


class TopUpProcessing(BaseModel):
    status: Literal["processing"]
    amount: float
    payment_intent: str | None


class AccountCreated(BaseModel):
    uid: str
    api_key: str
    balance: float


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ok", "unavailable"]
    postgres: str
    redis: str


class StorageView(BaseModel):
    """The configuration with its secrets masked (the provider's own fields besides)."""

    model_config = _OPEN
    provider: Literal["default", "s3", "bunny"]


class WebhookSecret(BaseModel):
    key: str
    previous_key: str | None = None
    previous_valid_until: str | None = None


class Delivery(BaseModel):
    id: str
    event: str
    url: str
    state: str
    created_at: str
    next_attempt_at: str | None
    attempts: int


class Deliveries(BaseModel):
    task_id: int
    job_id: str
    webhook: str | None
    webhook_events_filter: list[str] | None
    deliveries: list[Delivery]


class Received(BaseModel):
    model_config = _OPEN
    ok: bool | None = None
    received: bool | None = None


class ModerationAnswer(BaseModel):
    """The moderation worker's answer (text and/or image sections, with their coverage)."""

    model_config = _OPEN


class ChatCompletion(BaseModel):
    """The provider's chat completion, passed through as OpenAI's shape."""

    model_config = _OPEN
    id: str | None = None
    object: str | None = None
    choices: list[Any] | None = None


class V1Accepted(BaseModel):
    id: int
    job_id: str
    status: Status
    get: str
    stream: str | None = None


class V1Model(BaseModel):
    model_config = _OPEN
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class V1ModelList(BaseModel):
    object: Literal["list"]
    data: list[V1Model]


class V1ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    coverage: dict[str, Any]


class V1Moderations(BaseModel):
    id: str
    model: str
    results: list[V1ModerationResult]


class V1Embeddings(BaseModel):
    model_config = _OPEN
    object: str | None = None
    data: list[Any] | None = None


# The web UI's JSON endpoints (ingress/web/).

class ApiKeyInfo(BaseModel):
    prefix: str
    created_at: str | None
    revoked_at: str | None
    active: bool


class ApiKeyList(BaseModel):
    uid: str
    keys: list[ApiKeyInfo]


class ApiKeyCreated(BaseModel):
    api_key: str
    prefix: str


class KeyRevoked(BaseModel):
    revoked: int
    prefix: str


class DaySpend(BaseModel):
    date: str
    spend: float


class Usage(BaseModel):
    uid: str
    balance: float
    spend_per_day: list[DaySpend]
    tasks_by_status: dict[str, int]


class SignedIn(BaseModel):
    model_config = _OPEN
    uid: str
    csrf_token: str


class SignedOut(BaseModel):
    signed_out: bool
