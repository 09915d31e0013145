"""The text decoder graph's I/O contract, shared by the exporter and the runtime (no torch here).

See builder/export/paged_decoder.py for shapes. The pool is passed per layer so each input is
a contiguous view of one [L, 2, NB, bs, KVH, D] array, with no copy.
"""

from __future__ import annotations

INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
PAST_LENS = "past_lens"
BLOCK_TABLES = "block_tables"
LOGIT_INDEX = "logit_index"
LOGITS = "logits"
NEW_KV = "new_kv"

TOKEN_INPUTS = (INPUT_IDS, POSITION_IDS, PAST_LENS, BLOCK_TABLES, LOGIT_INDEX)
OUTPUTS = (LOGITS, NEW_KV)


def kv_input_names(num_layers: int) -> list[str]:
    return [f"{kind}.{layer}" for layer in range(num_layers) for kind in ("key_cache", "value_cache")]


def input_names(num_layers: int) -> list[str]:
    return [*TOKEN_INPUTS, *kv_input_names(num_layers)]
