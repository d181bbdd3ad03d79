"""The sparserec BentoML service: top-K items for a user over HTTP.

    SPARSEREC_ARTIFACT=artifacts/ml100k bentoml serve serving.service:SparseRecommender --port 3000
    python -m serving --artifact artifacts/ml100k --port 3000          # the same, with flags
    curl -s localhost:3000/recommend -H 'content-type: application/json' \\
         -d '{"user_id": "196", "k": 10, "exclude_seen": true}'
    curl -s localhost:3000/recommend_batch -H 'content-type: application/json' \\
         -d '{"queries": [{"user_id": "196", "k": 5}, {"user_id": "186"}]}'
    curl -s localhost:3000/info
    python -c 'import bentoml; print(bentoml.SyncHTTPClient("http://127.0.0.1:3000").recommend(user_id="196", k=10))'

Endpoints (docs/api.md has a curl example of each): POST /recommend (user_id or history, k,
exclude_seen, exclude_items, allow_items), POST /recommend_batch (`{"queries": [...]}` -> a list
of answers), POST /similar_items and /similar_items_batch, POST /admin/reload (serving.reload),
GET /info, POST /ping (a constant, to measure BentoML's own cost), and BentoML's /livez, /readyz,
/metrics (with ours: serving.metrics), /docs.json, Swagger UI at /. Every answer names its
artifact version in the body and the X-Sparserec-Artifact header. Configuration is by environment
variables, listed in `serving.config`
(`python -m serving --help` gives each its flag).

`GET /info` includes `sample_user_ids`: at most `serving.answers.SAMPLE_USERS` user ids the artifact knows, spread
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
serialisation, the dispatcher's polling), more than a search on a small catalogue
(results/loadtest-saturation*.md). So SPARSEREC_BATCH_ROUTE=auto (the default) batches single
queries only where the search dominates: on the CUDA device, or when a query measured at start
costs >= AUTO_BATCH_MIN_QUERY_MS; `always` and `never` force either way. /recommend_batch calls
are always batched by BentoML. A query kept out of the dispatcher is answered without yielding to
the event loop first: one `await asyncio.sleep(0)` (which the batching route needs, to see which
queries arrived together) would put it behind every ready request.

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
import hmac
import logging
import os
import time
from typing import Any

import anyio
import bentoml
import httpx
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.answers import answer_items, describe, observe, sample_user_ids, to_query, to_response, warm_up
from serving.config import ConfigError, ServeConfig, bind_host
from serving.guard import RequestGuard, inner_app
from serving.header_timeout import install_header_timeout
from serving.metrics import service_metrics
from serving.recommender import Query, QueryError, Recommendation, Recommender, SimilarQuery
from serving.reload import (
    ArtifactHeader,
    ReloadFollower,
    Served,
    file_stamp,
    load_served,
    read_desired,
    version_label,
    write_desired,
)
from serving.schemas import (
    EXAMPLE_QUERY,
    LIMITS,
    BatchRequest,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SimilarBatchRequest,
    SimilarRequest,
    SimilarResponse,
)
from serving.startup import ARTIFACT_FOLDER, log_start, refuse, stored_artifact

# a child of "bentoml": BentoML configures that logger in every server process, so these lines
# land in the server log with its format (a logger of our own would be silenced)
logger = logging.getLogger("bentoml.sparserec")

__all__ = ["SparseRecommender", "EXAMPLE_QUERY"]

# Work estimated below this many ms runs on the event loop instead of a worker thread.
INLINE_BUDGET_MS = 10.0
# SPARSEREC_BATCH_ROUTE=auto: single queries join the dispatcher only where a search costs this much.
AUTO_BATCH_MIN_QUERY_MS = 2.0

# What BentoML's decorators need at import: workers, batching, shedding, body limit.
SETTINGS = ServeConfig.import_time()
# uvicorn's protocol class is resolved when a worker's server runs, after this import
install_header_timeout(SETTINGS.header_timeout_s)
# The BentoML model a Bento serves: `bentoml build --arg artifact_model=NAME:VERSION` (sparserec.bento);
# bentoml.use_arguments() returns it when the Bento is built and whenever it is loaded.
ARTIFACT_MODEL = getattr(bentoml.use_arguments(), "artifact_model", None) or None


async def _info(request: Request) -> JSONResponse:
    """GET /info (BentoML APIs are POST only, so this is a mounted Starlette route)."""
    service = bentoml.get_current_service()
    return JSONResponse(service.describe())


info_app = Starlette(routes=[Route("/info", _info, methods=["GET"])])

# Answers that carry an artifact version, and so the X-Sparserec-Artifact header.
VERSIONED_ROUTES = frozenset(
    {"/recommend", "/recommend_batch", "/similar_items", "/similar_items_batch", "/admin/reload"}
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


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
class SparseRecommender(ReloadFollower):
    """Top-K recommendation from a sparserec artifact (see the module docstring)."""

    if ARTIFACT_MODEL:  # a Bento built by `sparserec bento`: the artifact is this BentoML model
        artifact_model = bentoml.models.BentoModel(ARTIFACT_MODEL)

    def __init__(self) -> None:
        from export.artifact import ArtifactError

        env = dict(os.environ)
        self.artifact_source = "SPARSEREC_ARTIFACT"
        if not env.get("SPARSEREC_ARTIFACT") and ARTIFACT_MODEL:
            try:
                env["SPARSEREC_ARTIFACT"] = str(stored_artifact(self.artifact_model.path_of(ARTIFACT_FOLDER)))
            except Exception as exc:  # noqa: BLE001 (BentoML raises its own NotFound/BentoMLException)
                refuse("BentoML model %s: %s: %s", ARTIFACT_MODEL, type(exc).__name__, exc)
            self.artifact_source = f"BentoML model {ARTIFACT_MODEL}"
        try:
            config = ServeConfig.from_env(env)
        except ConfigError as exc:
            refuse("%s", exc)
        self.config = config
        try:
            if config.device == "cpu":
                from serving.backends import set_cpu_threads

                set_cpu_threads(config.threads)
            else:
                import torch  # the GPU path only

                torch.set_num_threads(config.threads)
        except ImportError as exc:
            refuse("SPARSEREC_DEVICE=%s needs torch, which is not installed (%s)", config.device, exc)
        served = None
        desired = read_desired(config.reload_file)
        if desired is not None:  # a reload happened before this worker (re)started: serve that one
            try:
                served = self._load(desired[0])
            except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
                logger.error(
                    "the reloaded artifact %s failed verification in this worker (%s: %s); serving SPARSEREC_ARTIFACT",
                    desired[0],
                    type(exc).__name__,
                    exc,
                )
        if served is None:
            try:
                served = self._load(config.artifact)
            except ArtifactError as exc:
                refuse("artifact failed verification: %s", exc)
            except Exception as exc:  # noqa: BLE001 (anything here would only restart the worker into the same failure)
                refuse("cannot serve %s on %s: %s: %s", config.artifact, config.device, type(exc).__name__, exc)
        self.served: Served = served  # replaced whole by a reload (serving.reload)
        self._reload_stamp = file_stamp(config.reload_file)
        self._next_reload_check = 0.0
        self._reloading = False

        LIMITS.max_k = min(config.max_k, served.model.n_items)
        LIMITS.max_batch = config.max_batch
        LIMITS.max_filter_items = config.max_filter_items
        LIMITS.max_history = config.max_history
        LIMITS.check_items = self._check_items
        self._in_flight = 0  # /recommend calls being answered by this worker
        # since start, this worker only (the totals over workers are in /metrics)
        self.stats = {"direct_queries": 0, "batches": 0, "batched_queries": 0, "largest_batch": 0}
        self._limiter = anyio.CapacityLimiter(1)
        self._batch_client: httpx.AsyncClient | None = None  # made on first use (see below)
        self.query_ms = served.query_ms
        # Whether a /recommend that arrives while others are in flight goes through the dispatcher
        # (see the module docstring for why `auto` keeps cheap searches out of it).
        self.batch_single_queries = config.batch_route == "always" or (
            config.batch_route == "auto" and (config.device == "cuda" or self.query_ms >= AUTO_BATCH_MIN_QUERY_MS)
        )
        log_start(served, config, SETTINGS, self.query_ms, self.batch_single_queries)

    @property
    def model(self) -> Recommender:
        """The recommender being served now."""
        return self.served.model

    def _load(self, path: str) -> Served:
        cfg = self.config
        return load_served(path, cfg.device, cfg.mmap, cfg.fold_in_lambda, warm_up)

    def _sample_user_ids(self, served: Served) -> list[str]:
        """`sample_user_ids` of the served artifact, computed once per artifact."""
        cached = getattr(self, "_samples", None)
        if cached is None or cached[0] != served.version["sha256"]:
            cached = self._samples = (served.version["sha256"], sample_user_ids(served.artifact))
        return cached[1]

    def _check_items(self, ids: list[str]) -> None:
        self.served.model.item_rows(ids, "")  # QueryError (a ValueError) names the unknown ids

    def describe(self) -> dict[str, Any]:
        """GET /info: the served artifact's summary, its version, this worker's settings and counts."""
        self._poll_reload()
        served = self.served
        return describe(
            served,
            self.config,
            SETTINGS,
            artifact_source=self.artifact_source,
            sample_user_ids=self._sample_user_ids(served),
            stats=dict(self.stats),
            batch_single_queries=self.batch_single_queries,
        )

    @bentoml.api(route="/admin/reload", input_spec=ReloadRequest)
    async def admin_reload(self, artifact: str, ctx: bentoml.Context) -> ReloadResponse:
        """Serve another artifact, verified fully first; every worker follows (serving.reload).
        Localhost callers only, or `Authorization: Bearer $SPARSEREC_ADMIN_TOKEN` where that is set."""
        from export.artifact import ArtifactError

        request = ctx.request
        token = self.config.admin_token
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                ctx.response.status_code = 403  # BentoML sets a ctx method's status from here
                return JSONResponse(
                    {"error": "reload refused: send Authorization: Bearer <SPARSEREC_ADMIN_TOKEN>"}, status_code=403
                )  # type: ignore[return-value]
        elif request.client is None or request.client.host not in LOCAL_HOSTS:
            ctx.response.status_code = 403
            return JSONResponse(
                {"error": "reload refused: only callers on localhost may reload (or set SPARSEREC_ADMIN_TOKEN)"},
                status_code=403,
            )  # type: ignore[return-value]
        old = self.served
        try:
            served = await anyio.to_thread.run_sync(self._load, artifact)
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            service_metrics().reloads.labels(outcome="refused").inc()
            logger.error("reload of %s refused, still serving %s: %s: %s", artifact, old.label, type(exc).__name__, exc)
            ctx.response.status_code = 400
            return JSONResponse(
                {
                    "error": f"reload refused, still serving {old.version['name']} "
                    f"({old.version['sha256']}): {type(exc).__name__}: {exc}",
                    "artifact": old.version,
                },
                status_code=400,
            )  # type: ignore[return-value]
        write_desired(self.config.reload_file, served)  # the other workers follow (serving.reload)
        self.served = served  # the swap: one reference assignment
        self._reload_stamp = None  # re-read the file at the next check (another reload may follow)
        service_metrics().reloads.labels(outcome="swapped").inc()
        logger.info("reloaded: %s -> %s (%s)", old.label, served.label, served.path)
        return ReloadResponse.model_validate({"artifact": served.version, "previous": old.version, "path": served.path})

    # -- answering
    async def _run(self, served: Served, queries: list[Query], endpoint: str) -> list[Recommendation]:
        """Answer queries on the event loop when that is cheaper than a thread hop, else in a thread.

        Handing work to a thread costs ~0.5-1 ms of scheduling, more than a small catalogue's
        whole search (ML-100K: ~0.1 ms a query), while a large catalogue's search (tens of ms)
        must not stall the loop that parses the next requests.
        """
        start = time.perf_counter()
        try:
            if served.query_ms * len(queries) <= INLINE_BUDGET_MS:
                found = served.model.recommend(queries)
            else:
                found = await anyio.to_thread.run_sync(served.model.recommend, queries, limiter=self._limiter)
        except QueryError as exc:  # ids are checked while parsing; this is a catalogue changed by a reload
            raise InvalidArgument(str(exc)) from None
        observe(served, endpoint, queries, found, time.perf_counter() - start)
        return found

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(
        self,
        user_id: str | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: list[str] | None = None,
        allow_items: list[str] | None = None,
        history: list[str] | None = None,
    ) -> RecommendResponse:
        """Top-k items for one user (known: user_id; new: history), highest first, with optional
        exact filters (concurrent ones may share a batch: SPARSEREC_BATCH_ROUTE)."""
        started = time.perf_counter()
        self._poll_reload()
        fields = {
            "user_id": user_id,
            "k": k,
            "exclude_seen": exclude_seen,
            "exclude_items": exclude_items,
            "allow_items": allow_items,
            "history": history,
        }
        answer = await self._recommend_one(fields)
        service_metrics().request_seconds.labels(
            endpoint="/recommend", artifact=version_label(answer.artifact.model_dump())
        ).observe(time.perf_counter() - started)
        return answer

    async def _recommend_one(self, fields: dict[str, Any]) -> RecommendResponse:
        if not self.batch_single_queries:  # batching does not pay here (see the module docstring)
            self.stats["direct_queries"] += 1
            served = self.served
            return to_response((await self._run(served, [to_query(fields)], "/recommend"))[0], served.version)
        self._in_flight += 1
        try:
            # Yield once so that requests arriving together all count themselves in flight.
            await asyncio.sleep(0)
            if self._in_flight == 1:  # alone: answer at once
                self.stats["direct_queries"] += 1
                served = self.served
                return to_response((await self._run(served, [to_query(fields)], "/recommend"))[0], served.version)
            return await self._through_batching({key: v for key, v in fields.items() if v is not None})
        finally:
            self._in_flight -= 1

    async def _through_batching(self, query: dict[str, Any]) -> RecommendResponse:
        """POST one query to /recommend_batch in-process, so BentoML's dispatcher batches it."""
        if self._batch_client is None:
            app = inner_app()
            if app is None:  # not under a BentoML server (an in-process test): no dispatcher
                served = self.served
                return to_response((await self._run(served, [to_query(query)], "/recommend"))[0], served.version)
            self._batch_client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://sparserec.in-process", timeout=None
            )
        response = await self._batch_client.post("/recommend_batch", json={"queries": [query]})
        if response.status_code == 503:
            raise ServiceUnavailable("overloaded: the batching dispatcher shed the query")
        if response.status_code == 400:  # an id unknown to an artifact swapped in meanwhile
            raise InvalidArgument(response.json().get("error", response.text[:300]))
        if response.status_code != 200:
            raise RuntimeError(
                f"/recommend_batch answered {response.status_code} to a valid query: {response.text[:300]}"
            )
        return RecommendResponse.model_validate(response.json()[0])

    @bentoml.api(
        route="/recommend_batch",
        input_spec=BatchRequest,
        batchable=True,
        max_batch_size=SETTINGS.batch_max_size,
        max_latency_ms=SETTINGS.batch_max_latency_ms,
    )
    async def recommend_batch(self, queries: list[RecommendRequest]) -> list[RecommendResponse]:
        """Top-k items for each query, in order. Concurrent calls (and /recommend calls made
        while others are in flight) are merged by BentoML's adaptive batching into one search:
        one index search per class of k + seen items, a handful whatever the batch size."""
        started = time.perf_counter()
        self._poll_reload()
        self.stats["batches"] += 1
        self.stats["batched_queries"] += len(queries)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(queries))
        served = self.served  # one artifact answers the whole batch
        found = await self._run(served, [to_query(q) for q in queries], "/recommend_batch")
        answers = [to_response(rec, served.version) for rec in found]
        service_metrics().request_seconds.labels(endpoint="/recommend_batch", artifact=served.label).observe(
            time.perf_counter() - started
        )
        return answers

    async def _similar(self, queries: list[SimilarRequest], endpoint: str) -> list[SimilarResponse]:
        started = time.perf_counter()
        self._poll_reload()
        served = self.served
        asked = [SimilarQuery(q.item_id, q.k, q.metric, tuple(q.exclude_items or ())) for q in queries]
        try:
            if served.query_ms * len(asked) <= INLINE_BUDGET_MS:
                found = served.model.similar_items(asked)
            else:
                found = await anyio.to_thread.run_sync(served.model.similar_items, asked, limiter=self._limiter)
        except QueryError as exc:
            raise InvalidArgument(str(exc)) from None
        observe(served, endpoint, asked, found, time.perf_counter() - started)
        answers = [
            SimilarResponse.model_validate(
                {"artifact": served.version, "item_id": rec.user_id, "items": answer_items(rec)}
            )
            for rec in found
        ]
        service_metrics().request_seconds.labels(endpoint=endpoint, artifact=served.label).observe(
            time.perf_counter() - started
        )
        return answers

    @bentoml.api(route="/similar_items", input_spec=SimilarRequest)
    async def similar_items(
        self, item_id: str, k: int = 10, metric: str = "inner_product", exclude_items: list[str] | None = None
    ) -> SimilarResponse:
        """The k items most like `item_id` (never itself): its served vector is the query."""
        request = SimilarRequest.model_construct(item_id=item_id, k=k, metric=metric, exclude_items=exclude_items)
        return (await self._similar([request], "/similar_items"))[0]

    @bentoml.api(route="/similar_items_batch", input_spec=SimilarBatchRequest)
    async def similar_items_batch(self, queries: list[SimilarRequest]) -> list[SimilarResponse]:
        """/similar_items for each query, in order."""
        return await self._similar(queries, "/similar_items_batch")

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
    body_timeout_s=SETTINGS.body_timeout_s,
)
SparseRecommender.add_asgi_middleware(ArtifactHeader, routes=VERSIONED_ROUTES)
