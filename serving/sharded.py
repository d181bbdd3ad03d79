"""`python -m serving --artifact A --shards S`: S shard servers and the router, as local processes.

    python -m serving --artifact artifacts/mf --shards 2 --port 3000 --host 0.0.0.0

Before anything starts, the parts ``A/shards/part-<i>-of-<S>`` (written by ``python -m export ...
--shards S``) are checked to belong together (`export.shards.verify_shard_set`: folder names,
one parent export, ranges tiling the catalogue) and, unless --no-verify, each is verified like any
artifact; a part that does not fit exits 2 naming it. Each part is then served by its own
``python -m serving`` on a free port of 127.0.0.1 (same flags: --workers, --threads), then the
router (``bentoml serve serving.router:ShardRouter``, through `serving.bentoml_serve` like the shards,
so each has its own metrics folder) on --host/--port with SPARSEREC_SHARD_URLS
naming them. Only the router takes --host: the shards are reached by the router alone.

The deployment lives and dies as one: the shard servers and the router are started with
`serving.process.die_with_parent` (the kernel signals them when this launcher dies, even by
SIGKILL), their workers die with their arbiter (`serving.guard`), and this launcher stops
everything and exits 1 as soon as the router or any shard exits. SIGTERM or Ctrl-C stops it all
(exit 0).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

import psutil

from serving.process import (
    HOST,
    REPO_ROOT,
    ServerFailed,
    ServerProcess,
    descendants,
    die_with_parent_preexec,
    free_port,
    server_env,
    serving_command,
    stop_process_group,
)

EXIT_BAD_ARTIFACT = 2


class _Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def check_parts(args: argparse.Namespace) -> str | None:
    """None if the S parts of ``args.artifact`` are there and belong together, else the problem."""
    from export.artifact import ArtifactError, verify_artifact
    from export.shards import shard_paths, verify_shard_set

    for part in shard_paths(args.artifact, args.shards):
        if not part.is_dir():
            return (
                f"{part} is missing: write the parts with `python -m export.shards {args.artifact} "
                f"--shards {args.shards}`"
            )
    try:
        verify_shard_set(args.artifact, args.shards)
    except ArtifactError as exc:
        return f"refusing to start: the shard parts do not belong together: {exc}"
    if not args.no_verify:
        for part in shard_paths(args.artifact, args.shards):
            try:
                verify_artifact(part)
            except ArtifactError as exc:
                return f"refusing to start: shard part failed verification: {exc}"
    return None


def run_sharded(args: argparse.Namespace) -> int:
    from export.shards import shard_paths

    problem = check_parts(args)
    if problem is not None:
        print(f"sparserec: {problem}", file=sys.stderr)
        return EXIT_BAD_ARTIFACT
    parts = shard_paths(args.artifact, args.shards)
    shards: list[ServerProcess] = []
    router: subprocess.Popen | None = None
    seen: dict[int, psutil.Process] = {}  # every descendant met so far: stopped even if its parent died first

    def stop(*_: object) -> None:  # at any point, also while shards start: stop everything started
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for i, part in enumerate(parts):
            port = free_port()
            command = serving_command(part, port, host=HOST, threads=args.threads, workers=args.workers)
            command += ["--no-verify"] + (["--device", str(args.device)] if args.device is not None else [])
            args_env = argparse.Namespace(**{**vars(args), "artifact": str(part)})
            env = server_env(args_env)
            env["SPARSEREC_HOST"] = HOST  # a shard is reached by the router alone
            shards.append(ServerProcess(command, env, port, die_with_parent=True))
            print(
                f"sparserec: shard {i} ({part}) on {shards[-1].url}, pid {shards[-1].process.pid}, "
                f"log {shards[-1].log_file.name}",
                file=sys.stderr,
                flush=True,
            )
        for shard in shards:
            shard.wait_ready(timeout=600)
        env = server_env(args)
        env["SPARSEREC_SHARD_URLS"] = ",".join(s.url for s in shards)
        command = [
            sys.executable,
            "-m",
            "serving.bentoml_serve",
            "serving.router:ShardRouter",
            "--host",
            args.host,
            "--port",
            str(args.port),
            "--working-dir",
            str(REPO_ROOT),
        ]
        # the router's output stays on this console (the shards' goes to their log files)
        router = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, start_new_session=True, preexec_fn=die_with_parent_preexec
        )
        print(
            f"sparserec: router on http://{args.host}:{args.port} over {env['SPARSEREC_SHARD_URLS']}, pid {router.pid}",
            file=sys.stderr,
            flush=True,
        )
        members = [("router", router)] + [(f"shard {i}", s.process) for i, s in enumerate(shards)]
        while True:
            for name, process in members:
                for child in descendants(process.pid):
                    seen.setdefault(child.pid, child)
                if process.poll() is not None:
                    print(
                        f"sparserec: {name} (pid {process.pid}) exited with status {process.returncode}: "
                        "stopping the deployment",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
            time.sleep(0.2)
    except _Stop:
        return 0
    except ServerFailed as exc:
        print(f"sparserec: a shard did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        known = list(seen.values())
        if router is not None:
            stop_process_group(router, grace=3.0, known=known)
        for shard in shards:
            shard.stop(grace=3.0, known=known)
