"""The one settings object every SyncNode process reads (CONTRACT §2)."""

from __future__ import annotations

import gc
import secrets
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MICROS = 1_000_000


def to_micros(dollars: Decimal) -> int:
    """Dollars → integer micro-dollars; money never travels as a float inside."""
    return int((dollars * MICROS).to_integral_value())


def to_dollars(micros: int) -> float:
    # Only for rendering JSON: 6 decimal places is exact for micro-dollars.
    return round(micros / MICROS, 6)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYNCNODE_", extra="ignore")

    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL"))
    data_dir: Path = Path("./.syncnode")
    port: int = 8000
    public_url_: str | None = Field(None, validation_alias=AliasChoices("SYNCNODE_PUBLIC_URL"))
    master_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    open_signup: bool = False
    allow_uid_only: bool = False

    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openai_base_url: str = "https://api.openai.com/v1"
    replicate_base_url: str = "https://api.replicate.com/v1"
    moderation_openai_key: SecretStr | None = None
    face_swap_model: str = (
        "xiankgx/face-swap:cff87316e31787df12002c9e20a78a017a36cb31fde9862d8dedd15ab29b7288"
    )

    stripe_secret_key: SecretStr | None = Field(None, validation_alias=AliasChoices("STRIPE_SECRET_KEY"))
    stripe_webhook_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("STRIPE_WEBHOOK_SECRET")
    )
    stripe_base_url: str | None = Field(
        None, validation_alias=AliasChoices("SYNCNODE_STRIPE_BASE_URL", "STRIPE_BASE_URL"))
    supabase_jwt_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SUPABASE_JWT_SECRET")
    )
    supabase_jwks_url: str | None = Field(None, validation_alias=AliasChoices("SUPABASE_JWKS_URL"))
    supabase_audience: str = "authenticated"
    fetch_allow: str = ""

    # Money: the reference's prices and starting balance, in dollars.
    price_chat: Decimal = Decimal("0.02")
    price_chatgpt: Decimal = Decimal("0.02")
    price_generate: Decimal = Decimal("0.02")
    price_face_swap: Decimal = Decimal("0.02")
    price_moderation: Decimal = Decimal("0.01")
    starting_balance: Decimal = Decimal("5.00")
    recharge_trigger: Decimal = Decimal("0.01")
    recharge_amount: Decimal = Decimal("50")

    log_level: str = "INFO"
    # Allocations between two young-generation collections (Python's default is 700). Each request
    # allocates a few thousand short-lived objects; at 700 the collector ran ~5 % of the CPU of the
    # ingress and the workers under load (py-spy --native). 0 keeps Python's default.
    gc_threshold: int = 20_000

    # Request handling.
    max_body_bytes: int = 1 << 20
    max_media_body_bytes: int = 15 << 20
    sync_timeout_seconds: float = 60.0
    idempotency_window_hours: int = 24
    # Replays of a running task that may wait on it at once; more are told to poll (409).
    idempotent_replay_waiters: int = 10
    # Images are judged from their header first; larger ones are never decoded (a PNG of a few
    # hundred KB can declare 50 M pixels and cost a second of CPU and 200 MiB to decode).
    max_image_pixels: int = 25_000_000
    # Decodes at once per ingress process (each holds up to max_image_pixels × 4 bytes), and how
    # long one may take.
    image_decode_slots: int = 2
    image_decode_timeout_seconds: float = 10.0
    # An account's requests doing pre-charge work (image fetch/decode) at once, at most; fewer
    # when its balance pays for fewer calls.
    prework_per_account: int = 4
    # Bearer token that GET /metrics requires when set (Prometheus: authorization.credentials).
    metrics_token: SecretStr | None = None

    # Workers.
    poll_delay_seconds: float = 1.0
    job_lease_seconds: float = 15.0
    chat_job_timeout_seconds: float = 300.0
    chat_concurrency: int = 200
    sweep_after_seconds: float = 15.0
    sweep_interval_seconds: int = 5
    provider_max_retries: int = 3
    provider_connect_timeout: float = 5.0
    provider_read_timeout: float = 120.0
    provider_retry_after_cap_seconds: float = 20.0
    # The Redis copy of a task status is a cache; Postgres keeps the record.
    status_ttl_seconds: int = 24 * 3600

    # Media (Replicate predictions, docs/media.md).
    # xiankgx/face-swap names its inputs local_source/local_target; the map renames ours to its.
    face_swap_input_map: str = "source_image=local_source,target_image=local_target"
    media_job_timeout_seconds: float = 60.0
    # Each Replicate request a create job makes (create, webhook secret, lost-prediction lookup):
    # short, so that every try of each fits in the job's timeout (workers.media.create_budget_seconds).
    replicate_create_timeout_seconds: float = 20.0
    media_concurrency: int = 50
    poll_concurrency: int = 200
    prediction_deadline_seconds: int = 1800
    poll_first_seconds: float = 1.0
    poll_cap_seconds: float = 8.0
    # "auto": send webhooks when SYNCNODE_PUBLIC_URL is publicly reachable; "on" / "off" force it.
    replicate_webhooks: str = "auto"
    hosting_max_bytes: int = 512 << 20
    hosting_timeout_seconds: float = 120.0
    hosting_attempts: int = 3
    # Operator storage for accounts on "default": JSON like POST /storage's body; unset → local files.
    default_storage: SecretStr | None = None

    # Moderation (docs/moderation.md). Flags and `safe` compare scores with these thresholds.
    moderation_concurrency: int = 4
    moderation_job_timeout_seconds: float = 60.0
    # Threads that run local inference in a worker (ONNX/sklearn release the GIL).
    moderation_threads: int = 2
    moderation_openai_model: str = "omni-moderation-latest"
    moderation_category_threshold: float = 0.5
    moderation_nudity_threshold: float = 0.5
    moderation_vulgar_threshold: float = 0.5
    # Lower than the others: a missed sexual/minors score costs far more than a false alarm.
    moderation_underage_threshold: float = 0.2
    moderation_max_image_bytes: int = 10 << 20
    moderation_max_image_pixels: int = 25_000_000
    # How long a checked image waits in Redis for its job (syncnode:blob:<sha256>).
    moderation_blob_ttl_seconds: int = 600
    # Fetching user-supplied URLs (storage/egress.py): moderation imageUrl, webhooks.
    fetch_connect_timeout_seconds: float = 5.0
    fetch_timeout_seconds: float = 10.0
    fetch_max_redirects: int = 3

    # Hostile provider output (issue 7, docs/media.md). Over a cap the task fails, refunded,
    # and nothing more is downloaded; output nested deeper than the bound is refused outright.
    hosting_max_files: int = Field(100, ge=1)
    hosting_max_total_bytes: int = Field(1 << 30, ge=1)
    output_max_depth: int = Field(64, ge=2, le=200)  # orjson refuses ~255

    # Billing with Stripe (README "Billing"): card top-ups, auto-recharge, webhooks.
    stripe_publishable_key: str | None = Field(
        None, validation_alias=AliasChoices("STRIPE_PUBLISHABLE_KEY", "SYNCNODE_STRIPE_PUBLISHABLE_KEY"))
    stripe_timeout_seconds: float = 20.0
    topup_min: Decimal = Decimal("5")
    topup_max: Decimal = Decimal("1000")
    # A failed auto-recharge is retried this many times in all, waiting backoff * 2^n between tries;
    # then auto-recharge switches itself off and says why (GET /billing-threshold).
    recharge_max_attempts: int = 3
    recharge_backoff_seconds: float = 60.0
    # Payments left unsettled this long (a crash, Stripe unreachable) are settled by the billing pool.
    reconcile_after_seconds: float = 120.0
    reconcile_interval_seconds: int = 30

    # Completion webhooks (README "Webhooks"; workers/webhooks.py).
    webhook_concurrency: int = 100
    # One attempt (connect, send, read the answer) never holds a worker longer than this.
    webhook_timeout_seconds: float = 10.0
    # Retries: first after this long, doubling up to the cap, given up this long after the event.
    webhook_backoff_first_seconds: float = 5.0
    webhook_backoff_cap_seconds: float = 3600.0
    webhook_retry_window_seconds: float = 86_400.0
    # Attempts of one account in flight at once; the rest wait, so one account's dead endpoint
    # takes at most this many of the pool's slots.
    webhook_account_concurrency: int = 10
    # How long a rotated-out signing secret keeps signing (POST /webhook-secret/rotate).
    webhook_secret_overlap_seconds: int = 86_400

    # Webhook targets (README "Webhooks"). Their own allow list, never SYNCNODE_FETCH_ALLOW: hosts
    # the operator lets storage and moderation fetches reach must not be POSTed to by any user.
    webhook_allow: str = ""
    # Checking a target's address at submit: at most this many lookups of one account at once
    # (fewer when its balance pays for fewer calls), each given up after this long.
    webhook_lookups_per_account: int = 4
    webhook_lookup_timeout_seconds: float = 3.0
    # Threads for those lookups, apart from the loop's default pool (argon2 sign-ins use that).
    webhook_lookup_threads: int = 4

    # OpenAI-compatible API under /v1 (docs in README "Use it from the OpenAI SDKs").
    price_embeddings: Decimal = Decimal("0.02")
    # A streamed task's Redis Stream: at most this many entries, kept this long after its last one.
    v1_stream_max_entries: int = 20_000
    v1_stream_ttl_seconds: int = 900
    # How often a streaming worker looks for its client's cancel flag (the issue asks for < 1 s).
    v1_cancel_poll_seconds: float = 0.2

    # Performance (issue 12). A prediction created with a Replicate webhook is polled only as the
    # backstop for a lost webhook: its chain stretches to this cap instead of poll_cap_seconds.
    poll_webhook_backstop_seconds: float = Field(60.0, ge=1.0)
    # The relay's liveness bound: no new chunk for this long and no worker holding the job → an
    # error event instead of a hang.
    v1_stream_idle_seconds: float = 5.0
    v1_models_ttl_seconds: int = 600
    v1_models_timeout_seconds: float = 10.0

    # Open relays of streamed tasks (GET /v1/tasks/{id}/stream is free): beyond these a 429.
    v1_stream_relays_per_task: int = 4
    v1_stream_relays_per_account: int = 20
    # The ingress's Redis pool: connections at most (each waiting sync call holds one), and how
    # long a request waits for a free one before a 503.
    redis_max_connections: int = 10_000
    redis_pool_timeout_seconds: float = 5.0

    # Per-account limits (README "Limits and fairness"); POST /admin/limits overrides them per
    # account. 0 turns a limit off; limits_enabled=false all of them (benchmarks measure the
    # gateway, not the limiter). Requests per second per route group, a token bucket in Redis
    # holding rate × limit_burst_seconds requests (at least 1):
    limits_enabled: bool = True
    rate_limit_chat: float = Field(20.0, ge=0)
    rate_limit_media: float = Field(10.0, ge=0)
    rate_limit_moderation: float = Field(20.0, ge=0)
    rate_limit_v1: float = Field(20.0, ge=0)
    rate_limit_read: float = Field(50.0, ge=0)
    rate_limit_account: float = Field(10.0, ge=0)
    limit_burst_seconds: float = Field(5.0, gt=0)
    # Tasks of one account in flight (charged, not yet finished) per pool: what keeps one
    # account's flood from filling a pool that others share.
    in_flight_chat: int = Field(50, ge=0)
    in_flight_media: int = Field(20, ge=0)
    in_flight_moderation: int = Field(20, ge=0)
    # A slot a crash leaked (no final status published) is free again after this long.
    in_flight_ttl_seconds: int = Field(1800, ge=1)
    # How long an ingress keeps an account's overrides before reading them again.
    limits_cache_seconds: float = Field(5.0, ge=0)
    # Dead letters (syncnode:dead:<pool>): at most this many per pool, each kept this long.
    dead_letter_max: int = Field(1000, ge=1)
    dead_letter_ttl_seconds: int = Field(7 * 86_400, ge=60)

    # Logs and metrics (deploy/PRODUCTION.md). "text" reads well in a terminal (`syncnode up`);
    # "json" is one object per line for a log pipeline, the production choice.
    log_format: Literal["text", "json"] = "text"
    # Every ingress shares one ledger aggregate through Redis for this long (GET /metrics).
    metrics_ledger_cache_seconds: float = 15.0

    # Restarts and shutdown (issue 11, README "Restarts, scale-out and shutdown").
    # SIGTERM: a worker stops taking jobs and lets the running ones finish for this long (then
    # cancels the rest, which arq puts back on the queue); the ingress answers in-flight requests
    # for this long. `syncnode up` waits this long (plus a margin) before SIGKILL.
    shutdown_grace_seconds: float = 30.0
    # The ingress's Redis client: a server that does not answer a connect in this long is down
    # (503), not a hang; so is one that takes the connection and then answers nothing (a stopped
    # process, a partition) for redis_read_timeout_seconds. No ingress command blocks for more
    # than a second (the reply list's BLPOP, a stream relay's XREAD), so this bounds only a hang.
    redis_connect_timeout_seconds: float = 2.0
    redis_read_timeout_seconds: float = Field(5.0, ge=2.0)

    # Web UI (issue 9): sessions and sign-in throttling.
    session_ttl_seconds: int = 14 * 24 * 3600
    signin_failure_window_seconds: int = 900
    signin_max_failures_per_account: int = 5
    signin_max_failures_per_address: int = 30
    # Where the billing page loads Stripe.js from (only once Stripe is configured); tests point it
    # at localstripe's copy.
    stripe_js_url: str = "https://js.stripe.com/v3/"

    # Billing review fixes: no new auto-recharge this long after one was credited, unless the
    # balance cannot pay the call that asked for it; saving cards and starting a card setup are
    # limited per account and per client address in a fixed window (card-testing), declines counted.
    recharge_cooldown_seconds: float = Field(300.0, ge=0)
    card_attach_max_per_account: int = Field(5, ge=1)
    card_attach_max_per_address: int = Field(20, ge=1)
    card_setup_max_per_account: int = Field(10, ge=1)
    card_setup_max_per_address: int = Field(40, ge=1)
    card_limit_window_seconds: int = Field(86_400, ge=1)

    # Security review 2: caps on what one account or one client address can pile up.
    # Sessions per account (the oldest is ended beyond this) and live API keys per account.
    max_sessions_per_account: int = 20
    max_api_keys_per_account: int = 50
    # Open sign-up grants starting_balance each time: sign-ups per client address per window.
    signup_max_per_address: int = 3
    signup_window_seconds: int = 3600
    # Concurrent argon2 hashes/verifications per process (64 MiB and ~0.1 s of CPU each).
    password_hash_concurrency: int = 2

    @field_validator("public_url_")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @property
    def public_url(self) -> str:
        return self.public_url_ or f"http://localhost:{self.port}"

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.redis_url is None

    @property
    def fetch_allow_list(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.fetch_allow.split(",") if h.strip())

    @property
    def webhook_allow_list(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.webhook_allow.split(",") if h.strip())

    def master_key_value(self) -> str:
        """The master key; in dev (embedded databases) one is generated into the data dir."""
        if self.master_key is not None:
            return self.master_key.get_secret_value()
        if not self.embedded:
            raise RuntimeError("SYNCNODE_MASTER_KEY is required when DATABASE_URL and REDIS_URL are set")
        path = self.data_dir / "master.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()


_gc_tuned = False


def tune_gc(settings: Settings) -> None:
    """Once a process has built its long-lived objects (pools, clients, models), move them out
    of the collector's way (``gc.freeze``: full collections stop re-scanning them) and collect
    the young generation less often. Once per process: a second app or in-process worker (tests)
    would otherwise run a full collection on a loop that is already serving."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    if settings.gc_threshold > 0:
        _, g1, g2 = gc.get_threshold()
        gc.set_threshold(settings.gc_threshold, g1, g2)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
