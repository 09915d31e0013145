"""Request bodies of the OpenAI API, validated at the HTTP edge only (pydantic).

Nothing a client sends is ignored without saying so: unknown fields are refused (400, naming
the field), and the OpenAI fields this server does not implement yet (`NOT_YET`) are accepted
only at a value that asks for nothing, so clients that always send their defaults still work.
`user`, `metadata`, `store`, `service_tier`, `safety_identifier`, `prompt_cache_key` and
`parallel_tool_calls` are bookkeeping for OpenAI's platform with no effect on the output here:
accepted and unused (the README lists them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_STOP = 16  # stop strings per request, each at most MAX_STOP_CHARS (matched on every token)
MAX_STOP_CHARS = 1024
MAX_MESSAGES = 65536  # the engines' token limit refuses far fewer; this bounds parsing work

# field -> the values that ask for nothing. Anything else is a 400 naming the field.
NOT_YET: dict[str, tuple] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "tool_calls": (None, []),  # on an assistant message
    "detail": (None, "auto"),  # on an image_url: images always go in at the model's own size
}


StopText = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopText], Field(max_length=MAX_STOP)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Body):
    url: str
    detail: Any = None


class InputAudio(_Body):
    data: str  # base64, or a local path when the server allows local media
    format: str = "wav"  # informative: the clip's own header decides how it is decoded


class ContentPart(_Body):
    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: ImageURL | str | None = None
    input_audio: InputAudio | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer", "observation"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # handed to the chat template, as OpenAI's field
    tool_call_id: str | None = None  # likewise
    tool_calls: Any = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = Field(default=None, ge=0)
    stop: StopText | StopList | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # accepted, no effect here (see the module docstring)
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    parallel_tool_calls: bool | None = None
    # not implemented yet: refused unless at the value that asks for nothing (NOT_YET)
    n: Any = None
    best_of: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    enable_thinking: bool | None = None
    return_reasoning: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False  # vLLM's extension: extend the last assistant message
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: Any = None
    suffix: Any = None


def first_unsupported(body: _Sampling) -> tuple[str, Any] | None:
    """(param, value) of the first field set to something this server does not do yet."""
    candidates = [(name, getattr(body, name)) for name in body.model_fields_set if name in NOT_YET]
    for i, message in enumerate(getattr(body, "messages", [])):
        candidates.append((f"messages.{i}.tool_calls", message.tool_calls))
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            if isinstance(part.image_url, ImageURL):
                candidates.append((f"messages.{i}.content.{j}.image_url.detail", part.image_url.detail))
    for param, value in candidates:
        if value not in NOT_YET[param.rsplit(".", 1)[-1]]:
            return param, value
    return None
