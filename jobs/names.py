"""What each kind of task is: its pool, the job that runs it, its price and the provider key
it needs. The contract between the ingress (which charges and enqueues) and the workers."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from jobs.settings import Settings, to_micros

# Job function names (arq registers functions by these names); a job's payload is its task's id.
CHAT_OPENROUTER = "chat.openrouter"
CHAT_OPENAI = "chat.openai"
SWEEP = "sweep"
MODERATE = "moderation.run"
MEDIA_CREATE = "media.create"
MEDIA_POLL = "media.poll"
MEDIA_CANCEL = "media.cancel"
# Completion webhooks (workers/webhooks.py): one job per delivery attempt, and the dispatcher.
WEBHOOK_DELIVER = "webhook.deliver"
WEBHOOK_DISPATCH = "webhook.dispatch"
EMBED_OPENROUTER = "embeddings.openrouter"
EMBED_OPENAI = "embeddings.openai"


@dataclass(frozen=True, slots=True)
class TaskKind:
    name: str
    pool: str
    function: str
    price_setting: str
    # Stored provider key the task runs with (None: runs on the operator's own resources).
    key_name: str | None
    provider: str

    def price_micros(self, settings: Settings) -> int:
        price: Decimal = getattr(settings, self.price_setting)
        return to_micros(price)


CHAT = TaskKind("chat", "chat", CHAT_OPENROUTER, "price_chat", "openrouter_key", "OpenRouter")
CHATGPT = TaskKind("chatgpt", "chat", CHAT_OPENAI, "price_chatgpt", "chatgpt_key", "OpenAI")
# Runs on the operator's own models (or its OpenAI key): no user key needed.
MODERATION = TaskKind("moderation", "moderation", MODERATE, "price_moderation", None, "local")

GENERATE = TaskKind("generate", "media", MEDIA_CREATE, "price_generate", "replicate_key", "Replicate")
FACE_SWAP = TaskKind("face_swap", "media", MEDIA_CREATE, "price_face_swap", "replicate_key", "Replicate")
MEDIA_KINDS = frozenset({GENERATE.name, FACE_SWAP.name})

KINDS: dict[str, TaskKind] = {k.name: k for k in (CHAT, CHATGPT, GENERATE, FACE_SWAP)}
KINDS[MODERATION.name] = MODERATION

# POST /v1/embeddings: the chat pool runs them (one short provider call, like a chat completion).
EMBEDDINGS = TaskKind("embeddings", "chat", EMBED_OPENROUTER, "price_embeddings", "openrouter_key", "OpenRouter")
EMBEDDINGS_OPENAI = TaskKind("embeddings_openai", "chat", EMBED_OPENAI, "price_embeddings", "chatgpt_key",
                             "OpenAI")
KINDS.update({k.name: k for k in (EMBEDDINGS, EMBEDDINGS_OPENAI)})

PROVIDER_KEY_NAMES = ("openrouter_key", "chatgpt_key", "replicate_key", "huggingface_key")

# The billing pool (issue 8): auto-recharge one account; settle payments a crash left open.
BILLING_RECHARGE = "billing.recharge"
BILLING_RECONCILE = "billing.reconcile"
