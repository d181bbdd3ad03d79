"""`python -m serving`: run the sparserec service in the foreground (see serving/__main__.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serving.config import DEVICES, default_threads, thread_env

SERVICE = "serving.service:SparseRecommender"
REPO_ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description=f"Serve an artifact over HTTP (a thin wrapper over `bentoml serve {SERVICE}`).",
    )
    parser.add_argument("--artifact", default=os.environ.get("SPARSEREC_ARTIFACT"),
                        help="artifact folder written by `python -m export` (env SPARSEREC_ARTIFACT)")
    parser.add_argument("--port", type=int, default=3000, help="HTTP port (default 3000)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 to expose)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes, each with its own copy of the artifact "
                             "(env SPARSEREC_WORKERS, default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenMP threads per worker (env SPARSEREC_THREADS, default cpu_count/workers)")
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help="cpu: FAISS index; cuda: exact scoring with torch (env SPARSEREC_DEVICE)")
    parser.add_argument("--shards", type=int, default=None,
                        help="serve the S parts written by `python -m export ... --shards S`: S shard "
                             "servers on free ports and the router (serving.router) on --port")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the up-front artifact check (each worker still verifies it)")
    return parser


def server_env(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the server: SPARSEREC_* from the flags, thread pools pinned."""
    env = dict(os.environ if base is None else base)
    env["SPARSEREC_ARTIFACT"] = str(Path(args.artifact).resolve())
    if args.workers is not None:
        env["SPARSEREC_WORKERS"] = str(args.workers)
    if args.threads is not None:
        env["SPARSEREC_THREADS"] = str(args.threads)
    if args.device is not None:
        env["SPARSEREC_DEVICE"] = args.device
    workers = int(env.get("SPARSEREC_WORKERS") or 1)
    threads = int(env.get("SPARSEREC_THREADS") or default_threads(workers))
    env["SPARSEREC_THREADS"] = str(threads)
    # OpenMP/BLAS read these when they load, before the service module runs
    env.update(thread_env(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.artifact:
        print("error: --artifact (or SPARSEREC_ARTIFACT) is required", file=sys.stderr)
        return 2
    for flag in ("workers", "threads", "shards"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            print(f"error: --{flag} must be >= 1", file=sys.stderr)
            return 2
    if not args.no_verify and args.shards is None:  # with --shards, each part is verified by run_sharded
        from export.artifact import ArtifactError, verify_artifact

        try:
            verify_artifact(args.artifact)
        except ArtifactError as exc:
            print(f"sparserec: refusing to start: artifact failed verification: {exc}", file=sys.stderr)
            return 2
    if args.shards is not None:
        from serving.sharded import run_sharded

        return run_sharded(args)
    env = server_env(args)
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE,
               "--host", args.host, "--port", str(args.port), "--working-dir", str(REPO_ROOT)]
    print(f"sparserec: {' '.join(command[1:])} (SPARSEREC_ARTIFACT={env['SPARSEREC_ARTIFACT']}, "
          f"threads={env['SPARSEREC_THREADS']})", file=sys.stderr, flush=True)
    # exec: the server keeps this PID, so signals (Ctrl-C, terminate) reach it directly
    os.execve(sys.executable, command, env)
    return 0  # not reached
