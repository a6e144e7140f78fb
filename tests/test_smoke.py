from __future__ import annotations

from typing import Any

import httpx

from tests.fixtures.accounts import Account, audit


async def test_chat_round_trip(client: httpx.AsyncClient, funded: Account, chat_worker: Any, app: Any) -> None:
    r = await client.post("/chat-completion", headers=funded.headers,
                          json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    p = r.json()["prediction"]
    assert p["status"] == "completed"
    assert p["output"]["choices"][0]["message"]["content"] == "echo: hi"
    assert p["cost"] == 0.02 and p["uid"] == funded.uid
    bal, total = await audit(app, funded.uid)
    assert bal == total == 4_980_000
