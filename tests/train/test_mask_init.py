"""``sparsity.mask_init=nmf`` (SparseRec): the NMF itself, the masks it gives (exact budget, the
largest factor entries, not the random mask), the config checks, and a run that resumes alike."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from train.checks import validate
from train.config import ConfigError, SparsityConfig, load_config
from train.data import load_dataset
from train.loop import Trainer, train
from train.models import build_model
from train.sparsity import Sparsifier, nmf, prefix_updater, random_initial_mask
from train.sparsity.nmf import interaction_matrix, masks_from_factors, reconstruction_error, split_budget, top_entries

torch.set_num_threads(1)

SMALL = [
    "data.name=synthetic",
    "data.n_users=150",
    "data.n_items=200",
    "data.interactions_per_user=20",
    "model.dim=16",
    "optim.batch_size=256",
    "optim.lr=0.01",
    "run.threads=1",
    "run.patience=100",
]


def small_config(tmp_path, *extra):
    return load_config(overrides=SMALL + [f"run.out={tmp_path}"] + list(extra))


def block_matrix(
    seed: int = 0, n_users: int = 60, n_items: int = 80, blocks: int = 4, p_in: float = 0.5, p_out: float = 0.02
) -> sp.csr_matrix:
    """A binary matrix with ``blocks`` communities (dense inside, sparse outside): low-rank structure to find."""
    rng = np.random.default_rng(seed)
    user_block = rng.integers(0, blocks, n_users)
    item_block = rng.integers(0, blocks, n_items)
    same = user_block[:, None] == item_block[None, :]
    dense = rng.random((n_users, n_items)) < np.where(same, p_in, p_out)
    return sp.csr_matrix(dense.astype(np.float64))


# ---------------------------------------------------------------- the factorisation


def test_nmf_lowers_the_reconstruction_error_and_stays_nonnegative():
    x = block_matrix()
    errors = []
    for iterations in (0, 2, 10, 50):
        p, q = nmf(x, rank=4, iterations=iterations, seed=3)
        assert p.shape == (60, 4) and q.shape == (80, 4)
        assert (p >= 0).all() and (q >= 0).all() and np.isfinite(p).all() and np.isfinite(q).all()
        errors.append(reconstruction_error(x, p, q))
    assert all(later <= earlier + 1e-9 for earlier, later in zip(errors, errors[1:])), errors  # monotone (Lee-Seung)
    assert errors[-1] < 0.7 * errors[0], errors
    # the closed form of the error agrees with the dense one
    assert reconstruction_error(x, p, q) == pytest.approx(float(((x.toarray() - p @ q.T) ** 2).sum()), rel=1e-9)


def test_nmf_is_deterministic_for_a_seed():
    x = block_matrix()
    p1, q1 = nmf(x, rank=4, iterations=20, seed=7)
    p2, q2 = nmf(x, rank=4, iterations=20, seed=7)
    p3, _ = nmf(x, rank=4, iterations=20, seed=8)
    assert np.array_equal(p1, p2) and np.array_equal(q1, q2)
    assert not np.array_equal(p1, p3)


def test_nmf_zeroes_rows_without_interactions_and_refuses_negative_input():
    x = block_matrix().tolil()
    x[5, :] = 0
    p, _ = nmf(x.tocsr(), rank=4, iterations=5, seed=0)
    assert not p[5].any() and p.sum(axis=1)[np.arange(60) != 5].min() > 0
    with pytest.raises(ValueError, match="nonnegative"):
        nmf(sp.csr_matrix(-np.eye(3)), rank=2)


def test_interaction_matrix_is_binary():
    x = interaction_matrix(np.array([0, 0, 1, 2]), np.array([1, 1, 0, 2]), 3, 4)
    assert x.shape == (3, 4) and x.nnz == 3 and set(x.data.tolist()) == {1.0}


# ---------------------------------------------------------------- from factors to masks


def test_split_budget_is_exact_and_proportional():
    assert split_budget(10, [30, 70]) == [3, 7]
    assert split_budget(7, [50, 50]) == [4, 3]  # the remainder to the earlier part on a tie
    parts = split_budget(1234, [150 * 64, 200 * 64])
    assert sum(parts) == 1234 and abs(parts[0] - 1234 * 150 / 350) < 1
    with pytest.raises(ValueError, match="budget"):
        split_budget(11, [5, 5])


def test_top_entries_takes_the_largest_and_breaks_ties_at_random():
    scores = torch.tensor([[0.5, 0.0, 0.9], [0.0, 0.0, 0.1]], dtype=torch.float64)
    keep = top_entries(scores, 2, torch.Generator().manual_seed(0))
    assert keep.tolist() == [[True, False, True], [False, False, False]]
    zeros = torch.zeros(40, 8, dtype=torch.float64)
    chosen = [top_entries(zeros, 16, torch.Generator().manual_seed(s)) for s in range(2)]
    assert all(int(c.sum()) == 16 for c in chosen)
    assert not torch.equal(chosen[0], chosen[1])  # seeded random ties, not "the first rows"
    assert int(chosen[0][:2].sum()) < 16


def test_masks_from_factors_fill_each_group_with_its_largest_entries():
    rng = np.random.default_rng(0)
    users, items = rng.random((6, 4)), rng.random((9, 4))
    shapes = [torch.Size([15, 4])]  # one joint table, as LightGCN's: users then items
    groups = [(0, slice(0, 6), users), (0, slice(6, 15), items)]
    (mask,) = masks_from_factors(shapes, groups, 15, torch.Generator().manual_seed(0))
    assert int(mask.sum()) == 15
    assert int(mask[:6].sum()) == 6 and int(mask[6:].sum()) == 9  # 15 x 24/60 and 15 x 36/60
    for rows, factor in ((slice(0, 6), users), (slice(6, 15), items)):
        chosen, rest = factor[mask[rows].numpy()], factor[~mask[rows].numpy()]
        assert chosen.min() > rest.max()
    with pytest.raises(ValueError, match="cover every row"):
        masks_from_factors(shapes, groups[:1], 6, torch.Generator())


# ---------------------------------------------------------------- in the sparsifier and the trainer


def _model(name: str, dataset, dim: int = 16):
    users, items = dataset.train
    return build_model(
        name, dataset.n_users, dataset.n_items, dim, 2, users, items, 0.1, torch.Generator().manual_seed(0)
    )


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(small_config("unused").data, progress=False)


@pytest.mark.parametrize("model_name", ["mf", "lightgcn"])
@pytest.mark.parametrize("updater", ["dsl", "set", "static"])
def test_nmf_masks_hold_the_budget_differ_from_random_and_follow_the_factors(dataset, model_name, updater):
    density, dim = 0.2, 16
    masks = {}
    for init in ("random", "nmf"):
        model = _model(model_name, dataset, dim)
        config = SparsityConfig(density=density, updater=updater, budget_rule="small-dense", mask_init=init)
        sparsifier = Sparsifier(model, None, config, total_steps=10, seed=2024, interactions=dataset.train)
        sparsifier.init_masks()
        tables = model.sparse_tables()
        rows = {group: tables[table].mask[where] for group, (table, where) in model.row_groups().items()}
        # the small-dense rival's count, split as it is: n_rows x round(density x dim) per group
        assert sparsifier.budget == (dataset.n_users + dataset.n_items) * round(density * dim)
        assert int(rows["users"].sum()) == dataset.n_users * round(density * dim) or init == "random"
        assert int(rows["items"].sum()) == dataset.n_items * round(density * dim) or init == "random"
        assert sum(int(t.mask.sum()) for t in tables.values()) == sparsifier.budget
        assert all(not t.weight.detach()[~t.mask].any() for t in tables.values())
        masks[init] = rows
    assert sparsifier.init_info["rank"] == dim and sparsifier.init_info["relative_error"] < 1.0
    overlap = sum(int((masks["nmf"][g] & masks["random"][g]).sum()) for g in masks["nmf"])
    assert overlap < 0.5 * sparsifier.budget  # not the random mask (chance overlap is ~density of it)
    # the chosen entries are the largest of the factors (recomputed with the run's seed)
    p, q = nmf(interaction_matrix(*dataset.train, dataset.n_users, dataset.n_items), rank=dim, seed=2024)
    for group, factor in (("users", p), ("items", q)):
        chosen = factor[masks["nmf"][group].numpy()]
        rest = factor[~masks["nmf"][group].numpy()]
        assert chosen.min() >= rest.max(), group


def test_same_seed_same_nmf_masks_and_the_dimensions_align(dataset):
    def init(seed):
        model = _model("mf", dataset)
        config = SparsityConfig(density=0.2, updater="dsl", budget_rule="small-dense", mask_init="nmf")
        Sparsifier(model, None, config, 10, seed, interactions=dataset.train).init_masks()
        return model.user_embedding.mask.clone(), model.item_embedding.mask.clone()

    first, second, other = init(2024), init(2024), init(2025)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    # a user and the items it interacted with share more active dimensions than random masks would
    users, items = dataset.train
    user_mask, item_mask = first
    shared = (user_mask[torch.from_numpy(users)] & item_mask[torch.from_numpy(items)]).sum(dim=1).float().mean()
    chance = user_mask.float().mean(dim=0) @ item_mask.float().mean(dim=0)
    assert float(shared) > 1.5 * float(chance), (float(shared), float(chance))


def test_sparsifier_refuses_nmf_without_the_pairs_or_a_random_initial_mask(dataset):
    config = SparsityConfig(density=0.2, updater="dsl", mask_init="nmf")
    with pytest.raises(ValueError, match="train pairs"):
        Sparsifier(_model("mf", dataset), None, config, 10, 0)
    with pytest.raises(ValueError, match="small-dense"):
        Sparsifier(
            _model("mf", dataset),
            None,
            SparsityConfig(density=0.2, updater="small-dense", mask_init="nmf"),
            10,
            0,
            interactions=dataset.train,
        )
    with pytest.raises(ValueError, match="unknown mask_init"):
        Sparsifier(_model("mf", dataset), None, SparsityConfig(density=0.2, mask_init="svd"), 10, 0)
    assert [u for u in ("dsl", "set", "static", "dsl-nested", "dsl-mixed") if random_initial_mask(u)] == [
        "dsl",
        "set",
        "static",
    ]
    assert [u for u in ("dsl", "dsl-nested", "dsl-mixed", "small-dense") if prefix_updater(u)] == [
        "dsl-nested",
        "dsl-mixed",
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["sparsity.mask_init=pca", "sparsity.density=0.2"], "sparsity.mask_init='pca' is not one of"),
        (["sparsity.mask_init=nmf"], "sparsity.mask_init=nmf.*sparsity.density=1"),
        (
            ["sparsity.mask_init=nmf", "sparsity.density=0.2", "sparsity.updater=small-dense"],
            "sparsity.updater='small-dense'",
        ),
        (
            ["sparsity.mask_init=nmf", "sparsity.density=0.2", "sparsity.updater=prune-finetune"],
            "sparsity.updater='prune-finetune'",
        ),
    ],
)
def test_config_check_names_the_keys(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        validate(small_config(tmp_path, *flags))
    with pytest.raises(ConfigError, match=message):
        train(small_config(tmp_path, *flags), progress=False)  # before any work


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_every_nmf_run_holds_exactly_the_small_dense_count(tmp_path, dataset, model):
    for updater in ["dsl", "set", "static"]:
        for density in (0.1, 0.05):
            trainer = Trainer(
                small_config(
                    tmp_path,
                    f"model.name={model}",
                    "model.dim=64",
                    f"sparsity.density={density}",
                    f"sparsity.updater={updater}",
                    "sparsity.mask_init=nmf",
                ),
                dataset,
                progress=False,
            )
            tables = trainer.model.sparse_tables().values()
            rival = (dataset.n_users + dataset.n_items) * round(density * 64)
            assert sum(int(t.mask.sum()) for t in tables) == sum(int((t.weight != 0).sum()) for t in tables) == rival


@pytest.mark.parametrize("model_name", ["mf", "lightgcn"])
@pytest.mark.parametrize("updater", ["dsl-nested", "dsl-mixed"])
def test_prefix_nmf_start_keeps_each_rows_nmf_count_as_a_prefix(dataset, model_name, updater):
    """dsl-nested / dsl-mixed with mask_init=nmf: row r keeps [0, L_r), L_r = its count in the NMF
    mask that dsl gets from the same seed; so the budget is exactly the small-dense count."""
    density, dim = 0.2, 16
    masks = {}
    for mode in ("dsl", updater):
        model = _model(model_name, dataset, dim)
        config = SparsityConfig(density=density, updater=mode, budget_rule="small-dense", mask_init="nmf")
        priors = {name: torch.ones(t.weight.shape[0]) for name, t in model.sparse_tables().items()}
        sparsifier = Sparsifier(
            model, None, config, total_steps=10, seed=2024, interactions=dataset.train, row_priors=priors
        )
        sparsifier.init_masks()
        tables = model.sparse_tables()
        assert (
            sum(int(t.mask.sum()) for t in tables.values())
            == sparsifier.budget
            == (dataset.n_users + dataset.n_items) * round(density * dim)
        )
        assert all(not t.weight.detach()[~t.mask].any() for t in tables.values())
        masks[mode] = {name: t.mask.clone() for name, t in tables.items()}
    assert sparsifier.init_info["layout"].startswith("prefix")
    for name, mask in masks[updater].items():
        lengths = masks["dsl"][name].sum(dim=1)
        assert torch.equal(mask.sum(dim=1), lengths)
        assert torch.equal(mask, torch.arange(dim).unsqueeze(0) < lengths.unsqueeze(1))
        assert len(torch.unique(lengths)) > 1  # the NMF spreads the budget unevenly over rows


@pytest.mark.parametrize("updater", ["dsl-nested", "dsl-mixed"])
def test_a_prefix_nmf_run_holds_its_budget_and_stays_prefix(tmp_path, updater):
    args = [
        "model.name=mf",
        "run.epochs=4",
        "sparsity.density=0.25",
        "sparsity.update_interval=3",
        "sparsity.mask_init=nmf",
        f"sparsity.updater={updater}",
    ]
    metrics = train(small_config(tmp_path, *args), progress=False)
    assert metrics["mask_init"] == "nmf" and metrics["nnz"] == metrics["budget"] == (150 + 200) * 4
    assert metrics["mask_history"], "the mask was never updated"


def test_nmf_run_trains_with_the_nmf_mask(tmp_path):
    """Resume with the NMF mask: tests/train/test_train.py::test_resume_gives_same_result[dsl-nmf]."""
    args = [
        "model.name=mf",
        "run.epochs=6",
        "sparsity.density=0.25",
        "sparsity.update_interval=3",
        "sparsity.mask_init=nmf",
    ]
    straight = train(small_config(tmp_path / "a", *args), progress=False)
    assert straight["mask_init"] == "nmf" and straight["mask_init_info"]["seconds"] >= 0
    assert straight["nnz"] == straight["budget"] == (150 + 200) * 4
    assert straight["mask_history"], "the NMF mask was never updated"
