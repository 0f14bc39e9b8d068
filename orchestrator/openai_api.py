"""OpenAI-compatible request and response shapes, and OpenAI-style error bodies.

Requests are validated strictly enough to refuse nonsense (wrong types, negative or
absurd ``max_tokens``) with a 4xx naming the field, and loosely enough that the
official clients' extra fields (``user``, ``n=1``, ...) pass.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class APIError(Exception):
    """An error that becomes an OpenAI-style JSON body with ``status``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_Sampling):
    prompt: str | list[int]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(request_id: str, model: str, text: str, finish: str | None, chat: bool,
                    streaming: bool) -> dict[str, Any]:
    """One response (or one streamed chunk) in the completions or chat schema."""
    if chat:
        key = "delta" if streaming else "message"
        content: dict[str, Any] = {"role": "assistant", "content": text}
        choice = {"index": 0, key: content, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk" if streaming else "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": request_id, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
