"""``sparserec compare``'s rows: the options, what one artifact is (model, layout, index, values,
non-zeros, row lengths, bytes on disk) and its test quality, from the manifest or recomputed on ``--data``.

    from sparserec.compare_rows import CompareOptions, artifact_facts, manifest_quality
    facts = artifact_facts(load_artifact(path)); quality = manifest_quality(facts)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

QUALITY_K = 20
DEFAULT_BATCH_SIZES = (1, 32, 256)


# ---------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """What ``compare`` measures and where it writes (the command-line flags, see ``build_parser``)."""

    artifacts: tuple[Path, ...]
    out: Path
    latency: bool = True
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    threads: tuple[int, ...] = (1,)
    k: int = 10
    min_time_s: float = 0.5
    max_calls: int = 200
    http: bool = False
    requests: int = 200
    locust_users: int = 0
    locust_duration_s: float = 20.0
    data: str | None = None
    mmap: bool = True
    allow_noisy: bool = False
    seed: int = 0
    progress: bool = True

    @property
    def times_anything(self) -> bool:
        return self.latency or self.http or self.locust_users > 0


class CompareError(ValueError):
    """A bad argument or an unreadable artifact; the message names it (exit status 2)."""


# ---------------------------------------------------------------------------- one artifact
def artifact_facts(art: Any) -> dict[str, Any]:
    """What an artifact is: model, layouts, index, values, non-zeros, dim or row lengths, bytes on disk,
    and its recorded quality (the reader's accessors, and :func:`manifest_records`)."""
    summary = art.summary()
    index = summary["index"]
    layouts = sorted(set(summary["table_layouts"].values()))
    per_table = [_row_lengths(art.stored_table(name)) for name in summary["table_layouts"]]
    lengths = np.concatenate(per_table) if per_table else np.zeros(0, dtype=np.int64)  # pop: no tables
    full = not len(lengths) or int(lengths.min()) == art.dim
    return {
        "model": art.model_kind,
        "layout": "+".join(layouts) or "-",
        "index": index["kind"],
        "index_layout": index.get("layout"),
        "value_dtype": art.value_dtype,
        "nnz": summary["nnz"],
        "density": summary["density"],
        "dim": art.dim,
        "n_users": art.n_users,
        "n_items": art.n_items,
        "row_lengths": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "median": float(np.median(lengths)) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
            "all_full": full,
        },
        "disk_bytes": int(summary["bytes"]["total"]),
        "index_recall@20_vs_flat": index.get("recall@20_vs_flat"),
        **manifest_records(art),
    }


def manifest_records(art: Any) -> dict[str, Any]:
    """The manifest's records that :meth:`Artifact.summary` leaves out: the export's exact test quality,
    the training run's test metrics and data config, the FAISS index file's bytes."""
    manifest = art.manifest
    index = manifest.index
    return {
        "manifest_quality": (manifest.quality or {}).get("exact"),
        "training_test": manifest.training.metrics.get("test"),
        "training_data": (manifest.training.config or {}).get("data"),
        "index_file_bytes": manifest.files[index.file].bytes if index.file is not None else None,
    }


def _row_lengths(table: Any) -> np.ndarray:
    """Stored entries of each row of a table (prefix: its lengths; csr: row pointer differences)."""
    if getattr(table, "layout", None) == "prefix" or hasattr(table, "lengths"):
        return np.asarray(table.lengths, dtype=np.int64)
    return np.diff(np.asarray(table.indptr, dtype=np.int64))


def lengths_text(facts: dict[str, Any]) -> str:
    """``dim 64`` for full rows, else ``rows 3-64, median 16``."""
    lengths = facts["row_lengths"]
    if lengths["all_full"]:
        return f"dim {facts['dim']}"
    return f"rows {lengths['min']}-{lengths['max']}, median {lengths['median']:g} (dim {facts['dim']})"


def manifest_quality(facts: dict[str, Any]) -> dict[str, Any]:
    """Test NDCG@20 / Recall@20 of the served vectors as the manifest records them (exact, at export),
    else the training run's test figures; ``None`` values where neither has them."""
    for source, metrics in (
        ("manifest (export, test, exact)", facts["manifest_quality"]),
        ("training run (test)", facts["training_test"]),
    ):
        if metrics and f"ndcg@{QUALITY_K}" in metrics:
            return {
                "ndcg@20": float(metrics[f"ndcg@{QUALITY_K}"]),
                "recall@20": metrics.get(f"recall@{QUALITY_K}"),
                "source": source,
            }
    return {"ndcg@20": None, "recall@20": None, "source": "none recorded (pass --data)"}


class DataQuality:
    """Test quality recomputed on ``--data`` with each artifact's own split rules (loaded once per rules)."""

    def __init__(self, data: str) -> None:
        self.data = data
        self._datasets: dict[str, Any] = {}

    def dataset(self, training_data: dict[str, Any] | None) -> Any:
        if not training_data:
            raise CompareError("--data: the artifact records no training config, so its split rules are unknown")
        from train.config import ConfigError, TrainConfig
        from train.data import DataError, load_dataset

        try:
            config = dataclasses.replace(TrainConfig.from_dict({"data": training_data}).data, name=self.data)
            key = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
            if key not in self._datasets:
                self._datasets[key] = load_dataset(config, progress=False)
        except (ConfigError, DataError) as exc:
            raise CompareError(f"--data {self.data}: {exc}") from exc
        return self._datasets[key]

    def __call__(self, art: Any, facts: dict[str, Any]) -> dict[str, Any]:
        """Full ranking over every item through the served vectors, train and valid positives masked."""
        import scipy.sparse as sp

        from export.quality import recall_ndcg_at_k

        dataset = self.dataset(facts["training_data"])
        user_rows = _rows_in(dataset.user_ids, art.user_index())
        item_rows = _rows_in(dataset.item_ids, art.item_index())
        # positives on items the artifact does not know get columns past its catalogue: never ranked, still counted
        unknown_items = np.flatnonzero(item_rows < 0)
        item_cols = item_rows.copy()
        item_cols[unknown_items] = art.n_items + np.arange(len(unknown_items))
        n_cols = art.n_items + len(unknown_items)

        def in_artifact(matrix: sp.csr_matrix) -> sp.csr_matrix:
            coo = matrix.tocoo()
            keep = user_rows[coo.row] >= 0
            return sp.csr_matrix(
                (np.ones(int(keep.sum()), np.float32), (user_rows[coo.row[keep]], item_cols[coo.col[keep]])),
                shape=(art.n_users, n_cols),
            )

        test = in_artifact(dataset.csr("test"))
        known = in_artifact(dataset.csr("train") + dataset.csr("valid"))[:, : art.n_items]
        users = np.flatnonzero(np.diff(test.indptr) > 0)
        ranked = self.ranked(art, users, known[users])
        metrics = recall_ndcg_at_k(ranked, test[users], QUALITY_K)
        return {
            "ndcg@20": metrics[f"ndcg@{QUALITY_K}"],
            "recall@20": metrics[f"recall@{QUALITY_K}"],
            "source": f"--data {self.data} (test, recomputed)",
            "n_users": metrics["n_users"],
            "users_not_in_artifact": int((user_rows < 0).sum()),
            "items_not_in_artifact": int(len(unknown_items)),
        }

    def ranked(self, art: Any, users: np.ndarray, known_rows: Any) -> np.ndarray:
        """``int64 [len(users), 20]``: each user's top items, ``known_rows`` (CSR, one row per user)
        left out; exact, over the served vectors (a subclass may rank another way)."""
        from export.quality import topk_by_scores

        return topk_by_scores(art.user_vectors()[users], art.item_vectors(), QUALITY_K, exclude=known_rows)[1]


def _rows_in(external_ids: Sequence[str], index: dict[str, int]) -> np.ndarray:
    """Row of each external id in an artifact's id map, -1 where it has none."""
    return np.array([index.get(str(i), -1) for i in external_ids], dtype=np.int64)
