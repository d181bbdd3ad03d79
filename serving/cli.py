"""`python -m serving`: run the sparserec service in the foreground (see serving/__main__.py)."""

from __future__ import annotations

import argparse
import os
import sys

from serving.config import ConfigError, ServeConfig, bind_host
from serving.flags import SETTINGS, add_setting_flags, settings_env
from serving.process import REPO_ROOT, server_env

SERVICE = "serving.service:SparseRecommender"


EPILOG = """examples:
  python -m serving --artifact artifacts/demo-lightgcn --port 3000
  python -m serving --artifact artifacts/demo-lightgcn --host 0.0.0.0 --workers 2 --threads 1 --max-k 100
"""


def _default_host() -> str:
    try:
        return bind_host()
    except ConfigError:
        return "127.0.0.1"  # main() reports the bad SPARSEREC_HOST


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description=f"Serve an artifact over HTTP (a thin wrapper over `bentoml serve {SERVICE}`).\n"
        "Every setting is a flag and an environment variable (the flag wins): docs/deploy.md.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact",
        default=os.environ.get("SPARSEREC_ARTIFACT"),
        help="artifact folder written by `python -m export` (env SPARSEREC_ARTIFACT)",
    )
    parser.add_argument("--port", type=int, default=3000, help="HTTP port (default 3000)")
    parser.add_argument(
        "--host",
        default=_default_host(),
        help="address to bind (env SPARSEREC_HOST, default 127.0.0.1; 0.0.0.0 to expose); "
        "with --shards, the router's only: shards always bind 127.0.0.1",
    )
    add_setting_flags(parser)
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help="serve the S parts written by `python -m export ... --shards S`: S shard "
        "servers on free ports and the router (serving.router) on --port",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the up-front artifact check (each worker still verifies it)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.artifact:
        print("error: --artifact (or SPARSEREC_ARTIFACT) is required", file=sys.stderr)
        return 2
    for flag in ("workers", "threads", "shards"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            print(f"error: --{flag} must be >= 1", file=sys.stderr)
            return 2
    try:  # every setting checked here, with its flag named, rather than by each worker at start
        bind_host({"SPARSEREC_HOST": args.host})
        ServeConfig.from_env({**os.environ, "SPARSEREC_ARTIFACT": args.artifact, **settings_env(args)})
    except ConfigError as exc:
        message = str(exc)
        for s in SETTINGS:
            message = message.replace(s.env, f"{s.flag} ({s.env})")
        print(f"error: {message.replace('SPARSEREC_HOST', '--host (SPARSEREC_HOST)')}", file=sys.stderr)
        return 2
    if not args.no_verify and args.shards is None:  # with --shards, each part is verified by run_sharded
        from export.artifact import ArtifactError, verify_artifact

        try:
            # the index opened as a worker opens it (same reader, same mmap): what would crash-loop the
            # workers exits here, naming the problem
            verify_artifact(args.artifact, index=True, mmap=ServeConfig.from_env(server_env(args)).mmap)
        except ArtifactError as exc:
            print(f"sparserec: refusing to start: artifact failed verification: {exc}", file=sys.stderr)
            return 2
    if args.shards is not None:
        from serving.sharded import run_sharded

        return run_sharded(args)
    env = server_env(args)
    # `bentoml serve` with this server's own Prometheus folder (serving.bentoml_serve)
    command = [
        sys.executable,
        "-m",
        "serving.bentoml_serve",
        SERVICE,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--working-dir",
        str(REPO_ROOT),
    ]
    print(
        f"sparserec: bentoml serve {' '.join(command[3:])} (SPARSEREC_ARTIFACT={env['SPARSEREC_ARTIFACT']}, "
        f"threads={env['SPARSEREC_THREADS']})",
        file=sys.stderr,
        flush=True,
    )
    # exec: the server keeps this PID, so signals (Ctrl-C, terminate) reach it directly
    os.execve(sys.executable, command, env)
    return 0  # not reached
