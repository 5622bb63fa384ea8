"""Per-replica KV memory: paged block pools with vLLM-style hash or SGLang-style radix prefix
caching, and the chained block hashes that key them."""

from sim.kv.block_pool import BlockPool, blocks_for
from sim.kv.hashing import engine_block_hashes, splitmix64
from sim.kv.radix_cache import RadixBlockPool, RadixNode

__all__ = [
    "BlockPool",
    "RadixBlockPool",
    "RadixNode",
    "blocks_for",
    "engine_block_hashes",
    "splitmix64",
]
