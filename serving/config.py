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
| SPARSEREC_BATCH_MAX_SIZE        | 64                 | adaptive batching: most /recommend calls per search |
| SPARSEREC_BATCH_MAX_LATENCY_MS  | 500                | adaptive batching: a queued /recommend older than   |
|                                 |                    | this is shed with a 503 (the wait window adapts     |
|                                 |                    | below it and is ~0 at low traffic)                  |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

DEVICES = ("cpu", "cuda")


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
    batch_max_latency_ms: int = 500

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"SPARSEREC_DEVICE must be one of {DEVICES}, got {self.device!r}")

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
            batch_max_latency_ms=_int(env, "SPARSEREC_BATCH_MAX_LATENCY_MS", 500),
        )


def workers_from_env(env: Mapping[str, str] | None = None) -> int:
    """Worker count for the @bentoml.service decorator (read at import, before the artifact)."""
    return _int(os.environ if env is None else env, "SPARSEREC_WORKERS", 1)


def thread_env(threads: int) -> dict[str, str]:
    """Variables that pin the OpenMP/BLAS pools; they only act if set before numpy/faiss load,
    so `python -m serving` puts them in the server's environment."""
    value = str(threads)
    return {
        "OMP_NUM_THREADS": value,
        "OPENBLAS_NUM_THREADS": value,
        "MKL_NUM_THREADS": value,
    }
