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

A header read timeout lives one level lower, since the ASGI app is only called once the headers
are complete: `HeaderTimeoutH11Protocol`, uvicorn's h11 protocol with a deadline for each
request's headers (`ServeConfig.header_timeout_s`, SPARSEREC_HEADER_TIMEOUT_S), registered for
uvicorn's "auto" and "h11" protocols by `install_header_timeout(seconds)` (called by the service
module at import, with its settings). The body timeout is RequestGuard's `body_timeout_s`
(`ServeConfig.body_timeout_s`, SPARSEREC_BODY_TIMEOUT_S).

The guard also hands the service the app it wraps (`inner_app()`): the thin `/recommend` posts a
query to the batchable `/recommend_batch` through it, in-process, so the call joins BentoML's
batching dispatcher without passing the guard (or the metrics and tracing middlewares) twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.jsonsafe import duplicate_key
from serving.config import ServeConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("bentoml.sparserec.guard")


def _config_default(field: str) -> float:
    return next(f.default for f in dataclasses.fields(ServeConfig) if f.name == field)


# Defaults of the read timeouts: ServeConfig's (serving/config.py), which the service passes in.
HEADER_TIMEOUT_S = _config_default("header_timeout_s")
BODY_TIMEOUT_S = _config_default("body_timeout_s")

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
_HEADER_NAMES = {b"content-type": "Content-Type", b"content-length": "Content-Length",
                 b"content-encoding": "Content-Encoding", b"transfer-encoding": "Transfer-Encoding"}


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
        return 415, f"Content-Encoding {encoding.decode('latin-1').strip()!r} is not supported: send the body uncompressed"
    return None


class ClientErrorLog:
    """One WARNING line per client error, at most `per_minute` identical lines a minute.

    Lines are identical when their `key` is (status, path and the fields named, not the values
    sent); the first line of a key after a suppressed stretch says how many were left out.
    """

    def __init__(self, per_minute: int = 5, window_s: float = 60.0, max_chars: int = 200) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self.max_chars = max_chars
        self._windows: dict[str, list[float | int]] = {}  # key -> [window start, logged, suppressed]

    def __call__(self, status: int, path: str, message: str, key: str | None = None, client: str = "") -> bool:
        """Log (or count) one client error (`client`: its address); True if a line was written."""
        now = time.monotonic()
        key = key or f"{status} {path} {message}"
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.window_s:
            suppressed = 0 if window is None else int(window[2])
            if len(self._windows) > 1000:  # bounded memory under a flood of distinct messages
                self._windows = {k: w for k, w in self._windows.items() if now - w[0] < self.window_s}
            window = self._windows[key] = [now, 0, suppressed]
        if window[1] >= self.per_minute:
            window[2] += 1
            return False
        window[1] += 1
        text = message if len(message) <= self.max_chars else message[: self.max_chars - 3] + "..."
        more = f" ({int(window[2])} more like it suppressed)" if window[2] else ""
        window[2] = 0
        log.warning("%d %s%s: %s%s", status, path, f" from {client}" if client else "", text, more)
        return True


def _is_client_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        ValidationError = ()  # type: ignore[assignment]
    if isinstance(exc, ValidationError):
        return True
    code = getattr(getattr(exc, "error_code", None), "value", None)
    return isinstance(code, int) and 400 <= code < 500


class _ClientTracebackFilter(logging.Filter):
    """Drops BentoML's ERROR-with-traceback record for an exception that became a 4xx."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_client_error(record.exc_info[1]))


_ACCESS_STATUS = re.compile(r"\bstatus=4\d\d\b")
_ACCESS_PATH = re.compile(r"\bmethod=POST,path=([^,)]*)")


class _ClientErrorAccessFilter(logging.Filter):
    """Drops BentoML's access-log line of a 4xx answer to a POST on an API route: the guard has
    logged that one already, in its own rate-limited line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 4:
            return True
        path = _ACCESS_PATH.search(str(args[1]))
        return not (path and path.group(1) in API_ROUTES and _ACCESS_STATUS.search(str(args[2])))


_TRACEBACK_FILTER = _ClientTracebackFilter()
_ACCESS_FILTER = _ClientErrorAccessFilter()
# the logger of BentoML's `log_exception`, which logs every API exception with its traceback
BENTOML_EXCEPTION_LOGGER = "bentoml._internal.server.http_app"
BENTOML_ACCESS_LOGGER = "bentoml.access"


def quiet_client_error_logs() -> None:
    """Drop BentoML's traceback and access-log line for an API client error (the guard logs
    each in one rate-limited line); idempotent."""
    for name, log_filter in ((BENTOML_EXCEPTION_LOGGER, _TRACEBACK_FILTER), (BENTOML_ACCESS_LOGGER, _ACCESS_FILTER)):
        logger = logging.getLogger(name)
        if log_filter not in logger.filters:
            logger.addFilter(log_filter)


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

    def __init__(self, app: ASGIApp, max_body_bytes: int, shed_in_flight: int = 0, retry_after_s: int = 1,
                 reword_503: bool = True, body_timeout_s: float | None = None,
                 client_errors_per_minute: int = 5) -> None:
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
            await self._refuse(send, path, who, 408, f"request body not received within {self.body_timeout_s:g} s "
                                                "(SPARSEREC_BODY_TIMEOUT_S)", key=f"408 {path}")
            return
        if body is None:
            await self._refuse(send, path, who, 413, self._too_large())
            return
        key = duplicate_key(body)
        if key is not None:
            await self._refuse(send, path, who, 400,
                               f"invalid {path} request: {key}: duplicate key (send each key once)",
                               detail=[{"field": key, "problem": "duplicate key"}], close=False,
                               key=f"400 {path} duplicate {key}")
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
        return {"error": f"overloaded: {self.in_flight} requests in flight in this worker; "
                         f"retry after {self.retry_after_s} s"}

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

    async def _refuse(self, send: Send, path: str, client: str, status: int, message: str,
                      detail: list[dict[str, str]] | None = None, close: bool = True, key: str | None = None) -> None:
        """Answer a client error of our own, logged in one line; `close`: the body may be unread,
        so the connection is closed after the answer."""
        self.client_errors(status, path, message, key, client)
        body: dict[str, Any] = {"error": message}
        if detail is not None:
            body["detail"] = detail
        await self._answer(send, status, body, {"Connection": "close"} if close else None)

    async def _answer(self, send: Send, status: int, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
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
                    400 <= message["status"] < 500 or (message["status"] == 503 and self.reword_503)):
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


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's headers.

    uvicorn times out a connection only while it is idle after an answer (`timeout_keep_alive`);
    a connection that opens and sends nothing, or half a request line, is held until the client
    goes. Here each connection, and each keep-alive cycle after an answer, must deliver a whole
    request head (h11 leaves its IDLE state) within `header_timeout_s`, or it is closed.
    """

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()  # the next request's head

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        if not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return  # a request head has arrived: the body and the answer have deadlines of their own
        if self.cycle is not None and not self.cycle.response_complete:
            return  # still answering the previous request
        log.info("closing a connection from %s: no complete request head within %g s (SPARSEREC_HEADER_TIMEOUT_S)",
                 "%s:%d" % self.client if self.client else "?", self.header_timeout_s)
        self.transport.close()


def install_header_timeout(header_timeout_s: float | None = None) -> None:
    """Make uvicorn's "auto" and "h11" protocols `HeaderTimeoutH11Protocol` in this process, with
    a deadline of ``header_timeout_s`` seconds (None: keep the current one, by default 10 s).

    Called at import, which in a BentoML worker comes before uvicorn resolves its protocol class
    (`uvicorn.Config.load`, in `Server.run`); uvicorn then uses h11 even where httptools is
    installed."""
    from uvicorn import config as uvicorn_config

    if header_timeout_s is not None:
        if not header_timeout_s > 0:
            raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s}")
        HeaderTimeoutH11Protocol.header_timeout_s = float(header_timeout_s)
    name = f"{__name__}:HeaderTimeoutH11Protocol"
    uvicorn_config.HTTP_PROTOCOLS["auto"] = name
    uvicorn_config.HTTP_PROTOCOLS["h11"] = name


def _die_with_arbiter() -> None:
    """In a BentoML worker (not the arbiter, not a test importing this module): have the kernel
    kill this process when its arbiter dies, so no worker keeps serving the port alone."""
    import signal

    from bentoml import server_context

    from serving.process import die_with_parent

    if server_context.worker_index is not None:
        die_with_parent(signal.SIGKILL)


_die_with_arbiter()
