"""LightGCN propagation: torch CSR products against a float64 dense reference, the row-restricted
propagation (the training loss's) against the full one, threads against one thread, and the
sparsifier's cached float masks against the bool masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.config import SparsityConfig
from train.models import LightGCN, bpr_loss, l2_on_batch, normalized_adjacency, propagate
from train.sparsity import Sparsifier


def graph(n_users: int, n_items: int, n_edges: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, n_users, n_edges), rng.integers(0, n_items, n_edges)
    return normalized_adjacency(n_users, n_items, users, items)


def dense_reference(adjacency, embedding: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``mean_l A^l E`` in float64 with a dense ``A`` (differentiable)."""
    matrix = torch.from_numpy(adjacency.toarray()).double()
    layers, current = [embedding], embedding
    for _ in range(n_layers):
        current = matrix @ current
        layers.append(current)
    return torch.stack(layers).mean(0)


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_propagation_and_its_gradient_match_a_dense_reference(n_layers):
    adjacency = graph(40, 60, 300)
    base = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(100, 8, generator=torch.Generator().manual_seed(2))
    embedding = base.clone().requires_grad_()
    out = propagate(embedding, adjacency, n_layers)
    (out * upstream).sum().backward()
    reference_input = base.double().requires_grad_()
    reference = dense_reference(adjacency, reference_input, n_layers)
    (reference * upstream.double()).sum().backward()
    torch.testing.assert_close(out.double(), reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedding.grad.double(), reference_input.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_row_restricted_propagation_equals_rows_of_the_full_one(n_layers):
    """The last layer on a row block only: the same values and gradients, for any rows
    (unsorted, repeated, or all of them)."""
    adjacency = graph(50, 70, 400, seed=3)
    base = torch.randn(120, 16, generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(5)
    for rows in (
        torch.tensor([7, 3, 3, 119, 0, 64, 7]),
        torch.arange(120),
        torch.randint(0, 120, (30,), generator=generator),
    ):
        upstream = torch.randn(len(rows), 16, generator=generator)
        full_input, rows_input = base.clone().requires_grad_(), base.clone().requires_grad_()
        full = propagate(full_input, adjacency, n_layers)[rows]
        restricted = propagate(rows_input, adjacency, n_layers, rows=rows)
        (full * upstream).sum().backward()
        (restricted * upstream).sum().backward()
        torch.testing.assert_close(restricted, full, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rows_input.grad, full_input.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("uses", ["both", "propagated", "base"])
def test_row_propagation_with_base_rows_gives_both_gradients(uses):
    """``with_base`` returns ``E_0[rows]`` too; gradients through either output, or both, add up."""
    adjacency = graph(30, 40, 200, seed=14)
    generator = torch.Generator().manual_seed(15)
    base = torch.randn(70, 8, generator=generator)
    rows = torch.tensor([5, 60, 5, 12, 33])
    up_final, up_base = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    ours_input, reference_input = base.clone().requires_grad_(), base.clone().requires_grad_()
    final, layer0 = propagate(ours_input, adjacency, 2, rows=rows, with_base=True)
    torch.testing.assert_close(layer0, base[rows], rtol=0, atol=0)
    reference_final, reference_layer0 = propagate(reference_input, adjacency, 2)[rows], reference_input[rows]
    pick = {"both": (1.0, 1.0), "propagated": (1.0, 0.0), "base": (0.0, 1.0)}[uses]
    terms = [(final * up_final).sum(), (layer0 * up_base).sum()]
    reference_terms = [(reference_final * up_final).sum(), (reference_layer0 * up_base).sum()]
    sum(t for t, w in zip(terms, pick) if w).backward()
    sum(t for t, w in zip(reference_terms, pick) if w).backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad, rtol=1e-5, atol=1e-6)


def full_graph_loss(model: LightGCN, users, pos_items, neg_items, weight_decay: float) -> torch.Tensor:
    """The BPR loss from every propagated row (the pre-restriction formulation)."""
    user_final, item_final = model.final_embeddings()
    u, p, n = user_final[users], item_final[pos_items], item_final[neg_items]
    pos = (u * p).sum(-1)
    neg = (u.unsqueeze(1) * n).sum(-1) if n.dim() == 3 else (u * n).sum(-1)
    ego = model.embedding.weight
    reg = l2_on_batch(ego[users], ego[pos_items + model.n_users], ego[neg_items + model.n_users])
    return bpr_loss(pos, neg) + weight_decay * reg


@pytest.mark.parametrize("n_negatives", [1, 3])
def test_lightgcn_loss_equals_the_full_graph_loss(n_negatives):
    n_users, n_items = 60, 90
    model = LightGCN(
        n_users, n_items, 12, 3, graph(n_users, n_items, 500, seed=6), generator=torch.Generator().manual_seed(7)
    )
    generator = torch.Generator().manual_seed(8)
    users = torch.randint(0, n_users, (64,), generator=generator)
    pos_items = torch.randint(0, n_items, (64,), generator=generator)
    neg_items = torch.randint(0, n_items, (64,) if n_negatives == 1 else (64, n_negatives), generator=generator)
    loss = model.loss(users, pos_items, neg_items, 1e-2)
    loss.backward()
    grad = model.embedding.weight.grad.clone()
    model.embedding.weight.grad = None
    reference = full_graph_loss(model, users, pos_items, neg_items, 1e-2)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, model.embedding.weight.grad, rtol=1e-5, atol=1e-8)
    assert float(grad.abs().max()) > 0


@pytest.mark.parametrize("mask_output", [False, True])
def test_the_gpu_form_of_the_batch_rows_equals_the_row_block_form(mask_output):
    """Off CPU the loss propagates the whole table and indexes it (no unique, no row block): the same
    vectors and gradients as the CPU form, checked here on CPU by asking for that form."""
    n_users, n_items = 50, 70
    model = LightGCN(
        n_users,
        n_items,
        8,
        3,
        graph(n_users, n_items, 400, seed=2),
        generator=torch.Generator().manual_seed(3),
        mask_output=mask_output,
    )
    if mask_output:
        model.embedding.mask.copy_(
            torch.rand(model.embedding.mask.shape, generator=torch.Generator().manual_seed(4)) < 0.5
        )
        model.embedding.apply_mask_()
    rows = torch.randint(0, n_users + n_items, (120,), generator=torch.Generator().manual_seed(5))  # repeats
    results = []
    for row_block in (True, False):
        model.embedding.weight.grad = None
        final, ego = model.batch_rows(rows, row_block=row_block)
        ((final * torch.arange(1.0, 9.0)).sum() + (ego**2).sum()).backward()
        results.append((final.detach(), ego.detach(), model.embedding.weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert float(results[0][2].abs().max()) > 0


def test_threaded_propagation_equals_single_thread():
    """Forward and backward, full and row-restricted, with 1 thread and with 2 (torch's CSR product
    splits the rows between threads; every row still sums in one order)."""
    adjacency = graph(3000, 4000, 60_000, seed=9)
    n = adjacency.shape[0]
    generator = torch.Generator().manual_seed(10)
    base = torch.randn(n, 64, generator=generator)
    rows = torch.unique(torch.randint(0, n, (3000,), generator=generator))
    upstream_full = torch.randn(n, 64, generator=generator)
    upstream_rows = torch.randn(len(rows), 64, generator=generator)

    def run(threads: int):
        torch.set_num_threads(threads)
        full_input, rows_input = base.clone().requires_grad_(), base.clone().requires_grad_()
        full = propagate(full_input, adjacency, 3)
        restricted = propagate(rows_input, adjacency, 3, rows=rows)
        (full * upstream_full).sum().backward()
        (restricted * upstream_rows).sum().backward()
        return full.detach(), restricted.detach(), full_input.grad, rows_input.grad

    before = torch.get_num_threads()
    try:
        single, threaded = run(1), run(2)
    finally:
        torch.set_num_threads(before)
    for one, two in zip(single, threaded):
        torch.testing.assert_close(two, one, rtol=1e-6, atol=1e-7)


def test_cached_float_masks_follow_every_mask_change():
    """before_step/apply_masks multiply by a cached float copy of the mask: the same result as the
    bool mask, also after the mask is changed in place or loaded from a state_dict."""
    n_users, n_items = 30, 40
    model = LightGCN(n_users, n_items, 8, 2, graph(n_users, n_items, 200), generator=torch.Generator().manual_seed(11))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparsifier = Sparsifier(model, optimizer, SparsityConfig(density=0.3, updater="dsl"), 100, seed=12)
    sparsifier.init_masks()
    table = model.embedding
    generator = torch.Generator().manual_seed(13)
    for change in ("none", "copy_", "load_state_dict"):
        if change == "copy_":
            table.mask.copy_(torch.rand(table.mask.shape, generator=generator) < 0.3)
        elif change == "load_state_dict":
            state = model.state_dict()
            state["embedding.mask"] = torch.rand(table.mask.shape, generator=generator) < 0.3
            model.load_state_dict(state)
        weight = torch.randn(table.weight.shape, generator=generator)
        grad = torch.randn(table.weight.shape, generator=generator)
        with torch.no_grad():
            table.weight.copy_(weight)
        table.weight.grad = grad.clone()
        sparsifier.before_step()
        sparsifier.apply_masks()
        torch.testing.assert_close(table.weight.grad, grad * table.mask, rtol=0, atol=0)
        torch.testing.assert_close(table.weight.detach(), weight * table.mask, rtol=0, atol=0)
