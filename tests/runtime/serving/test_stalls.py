"""Another request's input never stalls a stream: a ~30 MB prompt sent while eight streams decode
is refused at once (measured in bytes, before it is even parsed), the longest prompt that passes
the character measure is tokenized beside the decode loop, not in its way, and no stream waits
more than two extra decode steps for its next token while either is handled. The step time is measured in the same run
(the median gap between tokens), so the bound holds on a fast or a slow machine alike."""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time

from runtime.manifest import Manifest
from runtime.server.prompting import PromptLimits, longest_token_chars
from tests.runtime.serving.clients import RawRequest

STREAMS = 8


def _stream_times(request: RawRequest, times: list[float]) -> None:
    """Arrival time of each SSE event, until the test leaves (closes the socket)."""
    request.sock.settimeout(120)
    try:
        while chunk := request.sock.recv(65536):
            times.extend([time.perf_counter()] * chunk.count(b"data: {"))
    except OSError:
        pass


def _chat(server, characters: int) -> bytes:
    content = "word " * (characters // 5)
    return json.dumps({"model": server.model, "messages": [{"role": "user", "content": content}]}).encode()


def test_a_30_mb_prompt_does_not_stall_other_streams(smollm2_server):
    """Two prompts arrive while eight streams decode: 30 MB, refused on its size, and one at the
    character limit, which is tokenized (then refused on its token count)."""
    s = smollm2_server
    manifest = Manifest.load(s.engines)
    limits = PromptLimits(
        manifest.decoder["max_seq_len"], longest_token_chars(s.engines / manifest.tokenizer_dir)
    )
    bodies = {"30 MB": _chat(s, 30_000_000), "at the character limit": _chat(s, limits.max_chars)}
    # (built before the streams start: the client's own work must not be measured)
    times: list[list[float]] = [[] for _ in range(STREAMS)]
    streams, readers = [], []
    for i, arrivals in enumerate(times):
        body = {
            "model": s.model,
            "prompt": f"Chapter {i}. Once upon a time, in a kingdom by the sea,",  # a text that goes on
            "max_tokens": 1000,  # more than the test waits for: the streams end when it leaves
            "temperature": 0,
            "stream": True,
        }
        streams.append(RawRequest(s, "/completions", body))
        readers.append(threading.Thread(target=_stream_times, args=(streams[-1], arrivals)))
        readers[-1].start()
    while min(len(t) for t in times) < 3:  # every stream admitted and decoding
        time.sleep(0.01)
    steady = time.perf_counter()
    refusals = {}
    for name, raw in bodies.items():
        time.sleep(0.5)
        sent = time.perf_counter()
        status, refusal = RawRequest(s, "/chat/completions", raw).read_response()  # sendall: no GIL held
        refusals[name] = (status, refusal["error"]["message"], sent, time.perf_counter() - sent)
    end = time.perf_counter()
    while min(sum(t > end for t in arrivals) for arrivals in times) < 3:  # the steps after them too
        time.sleep(0.01)
    for request, reader in zip(streams, readers, strict=True):
        request.leave()
        reader.join(60)

    gaps = [(a, b) for t in times for a, b in itertools.pairwise(t) if a >= steady]
    step = statistics.median(b - a for a, b in gaps)  # the decode step, as the streams saw it
    print(
        f"\ndecode step {step * 1e3:.1f} ms; worst gap in the run {max(b - a for a, b in gaps) * 1e3:.1f} ms"
    )
    for name, (status, message, sent, took) in refusals.items():
        # every gap that overlaps the request's handling (and the step after it)
        around = max(b - a for a, b in gaps if a < sent + took + step and b > sent)
        print(
            f"{name}: {status} in {took:.2f} s; worst gap meanwhile {around * 1e3:.1f} ms ({around / step:.1f} steps)"
        )
        assert status == 400 and took < 3.0, (name, status, message, took)  # 32 s when tokenized
        assert around <= 3 * step, (
            f"{name}: a stream waited {around / step:.1f} decode steps ({around * 1e3:.0f} ms)"
        )
    assert "carries no image or audio: its prompt is longer" in refusals["30 MB"][1]
    assert "tokens but the engines were built for at most" in refusals["at the character limit"][1]
