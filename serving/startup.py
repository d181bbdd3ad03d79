"""A service worker's start: where a Bento keeps its artifact, refusing to start, the start-up log line.

Used by ``serving.service.SparseRecommender.__init__`` (and ``sparserec.bento``, which stores the
artifact where :func:`stored_artifact` finds it)::

    from serving.startup import ARTIFACT_FOLDER, log_start, refuse, stored_artifact
    folder = stored_artifact(model.path_of(ARTIFACT_FOLDER))    # the artifact inside a BentoML model
    refuse("artifact failed verification: %s", exc)             # logs, prints, exits EXIT_BAD_ARTIFACT
    log_start(served, config, settings, query_ms, batch_single_queries)   # one INFO line

:func:`refuse` ends the worker process without a traceback: under ``bentoml serve`` the supervisor
restarts it and it refuses again, so /readyz never answers 200.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from serving.schemas import LIMITS

# a child of "bentoml": BentoML configures that logger in every server process, so these lines
# land in the server log with its format (a logger of our own would be silenced)
logger = logging.getLogger("bentoml.sparserec")

# The folder inside a BentoML model made by `sparserec bento` (beside BentoML's model.yaml) that holds
# the artifact's own folder, under its exported name (answers name their artifact by that folder name).
ARTIFACT_FOLDER = "artifact"


def stored_artifact(root: str | os.PathLike) -> Path:
    """The artifact folder inside a stored model's ``ARTIFACT_FOLDER``: its one sub-folder with a
    manifest.json, or the folder itself (a model stored with the artifact's files directly in it)."""
    root = Path(root)
    inner = [p for p in root.iterdir() if (p / "manifest.json").is_file()] if root.is_dir() else []
    return inner[0] if len(inner) == 1 else root


# Exit status of a worker that refuses its artifact (distinct from crashes, for the logs).
EXIT_BAD_ARTIFACT = 3


def refuse(message: str, *args: Any) -> NoReturn:
    """Log and print "refusing to start: <message % args>", then end this worker with EXIT_BAD_ARTIFACT."""
    logger.critical("refusing to start: " + message, *args)
    # stderr too: the server log is what an operator (and the tests) read
    print(("sparserec: refusing to start: " + message) % args, file=sys.stderr, flush=True)
    # Leave the worker without a traceback. Under `bentoml serve` the process supervisor restarts
    # it every few seconds and it refuses again each time, so /readyz never answers 200;
    # `python -m serving` checks the artifact before starting and exits with status 2.
    os._exit(EXIT_BAD_ARTIFACT)


def log_start(served: Any, config: Any, settings: Any, query_ms: float, batch_single_queries: bool) -> None:
    """The INFO line a worker logs once it serves ``served`` (a ``serving.reload.Served``) under
    ``config`` (``ServeConfig``) and ``settings`` (the import-time ``ServeConfig``)."""
    artifact = served.artifact
    logger.info(
        "serving %s (%s): %s, %d users, %d items, dim %d, index %s, values %s, device %s, "
        "threads %d, max_k %d, max_batch %d, batching max_size %d max_latency_ms %d, "
        "shedding %s, %.3f ms a query at start, concurrent /recommend %s, reload file %s",
        served.path,
        served.label,
        artifact.model_kind,
        artifact.n_users,
        artifact.n_items,
        artifact.dim,
        artifact.index_kind,
        artifact.value_dtype,
        config.device,
        config.threads,
        LIMITS.max_k,
        LIMITS.max_batch,
        settings.batch_max_size,
        settings.batch_max_latency_ms,
        f"above {settings.shed_in_flight} in flight" if settings.shed_in_flight else "off",
        query_ms,
        "batched" if batch_single_queries else "answered directly",
        config.reload_file,
    )
