"""Chained hashes of a prompt's full KV blocks, the keys of prefix caching.

vLLM's prefix cache names a full block of ``block_size`` tokens by
``hash(parent_block_hash, block_token_ids, extra_keys)`` (``docs/design/prefix_caching.md``),
so a block hash identifies the whole prefix up to and including that block and two requests
share a cached block exactly when they share every token before it. The simulator has no
token ids; it has prefix ids instead: Mooncake's ``hash_ids`` (one id per 512-token block,
equal ids mean reusable KV), synthetic prefix ids, or ids derived from a session's history.
An engine block of ``block_tokens`` lies inside one prefix block; its content is named by
the pair (prefix id of the covering block, sub-index inside it), and the chain over those
pairs plays the role of vLLM's chain over token ids.

The chain is a polynomial rolling hash modulo 2**64, ``r_j = r_{j-1} * P + k_j`` with
``k_j = splitmix64(splitmix64(id) + sub)``, finalised by ``h_j = splitmix64(r_j)``. Because
splitmix64 is a bijection of 64-bit words, ``h_j`` is a function of (``h_{j-1}``, id, sub),
i.e. a true parent-chained hash, and because ``P`` is odd (invertible mod 2**64) the whole
chain is computed without a Python loop: ``r_j = P^j * (r_{-1} P + sum_{i<=j} k_i P^{-i})``.
No Python ``hash()`` is involved, so the values are identical across processes and runs.
splitmix64 is Steele, Lea and Flood, "Fast splittable pseudorandom number generators"
(OOPSLA 2014).
"""

from __future__ import annotations

import numpy as np

from hardware.errors import KvsimError

_U64 = np.uint64
_MOD = 1 << 64
#: Odd multiplier of the rolling chain (the 64-bit FNV prime) and its inverse mod 2**64.
_P = 0x100000001B3
_P_INV = pow(_P, -1, _MOD)
#: Chain state before the first block (an arbitrary odd constant, the golden-ratio word).
_SEED = 0x9E3779B97F4A7C15


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser applied element-wise to a ``uint64`` array (wrapping)."""
    z = values.astype(_U64, copy=True)
    z += _U64(0x9E3779B97F4A7C15)
    z ^= z >> _U64(30)
    z *= _U64(0xBF58476D1CE4E5B9)
    z ^= z >> _U64(27)
    z *= _U64(0x94D049BB133111EB)
    z ^= z >> _U64(31)
    return z


def _powers(base: int, count: int) -> np.ndarray:
    """``base**0 .. base**(count-1)`` modulo 2**64 as ``uint64``."""
    powers = np.full(count, base, dtype=_U64)
    powers[0] = 1
    return np.cumprod(powers, dtype=_U64)


def engine_block_hashes(
    prefix_ids: np.ndarray, prefix_block_tokens: int, block_tokens: int, prompt_tokens: int
) -> np.ndarray:
    """Chained hashes (int64) of the prompt's full engine blocks covered by known prefix ids.

    ``prefix_ids[b]`` names tokens ``[b * prefix_block_tokens, (b+1) * prefix_block_tokens)``
    of the prompt; engine block ``j`` (tokens ``[j * block_tokens, (j+1) * block_tokens)``)
    gets a hash only if it lies entirely inside the prompt and inside a known prefix block.
    Equal ids at equal positions give equal hashes; a difference anywhere changes every later
    hash. ``prefix_block_tokens`` must be a multiple of ``block_tokens``.
    """
    if block_tokens < 1:
        raise KvsimError(f"must be >= 1, got {block_tokens}", field="block_tokens")
    if prefix_block_tokens < 1 or prefix_block_tokens % block_tokens:
        raise KvsimError(
            f"engine block of {block_tokens} tokens does not divide the prefix block of "
            f"{prefix_block_tokens} tokens; choose a block_tokens that divides it",
            field="block_tokens",
        )
    per_prefix_block = prefix_block_tokens // block_tokens
    ids = np.asarray(prefix_ids, dtype=np.int64).reshape(-1)
    count = min(ids.size * per_prefix_block, max(int(prompt_tokens), 0) // block_tokens)
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    position = np.arange(count)
    covering = ids[position // per_prefix_block].view(_U64)
    sub_index = (position % per_prefix_block).astype(_U64)
    keys = splitmix64(splitmix64(covering) + sub_index)
    scaled = np.cumsum(keys * _powers(_P_INV, count), dtype=_U64)
    start = _U64((_SEED * _P) % _MOD)
    chain = _powers(_P, count) * (scaled + start)
    return splitmix64(chain).view(np.int64)
