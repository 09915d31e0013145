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
MAX_CHOICES = 8  # `n`: the engines' batch; the choices share the prompt's KV blocks
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs, as OpenAI's
MAX_TEXT_LOGPROBS = 5  # completions' logprobs, as OpenAI's
MAX_TOOLS = 128  # OpenAI's limit on tools per request (and calls per message here)
MAX_NAME = 64

# field -> the values that ask for nothing. Anything else is a 400 naming the field.
NOT_YET: dict[str, tuple] = {
    "best_of": (None, 1),
    "functions": (None, []),
    "function_call": (None, "none"),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
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


class FunctionCall(_Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    arguments: str  # JSON text, as the model wrote it


class ToolCallIn(_Body):
    """A call an earlier assistant turn made, sent back with the conversation."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer", "observation"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # handed to the chat template, as OpenAI's field
    tool_call_id: str | None = None  # likewise
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=MAX_TOOLS)


class FunctionDef(_Body):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None  # arguments always follow `parameters` when a call is forced


class ToolDef(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Body):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


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
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    # not implemented yet: refused unless at the value that asks for nothing (NOT_YET)
    best_of: Any = None
    logit_bias: Any = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    enable_thinking: bool | None = None
    return_reasoning: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False  # vLLM's extension: extend the last assistant message
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolDef] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: Any = None
    function_call: Any = None
    response_format: ResponseFormat | None = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TEXT_LOGPROBS)
    echo: bool = False
    suffix: Any = None


def first_unsupported(body: _Sampling) -> tuple[str, Any] | None:
    """(param, value) of the first field set to something this server does not do yet."""
    candidates = [(name, getattr(body, name)) for name in body.model_fields_set if name in NOT_YET]
    for i, message in enumerate(getattr(body, "messages", [])):
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            if isinstance(part.image_url, ImageURL):
                candidates.append((f"messages.{i}.content.{j}.image_url.detail", part.image_url.detail))
    for param, value in candidates:
        if value not in NOT_YET[param.rsplit(".", 1)[-1]]:
            return param, value
    return None
