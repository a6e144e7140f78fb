"""The streamed chunks → the chat.completion a streamed task keeps as its output."""

from __future__ import annotations

from workers.assemble import Assembler


def test_tool_call_deltas_content_and_usage_are_put_back_together() -> None:
    a = Assembler()
    a.add({"id": "c1", "model": "m", "created": 1, "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_", "arguments": ""}}]}}]})
    a.add({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"name": "weather", "arguments": '{"city":'}}]}}]})
    a.add({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ' "Paris"}'}}, {"index": 1, "id": "call_2",
                                                              "function": {"name": "t", "arguments": "{}"}}]}}]})
    a.add({"id": "c1", "choices": [{"index": 1, "delta": {"content": "second choice"}, "finish_reason": "stop"},
                                   {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    a.add({"id": "c1", "choices": [], "usage": {"total_tokens": 9}})
    out = a.completion()
    assert (out["id"], out["model"], out["object"], out["usage"]) == ("c1", "m", "chat.completion", {"total_tokens": 9})
    first, second = out["choices"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
    assert first["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "t", "arguments": "{}"}}]
    assert second["message"]["content"] == "second choice" and second["index"] == 1
    assert "partial" not in out and a.completion(partial=True)["partial"] is True


def test_hostile_chunks_do_not_break_it() -> None:
    a = Assembler()
    a.add({"choices": None})
    a.add({"choices": [{"delta": None}]})
    a.add({"choices": ["text", None, {"index": "x", "delta": {"tool_calls": ["no", {"index": 10**9,
                                                                               "function": {"name": 3}}]}}]})
    a.add({"choices": [{"index": 0, "delta": {"content": 5, "tool_calls": None}, "logprobs": {"content": [1]}}]})
    out = a.completion()
    assert out["choices"][0]["message"]["content"] is None and out["choices"][0]["logprobs"] == {"content": [1]}
    assert out["choices"][0]["message"]["tool_calls"] == [
        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}]
