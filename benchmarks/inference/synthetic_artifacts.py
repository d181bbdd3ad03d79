"""Synthetic 1M-item artifacts for the HTTP benchmark: dense, equal-budget small-dense and sparse.

    python -m benchmarks.inference.synthetic_artifacts                            # 1M items, density 0.1 -> artifacts/synthetic-1m-*
    python -m benchmarks.inference.synthetic_artifacts --items 20000 --users 500 --out artifacts/synthetic-20k   # small, quick

Three MF models over the same users, items and interactions, exported with ``export.export_model``
(the same writer as a trained run, every check included), so the service loads them like any
artifact:

- ``<out>-dense``: dim 64, every entry kept, flat index;
- ``<out>-small-dense``: dim ``round(density x 64)``, flat index (the equal-budget model);
- ``<out>-sparse``: dim 64, user and item masks drawn from the trained dsl-mixed profile
  (``benchmarks/inference/trained_masks.json``, prefix layout) at ``density``; ``--index sparse``.

Values are N(0, 0.1) (random, not trained: honest for latency and memory, not for quality); each
user has ``--seen`` random train items (excluded at serving); no held-out split.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

DIM = 64
KINDS = ("dense", "small-dense", "sparse")


def _model(n_users: int, n_items: int, dim: int, user_mask: np.ndarray | None, item_mask: np.ndarray | None, seed: int):
    import torch

    from train.models import MF

    model = MF(n_users, n_items, dim, init_std=0.1, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for table, mask in ((model.user_embedding, user_mask), (model.item_embedding, item_mask)):
            if mask is not None:
                table.mask.copy_(torch.from_numpy(mask))
            table.apply_mask_()
    return model.eval()


def build(
    kind: str,
    out: Path,
    n_users: int,
    n_items: int,
    density: float,
    seen_per_user: int,
    seed: int,
    masks: Path,
    overwrite: bool = True,
) -> Path:
    """Write one synthetic artifact of ``kind`` (module docstring) at ``out``."""
    from export.exporter import ExportOptions, export_model

    from .trained_masks import load_profiles, nearest, sample_mask

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {list(KINDS)}")
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n_items, (n_users, seen_per_user))
    seen = sp.csr_matrix(
        (np.ones(cols.size, np.float32), (np.repeat(np.arange(n_users), seen_per_user), cols.ravel())),
        shape=(n_users, n_items),
    )
    seen.data[:] = 1.0
    user_mask = item_mask = None
    dim = DIM
    index = "flat"
    if kind == "small-dense":
        dim = max(1, round(density * DIM))
    elif kind == "sparse":
        profile = nearest(load_profiles(masks), "prefix", density)
        mask_rng = np.random.default_rng([seed, 1])
        user_mask = sample_mask(profile, "users", n_users, density, DIM, mask_rng, "prefix")
        item_mask = sample_mask(profile, "items", n_items, density, DIM, mask_rng, "prefix")
        index = "sparse"
    model = _model(n_users, n_items, dim, user_mask, item_mask, seed)
    options = ExportOptions(
        index=index,
        measure_memory=False,
        sample_users=min(200, n_users),
        overwrite=overwrite,
        progress=sys.stderr.isatty(),
    )
    training = {
        "synthetic": {
            "kind": kind,
            "n_users": n_users,
            "n_items": n_items,
            "dim": dim,
            "density": density,
            "seen_per_user": seen_per_user,
            "seed": seed,
            "masks": str(masks) if user_mask is not None else None,
            "values": "N(0, 0.1), random (not trained)",
        }
    }
    return export_model(
        model,
        out,
        user_ids=[f"u{u}" for u in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        seen=seen,
        training=training,
        options=options,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.inference.synthetic_artifacts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--seen", type=int, default=50, help="random train items per user")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masks", type=Path, default=Path(__file__).resolve().parent / "trained_masks.json")
    parser.add_argument("--out", default="artifacts/synthetic-1m", help="stem: writes <out>-<kind> folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(1)
    for kind in args.kinds.split(","):
        path = build(
            kind, Path(f"{args.out}-{kind}"), args.users, args.items, args.density, args.seen, args.seed, args.masks
        )
        print(f"-> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
