"""A request's prompt as the decoder consumes it, and the step inputs cut from it.

Text prompts are token ids only. Multimodal prompts also carry what the encoders produced
(embedding rows that replace the placeholder tokens' embeddings) and GLM-4V's 3-D rope
positions; `rope_delta` shifts the positions of generated tokens accordingly (Hugging Face's
`rope_deltas`). The scheduler and the static generator both cut their steps through here, so a
field added for a new modality reaches every caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.paged_decoder import StepInput


@dataclass(frozen=True)
class PreparedPrompt:
    token_ids: list[int]
    positions: np.ndarray | None = None  # [rank, S] rope positions; None = arange(S)
    rope_delta: int = 0  # position of generated token t is past_len + rope_delta
    # Content hashes of the images/audio in the prompt: they salt the prefix-cache block hashes,
    # since every image's placeholder tokens are the same ids.
    media_hashes: tuple[str, ...] = field(default=())
    # Encoder outputs [K, H] float32, in prompt order, replacing the embeddings of the placeholder
    # tokens at `media_positions` [K] (indices into token_ids). None for text prompts.
    media_embeds: np.ndarray | None = None
    media_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def prefill_input(self, request_id: str, past_len: int = 0) -> StepInput:
        """The prompt's tokens from `past_len` on (the first `past_len` are already cached)."""
        positions = None if self.positions is None else self.positions[:, past_len:]
        embeds = index = None
        if self.media_positions is not None:
            keep = self.media_positions >= past_len
            if keep.any():
                embeds, index = self.media_embeds[keep], self.media_positions[keep] - past_len
        return StepInput(request_id, self.token_ids[past_len:], past_len, positions, embeds, index)

    def decode_input(self, request_id: str, token_id: int, past_len: int) -> StepInput:
        """One generated token at position `past_len` of the sequence."""
        if self.rope_delta == 0:
            return StepInput(request_id, [token_id], past_len)
        rank = 1 if self.positions is None else self.positions.shape[0]
        return StepInput(request_id, [token_id], past_len, np.full((rank, 1), past_len + self.rope_delta))
