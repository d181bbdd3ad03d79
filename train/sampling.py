"""Which training pairs an epoch visits and which negatives it scores against them.

    order = epoch_order(users, "user", rng)                  # indices into the training pairs
    negatives = NegativeSampler(n_items, users, items).sample(users[order[:B]], 1, rng)

``train.loop.Trainer`` uses both; they need numpy only (every draw comes from the caller's ``rng``).
"""

from __future__ import annotations

import numpy as np


class NegativeSampler:
    """Uniform negatives that are not training positives of the user (vectorised rejection)."""

    def __init__(self, n_items: int, train_users: np.ndarray, train_items: np.ndarray):
        self.n_items = n_items
        self.positive_keys = np.unique(train_users.astype(np.int64) * n_items + train_items.astype(np.int64))

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        where = np.searchsorted(self.positive_keys, keys)
        where = np.minimum(where, len(self.positive_keys) - 1)
        return self.positive_keys[where] == keys

    def sample(self, users: np.ndarray, n_negatives: int, rng: np.random.Generator) -> np.ndarray:
        """Returns ``[B]`` (``n_negatives == 1``) or ``[B, n_negatives]`` item ids."""
        shape = (len(users),) if n_negatives == 1 else (len(users), n_negatives)
        owners = users if n_negatives == 1 else np.repeat(users[:, None], n_negatives, axis=1)
        items = rng.integers(0, self.n_items, size=shape)
        for _ in range(20):
            bad = self._is_positive(owners, items)
            if not bad.any():
                break
            items[bad] = rng.integers(0, self.n_items, size=int(bad.sum()))
        return items


def epoch_order(users: np.ndarray, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Indices into the training pairs that one epoch visits, in order (``len(users)`` of them).

    ``interaction``: a permutation (every pair once). ``user``: each draw picks a user uniformly among
    those with a training pair, then one of that user's pairs uniformly (with replacement), as
    LightGCN's reference sampler does: light users weigh as much as heavy ones.
    """
    n = len(users)
    if sampling == "interaction":
        return rng.permutation(n)
    if sampling != "user":
        raise ValueError(f"sampling={sampling!r} is not one of ['interaction', 'user']")
    by_user = np.argsort(users, kind="stable")
    owners, starts, counts = np.unique(users[by_user], return_index=True, return_counts=True)
    pick = rng.integers(0, len(owners), size=n)
    offsets = (rng.random(n) * counts[pick]).astype(np.int64)
    return by_user[starts[pick] + np.minimum(offsets, counts[pick] - 1)]


__all__ = ["NegativeSampler", "epoch_order"]
