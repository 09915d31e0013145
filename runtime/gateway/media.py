"""Chat message parts -> the llm model's wire messages plus the raw media bytes, in order."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from runtime.gateway.errors import APIError
from runtime.gateway.schemas import ChatMessage


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param} is not valid base64", param=param) from None


def _local_file(path: str, param: str, allow_local: bool) -> bytes:
    if not allow_local:
        raise APIError(
            400,
            f"{param}: local files are not allowed on this server; send a data URL "
            f"(data:image/png;base64,...) or start the server with --allow-local-media",
            param=param,
        )
    file = Path(path.removeprefix("file://")).expanduser()
    if not file.is_file():
        raise APIError(400, f"{param}: no such file {str(file)!r}", param=param)
    return file.read_bytes()


def image_bytes(url: str, param: str, allow_local: bool) -> bytes:
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise APIError(
                400, f"{param}: expected a data URL like data:image/png;base64,<data>", param=param
            )
        return _b64(data, param)
    if url.startswith(("http://", "https://")):
        raise APIError(
            400, f"{param}: remote image URLs are not fetched; send a data URL instead", param=param
        )
    return _local_file(url, param, allow_local)


def audio_bytes(data: str, param: str, allow_local: bool) -> bytes:
    if data.startswith("file://") or (allow_local and data.startswith("/")):
        return _local_file(data, param, allow_local)
    return _b64(data, param)


def to_wire(messages: list[ChatMessage], allow_local: bool) -> tuple[list[dict], list[bytes], list[bytes]]:
    """(wire messages, images, audios). A message whose parts are all text keeps them as parts."""
    wire, images, audios = [], [], []
    for i, message in enumerate(messages):
        content = message.content
        extra = {k: v for k in ("name", "tool_call_id") if (v := getattr(message, k)) is not None}
        if content is None or isinstance(content, str):
            wire.append({"role": message.role, "content": content or "", **extra})
            continue
        parts = []
        for j, part in enumerate(content):
            param = f"messages.{i}.content.{j}"
            if part.type == "text":
                parts.append({"type": "text", "text": part.text or ""})
            elif part.type == "image_url":
                if part.image_url is None:
                    raise APIError(400, f"{param}.image_url is missing", param=param)
                url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                images.append(image_bytes(url, f"{param}.image_url", allow_local))
                parts.append({"type": "image"})
            else:
                if part.input_audio is None:
                    raise APIError(400, f"{param}.input_audio is missing", param=param)
                audios.append(audio_bytes(part.input_audio.data, f"{param}.input_audio", allow_local))
                parts.append({"type": "audio"})
        wire.append({"role": message.role, "content": parts, **extra})
    return wire, images, audios
