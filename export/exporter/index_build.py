"""The artifact's item index: built (``auto`` times the sparse index against flat and keeps the faster),
saved, and its recall measured against exact search."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from common.timing import time_search

from ..index import EXACT_KINDS, ItemIndex
from ..layout import INDEX_FILE
from ..quality import overlap_at_k, tie_aware_overlap_at_k, topk_by_scores
from ..sparse_index import SparseIndex, sparse_file
from .checks import heldout_recall
from .files import save_npy
from .options import SPARSE_PARAMS, ExportError, ExportOptions


def _build_index(
    folder: Path, item_vectors, user_vectors, item_table, sample, k, options: ExportOptions, arrays: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Build the index ``options.index`` asks for (``auto``: time sparse against flat), save it;
    returns ``(index, manifest entry without the recall figures)``."""
    kind = options.index
    params = dict(options.index_params)
    entry: dict[str, Any] = {}
    n_entries = int(np.prod(np.shape(item_vectors)))
    if kind == "auto" and (item_table is None or item_table.nnz == n_entries):
        kind = "flat"
        entry["choice"] = "auto: flat, the served item vectors are dense (no structural zero)"
    started = time.perf_counter()
    if kind in ("auto", "sparse"):
        sparse_params = {key: params[key] for key in SPARSE_PARAMS if key in params}
        unknown = set(params) - set(SPARSE_PARAMS)
        if unknown:
            raise ExportError(
                f"--index {kind}: unknown sparse index parameter(s) {sorted(unknown)}; known: {list(SPARSE_PARAMS)}"
            )
        layout = sparse_params.pop("layout", "auto")
        try:
            index = SparseIndex.from_table(
                item_table if item_table is not None else item_vectors, layout=layout, **sparse_params
            )
        except ValueError as exc:
            raise ExportError(f"--index {kind}: {exc}") from exc
        if kind == "auto":
            flat = ItemIndex.build("flat", item_vectors)
            index, kind, entry["auto"] = _time_and_choose(index, flat, user_vectors, sample, k, options)
            entry["choice"] = entry["auto"]["choice"]
    else:
        index = ItemIndex.build(kind, item_vectors, **params)
    build_seconds = time.perf_counter() - started
    entry.update(
        {
            "kind": kind,
            "params": index.params,
            "exact": kind in (*EXACT_KINDS, "sparse"),
            "metric": "inner product",
            "build_seconds": round(build_seconds, 4),
        }
    )
    if kind == "sparse":
        files = {}
        for role, array in index.arrays().items():
            files[role] = sparse_file(role)
            save_npy(folder, files[role], array, arrays)
        entry.update(
            {
                "layout": index.layout,
                "files": files,
                "nnz": index.nnz,
                "bytes": index.nbytes,
                "structure": index.describe(),
            }
        )
    else:
        index.save(folder / INDEX_FILE)
        entry["file"] = INDEX_FILE
    return index, entry


def _time_and_choose(sparse_index, flat_index, user_vectors, sample, k, options: ExportOptions):
    """Time both on the same sampled queries, alternating (the machine is shared); keep the faster at batch 1."""
    queries = np.ascontiguousarray(user_vectors[sample[: options.timing_users]])
    k_eff = min(k, sparse_index.n_items)
    figures: dict[str, list[dict[str, float]]] = {"sparse": [], "flat": []}
    for _ in range(2):
        figures["sparse"].append(time_search(sparse_index, queries, k_eff, repeats=1))
        figures["flat"].append(time_search(flat_index, queries, k_eff, repeats=1))
    timing = {
        name: {key: float(np.median([run[key] for run in runs])) for key in runs[0]} for name, runs in figures.items()
    }
    chosen = "sparse" if timing["sparse"]["batch_1_ms_per_query"] <= timing["flat"]["batch_1_ms_per_query"] else "flat"
    ratio = timing["sparse"]["batch_1_ms_per_query"] / max(timing["flat"]["batch_1_ms_per_query"], 1e-9)
    flat_bytes = int(flat_index.index.ntotal) * int(flat_index.dim) * 4
    info = {
        "choice": f"auto: {chosen} (sparse {sparse_index.layout} / flat batch-1 time {ratio:.2f}x)",
        "chosen": chosen,
        "sparse_layout": sparse_index.layout,
        "timing_ms_per_query": timing,
        "sparse_over_flat_batch_1": round(ratio, 4),
        "bytes": {"sparse": sparse_index.nbytes, "flat": flat_bytes},
        "timing_queries": int(len(queries)),
        "k": k_eff,
        "method": "common.timing.time_search, in-process, warm, two alternated rounds, median",
    }
    return (sparse_index if chosen == "sparse" else flat_index), chosen, info


def write_index(
    folder: Path,
    item_vectors,
    user_vectors,
    item_table,
    sample,
    k,
    options: ExportOptions,
    arrays: dict[str, Any],
    heldout=None,
    known=None,
) -> dict[str, Any]:
    """Build, save and measure the item index (recall@k against exact search on sampled users)."""
    index, entry = _build_index(folder, item_vectors, user_vectors, item_table, sample, k, options, arrays)
    k_eff = min(k, len(item_vectors))
    queries = np.ascontiguousarray(user_vectors[sample])
    started = time.perf_counter()
    _, got = index.search(queries, k_eff)
    search_seconds = time.perf_counter() - started
    _, exact = topk_by_scores(queries, item_vectors, k_eff)
    items_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)
    tie_aware, chunk = 0.0, max(1, int(2e7 // max(len(item_vectors), 1)))
    for start in range(0, len(queries), chunk):  # [chunk, n_items] exact scores at a time
        rows = slice(start, start + chunk)
        tie_aware += tie_aware_overlap_at_k(got[rows], queries[rows] @ items_t, k_eff, atol=1e-5) * len(got[rows])
    entry.update(
        {
            f"recall@{k_eff}_vs_flat": overlap_at_k(got, exact),
            f"tie_aware_recall@{k_eff}_vs_flat": tie_aware / max(len(queries), 1),
            "recall_users": len(sample),
            "recall_definition": f"share of the exact top-{k_eff} (brute-force inner product over the zero-filled "
            f"vectors, no exclusion) that the index returns, over {len(sample)} sampled users; "
            f"tie-aware: returned items whose exact score reaches the exact k-th best",
            "search_ms_per_query": round(1000 * search_seconds / max(len(sample), 1), 4),
        }
    )
    if heldout is not None:  # rank deep enough to drop the known items, then score the test split
        entry["test_recall"] = {
            "index_kind": entry["kind"],
            **heldout_recall(lambda depth: index.search(queries, depth)[1], sample, heldout, known, k_eff),
        }
    return entry
