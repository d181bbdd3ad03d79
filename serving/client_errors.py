"""Client errors in the server log: one rate-limited line for each 4xx (`ClientErrorLog`), and filters that
drop BentoML's own traceback and access-log line for an API client error (`quiet_client_error_logs`).

    from serving.client_errors import ClientErrorLog, quiet_client_error_logs
    quiet_client_error_logs()                 # idempotent; the guard calls it
    log_client_error = ClientErrorLog(per_minute=5)
"""

from __future__ import annotations

import logging
import re
import time

log = logging.getLogger("bentoml.sparserec.guard")

# The routes the guard watches; the access filter drops the 4xx lines of these only.
API_ROUTES = frozenset(
    {"/recommend", "/recommend_batch", "/ping", "/similar_items", "/similar_items_batch", "/admin/reload"}
)


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
