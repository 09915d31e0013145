"""The fused engine against the graph it was made from, on the same inputs (every conversion ends in
a comparison).

The reference runs with ORT's optimizer off, so it computes the precision graph's own maths (with
optimizations on, ORT would itself fuse a DequantizeLinear → MatMul into an int8-compute MatMulNBits).
The engine's MatMulNBits quantise their activations themselves, per block and per call, in place of
the W8A8 graph's static per-tensor activation scales (kept for TensorRT), so the reference drops
those Q/DQ pairs: the same dequantised weights, float activations. What that choice costs or gains
against fp32 is measured by `bench engines --accuracy-only`.
Cases cover what generation does: prefill at batch 1 and 8, prompts of different lengths in one
batch (right-padded at position 0 as the runtime pads them, the first row shortest, positions that
jump as GLM's do after an image; the engine runs them as the runtime would, one at a time where
its metadata says it cannot batch them), decode at batch 1 and 8 over pasts of different lengths
read through shuffled block tables, and a chunk of new tokens after a cached prefix. Only real
tokens' outputs are compared. Past K/V come from a real prefill of random tokens by the reference
(so activations stay in distribution, as they are in use); unused pool slots hold noise, so a
masking slip shows. Outputs are compared by cosine similarity and by top-1 agreement of the
logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from runtime import decoder_io as io
from runtime.engines.onnxruntime import BATCHED_PREFILL, KV_LAYOUT, SLOTS
from runtime.kv.pool import HostKVPool, KVPool, KVPoolSpec
from runtime.kv.slot_pool import SlotKVPool

POOL = "pool"  # a case's K/V [L, 2, NB, bs, KVH, D], fed as each graph takes it (_run)


@dataclass(frozen=True)
class _Case:
    name: str
    batch: int
    seq: int  # new tokens per row, padded
    past: tuple[int, ...]
    lengths: tuple[int, ...] | None = None  # each row's real new tokens; None: all `seq`
    # each row's positions jump by this after its 3rd token (as GLM's do after an image)
    jumps: tuple[int, ...] = (0,)


CASES = (
    _Case("prefill b1", 1, 37, (0,)),
    _Case("prefill b8", 8, 16, (0,) * 8),
    # the first row shortest, its padding at position 0 as the runtime pads (runtime/paged_decoder.py)
    _Case("prefill b3 ragged", 3, 16, (0,) * 3, (4, 9, 16), (0, 7, 3)),
    _Case("decode b1", 1, 1, (37,)),
    _Case("decode b2", 2, 1, (32, 16)),  # the longest past ends on a block boundary
    _Case("decode b8", 8, 1, (5, 37, 0, 16, 17, 100, 3, 64)),
    _Case("chunk b1", 1, 5, (20,)),
)


@dataclass(frozen=True)
class EngineCheck:
    case: str
    output: str
    cosine: float
    max_abs_diff: float
    ref_max_abs: float
    top1: float | None  # logits only: share of rows whose argmax agrees
    min_cosine: float

    @property
    def passed(self) -> bool:
        return self.cosine >= self.min_cosine

    def line(self) -> str:
        top1 = f"  top-1 {self.top1:.3f}" if self.top1 is not None else ""
        return (
            f"{self.case:<17} {self.output:<7} cosine {self.cosine:.6f}  max|Δ| {self.max_abs_diff:.2e} "
            f"of {self.ref_max_abs:.1f}{top1}  {'ok' if self.passed else 'FAIL'}"
        )


@dataclass(frozen=True)
class _Shape:
    layers: int
    block_size: int
    kv_heads: int
    head_dim: int
    vocab: int | None  # None: a pipeline stage that hands on hidden states
    hidden: int | None  # hidden_in's width (a later pipeline stage)
    output: str  # logits, or hidden_out (a pipeline stage before the last)
    position_rank: int
    media_width: int | None
    kv_dtype: np.dtype


def _shape_of(graph: Path) -> _Shape:
    model = onnx.load(str(graph), load_external_data=False)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    kv = inputs["key_cache.0"]
    dims = [d.dim_value for d in kv.shape.dim]
    media = inputs.get(io.MEDIA_EMBEDS)
    hidden = inputs.get(io.HIDDEN_IN)
    return _Shape(
        layers=sum(1 for name in inputs if name.startswith("key_cache.")),
        block_size=dims[1],
        kv_heads=dims[2],
        head_dim=dims[3],
        vocab=outputs[io.LOGITS].shape.dim[2].dim_value if io.LOGITS in outputs else None,
        hidden=hidden.shape.dim[2].dim_value if hidden is not None else None,
        output=io.LOGITS if io.LOGITS in outputs else io.HIDDEN_OUT,
        position_rank=len(inputs[io.POSITION_IDS].shape.dim),
        media_width=media.shape.dim[1].dim_value if media is not None else None,
        kv_dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kv.elem_type)),
    )


def _feeds(shape: _Shape, case: _Case, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch, seq, past = case.batch, case.seq, case.past
    blocks = -(-(max(past) + seq) // shape.block_size)  # the past's and the new tokens' blocks
    tables = 1 + rng.permutation(batch * blocks).reshape(batch, blocks)
    jumped = np.asarray(case.jumps).reshape(-1, 1) * (np.arange(seq) >= 3)
    positions = np.asarray(past)[:, None] + np.arange(seq) + jumped
    real = np.arange(seq) < np.asarray(case.lengths or seq).reshape(-1, 1)
    positions = np.where(real, positions, 0)  # padding
    feeds = {
        io.INPUT_IDS: rng.integers(0, shape.vocab or 1000, (batch, seq)),
        io.POSITION_IDS: np.broadcast_to(positions, (3, batch, seq))
        if shape.position_rank == 3
        else positions,
        io.PAST_LENS: np.asarray(past),
        io.BLOCK_TABLES: tables,
        io.LOGIT_INDEX: np.broadcast_to(np.arange(seq), (batch, seq)),
    }
    feeds = {name: np.ascontiguousarray(value, np.int64) for name, value in feeds.items()}
    pool = rng.standard_normal(
        (shape.layers, 2, 1 + batch * blocks, shape.block_size, shape.kv_heads, shape.head_dim)
    )
    feeds[POOL] = pool.astype(shape.kv_dtype)
    if shape.hidden is not None:
        feeds[io.HIDDEN_IN] = rng.standard_normal((batch, seq, shape.hidden)).astype(np.float32)
    if shape.media_width is not None:  # text-only steps: one zero row, no row taken
        feeds[io.MEDIA_EMBEDS] = np.zeros((1, shape.media_width), np.float32)
        feeds[io.MEDIA_ROWS] = np.full((batch, seq), -1, np.int64)
    return feeds


def _fill_past(shape: _Shape, feeds: dict[str, np.ndarray], session: ort.InferenceSession, seed: int) -> None:
    """Write the K/V of a prefill of each sequence's past (random tokens) into its blocks."""
    past = feeds[io.PAST_LENS]
    batch, longest = len(past), int(past.max())
    prefill = _feeds(shape, _Case("past", batch, longest, (0,) * batch), seed + 1000)
    new_kv = _run(session, prefill)[1]  # [L, 2, B, longest, KVH, D]
    pool, tables = feeds[POOL], feeds[io.BLOCK_TABLES]
    for row, length in enumerate(past):
        positions = np.arange(length)
        blocks, offsets = tables[row, positions // shape.block_size], positions % shape.block_size
        pool[:, :, blocks, offsets] = new_kv[:, :, row, :length]


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    given = {name: value for name, value in feeds.items() if name in names}
    given |= _runtime_pool(session, feeds).feeds()
    for name in (io.MEDIA_EMBEDS, io.HIDDEN_IN):  # fp16 engines take them in fp16
        if name in names:
            kind = next(i.type for i in session.get_inputs() if i.name == name)
            given[name] = given[name].astype(np.float16 if "float16" in kind else np.float32)
    kv_outputs = {io.NEW_KV, *io.kv_present_names(len(feeds[POOL]))}
    outputs = [o.name for o in session.get_outputs() if o.name not in kv_outputs]
    return session.run([*outputs, io.NEW_KV], given)


def _runtime_pool(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> KVPool:
    """The runtime's pool holding the case's, so that its layout and feeds are the engine's: a fresh
    slot pool places the call's rows in slots 0… in order, copying each past in from the pool."""
    pool = feeds[POOL]  # [L, 2, NB, bs, KVH, D]
    layers, _, blocks, block_size, kv_heads, head_dim = pool.shape
    tables, past = feeds[io.BLOCK_TABLES], feeds[io.PAST_LENS]
    batch, seq = feeds[io.POSITION_IDS].shape[-2:]
    spec = KVPoolSpec(
        layers, blocks, block_size, kv_heads, head_dim, pool.dtype,
        max_batch=batch, max_seq_len=tables.shape[1] * block_size,
    )  # fmt: skip
    if session.get_modelmeta().custom_metadata_map.get(KV_LAYOUT) != SLOTS:
        host = HostKVPool(spec)
        host.array[...] = pool
        return host
    slots = SlotKVPool(spec)
    slots.array[...] = pool
    slots.place([str(row) for row in range(batch)], tables.tolist(), past.tolist(), [seq] * batch)
    return slots


def _row(feeds: dict[str, np.ndarray], row: int, length: int) -> dict[str, np.ndarray]:
    """One row's call: its first `length` new tokens, the same pool and media."""
    per_token = (io.INPUT_IDS, io.POSITION_IDS, io.LOGIT_INDEX, io.MEDIA_ROWS, io.HIDDEN_IN)
    sliced = {}
    for name, value in feeds.items():
        if name in per_token:
            rank3 = name == io.POSITION_IDS and value.ndim == 3  # [3, B, S]
            sliced[name] = value[:, row : row + 1, :length] if rank3 else value[row : row + 1, :length]
        elif name in (io.PAST_LENS, io.BLOCK_TABLES):
            sliced[name] = value[row : row + 1]
        else:
            sliced[name] = value
    return sliced


def _run_as_runtime(session: ort.InferenceSession, feeds: dict, case: _Case) -> list[np.ndarray]:
    """Outputs of the case's real tokens, [T, …] and new_kv [L, 2, T, KVH, D], T = all rows' tokens in
    row order; prompts of different lengths one row at a time where the engine's metadata says so."""
    lengths = case.lengths or (case.seq,) * case.batch
    batched = session.get_modelmeta().custom_metadata_map.get(BATCHED_PREFILL, "true") == "true"
    if batched or case.lengths is None:
        out, new_kv = _run(session, feeds)
        rows = [(out[b : b + 1, :n], new_kv[:, :, b : b + 1, :n]) for b, n in enumerate(lengths)]
    else:
        rows = [_run(session, _row(feeds, b, n)) for b, n in enumerate(lengths)]
    return [np.concatenate([o[0] for o, _ in rows]), np.concatenate([kv[:, :, 0] for _, kv in rows], axis=2)]


def _check(case: str, output: str, ref: np.ndarray, got: np.ndarray, min_cosine: float) -> EngineCheck:
    ref64, got64 = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    cosine = float(ref64 @ got64 / max(np.linalg.norm(ref64) * np.linalg.norm(got64), 1e-30))
    top1 = None
    if output == io.LOGITS:
        top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    return EngineCheck(
        case, output, cosine, float(np.abs(ref64 - got64).max()), float(np.abs(ref64).max()), top1, min_cosine
    )


def _without_activation_qdq(graph: Path) -> onnx.ModelProto:
    """The graph with every QuantizeLinear → DequantizeLinear pair on an activation bypassed."""
    model = onnx.load(str(graph), load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    quantised = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in constants
    }
    bypass = {
        n.output[0]: quantised[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in quantised
    }
    kept = [n for n in model.graph.node if n.output[0] not in bypass and n.output[0] not in quantised]
    for node in kept:
        node.input[:] = [bypass.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def compare_engine(reference: Path, engine: Path, min_cosine: float, threads: int = 0) -> list[EngineCheck]:
    shape = _shape_of(reference)
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact.intra_op_num_threads = threads
    fused = ort.SessionOptions()
    fused.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    stripped = _without_activation_qdq(reference)
    if len(stripped.graph.node) != len(onnx.load(str(reference), load_external_data=False).graph.node):
        source = reference.with_name(f".{reference.stem}.reference.onnx")  # beside its external data
        try:
            onnx.save(stripped, str(source))
            ref_session = ort.InferenceSession(str(source), exact, providers=providers)
        finally:
            source.unlink(missing_ok=True)
    else:
        ref_session = ort.InferenceSession(str(reference), exact, providers=providers)
    del stripped
    # One session at a time: a large model's graph and engine do not both fit beside each other.
    cases = []
    for seed, case in enumerate(CASES):
        feeds = _feeds(shape, case, seed)
        if max(case.past):
            _fill_past(shape, feeds, ref_session, seed)
        cases.append((case, feeds, _run_as_runtime(ref_session, feeds, case)))
    del ref_session
    engine_session = ort.InferenceSession(str(engine), fused, providers=providers)
    checks = []
    for case, feeds, ref in cases:
        got = _run_as_runtime(engine_session, feeds, case)
        checks.append(_check(case.name, shape.output, ref[0], got[0], min_cosine))
        checks.append(_check(case.name, io.NEW_KV, ref[1], got[1], min_cosine))
    return checks


def as_dicts(checks: list[EngineCheck]) -> list[dict]:
    return [asdict(c) | {"passed": c.passed} for c in checks]
