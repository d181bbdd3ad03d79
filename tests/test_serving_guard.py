"""serving.guard.RequestGuard in-process, in front of a small real Starlette app (no server)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.guard import RequestGuard, reword_validation


def _app(release: asyncio.Event | None = None) -> Starlette:
    async def recommend(request: Request) -> Response:
        body = await request.body()
        if release is not None:
            await release.wait()
        if body == b"bad":  # BentoML's shape of a validation answer
            return JSONResponse({"error": "1 validation error for RecommendRequestIODescriptor", "detail": [
                {"type": "less_than_equal", "loc": ["k"], "msg": "Input should be less than or equal to 5",
                 "url": "https://errors.pydantic.dev/2/v/less_than_equal"},
                {"type": "model_type", "loc": ["queries", 0], "msg": "Input should be a valid dictionary or "
                                                                     "instance of RecommendRequestIODescriptor"},
                {"type": "value_error", "loc": ["user_id"], "msg": "Value error, user_id must be short"}]},
                status_code=400)
        if body == b"busy":
            return JSONResponse({"error": "An unexpected error has occurred"}, status_code=503)
        return JSONResponse({"bytes": len(body)})

    return Starlette(routes=[Route("/recommend", recommend, methods=["POST"]),
                             Route("/info", lambda request: JSONResponse({"ok": True}), methods=["GET"])])


def _client(guard: RequestGuard) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://guard.test")


def run(coroutine):
    return asyncio.run(coroutine)


def test_bodies_and_headers_checked_before_the_app():
    guard = RequestGuard(_app(), max_body_bytes=2048)

    async def calls():
        async with _client(guard) as client:
            ok = await client.post("/recommend", content=b"{}", headers={"content-type": "application/json"})
            bare = await client.post("/recommend", content=b"{}")
            big = await client.post("/recommend", content=b"x" * 4096, headers={"content-type": "application/json"})

            async def chunks():
                for _ in range(10):
                    yield b"x" * 1000

            streamed = await client.post("/recommend", content=chunks())
            typed = await client.post("/recommend", content=b"{}", headers={"content-type": "text/csv"})
            zipped = await client.post("/recommend", content=b"{}", headers={"content-encoding": "br"})
            latin = await client.post("/recommend", content=b"{}",
                                      headers={"content-type": "application/json; charset=iso-8859-1"})
            info = await client.get("/info")  # not an API route: untouched
            return ok, bare, big, streamed, typed, zipped, latin, info

    ok, bare, big, streamed, typed, zipped, latin, info = run(calls())
    assert ok.json() == {"bytes": 2} and bare.status_code == 200
    assert big.status_code == streamed.status_code == 413 and "2048 bytes" in streamed.json()["error"]
    assert typed.status_code == 415 and "text/csv" in typed.json()["error"]
    assert zipped.status_code == 415 and "'br'" in zipped.json()["error"]
    assert latin.status_code == 415 and "charset" in latin.json()["error"]
    assert info.json() == {"ok": True}


def test_validation_answers_are_reworded():
    guard = RequestGuard(_app(), max_body_bytes=2048)

    async def call():
        async with _client(guard) as client:
            return await client.post("/recommend", content=b"bad")

    response = run(call())
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid /recommend request: k: Input should be less than or equal to 5; "
                 "queries.0: expected a JSON object; user_id: user_id must be short",
        "detail": [{"field": "k", "problem": "Input should be less than or equal to 5"},
                   {"field": "queries.0", "problem": "expected a JSON object"},
                   {"field": "user_id", "problem": "user_id must be short"}]}
    assert int(response.headers["content-length"]) == len(response.content)


def test_reword_leaves_other_answers_alone():
    assert reword_validation("/recommend", {"error": "something else"}) is None
    assert reword_validation("/recommend", [1, 2]) is None
    assert reword_validation("/ping", {"detail": [{"type": "json_invalid", "loc": [], "msg": "Invalid JSON: x"}]}) \
        == {"error": "invalid /ping request: body: not valid JSON: x",
            "detail": [{"field": "body", "problem": "not valid JSON: x"}]}


@pytest.mark.parametrize("shed_in_flight", [0, 2])
def test_shedding_is_off_by_default_and_answers_503_with_retry_after(shed_in_flight):
    """Five requests held in the app together: with shedding off all five are answered; with
    SPARSEREC_SHED_IN_FLIGHT=2 the two first are, the three others get a 503 with Retry-After."""

    async def calls():
        release = asyncio.Event()
        guard = RequestGuard(_app(release), max_body_bytes=2048, shed_in_flight=shed_in_flight, retry_after_s=4)
        async with _client(guard) as client:
            tasks = [asyncio.create_task(client.post("/recommend", content=b"{}")) for _ in range(5)]
            while guard.in_flight + guard.shed < 5:  # every request has reached the app or been shed
                await asyncio.sleep(0.01)
            release.set()
            return guard, await asyncio.gather(*tasks)

    guard, responses = run(calls())
    statuses = sorted(r.status_code for r in responses)
    if shed_in_flight == 0:
        assert statuses == [200] * 5 and guard.shed == 0
    else:
        assert statuses == [200, 200, 503, 503, 503] and guard.shed == 3
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "4"
                assert response.json()["error"].startswith("overloaded: 2 requests in flight")
    assert guard.in_flight == 0


def test_a_503_of_the_app_gets_retry_after_and_our_words():
    guard = RequestGuard(_app(), max_body_bytes=2048, retry_after_s=2)

    async def call():
        async with _client(guard) as client:
            return await client.post("/recommend", content=b"busy")

    response = run(call())
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.json()["error"].startswith("overloaded")
