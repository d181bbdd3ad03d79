"""Artifact swaps without a dropped request: what a worker serves, and how every worker learns of a reload.

    served = load_served("artifacts/ml100k", config)       # verify fully, build, warm up
    write_desired(config.reload_file, served)              # tell every worker of this server
    desired = read_desired(config.reload_file)             # (path, sha256) or None

A worker answers every request from one `Served` object, read once at the start of the request
(one attribute read): an immutable bundle of the recommender, its artifact version and /info
description. A swap is one reference assignment, so a request is answered wholly by the old
artifact or wholly by the new one, and names it.

Several workers: BentoML's workers are separate processes, so a reload received by one must
reach the others. The worker that receives POST /admin/reload verifies the new artifact fully
(the start-up verification: every file's sha256, the shapes, then the recommender is built and
warmed up), and only then writes the *desired artifact* file (path and manifest sha256, an
atomic rename) and swaps its own reference. Every worker checks that file's stat (mtime, size,
inode) at most every SPARSEREC_RELOAD_POLL_MS while it answers requests; on a change it reads it
and, if it names another artifact, loads and verifies it in a thread while it keeps answering
from the old one, then swaps. A worker that starts (or is restarted by BentoML's supervisor)
serves the desired artifact when the file names one. A file is chosen over a broadcast because
a worker cannot address its siblings through BentoML, and over a watched symlink because the
file says which sha256 was verified: a worker whose own verification of it fails keeps serving
the old artifact and logs why.

`ArtifactHeader` (ASGI middleware) copies the version from an API answer's body into the
`X-Sparserec-Artifact` header (`<sha256>; name=<url-quoted name>`): the body is the one place
both agree on, including answers merged by BentoML's batching dispatcher.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import anyio

from common.io import atomic_write_json, sha256_file
from serving.metrics import service_metrics

logger = logging.getLogger("bentoml.sparserec.reload")
_service_logger = logging.getLogger("bentoml.sparserec")  # the lines the service logged itself

HEADER = "X-Sparserec-Artifact"
# The first `"artifact":{"name":...,"sha256":...}` of an answer. A key with unescaped quotes cannot
# occur inside a JSON string, so every match is a real `artifact` field.
_VERSION = re.compile(rb'"artifact":\s*\{\s*"name":\s*"((?:[^"\\]|\\.)*)",\s*"sha256":\s*"([0-9a-f]{64})"\s*\}')


@dataclasses.dataclass(frozen=True)
class Served:
    """What one worker answers from; replaced whole by a reload, never changed in place."""

    path: str
    version: dict[str, str]  # {"name", "sha256"}
    label: str  # name@sha256[:12], the metrics label
    model: Any  # serving.recommender.Recommender
    artifact: Any  # export.artifact.Artifact
    query_ms: float


def artifact_version(path: str | Path) -> dict[str, str]:
    """``{"name": folder name, "sha256": sha256 of manifest.json}``; a shard part (export.shards)
    names the artifact it was cut from (its folder ``<artifact>/shards/part-i-of-S`` and the
    parent manifest's sha256 its manifest records), so a router's merged answer names one version."""
    from export.manifest import MANIFEST, read_manifest

    folder = Path(path).resolve()
    shard = read_manifest(folder).shard
    if shard is not None:
        return {"name": folder.parent.parent.name, "sha256": shard.parent_manifest_sha256}
    return {"name": folder.name, "sha256": sha256_file(folder / MANIFEST)}


def version_label(version: dict[str, str]) -> str:
    return f"{version['name']}@{version['sha256'][:12]}"


def header_value(version: dict[str, str]) -> str:
    return f"{version['sha256']}; name={urllib.parse.quote(version['name'], safe='')}"


def load_served(path: str | Path, device: str, mmap: bool, fold_in_lambda: float, warm_up) -> Served:
    """Verify the artifact at `path` fully and build what a worker serves from it.

    Args:
        warm_up: callable(recommender) -> median ms of a query (first calls pay lazy set-up).
    Raises:
        export.artifact.ArtifactError, OSError, ValueError, RuntimeError: the artifact is refused.
    """
    from export.artifact import load_artifact
    from serving.recommender import Recommender

    before = sha256_file(Path(path) / "manifest.json")  # a manifest changed during verification is caught
    artifact = load_artifact(path, verify=True)
    if sha256_file(Path(path) / "manifest.json") != before:
        raise ValueError(f"{path}: manifest.json changed while it was being verified")
    version = artifact_version(path)
    model = Recommender.from_artifact(artifact, device=device, mmap=mmap, fold_in_lambda=fold_in_lambda)
    return Served(
        path=str(Path(path).resolve()),
        version=version,
        label=version_label(version),
        model=model,
        artifact=artifact,
        query_ms=float(warm_up(model)),
    )


def write_desired(file: str | Path, served: Served) -> None:
    """Name `served`'s artifact as the one every worker of this server serves (atomic)."""
    atomic_write_json(Path(file), {"path": served.path, "sha256": served.version["sha256"], "written_at": time.time()})


def read_desired(file: str | Path) -> tuple[str, str] | None:
    """(path, manifest sha256) the reload file names, or None (no file, or one not ours)."""
    try:
        data = json.loads(Path(file).read_text())
        return str(data["path"]), str(data["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def file_stamp(file: str | Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class ArtifactHeader:
    """ASGI middleware: `X-Sparserec-Artifact` on every answer of `routes` whose body names a version."""

    def __init__(self, app: Any, routes: frozenset[str]) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.routes:
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                held["start"], held["body"] = message, []
                return
            if "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            held["body"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(held.pop("body"))
            start = held.pop("start")
            found = _VERSION.search(body)
            if found is not None:
                name = json.loads(b'"' + found.group(1) + b'"')
                value = header_value({"name": name, "sha256": found.group(2).decode()})
                start = dict(start)
                start["headers"] = list(start.get("headers", [])) + [(HEADER.lower().encode(), value.encode("latin-1"))]
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, wrapped)


class ReloadFollower:
    """How a worker follows a reload made by another worker: mixed into
    ``serving.service.SparseRecommender``, whose ``__init__`` sets the state read here (``config``,
    ``served``, ``_load``, ``_reload_stamp``, ``_next_reload_check``, ``_reloading``). Call
    :meth:`_poll_reload` at the start of each request, on the event loop."""

    def _poll_reload(self) -> None:
        """Cheap per-request check of the reload file (a stat at most every poll interval); on a
        change naming another artifact, load it in the background and swap when verified."""
        now = time.monotonic()
        if now < self._next_reload_check or self._reloading:
            return
        self._next_reload_check = now + self.config.reload_poll_ms / 1000
        stamp = file_stamp(self.config.reload_file)
        if stamp == self._reload_stamp:
            return
        self._reload_stamp = stamp
        desired = read_desired(self.config.reload_file)
        if desired is None or desired[1] == self.served.version["sha256"]:
            return
        self._reloading = True
        asyncio.get_running_loop().create_task(self._follow(desired[0], desired[1]))

    async def _follow(self, path: str, sha256: str) -> None:
        from export.artifact import ArtifactError

        try:
            served = await anyio.to_thread.run_sync(self._load, path)
            if served.version["sha256"] != sha256:
                raise ValueError(f"{path}: manifest sha256 {served.version['sha256']} is not the reloaded {sha256}")
            old, self.served = self.served, served  # the swap: one reference assignment
            service_metrics().reloads.labels(outcome="swapped").inc()
            _service_logger.info("reloaded: %s -> %s (%s)", old.label, served.label, served.path)
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            service_metrics().reloads.labels(outcome="refused").inc()
            _service_logger.error(
                "reload of %s refused in this worker, still serving %s: %s: %s",
                path,
                self.served.label,
                type(exc).__name__,
                exc,
            )
        finally:
            self._reloading = False
