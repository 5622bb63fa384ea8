"""A paged KV cache: fixed-size token blocks addressed through per-sequence block tables.

The layout follows vLLM's PagedAttention (Kwon et al., SOSP 2023): keys and values live in
``num_blocks`` physical blocks of ``block_tokens`` slots per layer, and a sequence's block
table lists the physical block holding each of its logical blocks, so token position ``p``
of a sequence sits in slot ``table[p // block_tokens] * block_tokens + p % block_tokens``.
The engine's block accounting (which block ids a request owns) drives the tables; this module
only stores and fetches tensors, with index tensors and no per-token Python loops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hardware.errors import KvsimError


class PagedKVCache:
    """Keys and values of ``num_layers`` layers in ``num_blocks`` blocks of ``block_tokens``.

    Storage per layer is ``[num_blocks * block_tokens, num_kv_heads, head_dim]`` (flat slots),
    so a write is one ``index_copy_`` and a read one advanced-indexing gather.
    """

    def __init__(
        self,
        num_blocks: int,
        block_tokens: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        for name, value in (
            ("num_blocks", num_blocks),
            ("block_tokens", block_tokens),
            ("num_layers", num_layers),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
        ):
            if value <= 0:
                raise KvsimError(f"must be positive, got {value}", field=name)
        self.num_blocks = num_blocks
        self.block_tokens = block_tokens
        shape = (num_layers, num_blocks * block_tokens, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def size_bytes(self) -> int:
        """Bytes held by keys and values together."""
        return 2 * self.k.numel() * self.k.element_size()

    def slots(self, block_tables: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat slot index of each ``positions[b, t]`` through ``block_tables[b]``.

        Positions past a table's last column are clamped to it; callers mask those out.
        """
        column = torch.clamp(positions // self.block_tokens, max=block_tables.shape[1] - 1)
        return block_tables.gather(1, column) * self.block_tokens + positions % self.block_tokens

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``, ``v`` of shape ``[n, num_kv_heads, head_dim]`` at flat ``slots[n]``."""
        self.k[layer].index_copy_(0, slots, k.to(self.k.dtype))
        self.v[layer].index_copy_(0, slots, v.to(self.v.dtype))

    def fetch(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at flat ``slots[n]`` as ``[n, num_kv_heads, head_dim]`` (one gather
        each, for the keys of a whole step)."""
        return self.k[layer][slots], self.v[layer][slots]

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at ``slots[b, l]`` as ``[batch, num_kv_heads, length, head_dim]``."""
        return self.k[layer][slots].transpose(1, 2), self.v[layer][slots].transpose(1, 2)

    def gather(
        self, layer: int, block_tables: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions ``0..length-1`` of every sequence in the batch; entries
        past a sequence's own length are whatever its slots hold and must be masked."""
        positions = torch.arange(length, device=block_tables.device)
        return self.read(layer, self.slots(block_tables, positions.expand(len(block_tables), -1)))


def block_table_tensor(
    tables: Sequence[Sequence[int]], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Stack ragged per-sequence block-id lists into ``[batch, max_blocks]`` (int64), padding
    with each row's last block id (never read unmasked)."""
    if not tables or any(len(t) == 0 for t in tables):
        raise KvsimError("every sequence needs at least one block", field="block_tables")
    width = max(len(t) for t in tables)
    rows = [list(t) + [t[-1]] * (width - len(t)) for t in tables]
    return torch.tensor(rows, dtype=torch.int64, device=device)
