"""The text decoder graph's I/O contract, shared by the exporter and the runtime (no torch here).

See builder/export/paged_decoder.py for shapes. The pool is passed per layer so each input is
a contiguous view of one [L, 2, NB, bs, KVH, D] array, with no copy.

Decoders of models with media encoders (vision/audio) take two more inputs, so encoder outputs
replace the placeholder tokens' embeddings inside the graph:
    media_embeds  float [M, H]  embedding rows (M ≥ 1; text-only steps feed one zero row)
    media_rows    int64 [B, S]  -1 = embed `input_ids` as usual, r ≥ 0 = use media_embeds[r]
Text-only models (no encoders) are exported without them; the runtime looks at the engine's inputs.

Pipeline stages (`build --pipeline-stages N`) split the decoder over contiguous layer ranges, each
stage a graph over its own layers' pool (`key_cache.{l}` numbered from 0 within the stage):
    first stage   input_ids (+ media inputs) → hidden_out  [B, S, H]
    middle stage  hidden_in                  → hidden_out
    last stage    hidden_in + logit_index    → logits
every stage also taking position_ids, past_lens and block_tables, and returning its new_kv.
"""

from __future__ import annotations

INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
PAST_LENS = "past_lens"
BLOCK_TABLES = "block_tables"
LOGIT_INDEX = "logit_index"
MEDIA_EMBEDS = "media_embeds"
MEDIA_ROWS = "media_rows"
LOGITS = "logits"
HIDDEN_IN = "hidden_in"  # a later pipeline stage's input: the previous stage's hidden_out
HIDDEN_OUT = "hidden_out"
NEW_KV = "new_kv"

TOKEN_INPUTS = (INPUT_IDS, POSITION_IDS, PAST_LENS, BLOCK_TABLES, LOGIT_INDEX)
MEDIA_INPUTS = (MEDIA_EMBEDS, MEDIA_ROWS)
OUTPUTS = (LOGITS, NEW_KV)


def kv_input_names(num_layers: int) -> list[str]:
    return [f"{kind}.{layer}" for layer in range(num_layers) for kind in ("key_cache", "value_cache")]


def kv_present_names(num_layers: int) -> list[str]:
    """Outputs of engines that update their past in place (runtime/kv/slot_pool.py), in the order
    of kv_input_names."""
    return [f"present.{name}" for name in kv_input_names(num_layers)]


POOL_DTYPE_INPUT = kv_input_names(1)[0]  # the input whose dtype is the KV pool's


def input_names(num_layers: int, media: bool = False, first: bool = True, last: bool = True) -> list[str]:
    """Graph input order: token inputs, the pool per layer, then the media inputs if any. A pipeline
    stage that is not the first takes hidden_in for input_ids (and no media); one that is not the
    last takes no logit_index."""
    head = [INPUT_IDS if first else HIDDEN_IN, POSITION_IDS, PAST_LENS, BLOCK_TABLES]
    if last:
        head.append(LOGIT_INDEX)
    return [*head, *kv_input_names(num_layers), *(MEDIA_INPUTS if media and first else ())]


def output_names(last: bool = True) -> list[str]:
    return [LOGITS if last else HIDDEN_OUT, NEW_KV]
