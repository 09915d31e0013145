"""Calibration feeds for a later pipeline stage of the text decoder.

A stage after the first takes hidden states, not token ids. Each calibration sample's prefill
(text_decoder_feeds.py) runs through the fp32 graphs of the stages before it, and what the last
of them hands on becomes this stage's `hidden_in`: the activations the stage sees in use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort

from calibration.feeds import CalibrationSet, Feed, GraphInput, digest_of
from runtime import decoder_io as io


def staged_calibration(data: CalibrationSet, before: list[tuple[Path, str]]) -> CalibrationSet:
    """`data` for the stage after the fp32 stage graphs `before`: (graph, its sha256), in order."""
    if not before:
        return data

    def feeds(inputs: list[GraphInput]) -> Iterator[Feed]:
        sessions = [
            ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]) for graph, _ in before
        ]
        # The same samples in the same order, as each graph's own inputs declare them.
        streams = [data.feeds(session.get_inputs()) for session in sessions] + [data.feeds(inputs)]
        for *earlier, feed in zip(*streams, strict=True):
            hidden = None
            for session, stage_feed in zip(sessions, earlier, strict=True):
                if hidden is not None:
                    stage_feed[io.HIDDEN_IN] = hidden
                hidden = session.run([io.HIDDEN_OUT], stage_feed)[0]
            feed[io.HIDDEN_IN] = hidden
            yield feed

    digest = digest_of([data.digest.encode(), *(sha256.encode() for _, sha256 in before)])
    description = f"{data.description}, through the {len(before)} stage(s) before"
    return CalibrationSet(description, data.samples, digest, feeds)
