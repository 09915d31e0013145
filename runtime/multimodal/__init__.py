"""Multimodal prompt assembly: images and audio → encoder embeddings spliced into the prompt."""

from runtime.multimodal.encoders import LocalEncoders, MediaEncoders
from runtime.multimodal.prompt_builder import MultimodalPromptBuilder

__all__ = ["LocalEncoders", "MediaEncoders", "MultimodalPromptBuilder"]
