"""What the service computes apart from BentoML: queries from requests, responses from recommendations,
the warm-up, the sample of known users that GET /info lists, and the metrics of an answered call.

    from serving.answers import to_query, to_response
    found = recommender.recommend([to_query({"user_id": "196", "k": 10})])
    body = to_response(found[0], {"name": "mf", "sha256": "..."})
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from serving.config import ServeConfig
from serving.metrics import service_metrics
from serving.recommender import Query, Recommendation, Recommender
from serving.reload import Served
from serving.schemas import LIMITS, RecommendRequest, RecommendResponse

# GET /info's `sample_user_ids`: at most this many known users, for load tests of a remote server.
SAMPLE_USERS = 100


def sample_user_ids(artifact: Any, n: int = SAMPLE_USERS) -> list[str]:
    """At most ``n`` user ids of ``artifact``, spread evenly over its rows, most active first
    (train interactions, ties by row): cheap (``n`` reads of the mapped ids and seen CSR)."""
    n_users = int(artifact.n_users)
    if n_users == 0:
        return []
    rows = np.unique(np.linspace(0, n_users - 1, num=min(n, n_users)).round().astype(np.int64))
    indptr, _ = artifact.seen_arrays(mmap=True)
    activity = np.asarray(indptr[rows + 1], dtype=np.int64) - np.asarray(indptr[rows], dtype=np.int64)
    order = np.lexsort((rows, -activity))
    ids = artifact.user_id_array(mmap=True)
    return [str(ids[row]) for row in rows[order]]


def answer_items(rec: Recommendation) -> list[dict[str, Any]]:
    return [{"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores)]


def to_response(rec: Recommendation, version: dict[str, str]) -> RecommendResponse:
    # one model_validate of plain dicts (pydantic-core) costs a third of model_construct per item
    return RecommendResponse.model_validate(
        {
            "artifact": version,
            "user_id": rec.user_id or None,  # a fold-in query without a user_id label
            "items": answer_items(rec),
            "fallback": rec.fallback,
            "folded_in": rec.folded_in,
        }
    )


def to_query(q: RecommendRequest | dict[str, Any]) -> Query:
    fields = q if isinstance(q, dict) else q.model_dump()
    return Query(
        user_id=fields.get("user_id") or "",
        k=fields.get("k", 10),
        exclude_seen=fields.get("exclude_seen", True),
        exclude_items=tuple(fields.get("exclude_items") or ()),
        allow_items=None if fields.get("allow_items") is None else tuple(fields["allow_items"]),
        history=None if fields.get("history") is None else tuple(fields["history"]),
    )


def warm_up(model: Recommender, n_calls: int = 5) -> float:
    """Run a few one-query searches (first calls pay for lazy set-up); return the median ms."""
    users = list(model.user_index)[:n_calls] or ["warm-up"]
    times = []
    for user in users * (n_calls // len(users) + 1):
        start = time.perf_counter()
        model.recommend([Query(user, min(10, model.n_items), True)])
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times[1:] or times))


def observe(served: Served, endpoint: str, queries: list[Any], found: list[Recommendation], seconds: float) -> None:
    m = service_metrics()
    m.search_seconds.labels(endpoint=endpoint, artifact=served.label).observe(seconds)
    m.batch_size.labels(endpoint=endpoint).observe(len(queries))
    kinds = {"known": 0, "fallback": 0, "fold_in": 0}
    for rec in found:
        kinds["fold_in" if rec.folded_in else "fallback" if rec.fallback else "known"] += 1
    for kind, count in kinds.items():
        if count:
            m.queries.labels(endpoint=endpoint, kind=kind, artifact=served.label).inc(count)
    for name in ("exclude_items", "allow_items"):
        count = sum(1 for q in queries if getattr(q, name, None) not in (None, ()))
        if count:
            m.filtered.labels(filter=name, artifact=served.label).inc(count)


def describe(
    served: Served,
    cfg: ServeConfig,
    settings: ServeConfig,
    *,
    artifact_source: str,
    sample_user_ids: list[str],
    stats: dict[str, int],
    batch_single_queries: bool,
) -> dict[str, Any]:
    """GET /info's body: the served artifact's summary and version, the worker's settings (``cfg``; the
    import-time ``settings`` BentoML's decorators took) and its counts since start (``stats``)."""
    artifact = served.artifact
    info = artifact.summary()
    manifest = artifact.manifest
    # the per-epoch history stays in the manifest; /info keeps the final figures
    info["metrics"] = {k: v for k, v in manifest.training.metrics.items() if k != "history"}
    info["quality"] = manifest.quality
    info["index"]["served"] = served.model.describe_index()  # layout, bytes, non-zeros, device
    info["artifact"] = served.version
    info["sample_user_ids"] = sample_user_ids
    fold = served.model.fold_in
    info["serving"] = {
        "artifact": served.path,
        "artifact_source": artifact_source,
        "device": cfg.device,
        "threads": cfg.threads,
        "workers": cfg.workers,
        "max_k": LIMITS.max_k,
        "max_batch": LIMITS.max_batch,
        "max_filter_items": LIMITS.max_filter_items,
        "max_history": LIMITS.max_history,
        "fold_in": {"ridge_lambda": cfg.fold_in_lambda, "built": getattr(fold, "_done", False)},
        "adaptive_batching": {
            "max_batch_size": settings.batch_max_size,
            "max_latency_ms": settings.batch_max_latency_ms,
        },
        "shed_in_flight": settings.shed_in_flight or None,
        "max_body_bytes": settings.max_body_bytes,
        "mmap": cfg.mmap,
        # a shard part's item range (export.shards), else None
        "shard": None if manifest.shard is None else dataclasses.asdict(manifest.shard),
        "query_ms_at_start": round(served.query_ms, 4),
        "batch_route": {"setting": cfg.batch_route, "single_queries_batched": batch_single_queries},
        "reload_file": cfg.reload_file,
        # counts of the worker that answered this /info since it started; totals: /metrics
        "stats": stats,
        "stats_scope": f"this worker only (pid {os.getpid()}); totals over all workers: GET /metrics",
    }
    return info
