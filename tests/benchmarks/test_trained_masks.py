"""Trained-like masks for the benchmark: profiles of a mask, and masks drawn from a profile."""

import numpy as np
import pytest

from benchmarks.inference.trained_masks import nearest, profile_of_mask, sample_mask


def _prefix_mask(lengths, dim):
    return np.arange(dim)[None, :] < np.asarray(lengths)[:, None]


def test_profile_counts_rows_and_dims():
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=bool)
    profile = profile_of_mask(mask, {"users": slice(0, 2), "items": slice(2, None)})
    assert profile["groups"]["users"]["row_nnz_histogram"] == [0, 1, 1, 0, 0]
    assert profile["groups"]["users"]["is_prefix"] and not profile["groups"]["items"]["is_prefix"]
    assert profile["groups"]["items"]["row_nnz_histogram"] == [1, 0, 0, 1, 0]
    assert profile["groups"]["items"]["dim_share"] == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])
    assert profile["density"] == pytest.approx(6 / 16)


@pytest.mark.parametrize("density", [0.5, 0.2, 0.05])
@pytest.mark.parametrize("layout", ["prefix", "unstructured"])
def test_drawn_masks_hit_the_density_and_keep_the_shape(layout, density):
    rng = np.random.default_rng(0)
    lengths = np.r_[np.full(300, 3), np.zeros(50, int), np.full(100, 12), np.full(50, 64)]  # zero and full rows
    trained = _prefix_mask(lengths, 64)
    if layout == "unstructured":  # dims 0..7 hold most non-zeros
        trained = np.zeros((500, 64), dtype=bool)
        for row, n in enumerate(lengths):
            trained[row, rng.choice(64, n, replace=False, p=np.r_[np.full(8, 0.1), np.full(56, 0.2 / 56)])] = True
    profile = profile_of_mask(trained, {"users": slice(0, 100), "items": slice(100, None)})
    mask = sample_mask(profile, "items", 20_000, density, 64, np.random.default_rng(1), layout)
    assert mask.shape == (20_000, 64)
    assert abs(mask.mean() - density) < 0.01 * density + 0.002
    counts = mask.sum(axis=1)
    assert (counts == 0).any()  # rows of length 0 survive the scaling
    if layout == "prefix":
        np.testing.assert_array_equal(mask, _prefix_mask(counts, 64))
    else:
        share = mask.sum(axis=0) / mask.sum()
        assert share[:8].sum() > share[8:16].sum() * 1.2  # the trained per-dim skew is kept (less where rows fill up)


def test_nearest_profile_on_a_log_scale():
    profiles = {"layouts": {"prefix": [{"density": 0.05}, {"density": 0.2}]}}
    assert nearest(profiles, "prefix", 0.1)["density"] == 0.2
    assert nearest(profiles, "prefix", 0.07)["density"] == 0.05
    assert nearest(profiles, "prefix", 0.5)["density"] == 0.2
