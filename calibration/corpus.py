"""The default English text: Python's own documentation topics (`pydoc_data.topics`), split by
topic into a calibration part and a held-out evaluation part that never overlap.

Every fifth topic (in sorted key order) is held out for evaluation; the rest calibrate. Topics
are cut into passages at paragraph boundaries, so a passage is a few hundred tokens of prose; a
paragraph that also occurs in an evaluation topic is left out of calibration.
"""

from __future__ import annotations

from collections.abc import Iterator

PASSAGE_CHARS = 1200  # ~250 tokens of English for a BPE tokenizer
EVALUATION_EVERY = 5


def _topics(evaluation: bool) -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    return [(k, topics[k]) for i, k in enumerate(keys) if (i % EVALUATION_EVERY == 0) == evaluation]


def paragraphs(text: str) -> Iterator[str]:
    return (p for p in (p.strip() for p in text.split("\n\n")) if p)


def passages(text: str, limit: int = PASSAGE_CHARS, skip: frozenset[str] = frozenset()) -> Iterator[str]:
    """Consecutive paragraphs (except those in `skip`) joined until a passage reaches `limit` characters."""
    current: list[str] = []
    size = 0
    for paragraph in paragraphs(text):
        if paragraph in skip:
            continue
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= limit:
            yield "\n\n".join(current)
            current, size = [], 0
    if current:
        yield "\n\n".join(current)


def calibration_passages() -> Iterator[str]:
    # Some topics repeat paragraphs of others: keep every evaluation paragraph out of calibration.
    held_out = frozenset(p for _, text in _topics(evaluation=True) for p in paragraphs(text))
    for _, text in _topics(evaluation=False):
        yield from passages(text, skip=held_out)


def evaluation_passages() -> Iterator[str]:
    for _, text in _topics(evaluation=True):
        yield from passages(text)


def topic_keys(evaluation: bool) -> list[str]:
    return [key for key, _ in _topics(evaluation)]
