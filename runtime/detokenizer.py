"""Streaming detokenisation: text deltas that concatenate to the full decode, never half a character.

Byte-level BPE splits a Chinese character (3 UTF-8 bytes) or an emoji over several tokens, and
decoding a prefix that ends mid-character yields U+FFFD. SentencePiece-style tokenizers drop the
leading space of the first token of a decode. Both are handled the way Hugging Face's
TextStreamer and vLLM do it: decode a short window of recent tokens twice (with and without the
newest ones) and emit only the difference, and only once it no longer ends in U+FFFD. Bytes that a
later token shows will never complete a character are emitted as the U+FFFD the whole decode has
there, and so is an incomplete character left at the end, so a stream reads as the full decode.

The tokenizer must be a Hugging Face tokenizer (`decode(ids, skip_special_tokens=...)`).
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids as they are generated; get back the new text for each push.

    Invariant: the concatenation of everything `push` and `flush` returned equals the full
    decode of all ids pushed (U+FFFD included where bytes never formed a character).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start: a clean character boundary already emitted
        self._read = 0  # everything before this has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def push(self, token_ids: list[int] | int) -> str:
        """Add generated ids; return the text they complete (possibly "")."""
        self.ids.extend([token_ids] if isinstance(token_ids, int) else token_ids)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""  # nothing new, or the newest bytes are an incomplete character
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """The text still held back at the end of the sequence (an incomplete character as U+FFFD)."""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :] if len(after) > len(before) else ""
