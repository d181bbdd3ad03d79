"""Train/valid/test splits: pure functions on arrays of user codes, returning index arrays."""

from __future__ import annotations

import numpy as np

from .interactions import DataError

SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}


def check_ratios(ratios: tuple[float, float, float]) -> None:
    """Raise :class:`DataError` unless ``ratios`` are ``(train, valid, test)`` >= 0, summing to 1, train > 0."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6 or ratios[0] <= 0:
        raise DataError(
            f"data.ratios must be three non-negative numbers (train, valid, test) summing to 1 "
            f"with train > 0, got {ratios}"
        )


def held_out_counts(counts: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user ``(n_valid, n_test)`` of :func:`split_random` for users with ``counts`` interactions (``[n]`` int64).

    ``n_test = min(round(n * r_test), n - 1)``, ``n_valid = min(round(n * r_valid), n - 1 - n_test)``
    (rounding half up): train always keeps at least one.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_test = np.minimum(np.floor(counts * ratios[2] + 0.5 + 1e-9).astype(np.int64), counts - 1).clip(0)
    n_valid = np.minimum(np.floor(counts * ratios[1] + 0.5 + 1e-9).astype(np.int64), counts - 1 - n_test).clip(0)
    return n_valid, n_test


def fewest_for_one(ratios: tuple[float, float, float], split: str) -> int | None:
    """The fewest interactions a user needs for :func:`split_random` to give it one ``split`` ("valid"/"test").

    ``None`` when that split's ratio is 0 (never).
    """
    if ratios[SPLIT_INDEX[split]] <= 0:
        return None
    lowest = max(1, int(0.5 / ratios[SPLIT_INDEX[split]]) - 2)  # round(n * r) >= 1 needs n * r >= 0.5
    counts = np.arange(lowest, lowest + 10_000)
    got = held_out_counts(counts, ratios)[0 if split == "valid" else 1]
    return int(counts[np.argmax(got >= 1)]) if got.any() else None


def split_random(
    users: np.ndarray, ratios: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user random split. Returns ascending index arrays ``(train, valid, test)``.

    A user with ``n`` interactions gives ``n_test = min(round(n * r_test), n - 1)`` and
    ``n_valid = min(round(n * r_valid), n - 1 - n_test)`` (rounding half up,
    :func:`held_out_counts`), so train keeps at least one; a user with one interaction is all train.
    Which interactions go where comes from one seeded permutation of all rows, ranked within each
    user.

    Args:
        users: ``[n]`` int64 user codes (non-negative).
        ratios: ``(train, valid, test)``, summing to 1.
        seed: same seed, same split.
    """
    check_ratios(ratios)
    n = len(users)
    if not n:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(n)
    if int(users.max()) < 2**62 // n:  # distinct keys: by user, then in a random order within the user
        order = np.argsort(users * n + permutation)
    else:
        order = permutation[np.argsort(users[permutation], kind="stable")]
    sorted_users = users[order]
    counts = np.bincount(users)
    starts = np.cumsum(counts) - counts
    rank = np.arange(n) - starts[sorted_users]
    n_valid, n_test = held_out_counts(counts, ratios)
    is_test = rank < n_test[sorted_users]
    is_valid = ~is_test & (rank < (n_test + n_valid)[sorted_users])
    is_train = ~is_test & ~is_valid
    return np.sort(order[is_train]), np.sort(order[is_valid]), np.sort(order[is_test])


def split_leave_last_out(users: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-last-out by time. Returns ascending index arrays ``(train, valid, test)``.

    Per user, the latest interaction goes to test and the second latest to valid; equal
    timestamps are ordered by input position (later row = later). Users with 2 interactions give
    one to test and none to valid; users with 1 keep it in train.

    Args:
        users: ``[n]`` int64 user codes (non-negative).
        timestamps: ``[n]`` numbers.
    """
    n = len(users)
    order = np.lexsort((timestamps, users))  # stable: equal timestamps keep input order
    sorted_users = users[order]
    counts = np.bincount(users) if n else np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    from_end = ends[sorted_users] - 1 - np.arange(n)  # 0 for a user's latest
    user_counts = counts[sorted_users]
    is_test = (from_end == 0) & (user_counts >= 2)
    is_valid = (from_end == 1) & (user_counts >= 3)
    is_train = ~is_test & ~is_valid
    return np.sort(order[is_train]), np.sort(order[is_valid]), np.sort(order[is_test])



def choose_holdout_users(train_users: np.ndarray, test_users: np.ndarray, n_users: int, count: int,
                         seed: int) -> np.ndarray:
    """``count`` users hidden from training (``data.holdout_users``): a seeded choice among the
    users with at least one train and one test interaction. Returns sorted int64 user codes.

    The same arguments give the same users, so an evaluation rebuilds the choice from the config.
    """
    eligible = np.flatnonzero((np.bincount(train_users, minlength=n_users) > 0)
                              & (np.bincount(test_users, minlength=n_users) > 0))
    if count > len(eligible):
        raise ValueError(f"data.holdout_users={count}: only {len(eligible)} users have train and test interactions")
    rng = np.random.default_rng([seed, 7177])  # its own stream: the split's draws are unchanged
    return np.sort(rng.choice(eligible, size=count, replace=False)).astype(np.int64)
