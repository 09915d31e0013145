"""Request bodies of the OpenAI API, validated at the HTTP edge only (pydantic).

Unknown fields are accepted and ignored, as OpenAI clients send many (`user`, `logit_bias`…).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageURL(_Body):
    url: str


class InputAudio(_Body):
    data: str  # base64, or a local path when the server allows local media
    format: str = "wav"


class ContentPart(_Body):
    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: ImageURL | str | None = None
    input_audio: InputAudio | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer", "observation"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatTemplateKwargs(_Body):
    enable_thinking: bool | None = None


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    enable_thinking: bool | None = None
    return_reasoning: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False  # vLLM's extension: extend the last assistant message


class CompletionRequest(_Sampling):
    prompt: str | list[str]
