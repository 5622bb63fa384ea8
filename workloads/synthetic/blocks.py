"""Prefix block ids for synthetic prompts, like Mooncake's ``hash_ids``.

Mooncake (Qin et al., FAST'25) publishes, per request, the ids of its prompt's 512-token
blocks, each the remapped hash of the block's tokens chained with the previous block's, so
equal ids at equal positions mean an identical prefix (reusable KV) and
``len(hash_ids) == ceil(input_length / 512)``, the last partial block included.

Here a block ending at token ``e`` is identified by the content of ``[0, e)``. With the
prompt the start of ``[system prompt] + [document] + [unique tail]`` (see
:mod:`workloads.synthetic.layout`), that content is fixed by the shortest stream level
covering ``e``: the system prompt alone (``e <= shared_tokens``), system prompt plus document
(``e <= shared_tokens + doc_tokens``), or the owner's whole stream. So the key
``(level, which prompt / document / owner, e)``, packed into one integer, plays the
chained hash, vectorised; dense ids
are numbered in order of first appearance, as Mooncake's remapping does.
"""

from __future__ import annotations

import numpy as np

from workloads.synthetic.layout import Layout


def block_ids(layout: Layout, block_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(prefix_offsets, prefix_hashes)`` for the requests of ``layout`` in its order."""
    counts = -(-layout.prompt_tokens // block_tokens)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    request = np.repeat(np.arange(len(counts)), counts)
    index = np.arange(offsets[-1]) - offsets[request]
    end = np.minimum((index + 1) * block_tokens, layout.prompt_tokens[request])
    system_end = layout.shared_tokens[request]
    doc_end = system_end + layout.doc_tokens[request]
    level = np.where(end <= system_end, 0, np.where(end <= doc_end, 1, 2))
    # one dense group per (level, which prompt / document / owner), then one int64 per block
    system = layout.shared_index + 1
    pair_key = system * (int(layout.doc_index.max(initial=-1)) + 2) + layout.doc_index + 1
    pair = np.unique(pair_key, return_inverse=True)[1].ravel()
    systems, pairs = int(system.max(initial=0)) + 1, int(pair.max(initial=-1)) + 1
    group = np.choose(
        level, [system[request], systems + pair[request], systems + pairs + layout.owner[request]]
    )
    keys = group * (int(end.max(initial=0)) + 1) + end
    _, first_seen, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first_seen), dtype=np.int64)
    rank[np.argsort(first_seen, kind="stable")] = np.arange(len(first_seen))
    return offsets, rank[inverse.ravel()]
