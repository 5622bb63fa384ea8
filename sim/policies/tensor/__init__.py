"""Tensor faces of the KV policies (torch, imported only here and only when called).

Shapes follow one sequence of one layer: keys and values ``(H_kv, T, d)``, queries
``(H_q, T, d)`` (or ``(H_q, d)`` for one decode query), attention probabilities
``(H_q, T_q, T)``; ``H_q`` is a multiple of ``H_kv`` (GQA groups are consecutive heads).
"""
