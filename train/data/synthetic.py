"""The seeded interaction generator: power-law item popularity, low-rank preferences.

    python -c "from train.data.synthetic import synthetic_interactions as s; print(len(s(100, 200)))"
"""

from __future__ import annotations

import numpy as np
from scipy import special
from tqdm.auto import tqdm

from .filters import distinct_sorted
from .interactions import DataError, RawInteractions

# Generator presets. ``synthetic`` takes popularity_exponent from the config; the longtail preset
# fixes a steeper popularity and lognormal user activity (many users with 1-3 interactions).
SYNTHETIC_PRESETS: dict[str, dict[str, float | None]] = {
    "synthetic": {"popularity_exponent": None, "activity_sigma": 0.0},
    "synthetic-longtail": {"popularity_exponent": 1.2, "activity_sigma": 1.5},
}
SYNTHETIC_OVERSAMPLE = 4  # candidates drawn per kept interaction
SYNTHETIC_TEMPERATURE = 0.5  # softmax temperature over latent scores (scores have unit variance)
SYNTHETIC_CHUNK = 2_000_000  # candidates per vectorised chunk (bounds peak memory)
SYNTHETIC_TIME_RANGE = (1_500_000_000, 1_600_000_000)  # random unix timestamps


def _power_law_ranks(rng: np.random.Generator, n: int, exponent: float, size: int) -> np.ndarray:
    """Draw ranks in ``[0, n)`` with ``P(r) ∝ ∫_{r+1}^{r+2} x^-exponent dx`` (inverse CDF, O(1) each)."""
    uniform = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(uniform * np.log(n + 1.0))
    else:
        power = 1.0 - exponent
        x = (1.0 + uniform * ((n + 1.0) ** power - 1.0)) ** (1.0 / power)
    return np.clip(x.astype(np.int64) - 1, 0, n - 1)


def _user_activity(rng: np.random.Generator, n_users: int, mean: float, sigma: float, n_items: int) -> np.ndarray:
    """Interactions wanted per user ``[n_users]`` int64, each in ``[1, n_items]``.

    ``sigma == 0``: ``1 + Poisson(mean - 1)``. ``sigma > 0``: lognormal with that sigma and the
    given mean, so most users have few interactions and a few have very many.
    """
    if sigma > 0:
        counts = np.rint(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n_users)).astype(np.int64)
    else:
        counts = 1 + rng.poisson(mean - 1.0, n_users)
    return np.clip(counts, 1, n_items)


def synthetic_interactions(
    n_users: int,
    n_items: int,
    n_factors: int = 16,
    interactions_per_user: float = 30.0,
    popularity_exponent: float = 1.0,
    activity_sigma: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> RawInteractions:
    """Seeded implicit feedback with power-law item popularity and low-rank preferences.

    For each user: draw ``4 x wanted`` candidate items from the popularity law
    ``P(rank r) ~ r^-popularity_exponent`` (items get a random rank), drop repeats, then keep the
    ``wanted`` candidates with the largest ``<u, v> / 0.5 + Gumbel`` noise, i.e. sample without
    replacement with probability ``∝ exp(<u, v> / 0.5)`` (Gumbel top-k). Latent factors are
    ``N(0, 1/sqrt(n_factors))`` so ``<u, v>`` has unit variance. Users are processed in chunks of
    about two million candidates; no user x item matrix is built.

    Args:
        n_users, n_items: id ranges ``[0, n_users)``, ``[0, n_items)``; every user gets >= 1
            interaction, unpopular items may get none.
        n_factors: rank of the latent preferences.
        interactions_per_user: mean wanted per user (>= 1); repeats may make the result smaller.
        popularity_exponent: >= 0; 0 is uniform.
        activity_sigma: 0 gives ``1 + Poisson(mean - 1)`` per user; > 0 lognormal with this sigma.
        seed: the result is a function of all arguments but ``progress``.

    Returns:
        RawInteractions with ``int64`` ids, no ratings, random integer timestamps, grouped by user.
    """
    if n_users < 1 or n_items < 1 or n_factors < 1:
        raise DataError(
            f"synthetic: n_users, n_items and n_factors must be >= 1, got {n_users}, {n_items}, {n_factors}"
        )
    if n_users >= 2**31 or n_users * n_items >= 2**62:
        raise DataError(f"synthetic: {n_users} x {n_items} is too large for int64 pair keys")
    if interactions_per_user < 1:
        raise DataError(f"synthetic: interactions_per_user must be >= 1, got {interactions_per_user}")
    if popularity_exponent < 0 or activity_sigma < 0:
        raise DataError(
            f"synthetic: popularity_exponent and activity_sigma must be >= 0, "
            f"got {popularity_exponent}, {activity_sigma}"
        )
    rng = np.random.default_rng(seed)
    scale = np.float32(n_factors**-0.25)
    user_factors = rng.standard_normal((n_users, n_factors), dtype=np.float32)
    user_factors *= scale
    item_factors = rng.standard_normal((n_items, n_factors), dtype=np.float32)
    item_factors *= scale
    item_by_rank = rng.permutation(n_items)
    wanted = _user_activity(rng, n_users, interactions_per_user, activity_sigma, n_items)
    budgets = wanted * SYNTHETIC_OVERSAMPLE
    # chunk boundaries: each chunk holds about SYNTHETIC_CHUNK candidates (and at least one user)
    marks = np.arange(SYNTHETIC_CHUNK, budgets.sum() + SYNTHETIC_CHUNK, SYNTHETIC_CHUNK)
    ends = np.searchsorted(np.cumsum(budgets), marks)
    bounds = np.unique(np.concatenate([[0], np.minimum(ends + 1, n_users), [n_users]]))
    user_parts, item_parts = [], []
    for low, high in tqdm(
        zip(bounds[:-1].tolist(), bounds[1:].tolist()),
        total=len(bounds) - 1,
        desc="synthetic",
        unit="chunk",
        disable=not progress or len(bounds) < 3,
    ):
        candidate_users = np.repeat(np.arange(low, high, dtype=np.int64), budgets[low:high])
        candidate_items = item_by_rank[_power_law_ranks(rng, n_items, popularity_exponent, len(candidate_users))]
        keys = distinct_sorted(candidate_users * n_items + candidate_items)  # grouped by user
        users = keys // n_items
        items = keys - users * n_items
        scores = np.einsum("ij,ij->i", user_factors[users], item_factors[items]) / SYNTHETIC_TEMPERATURE
        scores += rng.gumbel(size=len(keys))
        # one integer sort key: user in the high bits, descending score (quantised) in the low 32
        descending = np.rint(special.expit(-scores) * (2**32 - 1)).astype(np.int64)
        order = np.argsort((users << 32) | descending)
        users, items = users[order], items[order]
        rank = np.arange(len(users)) - np.searchsorted(users, users)
        keep = rank < wanted[users]
        user_parts.append(users[keep])
        item_parts.append(items[keep])
    users = np.concatenate(user_parts)
    items = np.concatenate(item_parts)
    timestamps = rng.integers(*SYNTHETIC_TIME_RANGE, size=len(users)).astype(np.float64)
    return RawInteractions(users=users, items=items, timestamps=timestamps, source="synthetic")

