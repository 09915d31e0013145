"""Gateway settings, built once at the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.power.policy import PowerPolicy
from runtime.server.prompting import PromptLimits

if TYPE_CHECKING:
    from runtime.gateway.auth import JWTVerifier

MAX_HEADER_BYTES = 64 * 1024  # request line + headers; more is a 431


@dataclass(frozen=True)
class PowerSettings:
    """`serve --power-policy`: what the gateway's power monitor reads and chooses from."""

    policy: PowerPolicy
    built: tuple[str, ...]  # the text decoder's built precisions
    precision: str  # the one served at start
    sysfs_root: Path = Path("/sys")
    interval_s: float = 2.0


@dataclass(frozen=True)
class GatewayConfig:
    triton_url: str  # host:port of Triton's gRPC endpoint
    model_id: str  # the engines' model name
    served_names: tuple[str, ...] = ()  # the names clients pass as `model`; () = (model_id,)
    llm_model: str = "llm"  # the Triton model that generates
    encoder_models: tuple[str, ...] = ()  # encoder models loaded beside it (for /health)
    api_key: str | None = None  # bearer token required on /v1/* when set
    jwt: JWTVerifier | None = None  # OAuth2 bearer JWTs accepted on /v1/* when set (or the api_key)
    allow_local_media: bool = False  # image_url / input_audio may name a local file
    max_body_bytes: int = 32 * 1024 * 1024  # larger requests get 413
    max_header_bytes: int = MAX_HEADER_BYTES
    prompt_limits: PromptLimits | None = None  # None: the llm model alone measures prompts
    default_chat_max_tokens: int | None = None  # None: up to the engines' limit
    default_completion_max_tokens: int = 16  # OpenAI's default for /v1/completions
    tool_format: str = "json"  # how the model writes tool calls: runtime/tool_format.py
    power: PowerSettings | None = None  # None: no power policy

    @property
    def names(self) -> tuple[str, ...]:
        return self.served_names or (self.model_id,)
