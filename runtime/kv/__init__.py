"""Paged KV cache bookkeeping (pure Python): blocks, LRU free queue, pool, per-request manager.

Modelled on vLLM v1's ``kv_cache_utils`` / ``block_pool`` / ``kv_cache_manager``. Only block ids
and hashes live here; the K/V tensors themselves are the runtime's
``[L, 2, num_blocks, block_size, kv_heads, head_dim]`` pool, indexed with :meth:`slot_mapping` and
:meth:`padded_block_tables`.
"""

from runtime.kv.block import KVBlock, hash_block_tokens
from runtime.kv.block_pool import NULL_BLOCK_ID, BlockPool
from runtime.kv.free_queue import FreeBlockQueue
from runtime.kv.manager import KVCacheManager, PrefixCacheStats

__all__ = [
    "NULL_BLOCK_ID",
    "BlockPool",
    "FreeBlockQueue",
    "KVBlock",
    "KVCacheManager",
    "PrefixCacheStats",
    "hash_block_tokens",
]
