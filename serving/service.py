"""The sparserec BentoML service: top-K items for a user over HTTP.

    SPARSEREC_ARTIFACT=artifacts/ml100k bentoml serve serving.service:SparseRecommender --port 3000
    python -m serving --artifact artifacts/ml100k --port 3000          # the same, with flags
    curl -s localhost:3000/recommend -H 'content-type: application/json' \\
         -d '{"user_id": "196", "k": 10, "exclude_seen": true}'
    curl -s localhost:3000/recommend_batch -H 'content-type: application/json' \\
         -d '{"queries": [{"user_id": "196", "k": 5}, {"user_id": "186"}]}'
    curl -s localhost:3000/info

Endpoints: POST /recommend, POST /recommend_batch, GET /info, POST /ping (a constant, to measure
BentoML's own cost), and BentoML's /livez, /readyz, /metrics, /docs.json, Swagger UI at /.
Configuration is by environment variables, listed in `serving.config`.

Each worker process loads and verifies the artifact in `__init__`. A missing, altered or
truncated artifact is logged as "refusing to start: ..." (naming the file) and the worker exits;
BentoML's supervisor restarts it, it refuses again, and /readyz never answers 200.
`python -m serving` verifies the artifact before starting the server and exits with status 2.

Adaptive batching: /recommend hands each query to BentoML's adaptive batching dispatcher
(`CorkDispatcher`, the one BentoML puts in front of `@bentoml.api(batchable=True)` methods) with
max_batch_size and max_latency_ms set from SPARSEREC_BATCH_MAX_SIZE and
SPARSEREC_BATCH_MAX_LATENCY_MS, so concurrent queries share one index search. The dispatcher is
used directly because BentoML batches only HTTP calls to a batchable API whose single argument is
the whole batch (a list, which would change the single-query body), a call from one method to
another of the same service is a plain Python call that is never batched, and the documented
alternative (a second service behind `bentoml.depends`) adds a process and an HTTP hop to every
query. The batches run on the event loop while one is cheap (the warm-up in `__init__` measures a
query; below INLINE_BUDGET_MS in all), in a worker thread otherwise: on ML-100K the thread hop
alone cost more than the search.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, NoReturn

import anyio
import bentoml
import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml.exceptions import ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.config import ConfigError, ServeConfig, workers_from_env
from serving.recommender import Query, Recommendation, Recommender
from serving.schemas import (
    EXAMPLE_QUERY,
    LIMITS,
    BatchRequest,
    BatchResponse,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
)

# a child of "bentoml": BentoML configures that logger in every server process, so these lines
# land in the server log with its format (a logger of our own would be silenced)
logger = logging.getLogger("bentoml.sparserec")

__all__ = ["SparseRecommender", "EXAMPLE_QUERY"]

# Exit status of a worker that refuses its artifact (distinct from crashes, for the logs).
EXIT_BAD_ARTIFACT = 3
# Work estimated below this many ms runs on the event loop instead of a worker thread.
INLINE_BUDGET_MS = 2.0


async def _info(request: Request) -> JSONResponse:
    """GET /info (BentoML APIs are POST only, so this is a mounted Starlette route)."""
    service = bentoml.get_current_service()
    return JSONResponse(service.info)


info_app = Starlette(routes=[Route("/info", _info, methods=["GET"])])


def _to_response(rec: Recommendation) -> RecommendResponse:
    # model_construct: the values come from the artifact, already typed; skip re-validation
    return RecommendResponse.model_construct(
        user_id=rec.user_id,
        items=[ScoredItem.model_construct(item_id=i, score=s) for i, s in zip(rec.item_ids, rec.scores)],
        fallback=rec.fallback,
    )


def _overloaded() -> Any:
    raise ServiceUnavailable("overloaded: the query waited longer than SPARSEREC_BATCH_MAX_LATENCY_MS")


def _refuse(message: str, *args: Any) -> NoReturn:
    logger.critical("refusing to start: " + message, *args)
    # stderr too: the server log is what an operator (and the tests) read
    print(("sparserec: refusing to start: " + message) % args, file=sys.stderr, flush=True)
    # Leave the worker without a traceback. Under `bentoml serve` the process supervisor restarts
    # it every few seconds and it refuses again each time, so /readyz never answers 200;
    # `python -m serving` checks the artifact before starting and exits with status 2.
    os._exit(EXIT_BAD_ARTIFACT)


@bentoml.service(
    name="sparserec",
    workers=workers_from_env(),
    http={"host": "127.0.0.1"},  # default bind; `--host 0.0.0.0` to expose
    traffic={"timeout": 30},
)
@bentoml.asgi_app(info_app, path="/")
class SparseRecommender:
    """Top-K recommendation from a sparserec artifact (see the module docstring)."""

    def __init__(self) -> None:
        from export.artifact import ArtifactError, load_artifact

        try:
            config = ServeConfig.from_env()
        except ConfigError as exc:
            _refuse("%s", exc)
        self.config = config
        try:
            artifact = load_artifact(config.artifact, verify=True)
        except ArtifactError as exc:
            _refuse("artifact failed verification: %s", exc)
        try:
            if config.device == "cpu":
                from serving.backends import set_cpu_threads

                set_cpu_threads(config.threads)
            else:
                import torch  # the GPU path only

                torch.set_num_threads(config.threads)
            self.model = Recommender.from_artifact(artifact, device=config.device)
        except ImportError as exc:
            _refuse("SPARSEREC_DEVICE=%s needs torch, which is not installed (%s)", config.device, exc)
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            _refuse("cannot serve %s on %s: %s: %s", config.artifact, config.device, type(exc).__name__, exc)

        LIMITS.max_k = min(config.max_k, self.model.n_items)
        LIMITS.max_batch = config.max_batch
        self.info = self._describe(artifact)
        self._dispatcher = CorkDispatcher(
            max_latency_in_ms=config.batch_max_latency_ms,
            max_batch_size=config.batch_max_size,
            fallback=_overloaded,
            get_batch_size=lambda query: 1,
        )
        self._batched = self._dispatcher(self._search_batch)
        self._in_flight = 0  # /recommend calls being answered by this worker
        # since start, this worker: queries answered alone, dispatcher batches and their queries
        self.stats = {"direct_queries": 0, "batches": 0, "batched_queries": 0, "largest_batch": 0}
        self.info["serving"]["stats"] = self.stats  # the same dict: /info shows live counts
        self._limiter = anyio.CapacityLimiter(1)
        self.query_ms = self._warm_up()
        self.info["serving"]["query_ms_at_start"] = round(self.query_ms, 4)
        logger.info(
            "serving %s: %s, %d users, %d items, dim %d, index %s, values %s, device %s, "
            "threads %d, max_k %d, max_batch %d, batching max_size %d max_latency_ms %d, "
            "%.3f ms a query at start",
            config.artifact, artifact.model_kind, artifact.n_users, artifact.n_items, artifact.dim,
            artifact.index_kind, artifact.value_dtype, config.device, config.threads,
            LIMITS.max_k, LIMITS.max_batch, config.batch_max_size, config.batch_max_latency_ms,
            self.query_ms,
        )

    def _describe(self, artifact: Any) -> dict[str, Any]:
        info = artifact.summary()
        manifest = artifact.manifest
        training = manifest.get("training") or {}
        # the per-epoch history stays in the manifest; /info keeps the final figures
        info["metrics"] = {k: v for k, v in (training.get("metrics") or {}).items() if k != "history"}
        info["quality"] = manifest.get("quality")
        info["index"]["served"] = self.model.describe_index()  # layout, bytes, non-zeros, device
        cfg = self.config
        info["serving"] = {
            "artifact": str(cfg.artifact),
            "device": cfg.device,
            "threads": cfg.threads,
            "workers": cfg.workers,
            "max_k": LIMITS.max_k,
            "max_batch": LIMITS.max_batch,
            "adaptive_batching": {
                "max_batch_size": cfg.batch_max_size,
                "max_latency_ms": cfg.batch_max_latency_ms,
            },
        }
        return info

    def _warm_up(self, n_calls: int = 5) -> float:
        """Run a few one-query searches (first calls pay for lazy set-up); return the median ms."""
        users = list(self.model.user_index)[:n_calls] or ["warm-up"]
        times = []
        for user in users * (n_calls // len(users) + 1):
            start = time.perf_counter()
            self.model.recommend([Query(user, min(10, self.model.n_items), True)])
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times[1:] or times))

    async def _run(self, queries: list[Query]) -> list[Recommendation]:
        """Answer queries on the event loop when that is cheaper than a thread hop, else in a thread.

        Handing work to a thread costs ~0.5-1 ms of scheduling, more than a small catalogue's
        whole search (ML-100K: ~0.1 ms a query), while a large catalogue's search (tens of ms)
        must not stall the loop that parses the next requests.
        """
        if self.query_ms * len(queries) <= INLINE_BUDGET_MS:
            return self.model.recommend(queries)
        return await anyio.to_thread.run_sync(self.model.recommend, queries, limiter=self._limiter)

    async def _search_batch(self, queries: tuple[Query, ...]) -> list[Recommendation]:
        """The dispatcher's callback: all queued /recommend queries in one index search."""
        self.stats["batches"] += 1
        self.stats["batched_queries"] += len(queries)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(queries))
        return await self._run(list(queries))

    @bentoml.api(route="/recommend")
    async def recommend(self, query: RecommendRequest, /) -> RecommendResponse:
        """Top-k items for one user, highest score first (adaptively batched with others)."""
        one = Query(query.user_id, query.k, query.exclude_seen)
        self._in_flight += 1
        try:
            # Yield once so that requests arriving together all count themselves in flight.
            await asyncio.sleep(0)
            if self._in_flight == 1:
                # Alone: answer at once. The dispatcher would add nothing to batch with, and
                # its learned wait (the mean queueing time of recent batches) outlives a burst:
                # measured here, a lone query waited ~20 ms per call for minutes after one.
                self.stats["direct_queries"] += 1
                rec = (await self._run([one]))[0]
            else:
                rec = await self._batched(one)
        finally:
            self._in_flight -= 1
        return _to_response(rec)

    @bentoml.api(route="/recommend_batch")
    async def recommend_batch(self, request: BatchRequest, /) -> BatchResponse:
        """Top-k items for each of a list of queries, searched together (one index search per
        class of k + seen items, at most a handful whatever the batch size)."""
        queries = [Query(q.user_id, q.k, q.exclude_seen) for q in request.queries]
        return BatchResponse.model_construct(results=[_to_response(r) for r in await self._run(queries)])

    @bentoml.api(route="/ping")
    async def ping(self) -> dict[str, bool]:
        """A constant answer: the cost of BentoML's HTTP path alone, for benchmarks."""
        return {"ok": True}

    @bentoml.on_shutdown
    def _stop_dispatcher(self) -> None:
        self._dispatcher.shutdown()
