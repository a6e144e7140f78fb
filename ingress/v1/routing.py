"""Which stored key (and so which provider) serves a model name on /v1.

* ``vendor/model`` (``openai/gpt-4o``, ``anthropic/claude-3.5-sonnet``): OpenRouter, with the
  account's ``openrouter_key``.
* a bare OpenAI name (``gpt-4o-mini``): OpenAI directly when the account stored a
  ``chatgpt_key``; else OpenRouter as ``openai/<name>`` when it stored an ``openrouter_key``.
* no key that can serve it: 400 naming the key to add.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.errors import BadRequest
from jobs.names import TaskKind
from storage.accounts import AccountRepository
from storage.db import Conn


@dataclass(frozen=True, slots=True)
class Route:
    kind: TaskKind
    # The model name the provider gets (a bare name gains "openai/" on OpenRouter).
    model: str


async def stored_keys(db: Conn, uid: str) -> set[str]:
    return set(await AccountRepository(db).masked_provider_keys(uid))


async def route_for(db: Conn, uid: str, model: str, openrouter: TaskKind, openai: TaskKind) -> Route:
    """``route`` with the account's keys looked up only when the name leaves a choice: a
    ``vendor/model`` name always goes to OpenRouter, and the charge itself refuses a missing key."""
    if "/" in model:
        return Route(openrouter, model)
    return route(model, await stored_keys(db, uid), openrouter, openai)


def route(model: str, have: set[str], openrouter: TaskKind, openai: TaskKind) -> Route:
    if "/" in model:
        if "openrouter_key" in have:
            return Route(openrouter, model)
        raise BadRequest(f"Model '{model}' is a vendor/model name, served through OpenRouter: "
                         "add 'openrouter_key' with POST /api-keys")
    if "chatgpt_key" in have:
        return Route(openai, model)
    if "openrouter_key" in have:
        return Route(openrouter, f"openai/{model}")
    raise BadRequest(f"No stored key can serve model '{model}': add 'chatgpt_key' (OpenAI, used directly) "
                     "or 'openrouter_key' (OpenRouter) with POST /api-keys")
