"""Moderation: local models (default, offline) or OpenAI's omni-moderation, one response shape."""
