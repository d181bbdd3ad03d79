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
            return JSONResponse(
                {
                    "error": "1 validation error for RecommendRequestIODescriptor",
                    "detail": [
                        {
                            "type": "less_than_equal",
                            "loc": ["k"],
                            "msg": "Input should be less than or equal to 5",
                            "url": "https://errors.pydantic.dev/2/v/less_than_equal",
                        },
                        {
                            "type": "model_type",
                            "loc": ["queries", 0],
                            "msg": "Input should be a valid dictionary or instance of RecommendRequestIODescriptor",
                        },
                        {"type": "value_error", "loc": ["user_id"], "msg": "Value error, user_id must be short"},
                    ],
                },
                status_code=400,
            )
        if body == b"busy":
            return JSONResponse({"error": "An unexpected error has occurred"}, status_code=503)
        return JSONResponse({"bytes": len(body)})

    return Starlette(
        routes=[
            Route("/recommend", recommend, methods=["POST"]),
            Route("/info", lambda request: JSONResponse({"ok": True}), methods=["GET"]),
        ]
    )


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
            latin = await client.post(
                "/recommend", content=b"{}", headers={"content-type": "application/json; charset=iso-8859-1"}
            )
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
        "detail": [
            {"field": "k", "problem": "Input should be less than or equal to 5"},
            {"field": "queries.0", "problem": "expected a JSON object"},
            {"field": "user_id", "problem": "user_id must be short"},
        ],
    }
    assert int(response.headers["content-length"]) == len(response.content)


def test_reword_leaves_other_answers_alone():
    assert reword_validation("/recommend", {"error": "something else"}) is None
    assert reword_validation("/recommend", [1, 2]) is None
    assert reword_validation("/ping", {"detail": [{"type": "json_invalid", "loc": [], "msg": "Invalid JSON: x"}]}) == {
        "error": "invalid /ping request: body: not valid JSON: x",
        "detail": [{"field": "body", "problem": "not valid JSON: x"}],
    }


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


def test_each_framing_header_is_read_once():
    """Two copies of Content-Type / Content-Encoding / Content-Length / Transfer-Encoding: 400
    naming the header, before the app runs; conflicting codings in one header: 415."""
    guard = RequestGuard(_app(), max_body_bytes=2048)
    cases = [
        (
            [("content-type", "multipart/form-data; boundary=zz"), ("content-type", "application/json")],
            400,
            "duplicate Content-Type",
        ),
        (
            [("content-type", "application/json"), ("content-encoding", "gzip"), ("content-encoding", "identity")],
            400,
            "duplicate Content-Encoding",
        ),
        (
            [("content-type", "application/json"), ("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
            400,
            "duplicate Transfer-Encoding",
        ),
        ([("content-type", "application/json"), ("content-encoding", "identity, gzip")], 415, "Content-Encoding"),
        ([("content-type", "application/x-www-form-urlencoded")], 415, "application/x-www-form-urlencoded"),
    ]

    async def call(headers):
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/recommend",
            "headers": [(k.encode(), v.encode()) for k, v in headers],
            "client": ("127.0.0.1", 1),
        }
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        await guard(scope, receive, send)
        return sent

    for headers, status, words in cases:
        start, body = run(call(headers))
        assert start["status"] == status, headers
        assert words in body["body"].decode(), (headers, body["body"])
        if status == 400:
            assert (b"connection", b"close") in start["headers"]


def test_duplicate_json_keys_are_refused_at_any_depth():
    from common.jsonsafe import duplicate_key

    assert duplicate_key(b'{"user_id": "1", "user_id": "2"}') == "user_id"
    assert duplicate_key(b'{"queries": [{"user_id": "1"}, {"k": 1, "k": 2}]}') == "k"
    assert duplicate_key(b'{"a": {"b": {"c": 1, "c": 1}}}') == "c"
    assert duplicate_key(b'{"user_id": "1", "k": 2}') is None
    assert duplicate_key(b"not json") is None  # BentoML words that one
    guard = RequestGuard(_app(), max_body_bytes=2048)

    async def call():
        async with _client(guard) as client:
            return await client.post(
                "/recommend",
                content=b'{"user_id": "196", "user_id": "1"}',
                headers={"content-type": "application/json"},
            )

    answer = run(call())
    assert answer.status_code == 400
    assert answer.json()["detail"] == [{"field": "user_id", "problem": "duplicate key"}]


def test_a_body_that_does_not_arrive_in_time_gets_408():
    guard = RequestGuard(_app(), max_body_bytes=2048, body_timeout_s=0.2)

    async def call():
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/recommend",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
        }
        sent = []

        async def receive():  # half a body, then nothing
            if not sent and not getattr(receive, "once", False):
                receive.once = True
                return {"type": "http.request", "body": b'{"user', "more_body": True}
            await asyncio.sleep(60)

        async def send(message):
            sent.append(message)

        await asyncio.wait_for(guard(scope, receive, send), 5)
        return sent

    start, body = run(call())
    assert start["status"] == 408 and b"SPARSEREC_BODY_TIMEOUT_S" in body["body"]
    assert (b"connection", b"close") in start["headers"]


def test_client_errors_are_logged_in_one_line_and_rate_limited(caplog):
    from serving.client_errors import ClientErrorLog

    log = ClientErrorLog(per_minute=3, window_s=0.3)
    with caplog.at_level("INFO", logger="bentoml.sparserec.guard"):
        written = [log(400, "/recommend", "invalid /recommend request: k: too big", key="k") for _ in range(10)]
        assert written == [True] * 3 + [False] * 7
        assert log(400, "/recommend", "user_id: required", key="user_id")  # another key: its own budget
        import time

        time.sleep(0.35)
        assert log(400, "/recommend", "invalid /recommend request: k: too big", key="k")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    assert all(r.levelname == "WARNING" and r.exc_info is None for r in caplog.records)
    assert lines[-1].endswith("(7 more like it suppressed)")


def test_bentoml_tracebacks_of_client_errors_are_filtered_not_server_errors():
    import logging

    from pydantic import BaseModel, ValidationError

    from serving.client_errors import BENTOML_EXCEPTION_LOGGER, quiet_client_error_logs

    quiet_client_error_logs()
    logger = logging.getLogger(BENTOML_EXCEPTION_LOGGER)

    class Model(BaseModel):
        k: int

    def record(exc: BaseException) -> logging.LogRecord:
        return logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "Exception on %s", ("/x",), (type(exc), exc, None)
        )

    try:
        Model.model_validate({"k": "x"})
    except ValidationError as exc:
        assert not logger.filter(record(exc))
    assert logger.filter(record(RuntimeError("a real bug")))  # a 5xx keeps its traceback
