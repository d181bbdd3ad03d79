"""The brute force the serving tests check answers against: the artifact read in-process, exact top-K.

from serving_reference import assert_matches_brute_force, reference_arrays
assert_matches_brute_force(reference_arrays(artifact), answer, k=10, exclude_seen=True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.artifact import load_artifact


def reference_arrays(artifact: Path) -> dict:
    """The artifact read in-process: what the brute force scores with."""
    art = load_artifact(artifact)
    return {
        "users": art.user_vectors(),
        "items": art.item_vectors(),
        "seen": art.seen().tocsr(),
        "user_ids": art.user_ids,
        "item_ids": art.item_ids,
        "user_index": art.user_index(),
        "item_index": art.item_index(),
        "popularity": art.popularity(),
    }


def brute_force(ref, user_id: str, k: int, exclude_seen: bool) -> tuple[list[str], np.ndarray]:
    row = ref["user_index"][user_id]
    scores = ref["users"][row].astype(np.float64) @ ref["items"].T.astype(np.float64)
    if exclude_seen:
        scores[ref["seen"][row].indices] = -np.inf
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])][:k]
    return [ref["item_ids"][i] for i in order], scores[order]


def assert_matches_brute_force(ref, answer: dict, k: int, exclude_seen: bool) -> None:
    """Same scores rank by rank; so an item id may differ from the brute force's only where the
    two items tie (the faiss contrib tests' rule)."""
    want_ids, want_scores = brute_force(ref, answer["user_id"], k, exclude_seen)
    got_ids = [item["item_id"] for item in answer["items"]]
    got_scores = np.array([item["score"] for item in answer["items"]])
    assert answer["fallback"] is False
    assert len(got_ids) == len(want_ids) == k
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(got_scores) <= 1e-6), "not highest first"
    assert len(set(got_ids)) == len(got_ids), "an item twice"
    # and each item's score is its own true score (a tie cannot hide a wrong item)
    row = ref["user_index"][answer["user_id"]]
    item_rows = [ref["item_index"][item] for item in got_ids]
    true = ref["items"][item_rows].astype(np.float64) @ ref["users"][row].astype(np.float64)
    np.testing.assert_allclose(got_scores, true, rtol=1e-4, atol=1e-5)
    if exclude_seen:
        seen = {ref["item_ids"][i] for i in ref["seen"][row].indices}
        assert not seen & set(got_ids), "a seen item was returned"
