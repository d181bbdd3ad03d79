"""Load-test a sparserec server over HTTP with locust: any running one, or one started for you.

    python -m loadtest run --host http://127.0.0.1:3000 --users 20 --duration 60s   # a running server
    python -m loadtest run --host http://10.0.0.5:3000 --user-ids users.txt --max-fail-ratio 0
    python -m loadtest run --artifact artifacts/ml100k --users 50 --spawn-rate 10 --duration 60s
    python -m loadtest run --artifact artifacts/ml100k --duration 30s --max-p95-ms 100 --max-fail-ratio 0.01
    python -m loadtest run --artifact artifacts/ml100k --users 200 --locust-workers 2 --duration 2m   # master + 2
    python -m loadtest run --compare artifacts/mf-dense artifacts/mf-dsl-0.2 --users 50 --duration 60s
    python -m loadtest saturation --artifact artifacts/ml100k    # /recommend beside /ping, 40 and 100 users, 60 s

`run --host URL` loads the server at URL and starts none; without --host, `run` starts
`python -m serving` on a free port of 127.0.0.1 and waits for /readyz. Either way it runs locust
headless (loadtest/locustfile.py) for the duration, stops what it started and writes
results/loadtest-NAME.json (requests, failures, rps, p50_ms, p95_ms, p99_ms, each endpoint, server
memory) and locust's HTML report results/loadtest-NAME.html. `--compare A B` runs both artifacts
under the same load, one after the other, prints one table and writes
results/loadtest-compare.{json,md}. `saturation` (loadtest/saturation.py) saturates one server
with single /recommend queries and /ping calls side by side and writes
results/loadtest-saturation.{json,md}.

The user ids come from --user-ids FILE (one a line, most active first), else from --artifact's
users, else from the server's GET /info `sample_user_ids`. `--locust-workers N` runs locust as a
master and N worker processes (the server's own worker processes are --server-workers; the old
`--workers` is refused with a message saying so).

Exit status: 0 when every threshold is met, 1 when one is not (decided inside locust by the
locustfile's `quitting` listener), 2 when the server or locust could not run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _wait_ms(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--wait-ms {text!r}: expected MIN,MAX in milliseconds") from None
    if bounds[0] < 0 or bounds[1] < bounds[0]:
        raise argparse.ArgumentTypeError(f"--wait-ms {text!r}: need 0 <= MIN <= MAX")
    return bounds


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


EPILOG = """examples:
  python -m loadtest run --host http://127.0.0.1:3000 --users 20 --spawn-rate 10 --duration 60s --max-fail-ratio 0
  python -m loadtest run --artifact artifacts/demo-lightgcn --users 50 --locust-workers 2 --duration 2m
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "saturation",
        add_help=False,
        help="/recommend beside /ping at saturation (python -m loadtest saturation --help)",
    )
    run = commands.add_parser(
        "run",
        help="load a running server (--host) or one it serves (--artifact)",
        description="Load a running server (--host URL) or serve an artifact on 127.0.0.1 "
        "and load it, with locust (headless).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--host",
        default=None,
        metavar="URL",
        help="base URL of a running server to load (http://HOST:PORT); no server is started",
    )
    run.add_argument(
        "--user-ids",
        type=Path,
        default=None,
        metavar="FILE",
        help="user ids to query, one a line, most active first (default: --artifact's users, "
        "else the server's GET /info sample_user_ids)",
    )
    target = run.add_mutually_exclusive_group()
    target.add_argument(
        "--artifact",
        type=Path,
        help="artifact folder (artifacts/NAME): served for the run, or with --host the source of the user ids",
    )
    target.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar=("A", "B"),
        help="two artifact folders, run one after the other under the same load",
    )
    run.add_argument("--users", type=_positive_int, default=50, help="peak concurrent locust users (default 50)")
    run.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second (default 10)")
    run.add_argument("--duration", default="60s", help="run time, e.g. 60s, 2m, 1m30s (default 60s)")
    run.add_argument(
        "--locust-workers",
        type=int,
        default=0,
        metavar="N",
        help="locust distributed mode: a master plus N worker processes (default 0: one process)",
    )
    run.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)  # renamed: refused in main
    run.add_argument("--max-p95-ms", type=float, default=None, help="exit 1 if the overall p95 latency exceeds this")
    run.add_argument("--max-fail-ratio", type=float, default=None, help="exit 1 if the failed share exceeds this")
    run.add_argument(
        "--wait-ms",
        type=_wait_ms,
        default=(10.0, 100.0),
        metavar="MIN,MAX",
        help="think time of each user between calls (default 10,100)",
    )
    run.add_argument(
        "--server-threads",
        type=_positive_int,
        default=None,
        help="python -m serving --threads of the server it starts (not with --host)",
    )
    run.add_argument(
        "--server-workers",
        type=_positive_int,
        default=None,
        help="python -m serving --workers of the server it starts (not with --host)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the traffic draws (default 0)")
    run.add_argument("--results", type=Path, default=Path("results"), help="report folder (default results/)")
    run.add_argument(
        "--name", default=None, help="report name (default: the artifact folder's name, or the host and port)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["saturation"]:
        from .saturation import main as saturation

        return saturation(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from .run import (
        LoadOptions,
        ServerError,
        UsageError,
        check_artifact,
        check_url,
        check_user_ids,
        duration_arg,
        endpoint_table,
        run_compare,
        run_load,
        summary_line,
    )

    try:
        if args.workers is not None:
            raise UsageError(
                "--workers was renamed --locust-workers (locust worker processes); the server's "
                "worker processes are --server-workers"
            )
        if args.host is None and args.artifact is None and args.compare is None:
            raise UsageError(
                "give --host URL (a running server), --artifact FOLDER (served for the run) or --compare A B"
            )
        if args.host is not None:
            if args.compare:
                raise UsageError("--compare serves two artifacts itself: it does not take --host")
            for flag in ("server_threads", "server_workers"):
                if getattr(args, flag) is not None:
                    raise UsageError(
                        f"--{flag.replace('_', '-')} sets the server this command starts; with --host it starts none"
                    )
            args.host = check_url(args.host)
        duration_s = duration_arg(args.duration)
        if args.locust_workers < 0:
            raise UsageError("--locust-workers must be >= 0")
        for artifact in args.compare or ([args.artifact] if args.artifact else []):
            check_artifact(artifact)
        if args.user_ids is not None:
            check_user_ids(args.user_ids)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    common = dict(
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration_s=duration_s,
        locust_workers=args.locust_workers,
        user_ids=args.user_ids,
        max_p95_ms=args.max_p95_ms,
        max_fail_ratio=args.max_fail_ratio,
        wait_ms=args.wait_ms,
        server_threads=args.server_threads,
        server_workers=args.server_workers,
        seed=args.seed,
        results=args.results,
    )
    try:
        if args.compare:
            first, second = (LoadOptions(artifact=a, **common) for a in args.compare)
            comparison = run_compare(first, second)
            print(comparison["table_md"])
            print(f"\n-> {comparison['path']} and {Path(comparison['path']).with_suffix('.md')}")
            return max(comparison["a"]["exit_code"], comparison["b"]["exit_code"])
        result = run_load(LoadOptions(artifact=args.artifact, host=args.host, name=args.name, **common))
    except (ServerError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(endpoint_table(result))
    print(summary_line(result))
    return int(result["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
