"""Serving configuration, read once from the environment.

Every knob of the service is an environment variable, so `bentoml serve`, `python -m serving`,
a container and the tests all configure it the same way:

| variable                        | default            | meaning                                             |
| ------------------------------- | ------------------ | --------------------------------------------------- |
| SPARSEREC_ARTIFACT              | (required)         | artifact folder written by `python -m export`       |
| SPARSEREC_DEVICE                | cpu                | cpu: FAISS index; cuda: exact scoring with torch    |
| SPARSEREC_THREADS               | cpu_count/workers  | OpenMP threads of one worker (FAISS, BLAS)          |
| SPARSEREC_WORKERS               | 1                  | worker processes, each loads the artifact           |
| SPARSEREC_MAX_K                 | 1000               | largest k accepted (also capped at n_items)         |
| SPARSEREC_MAX_BATCH             | 256                | most queries in one /recommend_batch call           |
| SPARSEREC_BATCH_MAX_SIZE        | 64                 | adaptive batching: most queries in one search       |
| SPARSEREC_BATCH_MAX_LATENCY_MS  | 60000              | adaptive batching: BentoML's dispatcher answers 503 |
|                                 |                    | to a query queued this long (its wait window adapts |
|                                 |                    | far below it; the default only guards a stall)      |
| SPARSEREC_BATCH_ROUTE           | auto               | how /recommend uses the batching dispatcher while   |
|                                 |                    | other queries are in flight: always, never, or auto |
|                                 |                    | (only where a search costs more than BentoML's      |
|                                 |                    | batching path: device cuda, or >= 2 ms a query)     |
| SPARSEREC_SHED_IN_FLIGHT        | 0 (off)            | load shedding: N > 0 answers 503 + Retry-After to a |
|                                 |                    | request arriving while N are in flight (a worker)   |
| SPARSEREC_RETRY_AFTER_S         | 1                  | the Retry-After (seconds) of every 503              |
| SPARSEREC_MAX_BODY_BYTES        | 1048576            | largest request body (413 above)                    |
| SPARSEREC_MMAP                  | 1                  | 1: map the index files (flat/hnsw/sparse postings), |
|                                 |                    | ids, seen items, popularity (format 2 artifacts),   |
|                                 |                    | so workers share one copy; 0: read them into memory |
| SPARSEREC_HOST                  | 127.0.0.1          | address to bind; 0.0.0.0 by default inside a        |
|                                 | (container 0.0.0.0)| BentoML container image (`bind_host`)               |
| SPARSEREC_MAX_FILTER_ITEMS      | 1000               | most ids in exclude_items / allow_items             |
| SPARSEREC_MAX_HISTORY           | 1000               | most item ids in a fold-in history                  |
| SPARSEREC_FOLD_IN_LAMBDA        | 10.0               | ridge penalty of the MF fold-in (> 0), relative to  |
|                                 |                    | the history's mean Gram eigenvalue (serving.fold_in)|
| SPARSEREC_ADMIN_TOKEN           | (unset)            | set: POST /admin/reload needs `Authorization: Bearer |
|                                 |                    | TOKEN`; unset: only callers on localhost may reload |
| SPARSEREC_RELOAD_FILE           | $TMPDIR/sparserec- | the file naming the artifact every worker serves    |
|                                 | reload-<ppid>-<t>  | (written by /admin/reload; each worker polls it);   |
|                                 | .json              | ppid, t: the supervisor's pid and start time        |
| SPARSEREC_RELOAD_POLL_MS        | 200                | how often a worker checks the reload file           |
| SPARSEREC_HEADER_TIMEOUT_S      | 10.0               | seconds from a connection's opening (or its last    |
|                                 |                    | answer) to a complete request head; closed after    |
| SPARSEREC_BODY_TIMEOUT_S        | 30.0               | seconds from a request's head to the end of its     |
|                                 |                    | body (API routes): 408 and the connection closed    |

`python -m serving --help` lists the flag of each (serving/flags.py): a flag sets its variable.

The batching, shedding, body and timeout settings are read when the service module is imported (they go
into BentoML's decorators), the others when each worker starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tempfile
from collections.abc import Mapping

DEVICES = ("cpu", "cuda")
BATCH_ROUTES = ("auto", "always", "never")


class ConfigError(ValueError):
    """A serving setting is missing or malformed; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not value > 0:
        raise ConfigError(f"{name} must be a number of seconds > 0, got {env.get(name)!r}")
    return value


def default_reload_file() -> str:
    """One file per server: BentoML's workers are children of one supervisor process, so its pid
    (each worker's parent) names the file they all poll."""
    import psutil

    parent = os.getppid()
    try:  # the start time too: a pid reused by a later server must not find this server's file
        started = int(psutil.Process(parent).create_time())
    except psutil.Error:
        started = 0
    return os.path.join(tempfile.gettempdir(), f"sparserec-reload-{parent}-{started}.json")


def default_threads(workers: int) -> int:
    """CPU cores shared evenly between the worker processes (at least one thread each)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    artifact: str
    device: str = "cpu"
    threads: int = 1
    workers: int = 1
    max_k: int = 1000
    max_batch: int = 256
    batch_max_size: int = 64
    batch_max_latency_ms: int = 60000
    batch_route: str = "auto"
    shed_in_flight: int = 0
    retry_after_s: int = 1
    max_body_bytes: int = 1 << 20
    mmap: bool = True
    max_filter_items: int = 1000
    max_history: int = 1000
    fold_in_lambda: float = 10.0
    admin_token: str = ""
    reload_file: str = ""
    reload_poll_ms: int = 200
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"SPARSEREC_DEVICE must be one of {DEVICES}, got {self.device!r}")
        if not self.fold_in_lambda > 0:
            raise ConfigError(f"SPARSEREC_FOLD_IN_LAMBDA must be > 0, got {self.fold_in_lambda}")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"SPARSEREC_{name.upper()} must be a number of seconds > 0, got {getattr(self, name)}"
                )
        if self.batch_route not in BATCH_ROUTES:
            raise ConfigError(f"SPARSEREC_BATCH_ROUTE must be one of {BATCH_ROUTES}, got {self.batch_route!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        """Read the SPARSEREC_* variables; raise ConfigError naming the bad one."""
        env = os.environ if env is None else env
        artifact = env.get("SPARSEREC_ARTIFACT", "")
        if not artifact:
            raise ConfigError(
                "SPARSEREC_ARTIFACT is not set: point it at an artifact folder "
                "(python -m export runs/NAME --out artifacts/NAME)"
            )
        workers = _int(env, "SPARSEREC_WORKERS", 1)
        return cls(
            artifact=artifact,
            device=env.get("SPARSEREC_DEVICE", "cpu").strip().lower() or "cpu",
            threads=_int(env, "SPARSEREC_THREADS", default_threads(workers)),
            workers=workers,
            max_k=_int(env, "SPARSEREC_MAX_K", 1000),
            max_batch=_int(env, "SPARSEREC_MAX_BATCH", 256),
            batch_max_size=_int(env, "SPARSEREC_BATCH_MAX_SIZE", 64, minimum=2),
            batch_max_latency_ms=_int(env, "SPARSEREC_BATCH_MAX_LATENCY_MS", 60000),
            batch_route=env.get("SPARSEREC_BATCH_ROUTE", "auto").strip().lower() or "auto",
            shed_in_flight=_int(env, "SPARSEREC_SHED_IN_FLIGHT", 0, minimum=0),
            retry_after_s=_int(env, "SPARSEREC_RETRY_AFTER_S", 1),
            max_body_bytes=_int(env, "SPARSEREC_MAX_BODY_BYTES", 1 << 20, minimum=1024),
            mmap=bool(_int(env, "SPARSEREC_MMAP", 1, minimum=0)),
            max_filter_items=_int(env, "SPARSEREC_MAX_FILTER_ITEMS", 1000),
            max_history=_int(env, "SPARSEREC_MAX_HISTORY", 1000),
            fold_in_lambda=_float(env, "SPARSEREC_FOLD_IN_LAMBDA", 10.0),
            admin_token=env.get("SPARSEREC_ADMIN_TOKEN", ""),
            reload_file=env.get("SPARSEREC_RELOAD_FILE", "") or default_reload_file(),
            reload_poll_ms=_int(env, "SPARSEREC_RELOAD_POLL_MS", 200, minimum=10),
            header_timeout_s=_seconds(env, "SPARSEREC_HEADER_TIMEOUT_S", 10.0),
            body_timeout_s=_seconds(env, "SPARSEREC_BODY_TIMEOUT_S", 30.0),
        )

    @classmethod
    def import_time(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        """The settings BentoML's decorators need when serving.service is imported: workers,
        batching, shedding, the body limit and the read timeouts. SPARSEREC_ARTIFACT is not needed yet (a Bento is
        built without one), so a placeholder stands in; each worker reads it in `__init__`."""
        env = dict(os.environ if env is None else env)
        env["SPARSEREC_ARTIFACT"] = env.get("SPARSEREC_ARTIFACT") or "-"
        env["SPARSEREC_DEVICE"] = "cpu"  # checked by each worker, with a clear refusal
        return cls.from_env(env)


def in_container(env: Mapping[str, str] | None = None) -> bool:
    """True inside an image made by `bentoml containerize` (its Dockerfile sets BENTOML_CONTAINERIZED)
    or on BentoCloud: the test of BentoML's own `bentoml.serving.running_inside_container`."""
    env = os.environ if env is None else env
    return "BENTOML_CONTAINERIZED" in env or "BENTOCLOUD_DEPLOYMENT_URL" in env


def bind_host(env: Mapping[str, str] | None = None) -> str:
    """The service's default bind address: SPARSEREC_HOST if set, else 0.0.0.0 in a container
    (where `docker run -p` must reach it), else 127.0.0.1. `bentoml serve --host` overrides it."""
    env = os.environ if env is None else env
    host = (env.get("SPARSEREC_HOST") or "").strip()
    if not host:
        return "0.0.0.0" if in_container(env) else "127.0.0.1"
    try:
        ipaddress.ip_address(host)  # BentoML binds IP addresses only
    except ValueError:
        raise ConfigError(f"SPARSEREC_HOST must be an IP address (127.0.0.1, 0.0.0.0, ::), got {host!r}") from None
    return host


def thread_env(threads: int) -> dict[str, str]:
    """Variables that pin the OpenMP/BLAS pools; they only act if set before numpy/faiss load,
    so `python -m serving` puts them in the server's environment."""
    value = str(threads)
    return {
        "OMP_NUM_THREADS": value,
        "OPENBLAS_NUM_THREADS": value,
        "MKL_NUM_THREADS": value,
    }
