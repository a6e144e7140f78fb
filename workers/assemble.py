"""A streamed chat completion put back together: the ``chat.completion`` object the task keeps
as its output (what GET /tasks/{id} shows), from the chunks that were relayed."""

from __future__ import annotations

from typing import Any


class Assembler:
    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.chunks = 0

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunks += 1
        for k in ("id", "created", "model", "system_fingerprint", "provider", "service_tier"):
            if k in chunk and k not in self.head:
                self.head[k] = chunk[k]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for c in choices if isinstance(choices, list) else []:
            if isinstance(c, dict):  # what a provider sends is not ours to trust
                self._choice(c)

    def _choice(self, c: dict[str, Any]) -> None:
        raw_idx = c.get("index")
        idx = raw_idx if isinstance(raw_idx, int) else 0
        cur = self.choices.setdefault(idx, {"index": idx, "message": {"role": "assistant", "content": None},
                                            "finish_reason": None, "logprobs": None})
        raw_delta = c.get("delta")
        delta: dict[str, Any] = raw_delta if isinstance(raw_delta, dict) else {}
        msg = cur["message"]
        if delta.get("role"):
            msg["role"] = delta["role"]
        for field in ("content", "refusal", "reasoning"):
            if isinstance(delta.get(field), str):
                msg[field] = (msg.get(field) or "") + delta[field]
        calls = delta.get("tool_calls")
        for tc in calls if isinstance(calls, list) else []:
            if isinstance(tc, dict):
                self._tool_call(msg, tc)
        if c.get("finish_reason"):
            cur["finish_reason"] = c["finish_reason"]
        lp = c.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            cur["logprobs"] = cur["logprobs"] or {"content": []}
            cur["logprobs"]["content"].extend(lp["content"])

    @staticmethod
    def _tool_call(msg: dict[str, Any], tc: dict[str, Any]) -> None:
        calls: list[dict[str, Any]] = msg.setdefault("tool_calls", [])
        i = tc["index"] if isinstance(tc.get("index"), int) and 0 <= tc["index"] < 128 else len(calls)
        while len(calls) <= i:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        cur = calls[i]
        if tc.get("id"):
            cur["id"] = tc["id"]
        if tc.get("type"):
            cur["type"] = tc["type"]
        raw_fn = tc.get("function")
        fn: dict[str, Any] = raw_fn if isinstance(raw_fn, dict) else {}
        for part in ("name", "arguments"):
            if isinstance(fn.get(part), str):
                cur["function"][part] += fn[part]

    def completion(self, *, partial: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {**self.head, "object": "chat.completion",
                               "choices": [self.choices[i] for i in sorted(self.choices)], "usage": self.usage}
        if partial:
            # Cut short (the client went away, or the stream broke): what had arrived by then.
            out["partial"] = True
        return out
