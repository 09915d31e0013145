"""Export the text decoder to ONNX (dynamic batch 1–8, dynamic length) and validate it."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.export import Dim

from builder.config import ExportConfig
from builder.errors import ExportError
from builder.export.paged_decoder import PagedDecoder
from builder.export.validation import ValidationReport, compare
from runtime import decoder_io as io
from runtime.onnx_files import EXTERNAL_DATA_MIN_BYTES

# fp32 ONNX Runtime vs eager PyTorch: same maths, different kernels and summation order.
ATOL, RTOL = 1e-4, 1e-4


def decoder_feeds(
    decoder: PagedDecoder,
    batch: int,
    seq: int,
    past: int,
    block_size: int,
    seed: int,
    prefill_past: bool = True,
) -> dict[str, np.ndarray]:
    """Valid inputs: `seq` random new tokens per sequence after `past` tokens already in a pool.
    A later pipeline stage gets random hidden states for its hidden_in (at the embeddings' scale);
    only the whole decoder's past can be a real prefill (`prefill_past`)."""
    rng = np.random.default_rng(seed)
    shape = decoder.shape
    blocks_per_seq = max(1, -(-past // block_size))
    pool_blocks = 1 + batch * blocks_per_seq  # block 0 is the null block
    tables = 1 + rng.permutation(batch * blocks_per_seq).reshape(batch, blocks_per_seq)
    positions = np.broadcast_to(past + np.arange(seq), (batch, seq))
    if decoder.family.position_rank == 3:
        positions = np.broadcast_to(positions, (3, batch, seq))
    feeds = {
        io.INPUT_IDS: rng.integers(0, shape.vocab_size, (batch, seq)),
        io.POSITION_IDS: np.ascontiguousarray(positions),
        io.PAST_LENS: np.full(batch, past),
        io.BLOCK_TABLES: tables,
        io.LOGIT_INDEX: np.broadcast_to(np.arange(seq), (batch, seq)).copy(),
    }
    feeds = {name: value.astype(np.int64) for name, value in feeds.items()}
    if not decoder.first:
        hidden = rng.standard_normal((batch, seq, shape.hidden_size)) * decoder.embed_scale
        feeds[io.HIDDEN_IN] = hidden.astype(np.float32)
    kv_shape = (pool_blocks, block_size, shape.num_kv_heads, shape.head_dim)
    # Unused slots hold noise: if masking leaked, outputs would change.
    for name in io.kv_input_names(decoder.num_layers):
        feeds[name] = rng.standard_normal(kv_shape).astype(np.float32)
    if decoder.media:  # about half the new tokens take a media row, at the embeddings' scale
        media = rng.standard_normal((batch * seq, shape.hidden_size)) * decoder.embed_scale
        feeds[io.MEDIA_EMBEDS] = media.astype(np.float32)
        rows = rng.permutation(batch * seq).reshape(batch, seq)
        feeds[io.MEDIA_ROWS] = np.where(rng.random((batch, seq)) < 0.5, rows, -1).astype(np.int64)
    if past and prefill_past:
        assert decoder.first and decoder.last, "a real past needs the whole decoder"
        _fill_past(decoder, feeds, past, block_size, seed)
    return {name: feeds[name] for name in decoder.input_names()}


def _fill_past(
    decoder: PagedDecoder, feeds: dict[str, np.ndarray], past: int, block_size: int, seed: int
) -> None:
    """Write the K/V of a real prefill of `past` random tokens into each sequence's blocks, so
    decode cases see in-distribution history rather than noise."""
    batch = feeds[io.INPUT_IDS].shape[0]
    prefill = decoder_feeds(decoder, batch, past, 0, block_size, seed + 1, prefill_past=False)
    with torch.no_grad():
        new_kv = decoder(*torch_args(decoder, prefill))[1].numpy()  # [L, 2, B, past, KVH, D]
    blocks = feeds[io.BLOCK_TABLES][:, np.arange(past) // block_size]  # [B, past]
    offsets = np.arange(past) % block_size
    for index, name in enumerate(io.kv_input_names(decoder.num_layers)):
        feeds[name][blocks, offsets] = new_kv[index // 2, index % 2]


def torch_args(decoder: PagedDecoder, feeds: dict[str, np.ndarray]) -> tuple:
    """`feeds` as the decoder's forward takes them: in input order, the pool as one list."""
    kv_names = io.kv_input_names(decoder.num_layers)
    args: list = []
    for name in decoder.input_names():
        if name == kv_names[0]:
            args.append([torch.from_numpy(feeds[kv]) for kv in kv_names])
        elif name not in kv_names:
            args.append(torch.from_numpy(feeds[name]))
    return tuple(args)


def stage_feeds(
    stages: list[PagedDecoder], index: int, whole: dict[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """Each stage's feeds up to `index` from the whole decoder's, hidden states run through the
    eager stages before it (what the runtime hands on)."""
    per_stage, hidden = [], None
    for stage in stages[: index + 1]:
        feeds = dict(whole)
        feeds.update(  # this stage's layers, numbered from 0
            zip(
                io.kv_input_names(stage.num_layers),
                [whole[n] for n in io.kv_input_names(stage.layer_range.stop)[2 * stage.layer_range.start :]],
                strict=True,
            )
        )
        if hidden is not None:
            feeds[io.HIDDEN_IN] = hidden
        feeds = {name: feeds[name] for name in stage.input_names()}
        per_stage.append(feeds)
        if not stage.last:
            with torch.no_grad():
                hidden = stage(*torch_args(stage, feeds))[0].numpy()
    return per_stage


def _dynamic_shapes(decoder: PagedDecoder, cfg: ExportConfig) -> dict:
    batch = Dim("batch", min=1, max=cfg.max_batch)
    seq = Dim("seq", min=1, max=cfg.max_seq_len)
    blocks = Dim("blocks", min=1, max=cfg.max_blocks_per_seq)
    positions = Dim("logit_positions", min=1, max=cfg.max_seq_len)
    pool = Dim("pool_blocks", min=1)
    rank3 = decoder.family.position_rank == 3
    shapes = {
        io.INPUT_IDS: {0: batch, 1: seq},
        io.HIDDEN_IN: {0: batch, 1: seq},
        io.POSITION_IDS: {1: batch, 2: seq} if rank3 else {0: batch, 1: seq},
        io.PAST_LENS: {0: batch},
        io.BLOCK_TABLES: {0: batch, 1: blocks},
        io.LOGIT_INDEX: {0: batch, 1: positions},
        io.MEDIA_EMBEDS: {0: Dim("media_tokens", min=1, max=cfg.max_batch * cfg.max_seq_len)},
        io.MEDIA_ROWS: {0: batch, 1: seq},
    }
    kv_names = io.kv_input_names(decoder.num_layers)
    # Keyed by the forward's parameters, in their order (the pool is one list argument): the
    # exporter names each symbolic dim after the first input it meets it in.
    result = {}
    for name in decoder.input_names():
        if name == kv_names[0]:
            result["kv_cache"] = [{0: pool} for _ in kv_names]
        elif name not in kv_names:
            result[name] = shapes[name]
    return result


def export_text_decoder(decoder: PagedDecoder, cfg: ExportConfig, out: Path) -> None:
    """Write the fp32 graph to `out` (weights inline below 2 GB, else as external data)."""
    large = sum(p.numel() * p.element_size() for p in decoder.parameters()) >= EXTERNAL_DATA_MIN_BYTES
    program = text_decoder_program(decoder, cfg)
    with contextlib.redirect_stdout(sys.stderr):  # the exporter chats on stdout
        program.save(str(out), external_data=large)


def text_decoder_program(decoder: PagedDecoder, cfg: ExportConfig) -> torch.onnx.ONNXProgram:
    """The fp32 graph in memory, its initializers still the decoder's own tensors (nothing written)."""
    # Example sizes > 1 and all different, so no dynamic axis is specialised or tied to another.
    example = decoder_feeds(
        decoder,
        batch=2,
        seq=5,
        past=3 * cfg.block_size - 1,
        block_size=cfg.block_size,
        seed=0,
        prefill_past=False,
    )
    if decoder.last:
        example[io.LOGIT_INDEX] = example[io.LOGIT_INDEX][:, :3].copy()
    if decoder.media:  # a row count unlike any other axis, so none is tied to it
        example[io.MEDIA_EMBEDS] = example[io.MEDIA_EMBEDS][:7].copy()
        example[io.MEDIA_ROWS] = np.where(example[io.MEDIA_ROWS] >= 0, example[io.MEDIA_ROWS] % 7, -1)
    # The exporter chats on stdout; keep stdout for results.
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        try:
            return torch.onnx.export(
                decoder,
                torch_args(decoder, example),
                None,
                input_names=decoder.input_names(),
                output_names=decoder.output_names(),
                dynamic_shapes=_dynamic_shapes(decoder, cfg),
                opset_version=cfg.opset,
                dynamo=True,
                verbose=False,
            )
        except Exception as error:  # the exporter raises many types; report them as one
            raise ExportError(f"torch.onnx.export failed for the text decoder: {error}") from error


def validate_text_decoder(
    whole: PagedDecoder,
    model: torch.nn.Module,
    graph: Path,
    cfg: ExportConfig,
    stages: list[PagedDecoder] | None = None,
    index: int = 0,
) -> ValidationReport:
    """ONNX Runtime vs the eager wrapper at batch 1 and 8 (prefill and decode over a paged past),
    and the eager wrapper vs the Hugging Face model's own forward (prefill logits). For pipeline
    stage `index` of `stages`, the graph is that stage's, fed the hidden states the eager stages
    before it hand on; the last stage's logits (the eager stages chained) are checked against HF."""
    stages = stages or [whole]
    decoder = stages[index]
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    outputs_named = decoder.output_names()
    checks = []
    for batch in (1, cfg.max_batch):
        for phase, seq, past in (("prefill", 16, 0), ("decode", 1, 2 * cfg.block_size + 5)):
            case = f"{phase} b{batch} s{seq} past{past}"
            whole_feeds = decoder_feeds(whole, batch, seq, past, cfg.block_size, seed=batch * 100 + seq)
            feeds = stage_feeds(stages, index, whole_feeds)[index]
            with torch.no_grad():
                reference = [t.numpy() for t in decoder(*torch_args(decoder, feeds))]
            outputs = session.run(outputs_named, feeds)
            checks += [
                compare(case, n, r, o, ATOL, RTOL)
                for n, r, o in zip(outputs_named, reference, outputs, strict=True)
            ]
            if phase == "prefill" and decoder.last:
                with torch.no_grad():
                    hf_logits = _hf_prefill_logits(whole, model, whole_feeds)
                checks.append(compare(f"{case} vs HF", io.LOGITS, hf_logits, reference[0], ATOL, RTOL))
    reference = "PyTorch eager (paged wrapper; HF forward)"
    if len(stages) > 1:
        reference = (
            f"PyTorch eager (stage {index + 1} of {len(stages)} after the stages before it; HF forward)"
        )
    return ValidationReport(graph=graph.name, reference=reference, checks=tuple(checks))


def _hf_prefill_logits(
    decoder: PagedDecoder, model: torch.nn.Module, feeds: dict[str, np.ndarray]
) -> np.ndarray:
    """The Hugging Face model's own forward over the same prompt (media rows as `inputs_embeds`)."""
    ids = torch.from_numpy(feeds[io.INPUT_IDS])
    if not decoder.media:
        return model(input_ids=ids).logits.numpy()
    embeds = decoder.embed_tokens(ids)
    rows = torch.from_numpy(feeds[io.MEDIA_ROWS])
    media = torch.from_numpy(feeds[io.MEDIA_EMBEDS])[rows.clamp(min=0)]
    embeds = torch.where((rows >= 0)[..., None], media, embeds)
    return model(inputs_embeds=embeds).logits.numpy()
