"""Locust against the sharded and the unsharded deployment of one artifact, in one run (issue 12).

    python -m loadtest.shards --artifact artifacts/synthetic-1m --shards 2     # make loadtest-shards

Splits the artifact if its parts are missing (export.shards), starts the unsharded service
(`python -m serving --artifact A`) and the sharded one (`python -m serving --artifact A --shards S`:
S shard servers + the router), both with one thread a process, then runs the same locust load
(loadtest/locustfile.py, `RecommendUser`; locust's distributed mode: a master and
--locust-workers worker processes) against each in turn, and reports requests/s and latency
percentiles of both and the router's added p50 (sharded p50 - unsharded p50). Writes
results/loadtest-shards.{json,md} with provenance. Everything shares this machine's cores: on a
machine with fewer cores than processes the figures say what sharding costs, not what it gains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.io import atomic_write_json, atomic_write_text
from common.provenance import provenance, provenance_line
from export.shards import shard_paths, split_artifact
from loadtest.run import LoadOptions, _run_locust, parse_duration
from serving.process import REPO_ROOT, ServerProcess, free_port, serving_command, serving_env

RESULTS = REPO_ROOT / "results"
KEYS = ("requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms")


def _server(artifact: Path, shards: int | None, log_env: dict[str, str]) -> ServerProcess:
    port = free_port()
    return ServerProcess(serving_command(artifact, port, threads=1) + (["--shards", str(shards)] if shards else []),
                         log_env, port)


def run(args: argparse.Namespace) -> dict[str, Any]:
    artifact = args.artifact.resolve()
    if not all(p.is_dir() for p in shard_paths(artifact, args.shards)):
        split_artifact(artifact, args.shards)
    env = serving_env(OMP_NUM_THREADS="1")
    RESULTS.mkdir(exist_ok=True)
    servers = {"unsharded": _server(artifact, None, env), f"{args.shards} shards": _server(artifact, args.shards, env)}
    rows: dict[str, dict[str, Any]] = {}
    try:
        for server in servers.values():
            server.wait_ready(900)
        for name, server in servers.items():
            tag = "unsharded" if name == "unsharded" else "sharded"
            options = LoadOptions(artifact=artifact, users=args.users, spawn_rate=args.spawn_rate,
                                  duration_s=parse_duration(args.duration), workers=args.locust_workers,
                                  results=RESULTS, name=f"shards-{tag}", seed=0)
            summary_file = RESULTS / f".loadtest-shards-{tag}.summary.json"
            summary_file.unlink(missing_ok=True)
            code = _run_locust(options, server.url, RESULTS / f"loadtest-shards-{tag}.html",
                               RESULTS / f"loadtest-shards-{tag}.locust.log", summary_file)
            if not summary_file.is_file():
                raise RuntimeError(f"locust ({name}) exited with {code} and wrote no summary "
                                   f"(log results/loadtest-shards-{tag}.locust.log)")
            summary = json.loads(summary_file.read_text())
            summary_file.unlink()
            rows[name] = {key: summary[key] for key in KEYS}
            print(f"{name}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    sharded = rows[f"{args.shards} shards"]
    return {"provenance": provenance(note="shared 2-core machine: locust, S shards, the router and the "
                                          "unsharded server share its cores"),
            "artifact": str(args.artifact), "shards": args.shards,
            "load": {"users": args.users, "spawn_rate": args.spawn_rate, "duration": args.duration,
                     "locust": f"master + {args.locust_workers} workers", "user_class": "RecommendUser"},
            "rows": rows, "router_added_p50_ms": sharded["p50_ms"] - rows["unsharded"]["p50_ms"]}


def render(report: dict[str, Any]) -> str:
    load = report["load"]
    lines = [provenance_line(report["provenance"]), "",
             f"# Sharded vs unsharded under locust: {report['artifact']}, {report['shards']} shards", "",
             f"{load['users']} locust users ({load['locust']}), {load['duration']} each, one after the other.", "",
             "| deployment | requests | failures | requests/s | p50 ms | p95 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['requests']} | {row['failures']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | "
                     f"{row['p95_ms']:.1f} | {row['p99_ms']:.1f} |")
    lines += ["", f"The router's added p50 (sharded - unsharded): {report['router_added_p50_ms']:+.1f} ms.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", default="30s")
    parser.add_argument("--locust-workers", type=int, default=2, help="locust worker processes (distributed mode)")
    args = parser.parse_args(argv)
    report = run(args)
    atomic_write_json(RESULTS / "loadtest-shards.json", report)
    atomic_write_text(RESULTS / "loadtest-shards.md", render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
