"""LightGCN with ``model.mask_output=true`` (issue 10, option (c)): the scored vectors are the
propagated vectors times the base table's mask, in training, evaluation, checkpoints and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import train_until_stopped
from export.artifact import load_artifact
from export.exporter import ExportOptions, export_run
from train.checkpoint import CHECKPOINT, load_state, load_trained, save_state
from train.checks import validate
from train.config import load_config
from train.data import load_dataset
from train.loop import Trainer, train
from train.models import LightGCN, normalized_adjacency

torch.set_num_threads(1)

SMALL = [
    "data.name=synthetic",
    "data.n_users=120",
    "data.n_items=160",
    "data.interactions_per_user=15",
    "model.name=lightgcn",
    "model.dim=16",
    "optim.batch_size=256",
    "optim.lr=0.01",
    "run.threads=1",
    "run.patience=100",
    "sparsity.density=0.3",
    "sparsity.update_interval=3",
]


def small_config(out, *extra):
    return load_config(overrides=SMALL + [f"run.out={out}"] + list(extra))


def tiny_model(mask_output: bool, seed: int = 0) -> LightGCN:
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 30, 300), rng.integers(0, 40, 300)
    adj = normalized_adjacency(30, 40, users, items)
    model = LightGCN(30, 40, 8, 2, adj, generator=torch.Generator().manual_seed(seed), mask_output=mask_output)
    with torch.no_grad():
        model.embedding.mask.copy_(torch.from_numpy(rng.random((70, 8)) < 0.3))
        model.embedding.apply_mask_()
    return model


def test_final_embeddings_are_zero_outside_the_mask_and_equal_the_masked_standard_output():
    masked, standard = tiny_model(True), tiny_model(False)
    mask = masked.embedding.mask
    users, items = masked.final_embeddings()
    final = torch.cat([users, items])
    assert torch.count_nonzero(final[~mask]) == 0
    assert torch.count_nonzero(final[mask]) > 0.9 * int(mask.sum())  # propagation fills the kept positions
    ref_users, ref_items = standard.final_embeddings()
    torch.testing.assert_close(final, torch.cat([ref_users, ref_items]) * mask, rtol=0, atol=0)
    # full_scores (also through the evaluation cache) scores exactly these vectors
    rows = torch.arange(5)
    expected = users[rows] @ items.T
    torch.testing.assert_close(masked.full_scores(rows), expected)
    masked.cache_embeddings(True)
    torch.testing.assert_close(masked.full_scores(rows), expected)
    masked.cache_embeddings(False)


def test_loss_and_gradients_follow_the_masked_vectors():
    model = tiny_model(True)
    users, pos, neg = torch.tensor([0, 3, 7]), torch.tensor([1, 5, 9]), torch.tensor([2, 6, 11])
    loss = model.loss(users, pos, neg, weight_decay=0.0)
    user_final, item_final = model.final_embeddings()
    u, p, n = user_final[users], item_final[pos], item_final[neg]
    expected = -torch.nn.functional.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
    torch.testing.assert_close(loss, expected)

    loss.backward()
    autograd = model.embedding.weight.grad.clone()
    # the same gradient by hand: d loss / d E0 = A_prop^T (mask * d loss / d final), A_prop symmetric
    weight = model.embedding.weight.detach().clone().requires_grad_(True)
    final = _propagate_dense(weight, model) * model.embedding.mask
    fu, fi = final[: model.n_users], final[model.n_users :]
    u, p, n = fu[users], fi[pos], fi[neg]
    (-torch.nn.functional.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()).backward()
    torch.testing.assert_close(autograd, weight.grad, rtol=1e-5, atol=1e-7)
    # a position outside every row's mask gets no gradient through the output (only through neighbours)
    assert torch.isfinite(autograd).all()


def _propagate_dense(weight: torch.Tensor, model: LightGCN) -> torch.Tensor:
    adj = torch.from_numpy(model.norm_adj_csr.toarray())
    layers, current = [weight], weight
    for _ in range(model.n_layers):
        current = adj @ current
        layers.append(current)
    return torch.stack(layers).mean(0)


def test_mask_output_is_refused_for_mf(tmp_path):
    with pytest.raises(ValueError, match="mask_output"):
        validate(small_config(tmp_path, "model.name=mf", "model.mask_output=true"))


def test_training_with_mask_output_resumes_checkpoints_and_exports(tmp_path, monkeypatch):
    args = ["model.mask_output=true", "run.epochs=5"]
    straight = train(small_config(tmp_path / "a", *args), progress=False)

    train_until_stopped(small_config(tmp_path / "b", *args), 2, monkeypatch)
    resumed = train(small_config(tmp_path / "b", *args), resume=True, progress=False)
    assert resumed["test"] == straight["test"]

    # the best model comes back with mask_output on, and its vectors are zero outside the mask
    model, *_ = load_trained(tmp_path / "a")
    assert model.mask_output
    users, items = (t.detach() for t in model.final_embeddings())
    mask = model.embedding.mask
    assert torch.count_nonzero(torch.cat([users, items])[~mask]) == 0

    # the artifact serves the same masked vectors (the export's own fidelity check would refuse otherwise)
    out = export_run(tmp_path / "a", tmp_path / "artifact", ExportOptions(measure_memory=False, progress=False))
    artifact = load_artifact(out)
    assert artifact.manifest.vectors.mask_output is True
    np.testing.assert_allclose(artifact.item_vectors(), items.numpy(), atol=1e-5)
    assert np.count_nonzero(artifact.item_vectors()[~mask[model.n_users :].numpy()]) == 0


def test_checkpoint_without_the_new_key_still_resumes(tmp_path):
    """A checkpoint written before ``model.mask_output`` existed resumes (the key takes its default)."""
    config = small_config(tmp_path, "run.epochs=2")
    dataset = load_dataset(config.data, progress=False)
    dataset.save(tmp_path / "data")
    trainer = Trainer(config, dataset, progress=False)
    trainer.run_epoch()
    trainer.save_checkpoint()
    state = load_state(tmp_path / CHECKPOINT)
    saved = json.loads(state["config"])
    del saved["model"]["mask_output"]
    state["config"] = json.dumps(saved)
    save_state(tmp_path / CHECKPOINT, state)
    Trainer(config, dataset, progress=False).load_checkpoint(tmp_path / CHECKPOINT)
