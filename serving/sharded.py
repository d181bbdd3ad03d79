"""`python -m serving --artifact A --shards S`: S shard servers and the router, as local processes.

Each part ``A/shards/part-<i>-of-<S>`` (written by ``python -m export ... --shards S``) is served
by its own ``python -m serving`` on a free port (its own process group, same flags: --workers,
--threads), then the router (``bentoml serve serving.router:ShardRouter``) on --port with
SPARSEREC_SHARD_URLS naming them. The shards' URLs and PIDs are printed; SIGTERM or Ctrl-C stops
the router and every shard. A shard that exits makes the router answer 503 naming it (this
launcher does not restart it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from serving.process import REPO_ROOT, ServerFailed, ServerProcess, free_port, serving_command, stop_process_group


class _Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def run_sharded(args: argparse.Namespace) -> int:
    from export.artifact import ArtifactError, verify_artifact
    from export.shards import shard_paths
    from serving.cli import server_env

    parts = shard_paths(args.artifact, args.shards)
    for part in parts:
        if not part.is_dir():
            print(f"sparserec: {part} is missing: write the parts with `python -m export.shards {args.artifact} "
                  f"--shards {args.shards}`", file=sys.stderr)
            return 2
        if not args.no_verify:
            try:
                verify_artifact(part)
            except ArtifactError as exc:
                print(f"sparserec: refusing to start: shard part failed verification: {exc}", file=sys.stderr)
                return 2
    shards: list[ServerProcess] = []
    router = None

    def stop(*_: object) -> None:  # at any point, also while shards start: stop everything started
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for i, part in enumerate(parts):
            port = free_port()
            command = serving_command(part, port, host=args.host, threads=args.threads, workers=args.workers)
            command += ["--no-verify"] + (["--device", str(args.device)] if args.device is not None else [])
            args_env = argparse.Namespace(**{**vars(args), "artifact": str(part)})
            shards.append(ServerProcess(command, server_env(args_env), port))
            print(f"sparserec: shard {i} ({part}) on {shards[-1].url}, pid {shards[-1].process.pid}, "
                  f"log {shards[-1].log_file.name}", file=sys.stderr, flush=True)
        for shard in shards:
            shard.wait_ready(timeout=600)
        env = server_env(args)
        env["SPARSEREC_SHARD_URLS"] = ",".join(s.url for s in shards)
        command = [sys.executable, "-m", "bentoml", "serve", "serving.router:ShardRouter",
                   "--host", args.host, "--port", str(args.port), "--working-dir", str(REPO_ROOT)]
        import subprocess

        router = subprocess.Popen(command, env=env, cwd=REPO_ROOT, start_new_session=True)
        print(f"sparserec: router on http://{args.host}:{args.port} over {env['SPARSEREC_SHARD_URLS']}",
              file=sys.stderr, flush=True)
        while router.poll() is None:
            time.sleep(0.2)
        return int(router.returncode or 0)
    except _Stop:
        return 0
    except ServerFailed as exc:
        print(f"sparserec: a shard did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        if router is not None:
            stop_process_group(router)
        for shard in shards:
            shard.stop()
