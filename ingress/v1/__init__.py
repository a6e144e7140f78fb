"""The OpenAI-compatible API under /v1: the OpenAI SDKs work against SyncNode by changing
``base_url``. Same spine (charge → queue → worker → status), same ledger, same keys."""
