"""The sparserec BentoML service: top-K items for a user over HTTP.

    SPARSEREC_ARTIFACT=artifacts/ml100k bentoml serve serving.service:SparseRecommender --port 3000
    python -m serving --artifact artifacts/ml100k --port 3000          # the same, with flags
    curl -s localhost:3000/recommend -H 'content-type: application/json' \\
         -d '{"user_id": "196", "k": 10, "exclude_seen": true}'
    curl -s localhost:3000/recommend_batch -H 'content-type: application/json' \\
         -d '{"queries": [{"user_id": "196", "k": 5}, {"user_id": "186"}]}'
    curl -s localhost:3000/info
    python -c 'import bentoml; print(bentoml.SyncHTTPClient("http://127.0.0.1:3000").recommend(user_id="196", k=10))'

Endpoints: POST /recommend (keyword parameters user_id, k, exclude_seen; the JSON body is those
three fields), POST /recommend_batch (`{"queries": [...]}` -> a list of answers), GET /info, POST
/ping (a constant, to measure BentoML's own cost), and BentoML's /livez, /readyz, /metrics,
/docs.json, Swagger UI at /. Configuration is by environment variables, listed in `serving.config`
(`python -m serving --help` gives each its flag).

`GET /info` includes `sample_user_ids`: at most SAMPLE_USERS user ids the artifact knows, spread
evenly over its users and listed most active first (computed once at start), so that a load test
(`python -m loadtest run --host URL`, `locust -f loadtest/locustfile.py`) can draw known users
from a server it has no artifact for.

Where the artifact comes from: SPARSEREC_ARTIFACT (`python -m serving --artifact`) when set; else,
in a Bento built by `sparserec bento` (`make bento`), the BentoML model the Bento was built with
(`bentoml build --arg artifact_model=NAME:VERSION`: the service declares it as a
`bentoml.models.BentoModel` class attribute, so the Bento records it, `bentoml containerize`
copies it into the image, and `bentoml.use_arguments()` gives the tag back when the Bento is
loaded). The bind address is SPARSEREC_HOST when set, 0.0.0.0 inside a BentoML container image,
127.0.0.1 otherwise (`serving.config.bind_host`); `bentoml serve --host` overrides it.

Each worker process loads and verifies the artifact in `__init__`. A missing, altered or
truncated artifact is logged as "refusing to start: ..." (naming the file) and the worker exits;
BentoML's supervisor restarts it, it refuses again, and /readyz never answers 200.
`python -m serving` verifies the artifact before starting the server and exits with status 2.

Adaptive batching is BentoML's documented one: `/recommend_batch` is `@bentoml.api(batchable=True,
max_batch_size=..., max_latency_ms=...)` over a list of queries, so BentoML's dispatcher merges
concurrent calls into one index search. `/recommend` is a thin non-batched endpoint: while other
queries are in flight it posts its query to `/recommend_batch` in-process (an httpx ASGI transport
over the app `serving.guard` wraps), so it joins the dispatcher's queue. Not `self.to_async`:
in BentoML 1.4.40 that client (aiohttp, `_bentoml_impl/client/proxy2.py`) closes its session every
100 calls while others are still in flight on it; measured here, 100 of 300 simultaneous
/recommend calls failed that way. A query that arrives alone is answered at once, because the
dispatcher would have nothing to batch it with and its learned wait (the mean queueing time of
recent batches) outlives a burst.

Batching a single query costs a second pass through BentoML's API machinery (validation,
serialisation, the dispatcher's polling), measured at 2-3x the CPU of a whole /ping request, while
a search on a small catalogue costs less than that (ML-100K: ~0.1-0.3 ms). Under saturation
(`python -m loadtest saturation`, 40 users on each endpoint; results/loadtest-saturation*.md)
batching every concurrent /recommend gave 0.43x /ping's requests/s. So SPARSEREC_BATCH_ROUTE=auto
(the default) batches single queries only where the search dominates: on the CUDA device, or when
a query measured at start costs >= AUTO_BATCH_MIN_QUERY_MS; `always` and `never` force either way. /recommend_batch calls
are always batched by BentoML. A query kept out of the dispatcher is answered without yielding to
the event loop first: at saturation one `await asyncio.sleep(0)` (which the batching route needs,
to see which queries arrived together) puts the request behind every ready one, and cost 25% of
/recommend's requests/s (0.75x -> 1.00x of /ping's; results/loadtest-saturation.md, its history).

The dispatcher queues rather than sheds: it answers 503 only to a query queued for max_latency_ms
(SPARSEREC_BATCH_MAX_LATENCY_MS, 60 s by default, above the 30 s request timeout). Load shedding
is an option, off by default (SPARSEREC_SHED_IN_FLIGHT, in `serving.guard`).

`serving.guard.RequestGuard` (an ASGI middleware) checks every API request's content type,
encoding and size before BentoML parses it and words the error answers (4xx, never a traceback).
Searches run on the event loop while one is cheap (the warm-up in `__init__` measures a query;
below INLINE_BUDGET_MS in all), in a worker thread otherwise: on ML-100K the thread hop alone cost
more than the search.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import time
from typing import Any, NoReturn

import anyio
import bentoml
import httpx
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.config import ConfigError, ServeConfig, bind_host
from serving.guard import RequestGuard, inner_app
from serving.recommender import Query, Recommendation, Recommender
from serving.schemas import (
    EXAMPLE_QUERY,
    LIMITS,
    BatchRequest,
    RecommendRequest,
    RecommendResponse,
)

# a child of "bentoml": BentoML configures that logger in every server process, so these lines
# land in the server log with its format (a logger of our own would be silenced)
logger = logging.getLogger("bentoml.sparserec")

__all__ = ["SparseRecommender", "EXAMPLE_QUERY"]

# The artifact's folder inside a BentoML model made by `sparserec bento` (beside BentoML's model.yaml).
ARTIFACT_FOLDER = "artifact"
# Exit status of a worker that refuses its artifact (distinct from crashes, for the logs).
EXIT_BAD_ARTIFACT = 3
# Work estimated below this many ms runs on the event loop instead of a worker thread.
INLINE_BUDGET_MS = 10.0
# SPARSEREC_BATCH_ROUTE=auto: single queries join the dispatcher only where a search costs this much.
AUTO_BATCH_MIN_QUERY_MS = 2.0

# What BentoML's decorators need at import: workers, batching, shedding, body limit.
SETTINGS = ServeConfig.import_time()
# GET /info's `sample_user_ids`: at most this many known users, for load tests of a remote server.
SAMPLE_USERS = 100
# The BentoML model a Bento serves: `bentoml build --arg artifact_model=NAME:VERSION` (sparserec.bento);
# bentoml.use_arguments() returns it when the Bento is built and whenever it is loaded.
ARTIFACT_MODEL = getattr(bentoml.use_arguments(), "artifact_model", None) or None


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


async def _info(request: Request) -> JSONResponse:
    """GET /info (BentoML APIs are POST only, so this is a mounted Starlette route)."""
    service = bentoml.get_current_service()
    return JSONResponse(service.info)


info_app = Starlette(routes=[Route("/info", _info, methods=["GET"])])


def _to_response(rec: Recommendation) -> RecommendResponse:
    # one model_validate of plain dicts (pydantic-core) costs a third of model_construct per item
    return RecommendResponse.model_validate({
        "user_id": rec.user_id,
        "items": [{"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores)],
        "fallback": rec.fallback,
    })


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
    workers=SETTINGS.workers,
    http={"host": bind_host()},  # 127.0.0.1 unless SPARSEREC_HOST or a container says otherwise
    traffic={"timeout": 30},
    # BentoML's access log decodes the request's Content-Type as UTF-8 after the answer has started:
    # a header with other bytes dropped the connection (found by the fuzzing test). Not logged.
    logging={"access": {"request_content_type": False}},
)
@bentoml.asgi_app(info_app, path="/")
class SparseRecommender:
    """Top-K recommendation from a sparserec artifact (see the module docstring)."""

    if ARTIFACT_MODEL:  # a Bento built by `sparserec bento`: the artifact is this BentoML model
        artifact_model = bentoml.models.BentoModel(ARTIFACT_MODEL)

    def __init__(self) -> None:
        from export.artifact import ArtifactError, load_artifact

        env = dict(os.environ)
        self.artifact_source = "SPARSEREC_ARTIFACT"
        if not env.get("SPARSEREC_ARTIFACT") and ARTIFACT_MODEL:
            try:
                env["SPARSEREC_ARTIFACT"] = self.artifact_model.path_of(ARTIFACT_FOLDER)
            except Exception as exc:  # noqa: BLE001 (BentoML raises its own NotFound/BentoMLException)
                _refuse("BentoML model %s: %s: %s", ARTIFACT_MODEL, type(exc).__name__, exc)
            self.artifact_source = f"BentoML model {ARTIFACT_MODEL}"
        try:
            config = ServeConfig.from_env(env)
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
            self.model = Recommender.from_artifact(artifact, device=config.device, mmap=config.mmap)
        except ImportError as exc:
            _refuse("SPARSEREC_DEVICE=%s needs torch, which is not installed (%s)", config.device, exc)
        except Exception as exc:  # anything here would only restart the worker into the same failure
            _refuse("cannot serve %s on %s: %s: %s", config.artifact, config.device, type(exc).__name__, exc)

        LIMITS.max_k = min(config.max_k, self.model.n_items)
        LIMITS.max_batch = config.max_batch
        self.info = self._describe(artifact)
        self.info["sample_user_ids"] = sample_user_ids(artifact)
        self._in_flight = 0  # /recommend calls being answered by this worker
        # since start, this worker: queries answered alone, dispatcher batches and their queries
        self.stats = {"direct_queries": 0, "batches": 0, "batched_queries": 0, "largest_batch": 0}
        self.info["serving"]["stats"] = self.stats  # the same dict: /info shows live counts
        self._limiter = anyio.CapacityLimiter(1)
        self._batch_client: httpx.AsyncClient | None = None  # made on first use (see below)
        self.query_ms = self._warm_up()
        self.info["serving"]["query_ms_at_start"] = round(self.query_ms, 4)
        # Whether a /recommend that arrives while others are in flight goes through the dispatcher
        # (see the module docstring for why `auto` keeps cheap searches out of it).
        self.batch_single_queries = config.batch_route == "always" or (
            config.batch_route == "auto" and (config.device == "cuda" or self.query_ms >= AUTO_BATCH_MIN_QUERY_MS))
        self.info["serving"]["batch_route"] = {"setting": config.batch_route,
                                               "single_queries_batched": self.batch_single_queries}
        logger.info(
            "serving %s: %s, %d users, %d items, dim %d, index %s, values %s, device %s, "
            "threads %d, max_k %d, max_batch %d, batching max_size %d max_latency_ms %d, "
            "shedding %s, %.3f ms a query at start, concurrent /recommend %s",
            config.artifact, artifact.model_kind, artifact.n_users, artifact.n_items, artifact.dim,
            artifact.index_kind, artifact.value_dtype, config.device, config.threads,
            LIMITS.max_k, LIMITS.max_batch, SETTINGS.batch_max_size, SETTINGS.batch_max_latency_ms,
            f"above {SETTINGS.shed_in_flight} in flight" if SETTINGS.shed_in_flight else "off",
            self.query_ms, "batched" if self.batch_single_queries else "answered directly",
        )

    def _describe(self, artifact: Any) -> dict[str, Any]:
        info = artifact.summary()
        manifest = artifact.manifest
        # the per-epoch history stays in the manifest; /info keeps the final figures
        info["metrics"] = {k: v for k, v in manifest.training.metrics.items() if k != "history"}
        info["quality"] = manifest.quality
        info["index"]["served"] = self.model.describe_index()  # layout, bytes, non-zeros, device
        cfg = self.config
        info["serving"] = {
            "artifact": str(cfg.artifact),
            "artifact_source": self.artifact_source,
            "device": cfg.device,
            "threads": cfg.threads,
            "workers": cfg.workers,
            "max_k": LIMITS.max_k,
            "max_batch": LIMITS.max_batch,
            "adaptive_batching": {
                "max_batch_size": SETTINGS.batch_max_size,
                "max_latency_ms": SETTINGS.batch_max_latency_ms,
            },
            "shed_in_flight": SETTINGS.shed_in_flight or None,
            "max_body_bytes": SETTINGS.max_body_bytes,
            "mmap": cfg.mmap,
            # a shard part's item range (export.shards), else None
            "shard": None if manifest.shard is None else dataclasses.asdict(manifest.shard),
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

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True) -> RecommendResponse:
        """Top-k items for one user, highest score first (concurrent ones may share a batch:
        SPARSEREC_BATCH_ROUTE)."""
        if not self.batch_single_queries:  # batching does not pay here (see the module docstring)
            self.stats["direct_queries"] += 1
            return _to_response((await self._run([Query(user_id, k, exclude_seen)]))[0])
        self._in_flight += 1
        try:
            # Yield once so that requests arriving together all count themselves in flight.
            await asyncio.sleep(0)
            if self._in_flight == 1:  # alone: answer at once
                self.stats["direct_queries"] += 1
                return _to_response((await self._run([Query(user_id, k, exclude_seen)]))[0])
            return await self._through_batching({"user_id": user_id, "k": k, "exclude_seen": exclude_seen})
        finally:
            self._in_flight -= 1

    async def _through_batching(self, query: dict[str, Any]) -> RecommendResponse:
        """POST one query to /recommend_batch in-process, so BentoML's dispatcher batches it."""
        if self._batch_client is None:
            app = inner_app()
            if app is None:  # not under a BentoML server (an in-process test): no dispatcher
                return _to_response((await self._run([Query(**query)]))[0])
            self._batch_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                   base_url="http://sparserec.in-process", timeout=None)
        response = await self._batch_client.post("/recommend_batch", json={"queries": [query]})
        if response.status_code == 503:
            raise ServiceUnavailable("overloaded: the batching dispatcher shed the query")
        if response.status_code != 200:
            raise RuntimeError(f"/recommend_batch answered {response.status_code} to a valid query: "
                               f"{response.text[:300]}")
        return RecommendResponse.model_validate(response.json()[0])

    @bentoml.api(route="/recommend_batch", input_spec=BatchRequest, batchable=True,
                 max_batch_size=SETTINGS.batch_max_size, max_latency_ms=SETTINGS.batch_max_latency_ms)
    async def recommend_batch(self, queries: list[RecommendRequest]) -> list[RecommendResponse]:
        """Top-k items for each query, in order. Concurrent calls (and /recommend calls made
        while others are in flight) are merged by BentoML's adaptive batching into one search:
        one index search per class of k + seen items, a handful whatever the batch size."""
        self.stats["batches"] += 1
        self.stats["batched_queries"] += len(queries)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(queries))
        found = await self._run([Query(q.user_id, q.k, q.exclude_seen) for q in queries])
        return [_to_response(rec) for rec in found]

    @bentoml.api(route="/ping")
    async def ping(self) -> dict[str, bool]:
        """A constant answer: the cost of BentoML's HTTP path alone, for benchmarks."""
        return {"ok": True}

    @bentoml.on_shutdown
    async def _close_batch_client(self) -> None:
        if self._batch_client is not None:
            await self._batch_client.aclose()


SparseRecommender.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=SETTINGS.max_body_bytes,
    shed_in_flight=SETTINGS.shed_in_flight,
    retry_after_s=SETTINGS.retry_after_s,
)
