"""The tiled catalogue of the Gowalla front: a trained artifact rebuilt with any number of items, keeping
its trained per-row length profile and its values' distribution (bytes and latency at 1M items).

    from benchmarks.pareto_tiling import tile_artifact
    tile_artifact(Path("artifacts/pareto-gowalla/mf-sd-d3.flat-fp32"), Path("/tmp/mf-1m"), 1_000_000, seed=0)

Item ``j`` of the tiled artifact is item ``j mod n_items`` of the source; copies after the first are
perturbed by a seeded relative factor so that no two items tie exactly (:func:`tile_vectors`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.pareto_gowalla")

TILED_ITEMS = 1_000_000
PERTURBATION = 1e-3  # relative scale of the seeded perturbation of tiled copies


def tiled_item_rows(n_items: int, n_tiled: int) -> np.ndarray:
    """Source row of every tiled item: item ``j`` of the tiled table is item ``j mod n_items``."""
    return np.arange(n_tiled, dtype=np.int64) % n_items


def tile_vectors(items: np.ndarray, n_tiled: int, seed: int) -> np.ndarray:
    """``float32 [n_tiled, dim]``: the items tiled (:func:`tiled_item_rows`); copies after the first are
    multiplied entry-wise by ``1 + PERTURBATION * z``, ``z ~ N(0, 1)`` clipped to [-3, 3] (seeded), so no
    two items tie exactly and every zero stays zero (the per-row length profile is kept)."""
    rows = tiled_item_rows(len(items), n_tiled)
    tiled = np.asarray(items, dtype=np.float32)[rows]
    copies = rows.size > len(items)
    if copies:
        rng = np.random.default_rng(seed)
        noise = np.clip(rng.standard_normal((n_tiled - len(items), items.shape[1])), -3, 3).astype(np.float32)
        tiled[len(items) :] *= 1 + PERTURBATION * noise
    return tiled


def tile_artifact(source: Path, out: Path, n_tiled: int, seed: int) -> Path:
    """An MF artifact with the source's served vectors and ``n_tiled`` items tiled from its own.

    Users: the source's served user vectors (LightGCN: propagated, masked where mask_output), as an MF
    user table, its zeros the mask. Items: the served item vectors tiled (:func:`tile_vectors`), the
    mask the tiled structure of the served item table (so every tiled row has its source row's length).
    Train interactions: the source's, on the first copy. Values, index kind and sparse layout: the
    source's (FAISS parameters the defaults at ``n_tiled`` items). No held-out split: quality at
    ``n_tiled`` items is not defined.
    """
    import torch

    from common.io import sha256_file
    from export.artifact import load_artifact
    from export.exporter import ExportOptions, export_model
    from train.models import MF

    art = load_artifact(source)
    users = np.array(art.user_vectors(), dtype=np.float32)  # a writable copy
    items = np.asarray(art.item_vectors(), dtype=np.float32)
    structure = art.served_item_table()
    item_mask = None
    if structure is not None:
        source_mask = np.zeros(items.shape, dtype=bool)
        coo = structure.tocoo()
        source_mask[coo.row, coo.col] = True
        item_mask = source_mask[tiled_item_rows(art.n_items, n_tiled)]
    tiled = tile_vectors(items, n_tiled, seed)
    model = MF(art.n_users, n_tiled, art.dim)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.from_numpy(users))
        model.item_embedding.weight.copy_(torch.from_numpy(tiled))
        if item_mask is not None:
            model.user_embedding.mask.copy_(torch.from_numpy(users != 0))
            model.item_embedding.mask.copy_(torch.from_numpy(item_mask))
        model.user_embedding.apply_mask_()
        model.item_embedding.apply_mask_()
    seen = art.seen().tocsr()
    seen.resize((art.n_users, n_tiled))
    item_ids = art.item_ids
    tiled_ids = [
        item_ids[j] if j < art.n_items else f"{item_ids[j % art.n_items]}#{j // art.n_items}" for j in range(n_tiled)
    ]
    index = art.manifest.index
    params = {"layout": index.layout} if index.kind == "sparse" else {}
    options = ExportOptions(
        values=art.value_dtype,
        index=index.kind,
        index_params=params,
        measure_memory=False,
        sample_users=min(200, art.n_users),
        seed=seed,
        overwrite=True,
        progress=False,
    )
    # the manifest's training record holds run, config and metrics only: how the copy was made is its config
    tiled_from = {
        "artifact": str(source),
        "source_manifest_sha256": sha256_file(source / "manifest.json"),
        "source_model": art.model_kind,
        "n_items_source": art.n_items,
        "n_items": n_tiled,
        "rule": "item j = source item j mod n_items_source; copies after the first times "
        f"(1 + {PERTURBATION:g} z), z ~ N(0,1) clipped to [-3, 3]",
        "seed": seed,
    }
    training = {"run": None, "config": {"tiled_from": tiled_from}, "metrics": {}}
    return export_model(
        model,
        out,
        user_ids=art.user_ids,
        item_ids=tiled_ids,
        seen=seen,
        popularity=np.resize(art.popularity(), n_tiled),
        training=training,
        options=options,
    )


def tile_all(artifacts: Sequence[Path], out_dir: Path, n_tiled: int, seed: int) -> list[Path]:
    """:func:`tile_artifact` for each artifact into ``out_dir/<name>`` (an existing one is kept)."""
    out = []
    for path in artifacts:
        target = out_dir / path.name
        if not (target / "manifest.json").is_file():
            log.info("tiling %s to %d items", path.name, n_tiled)
            tile_artifact(path, target, n_tiled, seed)
        out.append(target)
    return out
