"""What stands between a client and the API methods: an ASGI middleware (`RequestGuard`).

The service adds it with BentoML's public `Service.add_asgi_middleware`; it runs for every POST to
the API routes (`API_ROUTES`) before BentoML parses the body, and answers with our own words:

- one reading of each framing header: two `Content-Type`, `Content-Length`, `Content-Encoding`
  or `Transfer-Encoding` headers (or both `Content-Length` and `Transfer-Encoding`) are a 400
  naming the header, since BentoML reads the first copy and a proxy may read the last;
- a body that is not JSON by its headers: 415 (`Content-Type` other than `application/json`,
  form and multipart bodies included, a charset other than UTF-8, any `Content-Encoding` but
  `identity`); BentoML would otherwise try multipart, form or pickle parsing on it;
- a JSON body with a key twice in one object, at any depth: 400 naming the key (a proxy in
  front may read the first copy, `json.loads` keeps the last);
- a body not received within `body_timeout_s` of its headers: 408, connection closed;
- a body over `SPARSEREC_MAX_BODY_BYTES`: 413, counted while it is read (chunked bodies too),
  so an oversized body is never held in memory whole;
- optional load shedding, off by default: with `SPARSEREC_SHED_IN_FLIGHT=N`, a request arriving
  while N API requests are in flight in this worker gets a 503 with `Retry-After`;
- BentoML's validation answers (400) are reworded: `{"error": "invalid /recommend request: k:
  must be <= 300 ...", "detail": [{"field": "k", "problem": "..."}]}`, with no pydantic class
  names; any 503 (BentoML's batching dispatcher sheds a query only past its max_latency_ms) gets
  our wording and `Retry-After` too.

Every 4xx is logged in one line at WARNING naming the path and the field, never with a
traceback, and identical lines are rate-limited (`ClientErrorLog`); BentoML's own traceback for a
client error (a pydantic `ValidationError`, a 4xx `BentoMLException`) and its access-log line for a 4xx
of an API route are dropped by filters on its loggers (`quiet_client_error_logs`); 5xx
tracebacks and every other access line stay.

The log lines and filters live in `serving.client_errors`. A header read timeout lives one level
lower, since the ASGI app is only called once the headers are complete: `serving.header_timeout`
(`ServeConfig.header_timeout_s`, SPARSEREC_HEADER_TIMEOUT_S), installed by the service module at
import with its settings. The body timeout is RequestGuard's `body_timeout_s`
(`ServeConfig.body_timeout_s`, SPARSEREC_BODY_TIMEOUT_S).

The guard also hands the service the app it wraps (`inner_app()`): the thin `/recommend` posts a
query to the batchable `/recommend_batch` through it, in-process, so the call joins BentoML's
batching dispatcher without passing the guard (or the metrics and tracing middlewares) twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from common.jsonsafe import duplicate_key
from serving.client_errors import API_ROUTES, ClientErrorLog, quiet_client_error_logs
from serving.config import ServeConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _config_default(field: str) -> float:
    return next(f.default for f in dataclasses.fields(ServeConfig) if f.name == field)


# Default of the body read timeout: ServeConfig's (serving/config.py), which the service passes in.
BODY_TIMEOUT_S = _config_default("body_timeout_s")

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


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[Message, Message]:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return (
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": payload, "more_body": False},
    )


def _field(loc: Any) -> str:
    parts = [str(p) for p in (loc or ()) if p != "root"]
    return ".".join(parts) or "body"


def reword_validation(path: str, body: Any) -> dict[str, Any] | None:
    """Our wording of a BentoML validation answer `{"error", "detail": [pydantic errors]}`;
    None if `body` is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("detail"), list):
        return None
    if body["detail"] and all(isinstance(e, dict) and set(e) == {"field", "problem"} for e in body["detail"]):
        return None  # already in our words (a shard's answer, passed on by the router)
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


FRAMING_HEADERS = (b"content-type", b"content-length", b"content-encoding", b"transfer-encoding")
_HEADER_NAMES = {
    b"content-type": "Content-Type",
    b"content-length": "Content-Length",
    b"content-encoding": "Content-Encoding",
    b"transfer-encoding": "Transfer-Encoding",
}


def duplicate_header(raw_headers: list[tuple[bytes, bytes]]) -> str | None:
    """A one-line problem if a framing header is sent twice (or Content-Length beside
    Transfer-Encoding); None if each is read one way only."""
    seen: set[bytes] = set()
    for name, _ in raw_headers:
        name = name.lower()
        if name in _HEADER_NAMES:
            if name in seen:
                return f"duplicate {_HEADER_NAMES[name]} header: send it once"
            seen.add(name)
    if b"content-length" in seen and b"transfer-encoding" in seen:
        return "both Content-Length and Transfer-Encoding: send one of them"
    return None


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
    codings = [] if encoding is None else [c.strip().lower() for c in encoding.decode("latin-1").split(",")]
    if any(c not in ("", "identity") for c in codings):
        return (
            415,
            f"Content-Encoding {encoding.decode('latin-1').strip()!r} is not supported: send the body uncompressed",
        )
    return None


def _error_text(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict) and "error" in parsed[0]:
        return str(parsed[0]["error"])  # BentoML answers some 4xx as a one-element list
    return str(parsed)[:200]


class RequestGuard:
    """ASGI middleware: body checks, optional shedding and our error wording for the API routes.

    Args:
        app: the ASGI app it wraps (BentoML's).
        max_body_bytes: largest request body accepted (413 above).
        shed_in_flight: 0: never shed; N: a request arriving while N are in flight gets a 503.
        retry_after_s: the `Retry-After` of every 503 of the API routes.
        reword_503: replace the API's own 503 answers by the "overloaded" wording (the service);
            False passes them on as they are (the shard router, whose 503 names the shard).
        body_timeout_s: the whole body must arrive within this many seconds of the headers
            (408 and the connection closed otherwise).
        client_errors_per_minute: identical 4xx log lines kept per minute (the rest counted).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        shed_in_flight: int = 0,
        retry_after_s: int = 1,
        reword_503: bool = True,
        body_timeout_s: float | None = None,
        client_errors_per_minute: int = 5,
    ) -> None:
        global _INNER_APP
        self.app = _INNER_APP = app
        self.max_body_bytes = max_body_bytes
        self.shed_in_flight = shed_in_flight
        self.retry_after_s = retry_after_s
        self.reword_503 = reword_503  # False (the shard router): its 503s name a shard; keep their words
        self.body_timeout_s = BODY_TIMEOUT_S if body_timeout_s is None else body_timeout_s
        self.client_errors = ClientErrorLog(client_errors_per_minute)
        self.in_flight = 0
        self.shed = 0  # requests answered 503 by the shedding option, since start
        quiet_client_error_logs()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in API_ROUTES:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        client = scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else ""
        raw_headers = list(scope.get("headers") or [])
        duplicate = duplicate_header(raw_headers)
        if duplicate is not None:
            await self._refuse(send, path, who, 400, duplicate, key=duplicate)
            return
        headers = {name.lower(): value for name, value in raw_headers}
        problem = _header_problem(headers)
        if problem is None:
            declared = headers.get(b"content-length", b"").strip()
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                problem = 413, self._too_large()
        if problem is not None:
            await self._refuse(send, path, who, problem[0], problem[1], key=f"{problem[0]} {path} header")
            return
        try:
            body = await self._read_body(receive)
        except asyncio.TimeoutError:
            await self._refuse(
                send,
                path,
                who,
                408,
                f"request body not received within {self.body_timeout_s:g} s (SPARSEREC_BODY_TIMEOUT_S)",
                key=f"408 {path}",
            )
            return
        if body is None:
            await self._refuse(send, path, who, 413, self._too_large())
            return
        key = duplicate_key(body)
        if key is not None:
            await self._refuse(
                send,
                path,
                who,
                400,
                f"invalid {path} request: {key}: duplicate key (send each key once)",
                detail=[{"field": key, "problem": "duplicate key"}],
                close=False,
                key=f"400 {path} duplicate {key}",
            )
            return
        if self.shed_in_flight and self.in_flight >= self.shed_in_flight:
            self.shed += 1
            await self._answer(send, 503, self._overloaded(), {"Retry-After": str(self.retry_after_s)})
            return
        self.in_flight += 1
        try:
            await self.app(scope, _replay(body, receive), self._rewording(send, path, who))
        finally:
            self.in_flight -= 1

    def _too_large(self) -> str:
        return f"request body larger than {self.max_body_bytes} bytes (SPARSEREC_MAX_BODY_BYTES)"

    def _overloaded(self) -> dict[str, str]:
        return {
            "error": f"overloaded: {self.in_flight} requests in flight in this worker; "
            f"retry after {self.retry_after_s} s"
        }

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes max_body_bytes; asyncio.TimeoutError if it
        is not all there within body_timeout_s."""
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
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

    async def _refuse(
        self,
        send: Send,
        path: str,
        client: str,
        status: int,
        message: str,
        detail: list[dict[str, str]] | None = None,
        close: bool = True,
        key: str | None = None,
    ) -> None:
        """Answer a client error of our own, logged in one line; `close`: the body may be unread,
        so the connection is closed after the answer."""
        self.client_errors(status, path, message, key, client)
        body: dict[str, Any] = {"error": message}
        if detail is not None:
            body["detail"] = detail
        await self._answer(send, status, body, {"Connection": "close"} if close else None)

    async def _answer(
        self, send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        for message in _json_response(status, body, headers):
            await send(message)

    def _log_client_error(self, path: str, client: str, status: int, body: bytes) -> None:
        text = _error_text(body)
        fields = ""
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("detail"), list):
                fields = ",".join(sorted({str(d.get("field")) for d in parsed["detail"] if isinstance(d, dict)}))
        except ValueError:
            pass
        self.client_errors(status, path, text, key=f"{status} {path} {fields or text[:80]}", client=client)

    def _rewording(self, send: Send, path: str, client: str = "") -> Send:
        """A `send` that holds back a 4xx or 503 answer of the API, rewrites 400s and 503s, and
        logs each 4xx in one line."""
        held: dict[str, Any] = {}

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and (
                400 <= message["status"] < 500 or (message["status"] == 503 and self.reword_503)
            ):
                held["start"], held["body"] = message, []
                return
            if "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            held["body"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status = held["start"]["status"]
            original_body = b"".join(held["body"])
            if status == 503:
                start, end = _json_response(503, self._overloaded(), {"Retry-After": str(self.retry_after_s)})
            else:
                reworded = None
                if status == 400:
                    try:
                        original = json.loads(original_body)
                    except ValueError:
                        original = None
                    reworded = reword_validation(path, original)
                if reworded is None:  # not a validation answer: pass it on as it was
                    self._log_client_error(path, client, status, original_body)
                    await send(held["start"])
                    await send({"type": "http.response.body", "body": original_body, "more_body": False})
                    return
                start, end = _json_response(400, reworded)
                self._log_client_error(path, client, 400, end["body"])
            kept = [
                (k, v)
                for k, v in held["start"].get("headers", [])
                if k.lower() not in (b"content-type", b"content-length")
            ]
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


def _die_with_arbiter() -> None:
    """In a BentoML worker (not the arbiter, not a test importing this module): have the kernel
    kill this process when its arbiter dies, so no worker keeps serving the port alone."""
    import signal

    from bentoml import server_context

    from serving.process import die_with_parent

    if server_context.worker_index is not None:
        die_with_parent(signal.SIGKILL)


_die_with_arbiter()
