"""What stands between a client and the API methods: an ASGI middleware (`RequestGuard`).

The service adds it with BentoML's public `Service.add_asgi_middleware`; it runs for every POST to
the API routes (`API_ROUTES`) before BentoML parses the body, and answers with our own words:

- a body that is not JSON by its headers: 415 (`Content-Type` other than `application/json`,
  a charset other than UTF-8, any `Content-Encoding` but `identity`); BentoML would otherwise
  try multipart, form or pickle parsing on it;
- a body over `SPARSEREC_MAX_BODY_BYTES`: 413, counted while it is read (chunked bodies too),
  so an oversized body is never held in memory whole;
- optional load shedding, off by default: with `SPARSEREC_SHED_IN_FLIGHT=N`, a request arriving
  while N API requests are in flight in this worker gets a 503 with `Retry-After`;
- BentoML's validation answers (400) are reworded: `{"error": "invalid /recommend request: k:
  must be <= 300 ...", "detail": [{"field": "k", "problem": "..."}]}`, with no pydantic class
  names; any 503 (BentoML's batching dispatcher sheds a query only past its max_latency_ms) gets
  our wording and `Retry-After` too.

The guard also hands the service the app it wraps (`inner_app()`): the thin `/recommend` posts a
query to the batchable `/recommend_batch` through it, in-process, so the call joins BentoML's
batching dispatcher without passing the guard (or the metrics and tracing middlewares) twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_ROUTES = frozenset({"/recommend", "/recommend_batch", "/ping", "/similar_items", "/similar_items_batch",
                        "/admin/reload"})
JSON_MEDIA_TYPE = "application/json"

# The app the guard of this process wraps (one BentoML app per worker process).
_INNER_APP: ASGIApp | None = None


def inner_app() -> ASGIApp | None:
    """BentoML's app below the guard in this worker, once the server has built it (else None)."""
    return _INNER_APP

# pydantic error types reworded; any other keeps pydantic's sentence (class names removed)
_PROBLEMS = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "model_type": "expected a JSON object",
    "model_attributes_type": "expected a JSON object",
    "dict_type": "expected a JSON object",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
}
_CLASS_NAME = re.compile(r"\b(?:instance of )?\w+IODescriptor\b")


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None
                   ) -> tuple[Message, Message]:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": payload, "more_body": False})


def _field(loc: Any) -> str:
    parts = [str(p) for p in (loc or ()) if p != "root"]
    return ".".join(parts) or "body"


def reword_validation(path: str, body: Any) -> dict[str, Any] | None:
    """Our wording of a BentoML validation answer `{"error", "detail": [pydantic errors]}`;
    None if `body` is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("detail"), list):
        return None
    problems = []
    for error in body["detail"]:
        if not isinstance(error, dict):
            continue
        kind = error.get("type", "")
        message = str(error.get("msg", "invalid"))
        if kind == "json_invalid":
            problem = "not valid JSON: " + message.removeprefix("Invalid JSON: ")
        elif kind in _PROBLEMS:
            problem = _PROBLEMS[kind]
        else:
            problem = _CLASS_NAME.sub("an object", message.removeprefix("Value error, "))
        problems.append({"field": _field(error.get("loc")), "problem": problem})
    if not problems:
        return None
    summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
    if len(problems) > 5:
        summary += f"; and {len(problems) - 5} more"
    return {"error": f"invalid {path} request: {summary}", "detail": problems}


def _header_problem(headers: dict[bytes, bytes]) -> tuple[int, str] | None:
    raw_type = headers.get(b"content-type")
    if raw_type is not None:
        text = raw_type.decode("latin-1")
        media_type, _, params = text.partition(";")
        if media_type.strip().lower() != JSON_MEDIA_TYPE:
            return 415, f"Content-Type {text.strip()!r} is not supported: send {JSON_MEDIA_TYPE}"
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
                return 415, f"charset {value.strip()!r} is not supported: send UTF-8 JSON"
    encoding = headers.get(b"content-encoding")
    if encoding is not None and encoding.decode("latin-1").strip().lower() not in ("", "identity"):
        return 415, f"Content-Encoding {encoding.decode('latin-1').strip()!r} is not supported: send the body uncompressed"
    return None


class RequestGuard:
    """ASGI middleware: body checks, optional shedding and our error wording for the API routes.

    Args:
        app: the ASGI app it wraps (BentoML's).
        max_body_bytes: largest request body accepted (413 above).
        shed_in_flight: 0: never shed; N: a request arriving while N are in flight gets a 503.
        retry_after_s: the `Retry-After` of every 503 of the API routes.
        reword_503: replace the API's own 503 answers by the "overloaded" wording (the service);
            False passes them on as they are (the shard router, whose 503 names the shard).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, shed_in_flight: int = 0, retry_after_s: int = 1,
                 reword_503: bool = True) -> None:
        global _INNER_APP
        self.app = _INNER_APP = app
        self.max_body_bytes = max_body_bytes
        self.shed_in_flight = shed_in_flight
        self.retry_after_s = retry_after_s
        self.reword_503 = reword_503  # False (the shard router): its 503s name a shard; keep their words
        self.in_flight = 0
        self.shed = 0  # requests answered 503 by the shedding option, since start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in API_ROUTES:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope.get("headers") or [])
        problem = _header_problem(headers)
        if problem is None:
            declared = headers.get(b"content-length", b"").strip()
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                problem = 413, self._too_large()
        if problem is not None:
            await self._answer(send, problem[0], {"error": problem[1]})
            return
        body = await self._read_body(receive)
        if body is None:
            await self._answer(send, 413, {"error": self._too_large()})
            return
        if self.shed_in_flight and self.in_flight >= self.shed_in_flight:
            self.shed += 1
            await self._answer(send, 503, self._overloaded(), {"Retry-After": str(self.retry_after_s)})
            return
        self.in_flight += 1
        try:
            await self.app(scope, _replay(body, receive), self._rewording(send, path))
        finally:
            self.in_flight -= 1

    def _too_large(self) -> str:
        return f"request body larger than {self.max_body_bytes} bytes (SPARSEREC_MAX_BODY_BYTES)"

    def _overloaded(self) -> dict[str, str]:
        return {"error": f"overloaded: {self.in_flight} requests in flight in this worker; "
                         f"retry after {self.retry_after_s} s"}

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes max_body_bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: an empty body
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _answer(self, send: Send, status: int, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
        for message in _json_response(status, body, headers):
            await send(message)

    def _rewording(self, send: Send, path: str) -> Send:
        """A `send` that holds back a 400 or 503 answer of the API and rewrites it."""
        held: dict[str, Any] = {}

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and (
                    message["status"] == 400 or (message["status"] == 503 and self.reword_503)):
                held["start"], held["body"] = message, []
                return
            if "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            held["body"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status = held["start"]["status"]
            if status == 503:
                start, end = _json_response(503, self._overloaded(), {"Retry-After": str(self.retry_after_s)})
            else:
                try:
                    original = json.loads(b"".join(held["body"]))
                except ValueError:
                    original = None
                reworded = reword_validation(path, original)
                if reworded is None:  # not a validation answer: pass it on as it was
                    await send(held["start"])
                    await send({"type": "http.response.body", "body": b"".join(held["body"]), "more_body": False})
                    return
                start, end = _json_response(400, reworded)
            kept = [(k, v) for k, v in held["start"].get("headers", []) if k.lower() not in
                    (b"content-type", b"content-length")]
            start["headers"] = kept + start["headers"]
            await send(start)
            await send(end)

        return wrapped


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
