"""The shard router: one BentoML service in front of S shard services, answering as one catalogue.

    python -m serving --artifact artifacts/mf --shards 2 --port 3000   # S shards + this router
    SPARSEREC_SHARD_URLS=http://10.0.0.1:3000,http://10.0.0.2:3000 \\
        bentoml serve serving.router:ShardRouter --port 3000             # shards deployed elsewhere

Each shard is an ordinary `serving.service:SparseRecommender` serving one part written by
`python -m export ... --shards S` (export.shards): items [start, stop) of the catalogue in its
index, the whole catalogue's ids, seen items and popularity. Each shard is a
`bentoml.depends(url=..., on=SparseRecommender)` of this service (BentoML's remote dependency),
one per URL in SPARSEREC_SHARD_URLS, read at import like the other settings; the calls go through
an httpx client per shard (see `ShardRouter.__init__` for why not the dependency's own). A query
is sent to every shard at once (`asyncio.gather`): a /recommend to each shard's /recommend, a
/recommend_batch to each shard's /recommend_batch. Not every query to /recommend_batch: a shard's
batched endpoint goes through BentoML's dispatcher, which holds a lone query for its learned wait
(on the 1M-item artifact that made the router add ~200 ms to an idle /recommend,
results/loadtest-shards.md), while a shard's /recommend answers a lone query at once and batches
concurrent ones itself (SPARSEREC_BATCH_ROUTE). A shard over-fetches k + n_seen from its own items and drops the user's seen
items itself, so its k best unseen items are exact; the router keeps the k best of the S lists
(score descending; equal scores in shard order, i.e. lower catalogue rows first). For flat and
sparse indexes this equals the unsharded service's answer (tested over HTTP). An unknown user
gets the popularity list, which every shard computes over the whole catalogue: shard 0's.

The router validates a query as a shard would, with the same limits: k <= min(SPARSEREC_MAX_K,
n_items), n_items read from the whole artifact's manifest (SPARSEREC_ARTIFACT, which
`python -m serving --shards` sets) or, without one, the smallest `max_k` of the shards' /info.
A 4xx from a shard is passed on as that 4xx with the shard's words. A shard that is down, fails,
or takes longer than SPARSEREC_SHARD_TIMEOUT_S (default 10) makes the router answer 503 naming
the shard and its URL; never a partial list. /readyz is 200
only when every shard's /readyz is (BentoML probes remote dependencies; `__is_ready__` does it
too, logging which shard is not ready).

`GET /info` describes the deployment as one server: shard 0's summary of the artifact (each part
holds the whole catalogue's users, `n_users` and `n_items`), its `sample_user_ids` (so
`python -m loadtest run --host ROUTER_URL` finds known users, as against a plain server), the
router's limits, and each shard's URL, item range, artifact version and index. A shard whose
/info fails makes it a 503 naming the shard.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import bentoml
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.guard import RequestGuard
from serving.reload import ArtifactHeader
from serving.schemas import (
    LIMITS,
    BatchRequest,
    RecommendRequest,
    RecommendResponse,
    SimilarBatchRequest,
    SimilarRequest,
    SimilarResponse,
)
from serving.service import SETTINGS, VERSIONED_ROUTES, SparseRecommender

logger = logging.getLogger("bentoml.sparserec.router")

__all__ = ["ShardRouter", "SHARD_URLS", "merge_answers"]


def _shard_urls(env: dict[str, str] | os._Environ = os.environ) -> list[str]:
    urls = [u.strip().rstrip("/") for u in env.get("SPARSEREC_SHARD_URLS", "").split(",") if u.strip()]
    # `bentoml build` imports this module with no shards configured: one placeholder dependency
    return urls or ["http://127.0.0.1:3001"]


SHARD_URLS = _shard_urls()
SHARD_TIMEOUT_S = float(os.environ.get("SPARSEREC_SHARD_TIMEOUT_S", "10"))


class ShardFailed(Exception):
    """One or more shards failed or timed out; the message names them."""


class ShardRejected(Exception):
    """A shard answered a client error (4xx): the query itself is wrong; passed on as it is."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {str(body)[:200]}")
        self.status = status
        self.body = body


def _rejected(exc: ShardRejected) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status)


def router_max_k(urls: list[str], max_k: int, artifact: str | None, timeout_s: float = 5.0) -> int:
    """The k limit a shard applies: min(max_k, n_items) from the artifact's manifest, else the
    smallest `max_k` the shards report on /info (``max_k`` alone if neither is there)."""
    from export.artifact import ArtifactError, read_manifest

    if artifact and artifact != "-":
        try:
            return min(max_k, int(read_manifest(artifact).n_items))
        except (ArtifactError, OSError, KeyError, TypeError, ValueError) as exc:
            logger.warning("cannot read n_items from %s (%s): asking the shards", artifact, exc)
    limits = []
    for url in urls:
        try:
            limits.append(int(httpx.get(url + "/info", timeout=timeout_s).json()["serving"]["max_k"]))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            logger.warning("cannot read max_k from %s/info (%s)", url, exc)
    return min([max_k, *limits])


def _unavailable(exc: ShardFailed) -> JSONResponse:
    # A JSONResponse, not BentoML's ServiceUnavailable: BentoML words every 5xx exception as
    # "An unexpected error has occurred" (_bentoml_impl/server/app.py), hiding the shard's name.
    return JSONResponse({"error": f"shard unavailable: {exc}"}, status_code=503, headers={"Retry-After": "1"})


def merge_answers(answers: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """One query's answers from every shard (shard order) -> the k best items of all.

    Each answer is a /recommend answer dict (``user_id``, ``items`` [{item_id, score}], ``fallback``).
    """
    if any(a.get("fallback") for a in answers):  # unknown user: every shard has the same popularity list
        return answers[0]
    items = [item for answer in answers for item in answer["items"]]
    items.sort(key=lambda item: -item["score"])  # stable: ties keep shard order
    # every other field (user_id or item_id, artifact: shard 0's version, folded_in) from shard 0
    return {**answers[0], "items": items[:k]}


async def _info(request: Request) -> JSONResponse:
    """GET /info (BentoML APIs are POST only, so this is a mounted Starlette route)."""
    router = bentoml.get_current_service()
    try:
        return JSONResponse(await router.describe())
    except ShardFailed as exc:
        return _unavailable(exc)


info_app = Starlette(routes=[Route("/info", _info, methods=["GET"])])


class ShardRouter:
    """Fans each query out to the shard services and merges their top-k (module docstring)."""

    def __init__(self) -> None:
        self.urls = list(SHARD_URLS)
        self.names = [f"shard_{i}" for i in range(len(self.urls))]
        # The calls go through one long-lived httpx client per shard, not the dependency's own
        # client: in BentoML 1.4.40 that one (aiohttp, _bentoml_impl/client/proxy2.py) closes its
        # session every 100 requests while others are in flight on it; under locust 3 of 310
        # routed queries failed that way ("ServerDisconnectedError"). The dependencies still
        # declare the shards (BentoML's /readyz probes them; __is_ready__ below).
        self._clients: list[httpx.AsyncClient | None] = [None] * len(self.urls)
        LIMITS.max_k = router_max_k(self.urls, SETTINGS.max_k, os.environ.get("SPARSEREC_ARTIFACT"))
        LIMITS.max_batch = SETTINGS.max_batch
        logger.info(
            "routing over %d shards: %s (max_k %d, max_batch %d)",
            len(self.urls),
            ", ".join(self.urls),
            LIMITS.max_k,
            LIMITS.max_batch,
        )

    def _shards(self) -> list[Any]:
        return [getattr(self, name) for name in self.names]

    def _client(self, i: int) -> httpx.AsyncClient:
        if self._clients[i] is None:
            self._clients[i] = httpx.AsyncClient(
                base_url=self.urls[i],
                timeout=SHARD_TIMEOUT_S,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
        return self._clients[i]

    async def _ask(
        self, i: int, queries: list[dict[str, Any]], single: bool = False, route: str = "/recommend"
    ) -> list[dict[str, Any]]:
        """Shard ``i``'s answers to ``queries``; ``single``: one query, sent to the shard's `route`
        (else to `route`_batch)."""
        where = f"shard {i} ({self.urls[i]})"
        if single and len(queries) != 1:
            raise ValueError(f"single=True takes one query, got {len(queries)}")
        call = (
            self._client(i).post(route, json=queries[0])
            if single
            else self._client(i).post(route + "_batch", json={"queries": queries})
        )
        try:
            response = await asyncio.wait_for(call, SHARD_TIMEOUT_S)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise ShardFailed(f"{where} did not answer within {SHARD_TIMEOUT_S:g} s") from None
        except httpx.HTTPError as exc:  # connection refused or dropped
            raise ShardFailed(f"{where} failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text[:500]}
            raise ShardRejected(response.status_code, body)
        if response.status_code != 200:
            raise ShardFailed(f"{where} answered {response.status_code}: {response.text[:200]}")
        found = response.json()
        if single:
            found = [found]
        if not isinstance(found, list) or len(found) != len(queries):
            raise ShardFailed(f"{where} answered {type(found).__name__} for {len(queries)} queries")
        return found

    async def _fan_out(
        self, queries: list[dict[str, Any]], single: bool = False, route: str = "/recommend"
    ) -> list[dict[str, Any]]:
        results = await asyncio.gather(
            *(self._ask(i, queries, single, route) for i in range(len(self.urls))), return_exceptions=True
        )
        rejected = [r for r in results if isinstance(r, ShardRejected)]
        if rejected:  # the query is wrong wherever it goes: the client hears why
            raise rejected[0]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # never a partial list: name every shard that failed
            message = "; ".join(str(r) for r in failed)
            logger.warning("answering 503: %s", message)
            raise ShardFailed(message)
        return [
            merge_answers([shard_answers[j] for shard_answers in results], int(q["k"])) for j, q in enumerate(queries)
        ]

    async def _shard_info(self, i: int) -> dict[str, Any]:
        where = f"shard {i} ({self.urls[i]})"
        try:
            response = await asyncio.wait_for(self._client(i).get("/info"), SHARD_TIMEOUT_S)
            response.raise_for_status()
            info = response.json()
        except (asyncio.TimeoutError, httpx.HTTPError, ValueError) as exc:
            raise ShardFailed(f"{where}: GET /info failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(info, dict):
            raise ShardFailed(f"{where}: GET /info answered {type(info).__name__}, not an object")
        return info

    async def describe(self) -> dict[str, Any]:
        """GET /info: the deployment as one server (module docstring)."""
        infos = await asyncio.gather(*(self._shard_info(i) for i in range(len(self.urls))), return_exceptions=True)
        failed = [r for r in infos if isinstance(r, BaseException)]
        if failed:
            raise ShardFailed("; ".join(str(r) for r in failed))
        # every part holds the whole catalogue's users, seen items and counts: shard 0 speaks for them
        info = {key: value for key, value in infos[0].items() if key not in ("index", "serving")}
        info["serving"] = {
            "router": True,
            "max_k": LIMITS.max_k,
            "max_batch": LIMITS.max_batch,
            "shard_timeout_s": SHARD_TIMEOUT_S,
            "shards": [
                {
                    "url": url,
                    "shard": (shard.get("serving") or {}).get("shard"),
                    "artifact": shard.get("artifact"),
                    "index": shard.get("index"),
                }
                for url, shard in zip(self.urls, infos)
            ],
        }
        return info

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
        """Top-k items for one user over every shard's items (filters and history are applied by
        each shard to its own items, so the merged top-k is exact)."""
        query = {
            key: value
            for key, value in {
                "user_id": user_id,
                "k": k,
                "exclude_seen": exclude_seen,
                "exclude_items": exclude_items,
                "allow_items": allow_items,
                "history": history,
            }.items()
            if value is not None
        }
        try:
            merged = await self._fan_out([query], single=True)
        except ShardRejected as exc:
            return _rejected(exc)  # type: ignore[return-value]
        except ShardFailed as exc:
            return _unavailable(exc)  # type: ignore[return-value]
        return RecommendResponse.model_validate(merged[0])

    @bentoml.api(route="/recommend_batch", input_spec=BatchRequest)
    async def recommend_batch(self, queries: list[RecommendRequest]) -> list[RecommendResponse]:
        """Top-k items for each query, in order (one shard call per shard for the whole list)."""
        try:
            merged = await self._fan_out([q.model_dump(exclude_none=True) for q in queries])
        except ShardRejected as exc:
            return _rejected(exc)  # type: ignore[return-value]
        except ShardFailed as exc:
            return _unavailable(exc)  # type: ignore[return-value]
        return [RecommendResponse.model_validate(m) for m in merged]

    @bentoml.api(route="/similar_items", input_spec=SimilarRequest)
    async def similar_items(
        self, item_id: str, k: int = 10, metric: str = "inner_product", exclude_items: list[str] | None = None
    ) -> SimilarResponse:
        """The k items most like `item_id` over every shard's items."""
        query = {"item_id": item_id, "k": k, "metric": metric}
        if exclude_items is not None:
            query["exclude_items"] = exclude_items
        try:
            merged = await self._fan_out([query], single=True, route="/similar_items")
        except ShardRejected as exc:
            return _rejected(exc)  # type: ignore[return-value]
        except ShardFailed as exc:
            return _unavailable(exc)  # type: ignore[return-value]
        return SimilarResponse.model_validate(merged[0])

    @bentoml.api(route="/similar_items_batch", input_spec=SimilarBatchRequest)
    async def similar_items_batch(self, queries: list[SimilarRequest]) -> list[SimilarResponse]:
        """/similar_items for each query, in order."""
        try:
            merged = await self._fan_out([q.model_dump(exclude_none=True) for q in queries], route="/similar_items")
        except ShardRejected as exc:
            return _rejected(exc)  # type: ignore[return-value]
        except ShardFailed as exc:
            return _unavailable(exc)  # type: ignore[return-value]
        return [SimilarResponse.model_validate(m) for m in merged]

    @bentoml.on_shutdown
    async def _close_clients(self) -> None:
        for client in self._clients:
            if client is not None:
                await client.aclose()

    async def __is_ready__(self) -> bool:
        ready = await asyncio.gather(*(shard.is_ready(5) for shard in self._shards()), return_exceptions=True)
        not_ready = [f"shard {i} ({self.urls[i]})" for i, ok in enumerate(ready) if ok is not True]
        if not_ready:
            logger.info("not ready: %s", ", ".join(not_ready))
        return not not_ready


for _i, _url in enumerate(SHARD_URLS):  # one remote dependency per shard URL (class attributes)
    setattr(ShardRouter, f"shard_{_i}", bentoml.depends(url=_url, on=SparseRecommender))

ShardRouter = bentoml.service(
    name="sparserec-router",
    workers=1,
    http={"host": "127.0.0.1"},
    traffic={"timeout": 30},
    logging={"access": {"request_content_type": False}},
)(ShardRouter)

ShardRouter.mount_asgi_app(info_app, path="/")
ShardRouter.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=SETTINGS.max_body_bytes,
    shed_in_flight=SETTINGS.shed_in_flight,
    retry_after_s=SETTINGS.retry_after_s,
    body_timeout_s=SETTINGS.body_timeout_s,  # the header timeout: installed by serving.service's import
    reword_503=False,  # a 503 here names the shard that failed
)
ShardRouter.add_asgi_middleware(ArtifactHeader, routes=VERSIONED_ROUTES)
