"""The one settings object every SyncNode process reads (CONTRACT §2)."""

from __future__ import annotations

import secrets
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

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
    # Fetching user-supplied URLs (jobs/fetch.py): moderation imageUrl, webhooks.
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

    # OpenAI-compatible API under /v1 (docs in README "Use it from the OpenAI SDKs").
    price_embeddings: Decimal = Decimal("0.02")
    # A streamed task's Redis Stream: at most this many entries, kept this long after its last one.
    v1_stream_max_entries: int = 20_000
    v1_stream_ttl_seconds: int = 900
    # How often a streaming worker looks for its client's cancel flag (the issue asks for < 1 s).
    v1_cancel_poll_seconds: float = 0.2
    # The relay's liveness bound: no new chunk for this long and no worker holding the job → an
    # error event instead of a hang.
    v1_stream_idle_seconds: float = 5.0
    v1_models_ttl_seconds: int = 600
    v1_models_timeout_seconds: float = 10.0

    # Web UI (issue 9): sessions and sign-in throttling.
    session_ttl_seconds: int = 14 * 24 * 3600
    signin_failure_window_seconds: int = 900
    signin_max_failures_per_account: int = 5
    signin_max_failures_per_address: int = 30
    # Where the billing page loads Stripe.js from (only once Stripe is configured); tests point it
    # at localstripe's copy.
    stripe_js_url: str = "https://js.stripe.com/v3/"

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
