"""Streaming detokenisation on both presets' tokenizers: byte-level BPE splits CJK characters and
emoji over several tokens; the streamed pieces of valid text never hold U+FFFD, and any stream's
pieces add up to the tokenizer's whole decode exactly."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from runtime.detokenizer import REPLACEMENT, IncrementalDetokenizer
from runtime.reasoning import ThinkTokens
from runtime.request_output import RequestOutput

TEXTS = [
    "你好，世界！今天天气很好。",
    "AutoGLM 是一个手机助手：它能打开 Settings → Wi-Fi，然后 tap “连接”。",
    "mixed  double  spaces, tabs\tand\nnew lines 中文 English 日本語 😀👍🏽 café naïve",
    " leading space and trailing space ",
]


@pytest.fixture(scope="module", params=["glm4v-tiny", "smollm2-135m"])
def tokenizer(request):
    name = {"glm4v-tiny": "glm4v_tiny_model", "smollm2-135m": "smollm2_model"}[request.param]
    return AutoTokenizer.from_pretrained(request.getfixturevalue(name))


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_add_up_to_the_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(token) for token in ids] + [detok.flush()]
    assert not any(REPLACEMENT in piece for piece in pieces)
    assert "".join(pieces) == text
    # byte-level BPE really does split these characters: some pushes must have been held back
    if any(ord(c) > 0x2FFF for c in text):
        assert "" in pieces[:-1]


def test_incomplete_character_at_the_end_is_held_then_flushed_as_the_decode_has_it(tokenizer):
    ids = tokenizer.encode("好", add_special_tokens=False)
    if len(ids) < 2:
        pytest.skip("this tokenizer has 好 as one token")
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.push(tokenizer.encode("ok ", add_special_tokens=False)) == "ok "
    assert detok.push(ids[:-1]) == ""  # held: the next token may complete it
    tail = detok.flush()
    assert tail == tokenizer.decode(ids[:-1]) and REPLACEMENT in tail


def test_bytes_that_never_complete_stream_as_the_whole_decode_writes_them(tokenizer):
    """Stray UTF-8 fragments (what a model with random weights emits): each piece is text the whole
    decode has, U+FFFD where bytes break off, emitted once a later token shows they will not complete."""
    fragments = [tokenizer.encode(c, add_special_tokens=False) for c in "好界😀"]
    fragments = [f for f in fragments if len(f) > 1]
    if not fragments:
        pytest.skip("this tokenizer has these characters as single tokens")
    word = tokenizer.encode(" ok", add_special_tokens=False)
    ids = [*word, *fragments[0][:1], *word, *fragments[-1][:-1], *word, *fragments[0][:1]]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(token) for token in ids] + [detok.flush()]
    whole = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    assert REPLACEMENT in whole and "".join(pieces) == whole
    assert not pieces[-1].startswith(" ok") and pieces[-1].endswith(REPLACEMENT)  # only the tail was held


def test_chunked_pushes_match_token_by_token(tokenizer):
    ids = tokenizer.encode(TEXTS[1], add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(ids[i : i + 3]) for i in range(0, len(ids), 3)] + [detok.flush()]
    assert "".join(pieces) == TEXTS[1]


def _stream(output: RequestOutput, ids: list[int]) -> tuple[list[str], list[str], str | None]:
    content, reasoning, reason = [], [], None
    for i, token in enumerate(ids):
        delta = output.push(token, "length" if i == len(ids) - 1 else None)
        content.append(delta.content)
        reasoning.append(delta.reasoning)
        reason = delta.finish_reason
        if reason:
            break
    return content, reasoning, reason


def test_think_tokens_split_reasoning_from_answer(glm4v_tiny_model):
    tok = AutoTokenizer.from_pretrained(glm4v_tiny_model)
    think = ThinkTokens.from_tokenizer(tok)
    assert think == ThinkTokens(3017, 3018)
    thought, answer = "先想一想：用户要 Wi-Fi。", "好的，已打开 Wi-Fi 设置。"
    ids = [think.start, *tok.encode(thought), think.end, *tok.encode("\n" + answer)]
    content, reasoning, reason = _stream(RequestOutput(tok, [1, 2], think=think), ids)
    assert "".join(reasoning) == thought
    assert "".join(content) == "\n" + answer
    assert reason == "length"
    # a prompt that already opened <think> starts in the reasoning
    content, reasoning, _ = _stream(RequestOutput(tok, [5, think.start], think=think), tok.encode("嗯"))
    assert ("".join(reasoning), "".join(content)) == ("嗯", "")


def test_smollm2_has_no_think_tokens(smollm2_model):
    assert ThinkTokens.from_tokenizer(AutoTokenizer.from_pretrained(smollm2_model)) is None


@pytest.mark.parametrize("stop", ["天气", "D", "不存在的"])
def test_stop_string_split_over_tokens_is_never_sent(tokenizer, stop):
    text = "今天天气很好 ABCDEF"
    ids = tokenizer.encode(text, add_special_tokens=False)
    content, _, reason = _stream(RequestOutput(tokenizer, [1], stop=(stop,)), ids)
    expected = text.split(stop)[0] if stop in text else text
    assert "".join(content) == expected
    assert reason == ("stop" if stop in text else "length")
    assert all(stop not in piece for piece in content)


def test_stop_token_is_not_rendered(smollm2_model):
    tok = AutoTokenizer.from_pretrained(smollm2_model)
    ids = [*tok.encode("Paris."), tok.eos_token_id]
    output = RequestOutput(tok, [1], stop_token_ids=(tok.eos_token_id,))
    pieces = [output.push(t, "stop" if t == tok.eos_token_id else None).content for t in ids]
    assert "".join(pieces) == "Paris."
