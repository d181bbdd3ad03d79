"""Filters and id maps: pure functions on arrays of ids."""

from __future__ import annotations

import numpy as np


def distinct_sorted(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` without return_* arrays is far slower in numpy 2.4)."""
    values = np.sort(values)
    if len(values) > 1:
        values = values[np.concatenate([[True], values[1:] != values[:-1]])]
    return values


def encode_ids(external: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map external ids to codes in sorted order.

    Strings sort numerically when every distinct one is a canonical integer (``"2" < "10"``;
    ``"007"`` is not canonical, so it stays distinct from ``"7"``), by code point otherwise.

    Returns:
        ``(codes [n] int64, vocab [n_distinct])`` with ``vocab[codes] == external``.
    """
    vocab, codes = np.unique(external, return_inverse=True)
    codes = codes.astype(np.int64).ravel()
    if vocab.dtype.kind != "U" or not len(vocab):
        return codes, vocab
    try:
        numeric = vocab.astype(np.int64)
    except (ValueError, OverflowError):
        return codes, vocab
    if not np.array_equal(numeric.astype(str), vocab):
        return codes, vocab
    order = np.argsort(numeric, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[codes], vocab[order]


def first_occurrences(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the first occurrence of each distinct (user, item) pair.

    Args:
        users, items: ``[n]`` non-negative int64 codes.
    """
    if not len(users):
        return np.zeros(0, dtype=np.int64)
    keys = users * (int(items.max()) + 1) + items
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def k_core_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask ``[n]`` bool of the interactions in the k-core.

    Repeatedly drops interactions whose user or item has fewer than ``k`` of them until every
    user and item left has at least ``k``. Expects distinct pairs; ``k <= 1`` keeps everything.
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or not len(users):
        return keep
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    index = np.arange(len(users))
    while True:
        user_counts = np.bincount(users[index], minlength=n_users)
        item_counts = np.bincount(items[index], minlength=n_items)
        ok = (user_counts[users[index]] >= k) & (item_counts[items[index]] >= k)
        if ok.all():
            break
        index = index[ok]
    keep[:] = False
    keep[index] = True
    return keep

