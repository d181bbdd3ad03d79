"""A deadline for each request's headers, below the ASGI app: `HeaderTimeoutH11Protocol`, uvicorn's h11
protocol with a timer per request head (`ServeConfig.header_timeout_s`, SPARSEREC_HEADER_TIMEOUT_S),
registered for uvicorn's "auto" and "h11" protocols by `install_header_timeout(seconds)`.

    from serving.header_timeout import install_header_timeout
    install_header_timeout(10.0)  # the service module does this at import, with its settings
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.config import ServeConfig

log = logging.getLogger("bentoml.sparserec.guard")


def _config_default(field: str) -> float:
    return next(f.default for f in dataclasses.fields(ServeConfig) if f.name == field)


# Default of the header read timeout: ServeConfig's (serving/config.py), which the service passes in.
HEADER_TIMEOUT_S = _config_default("header_timeout_s")


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
        log.info(
            "closing a connection from %s: no complete request head within %g s (SPARSEREC_HEADER_TIMEOUT_S)",
            "%s:%d" % self.client if self.client else "?",
            self.header_timeout_s,
        )
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
