"""Invariants of the mask engine: nnz constant, masked entries exactly zero, regrown weights and
Adam moments zero, prefixes kept by dsl-nested, state_dict round trip, schedule values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.checkpoint import load_state, save_state
from train.config import SparsityConfig
from train.models import build_model
from train.sparsity import (
    UPDATERS,
    NestedDSLUpdater,
    Sparsifier,
    UpdateSchedule,
    budget_for,
    make_updater,
    prune_and_regrow,
    row_nnz_histogram,
    small_dense_dim,
)
from train.sparsity.kernel import kth_smallest

torch.set_num_threads(1)

N_USERS, N_ITEMS, DIM, BATCH = 12, 15, 8, 16


# ---------------------------------------------------------------- prune_and_regrow on tensors


def _random_case(seed: int, shapes=((6, 8), (9, 8)), density: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=g) for s in shapes]
    masks = [torch.rand(s, generator=g) < density for s in shapes]
    weights = [w * m for w, m in zip(weights, masks)]
    grows = [torch.rand(s, generator=g) for s in shapes]
    return weights, masks, grows


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_prune_and_regrow_invariants(fraction):
    weights, masks, grows = _random_case(0)
    nnz = sum(int(m.sum()) for m in masks)
    new, dropped, grown = prune_and_regrow(weights, masks, grows, fraction)
    n_drop = round(fraction * nnz)
    assert sum(int(m.sum()) for m in new) == nnz
    assert sum(int(d.sum()) for d in dropped) == n_drop
    assert sum(int(g.sum()) for g in grown) == n_drop
    for old, n, d, g in zip(masks, new, dropped, grown):
        kept = old & ~d
        assert not (kept & g).any()  # kept and grown are disjoint
        assert not (d & ~old).any()  # dropped were active
        assert torch.equal(n, kept | g)
        assert n.dtype == d.dtype == g.dtype == torch.bool


def test_prune_and_regrow_drops_smallest_and_grows_largest():
    weights, masks, grows = _random_case(1)
    # just-dropped positions score below every inactive one: exactly n_drop positions move
    grows = [torch.where(m, torch.full_like(s, -1.0), s) for s, m in zip(grows, masks)]
    new, dropped, grown = prune_and_regrow(weights, masks, grows, 0.25)
    nnz = sum(int(m.sum()) for m in masks)
    n_moved = sum(int((n & ~o).sum()) for n, o in zip(new, masks))
    assert n_moved == round(0.25 * nnz)
    flat_w = torch.cat([w.abs()[m] for w, m in zip(weights, masks)])
    dropped_w = torch.cat([w.abs()[d] for w, d in zip(weights, dropped)])
    kept_w = torch.cat([w.abs()[m & ~d] for w, m, d in zip(weights, masks, dropped)])
    assert dropped_w.max() <= kept_w.min() and len(dropped_w) + len(kept_w) == len(flat_w)
    grown_s = torch.cat([s[g] for s, g in zip(grows, grown)])
    left_s = torch.cat([s[~n] for s, n in zip(grows, new)])
    assert grown_s.min() >= left_s.max()


def test_prune_and_regrow_is_deterministic_and_breaks_ties_by_index():
    weights, masks, grows = _random_case(2)
    first = prune_and_regrow(weights, masks, grows, 0.4)
    second = prune_and_regrow(weights, masks, grows, 0.4)
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # all scores tied: drop from the end, grow from the start
    mask = torch.tensor([True, True, False, True, False, False, True, False])
    new, dropped, grown = prune_and_regrow([mask.float()], [mask], [torch.zeros(8)], 0.5)
    assert dropped[0].nonzero().squeeze(1).tolist() == [3, 6]
    assert grown[0].nonzero().squeeze(1).tolist() == [2, 3]
    assert new[0].nonzero().squeeze(1).tolist() == [0, 1, 2, 3]


def test_prune_and_regrow_moves_budget_between_tensors():
    # table a: tiny weights; table b: large growth scores on its inactive half
    a_w = torch.full((4, 4), 0.01)
    a_m = torch.ones(4, 4, dtype=torch.bool)
    b_w = torch.ones(4, 4)
    b_m = torch.zeros(4, 4, dtype=torch.bool)
    b_m[:2] = True
    b_w = b_w * b_m
    new, _, _ = prune_and_regrow([a_w, b_w], [a_m, b_m], [torch.zeros(4, 4), torch.ones(4, 4)], 0.5)
    # 24 active, 12 move: 12 of a dropped; b's 8 inactive grow first, then 4 of a's just-dropped
    assert int(new[0].sum()) == 8 and int(new[1].sum()) == 16
    assert int(new[0].sum() + new[1].sum()) == int(a_m.sum() + b_m.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_kth_smallest_by_sort_equals_kthvalue(dtype):
    """The CUDA path (a full sort) and the CPU path (kthvalue) pick the same value, ties and NaN included."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(-20, 20, (1000,), generator=generator).to(dtype)  # many ties
    if dtype.is_floating_point:
        values[::97] = math.nan
    for k in [1, 2, 500, 990, 1000]:
        by_sort, by_select = kth_smallest(values, k, by_sort=True), kth_smallest(values, k, by_sort=False)
        assert torch.equal(by_sort, by_select) or bool(by_sort.isnan() & by_select.isnan()), (k, by_sort, by_select)
        assert bool((values < by_select).sum() < k)  # it is the k-th smallest: fewer than k lie below it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_prune_and_regrow_same_on_cuda():
    weights, masks, grows = _random_case(3)
    cpu = prune_and_regrow(weights, masks, grows, 0.3)
    gpu = prune_and_regrow([w.cuda() for w in weights], [m.cuda() for m in masks], [g.cuda() for g in grows], 0.3)
    for a, b in zip(cpu, gpu):
        for x, y in zip(a, b):
            assert torch.equal(x, y.cpu())


def test_prune_and_regrow_callable_grow_scores_see_kept_masks():
    weights, masks, grows = _random_case(3)
    seen = {}

    def scores(kept):
        seen["kept"] = kept
        return grows

    new, dropped, _ = prune_and_regrow(weights, masks, scores, 0.5)
    for k, m, d in zip(seen["kept"], masks, dropped):
        assert torch.equal(k, m & ~d)


def test_prune_and_regrow_rejects_bad_input():
    weights, masks, grows = _random_case(4)
    with pytest.raises(ValueError, match="shape"):
        prune_and_regrow(weights, masks, [grows[0], grows[1][:2]], 0.1)
    with pytest.raises(ValueError, match="drop_fraction"):
        prune_and_regrow(weights, masks, grows, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        prune_and_regrow(weights, masks, [torch.full_like(g, math.nan) for g in grows], 0.5)
    with pytest.raises(ValueError, match="bool"):
        prune_and_regrow(weights, [m.float() for m in masks], grows, 0.1)


# ---------------------------------------------------------------- schedule and registry


def test_schedule_cosine_interval_and_end():
    schedule = UpdateSchedule(update_interval=10, total_steps=100, alpha0=0.5, end_fraction=0.8)
    assert schedule.drop_fraction(0) == pytest.approx(0.5)
    assert schedule.drop_fraction(40) == pytest.approx(0.25)
    assert schedule.drop_fraction(80) == 0.0 and schedule.drop_fraction(95) == 0.0
    assert schedule.drop_fraction(20) == pytest.approx(0.25 * (1 + math.cos(math.pi * 20 / 80)))
    updates = [s for s in range(1, 101) if schedule.should_update(s)]
    assert updates == [10, 20, 30, 40, 50, 60, 70]
    assert schedule.last_update_step == 70
    full = UpdateSchedule(update_interval=5, total_steps=30)
    assert [s for s in range(0, 31) if full.should_update(s)] == [5, 10, 15, 20, 25]
    assert full.last_update_step == 25
    assert UpdateSchedule(update_interval=50, total_steps=30).last_update_step == 0
    with pytest.raises(ValueError):
        UpdateSchedule(update_interval=0, total_steps=10)
    with pytest.raises(ValueError):
        UpdateSchedule(update_interval=1, total_steps=10, end_fraction=0.0)


def test_unknown_updater_lists_choices():
    with pytest.raises(ValueError) as err:
        make_updater("rigl-magic")
    for name in UPDATERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="accumulated"):
        make_updater("dsl", grow_from="epoch")
    model = _model("mf")
    with pytest.raises(ValueError, match="prune-finetune"):
        Sparsifier(model, None, SparsityConfig(density=0.5, updater="nope"), 10, 0)


def test_row_nnz_histogram():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert row_nnz_histogram(mask) == [1, 1, 1, 1]
    assert row_nnz_histogram(mask, slice(0, 2)) == [1, 0, 1, 0]


# ---------------------------------------------------------------- tiny models


def _interactions():
    rng = np.random.default_rng(0)
    users = np.concatenate([np.arange(N_USERS), rng.integers(0, N_USERS, 60)])
    items = np.concatenate([rng.integers(0, N_ITEMS, N_USERS), rng.integers(0, N_ITEMS, 60)])
    return users, items


def _model(kind: str, seed: int = 0):
    users, items = _interactions()
    return build_model(kind, N_USERS, N_ITEMS, DIM, 2, users, items, generator=torch.Generator().manual_seed(seed))


def _setup(
    kind, updater, density=0.3, total_steps=30, interval=5, grow_from="accumulated", seed=0, budget_rule="density"
):
    model = _model(kind, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    config = SparsityConfig(
        density=density,
        updater=updater,
        update_interval=interval,
        grow_from=grow_from,
        end_fraction=1.0,
        budget_rule=budget_rule,
    )
    sparsifier = Sparsifier(model, optimizer, config, total_steps=total_steps, seed=seed)
    return model, optimizer, sparsifier


def _train(model, optimizer, sparsifier, steps, start=1, after_step=None):
    users, items = (torch.from_numpy(a) for a in _interactions())
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(1000 + step)  # batches depend on the step only
        index = torch.randint(0, len(users), (BATCH,), generator=g)
        negatives = torch.randint(0, N_ITEMS, (BATCH,), generator=g)
        optimizer.zero_grad()
        model.loss(users[index], items[index], negatives, weight_decay=1e-4).backward()
        sparsifier.before_step()
        optimizer.step()
        sparsifier.apply_masks()
        stats = sparsifier.step(step)
        if after_step is not None:
            after_step(step, stats)


def _assert_masked_and_on_budget(sparsifier, optimizer):
    nnz = 0
    for table in sparsifier.tables.values():
        assert torch.all(table.weight[~table.mask] == 0)
        nnz += int(table.mask.sum())
        # gradients masked before every step and moments zeroed at every change: the moments
        # are exactly zero wherever the mask is off
        state = optimizer.state.get(table.weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                assert torch.all(state[key][~table.mask] == 0), key
    assert nnz == sparsifier.budget
    sparsifier.check()


CASES = [
    ("dsl", "accumulated"),
    ("dsl", "batch"),
    ("set", "accumulated"),
    ("static", "accumulated"),
    ("dsl-nested", "accumulated"),
]


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
@pytest.mark.parametrize("updater,grow_from", CASES)
def test_updaters_keep_invariants_while_training(kind, updater, grow_from):
    model, optimizer, sparsifier = _setup(kind, updater, grow_from=grow_from)
    sparsifier.init_masks()
    initial = {n: t.mask.clone() for n, t in sparsifier.tables.items()}
    _assert_masked_and_on_budget(sparsifier, optimizer)
    updates = []

    def after_step(step, stats):
        _assert_masked_and_on_budget(sparsifier, optimizer)
        if updater == "dsl-nested":
            for table in sparsifier.tables.values():
                lengths = table.mask.sum(1, keepdim=True)
                assert torch.equal(table.mask, torch.arange(DIM) < lengths)
        if stats is None:
            return
        updates.append(stats)
        assert stats["nnz"] == sparsifier.budget and stats["step"] == step
        for name, table in sparsifier.tables.items():
            grown, dropped = sparsifier.last_grown[name], sparsifier.last_dropped[name]
            assert torch.all(table.weight[grown] == 0)  # regrown weights start at zero
            state = optimizer.state[table.weight]
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.all(state[key][grown | dropped] == 0), key

    _train(model, optimizer, sparsifier, 30, after_step=after_step)
    if updater == "static":
        assert updates == []
        assert all(torch.equal(initial[n], t.mask) for n, t in sparsifier.tables.items())
    else:
        assert [u["step"] for u in updates] == [5, 10, 15, 20, 25]
        assert sum(u["n_moved"] for u in updates) > 0
        assert not sparsifier.gradients  # freed after the last update
    stats = sparsifier.stats()
    assert stats["share/users"] + stats["share/items"] == pytest.approx(1.0)
    assert 0.0 <= stats["empty_rows/users"] <= 1.0
    hist = sparsifier.row_histograms()
    assert sum(hist["users"]) == N_USERS and sum(hist["items"]) == N_ITEMS


def test_budget_is_global_and_exact():
    model, optimizer, sparsifier = _setup("mf", "dsl", density=0.37, budget_rule="small-dense")
    # equal budget: exactly the small-dense rival's count, n_rows x round(0.37 x 8) = n_rows x 3
    assert sparsifier.budget == (N_USERS + N_ITEMS) * 3 == (N_USERS + N_ITEMS) * small_dense_dim(0.37, DIM)
    sparsifier.init_masks()
    assert sum(sparsifier.nnz_by_table().values()) == sparsifier.budget
    config = SparsityConfig(density=0.37, updater="dsl", budget_rule="density")
    assert Sparsifier(model, optimizer, config, 30, 0).budget == round(0.37 * (N_USERS + N_ITEMS) * DIM)
    with pytest.raises(ValueError, match="budget_rule"):
        budget_for([torch.Size((4, 8))], 0.5, "rows")


def test_nested_initial_masks_are_balanced_prefixes():
    updater = NestedDSLUpdater()
    shapes = [torch.Size((7, 10)), torch.Size((5, 10))]
    budget = 43  # 120 entries: 3 per row, 7 rows get a 4th
    masks = updater.initial_masks(shapes, budget, torch.Generator().manual_seed(0))
    assert sum(int(m.sum()) for m in masks) == budget
    updater.verify(masks)
    lengths = torch.cat([m.sum(1) for m in masks])
    assert set(lengths.tolist()) == {3, 4}


def _mixed(row_priors, density=0.3, exponent=0.5):
    model = _model("mf")
    config = SparsityConfig(
        density=density, updater="dsl-mixed", update_interval=5, row_prior_exponent=exponent, budget_rule="density"
    )  # the budget these proportions were measured at
    return Sparsifier(
        model, torch.optim.Adam(model.parameters(), lr=0.05), config, total_steps=30, seed=0, row_priors=row_priors
    )


def _degrees():
    """Degree-like priors with a wide spread (1 to ~N^2, shuffled), so lengths must differ by row."""
    rng = np.random.default_rng(5)
    return {
        "user_embedding": torch.from_numpy(rng.permutation(np.arange(1, N_USERS + 1) ** 2.0)).float(),
        "item_embedding": torch.from_numpy(rng.permutation(np.arange(1, N_ITEMS + 1) ** 2.0)).float(),
    }


def test_mixed_row_lengths_follow_degree_priors():
    priors = _degrees()
    sparsifier = _mixed(priors)
    sparsifier.init_masks()
    lengths = {name: t.mask.sum(1) for name, t in sparsifier.tables.items()}
    assert sum(int(v.sum()) for v in lengths.values()) == sparsifier.budget
    NestedDSLUpdater().verify([t.mask for t in sparsifier.tables.values()])  # each row a prefix
    # the lengths solve L_r = clip(c * prior_r^0.5, 1, dim) jointly over both tables: a higher prior never
    # gets a shorter row (ties in the prior may differ by the one unit of rounding)
    prior, length = (torch.cat([d[n] for n in sparsifier.tables]) for d in (priors, lengths))
    order = torch.argsort(prior, stable=True)
    prior, length = prior[order], length[order]
    assert torch.all(length[1:] >= length[:-1] - (prior[1:] == prior[:-1]).long())
    assert length.max() > length.min() + 1  # spread by degree, not dsl-nested's balanced lengths
    real = prior.double() ** 0.5
    ratio = length[prior > prior.min()].double() / real[prior > prior.min()]
    assert float(ratio.max() / ratio.min()) < 2.5  # proportional to sqrt(prior) up to rounding and clipping


def test_mixed_exponent_zero_gives_equal_lengths_and_priors_are_required():
    sparsifier = _mixed(_degrees(), exponent=0.0)
    sparsifier.init_masks()
    lengths = torch.cat([t.mask.sum(1) for t in sparsifier.tables.values()])
    assert int(lengths.max() - lengths.min()) <= 1  # row_prior_exponent is read from the config
    with pytest.raises(ValueError, match="dsl-mixed needs row_priors"):
        _mixed(None)  # no silent dsl-nested
    with pytest.raises(ValueError, match="lack tables"):
        _mixed({"user_embedding": _degrees()["user_embedding"]})


def test_nested_keeps_prefixes_under_ties():
    # zero gradients and equal magnitudes everywhere: only the tie-breaking keeps the prefixes
    updater = NestedDSLUpdater()
    shapes = [torch.Size((6, 8)), torch.Size((4, 8))]
    masks = updater.initial_masks(shapes, 30, torch.Generator().manual_seed(1))
    grads = [torch.zeros(s) for s in shapes]
    # equal magnitudes within a row, distinct across rows: a drop ends part-way into a row
    row_values = torch.randperm(10, generator=torch.Generator().manual_seed(2)).float() + 1.0
    row_values = torch.split(row_values, [s[0] for s in shapes])
    for _ in range(4):
        weights = [m * v.unsqueeze(1) for m, v in zip(masks, row_values)]
        new, dropped, grown = prune_and_regrow(
            weights, masks, updater.grow_scores(weights, masks, grads, None), 0.2, updater.drop_scores(weights, masks)
        )
        updater.verify(new)
        assert sum(int(m.sum()) for m in new) == 30
        updater.verify([m & ~d for m, d in zip(masks, dropped)])  # the kept set alone, too
        masks = new


def test_nested_rejects_non_prefix_masks():
    mask = torch.tensor([[True, False, True]])
    with pytest.raises(RuntimeError, match="prefix"):
        NestedDSLUpdater().verify([mask])


@pytest.mark.parametrize("updater", ["dsl", "set", "dsl-nested"])
def test_state_dict_round_trip_gives_identical_masks(updater, tmp_path):
    total, split = 30, 13  # resume mid-interval: the accumulated gradients must travel
    model_a, opt_a, sp_a = _setup("mf", updater, total_steps=total, interval=4, seed=7)
    sp_a.init_masks()
    _train(model_a, opt_a, sp_a, total)

    model_b, opt_b, sp_b = _setup("mf", updater, total_steps=total, interval=4, seed=7)
    sp_b.init_masks()
    _train(model_b, opt_b, sp_b, split)
    path = tmp_path / "state.safetensors"  # the checkpoint format the trainer uses (nothing pickled)
    save_state(path, {"model": model_b.state_dict(), "optim": opt_b.state_dict(), "sparsity": sp_b.state_dict()})
    saved = load_state(path)

    model_c, opt_c, sp_c = _setup("mf", updater, total_steps=total, interval=4, seed=99)
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["optim"])
    with pytest.raises(ValueError):  # a different seed is fine, a different budget is not
        _setup("mf", updater, density=0.5, total_steps=total, interval=4)[2].load_state_dict(saved["sparsity"])
    sp_c.load_state_dict(saved["sparsity"])
    _train(model_c, opt_c, sp_c, total - split, start=split + 1)

    for name, table in sp_a.tables.items():
        other = sp_c.tables[name]
        assert torch.equal(table.mask, other.mask)
        assert torch.equal(table.weight, other.weight)
    assert sp_a.n_updates == sp_c.n_updates


def test_prune_to_budget_hits_budget_exactly():
    model, optimizer, sparsifier = _setup("lightgcn", "prune-finetune", density=0.25)
    sparsifier.init_masks()  # dense phase: nothing masked
    assert sum(sparsifier.nnz_by_table().values()) == sparsifier.total_entries
    _train(model, optimizer, sparsifier, 5)
    weights = {n: t.weight.detach().clone() for n, t in sparsifier.tables.items()}
    stats = sparsifier.prune_to_budget()
    assert stats["nnz"] == sparsifier.budget == round(0.25 * (N_USERS + N_ITEMS) * DIM)
    table = sparsifier.tables["embedding"]
    magnitude = weights["embedding"].abs()
    assert magnitude[table.mask].min() >= magnitude[~table.mask].max()
    masks = table.mask.clone()
    _train(
        model,
        optimizer,
        sparsifier,
        10,
        start=6,
        after_step=lambda step, stats: (_assert_masked_and_on_budget(sparsifier, optimizer), stats is None),
    )
    assert torch.equal(masks, table.mask)  # fixed after pruning

    # ties everywhere: still exactly the budget
    model, optimizer, sparsifier = _setup("mf", "prune-finetune", density=0.3)
    with torch.no_grad():
        for t in sparsifier.tables.values():
            t.weight.fill_(1.0)
    assert sparsifier.prune_to_budget()["nnz"] == sparsifier.budget


@pytest.mark.parametrize("updater", ["dsl", "small-dense"])
def test_dense_is_a_no_op(updater):
    model, optimizer, sparsifier = _setup("mf", updater, density=1.0 if updater == "dsl" else 0.25)
    assert sparsifier.budget == sparsifier.total_entries
    sparsifier.init_masks()
    results = []
    _train(model, optimizer, sparsifier, 10, after_step=lambda step, stats: results.append(stats))
    assert results == [None] * 10
    assert all(bool(t.mask.all()) for t in sparsifier.tables.values())
    sparsifier.check()
