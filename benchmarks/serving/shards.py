"""Locust against the sharded and the unsharded deployment of one artifact, in one run (issue 12).

    python -m benchmarks.serving.shards --artifact artifacts/synthetic-1m --shards 2     # make loadtest-shards

Splits the artifact if its parts are missing (export.shards), starts the unsharded service
(`python -m serving --artifact A`) and the sharded one (`python -m serving --artifact A --shards S`:
S shard servers + the router), both with one thread a process, then runs the same locust load
(loadtest/locustfile.py, `RecommendUser`; locust's distributed mode: a master and
--locust-workers worker processes) against each in turn, and reports requests/s and latency
percentiles of both. Writes results/loadtest-shards.{json,md} with provenance. Everything shares
this machine's cores: on a machine with fewer cores than processes the figures say what sharding
costs, not what it gains.

Sharded p50 minus unsharded p50 mixes the router's own cost with each shard's smaller scan, so the
router's added latency is isolated in the same run: a router over ONE shard, that shard being the
unsharded server itself (same artifact, same process), against that server directly. One client
sends --router-requests rounds of sequential calls (no concurrency, so no queueing), the same user
and k in a round, the order of the paths rotating every round: the server's /recommend (direct),
its /recommend_batch with that one query (what the router asked each shard for before it sent
single queries to the shards' /recommend: BentoML's dispatcher path), and the router's /recommend;
it checks that the answers are equal. The report gives each path's p50 and p95, the router's added
p50 (routed - direct) and the median of the paired differences.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import harness
from benchmarks.harness import provenance_line
from common.io import atomic_write_json, atomic_write_text
from common.paths import REPO_ROOT, repo_relative
from export.shards import shard_paths, split_artifact
from loadtest.run import LoadOptions, _run_locust, parse_duration
from serving.process import ServerProcess, free_port, serving_command, serving_env

RESULTS = REPO_ROOT / "results"
KEYS = ("requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms")


def _server(artifact: Path, shards: int | None, log_env: dict[str, str]) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        serving_command(artifact, port, threads=1) + (["--shards", str(shards)] if shards else []), log_env, port
    )


def _user_ids(artifact: Path) -> list[str]:
    from benchmarks.serving.replicas import _user_ids as read_user_ids

    return read_user_ids(artifact)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def router_overhead(
    shard: ServerProcess, artifact: Path, env: dict[str, str], requests: int, k: int = 10
) -> dict[str, Any]:
    """A router over one shard (``shard``, a running server) against ``shard`` directly: rounds of
    sequential calls over three paths (see the module docstring). Times in ms, as the client sees them."""
    port = free_port()
    router_env = {
        **env,
        "SPARSEREC_SHARD_URLS": shard.url,
        "SPARSEREC_ARTIFACT": str(artifact),
        "SPARSEREC_THREADS": "1",
    }
    router = ServerProcess(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "serving.router:ShardRouter",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--working-dir",
            str(REPO_ROOT),
        ],
        router_env,
        port,
    )
    users = _user_ids(artifact)
    times: dict[str, list[float]] = {"direct": [], "direct_batch": [], "routed": []}
    try:
        router.wait_ready(300)
        with httpx.Client(timeout=60) as client:

            def call(name: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
                url, route, payload = {
                    "direct": (shard.url, "/recommend", body),
                    "direct_batch": (shard.url, "/recommend_batch", {"queries": [body]}),
                    "routed": (router.url, "/recommend", body),
                }[name]
                start = time.perf_counter()
                response = client.post(url + route, json=payload)
                elapsed = (time.perf_counter() - start) * 1e3
                if response.status_code != 200:
                    raise RuntimeError(f"{url}{route} answered {response.status_code}: {response.text[:300]}")
                answer = response.json()
                return elapsed, answer[0] if name == "direct_batch" else answer

            for i in range(5):  # warm-up: connections, first-call set-up in both servers
                for name in times:
                    call(name, {"user_id": users[i % len(users)], "k": k})
            names = list(times)
            for i in range(requests):
                body = {"user_id": users[(7 * i) % len(users)], "k": k}
                answers = {}
                for name in names[i % 3 :] + names[: i % 3]:
                    elapsed, answers[name] = call(name, body)
                    times[name].append(elapsed)
                if not answers["direct"] == answers["direct_batch"] == answers["routed"]:
                    raise RuntimeError(f"the router over one shard answered {body} differently from the shard")
    finally:
        router.stop()
    paired = [r - d for r, d in zip(times["routed"], times["direct"])]
    out: dict[str, Any] = {"requests": requests, "k": k, "paired_median_ms": statistics.median(paired)}
    for name, values in times.items():
        out[f"{name}_p50_ms"] = statistics.median(values)
        out[f"{name}_p95_ms"] = _percentile(values, 0.95)
    out["added_p50_ms"] = out["routed_p50_ms"] - out["direct_p50_ms"]
    out["dispatcher_added_p50_ms"] = out["direct_batch_p50_ms"] - out["direct_p50_ms"]
    return out


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
            options = LoadOptions(
                artifact=artifact,
                users=args.users,
                spawn_rate=args.spawn_rate,
                duration_s=parse_duration(args.duration),
                locust_workers=args.locust_workers,
                results=RESULTS,
                name=f"shards-{tag}",
                seed=0,
            )
            summary_file = RESULTS / f".loadtest-shards-{tag}.summary.json"
            summary_file.unlink(missing_ok=True)
            code = _run_locust(
                options,
                server.url,
                RESULTS / f"loadtest-shards-{tag}.html",
                RESULTS / f"loadtest-shards-{tag}.locust.log",
                summary_file,
            )
            if not summary_file.is_file():
                raise RuntimeError(
                    f"locust ({name}) exited with {code} and wrote no summary "
                    f"(log results/loadtest-shards-{tag}.locust.log)"
                )
            summary = json.loads(summary_file.read_text())
            summary_file.unlink()
            rows[name] = {key: summary[key] for key in KEYS}
            print(f"{name}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
        overhead = None
        if args.router_requests > 0:
            print(
                f"router over one shard vs the shard directly: {args.router_requests} rounds ...",
                file=sys.stderr,
                flush=True,
            )
            overhead = router_overhead(servers["unsharded"], artifact, env, args.router_requests)
            print(f"router overhead: {json.dumps(overhead)}", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    sharded = rows[f"{args.shards} shards"]
    return {
        "artifact": repo_relative(args.artifact),
        "shards": args.shards,
        "load": {
            "users": args.users,
            "spawn_rate": args.spawn_rate,
            "duration": args.duration,
            "locust": f"master + {args.locust_workers} workers",
            "user_class": "RecommendUser",
        },
        "rows": rows,
        "sharded_minus_unsharded_p50_ms": sharded["p50_ms"] - rows["unsharded"]["p50_ms"],
        "router_overhead": overhead,
    }


def render(report: dict[str, Any]) -> str:
    load = report["load"]
    lines = [
        provenance_line(report["provenance"]),
        "",
        f"# Sharded vs unsharded under locust: {report['artifact']}, {report['shards']} shards",
        "",
        f"{load['users']} locust users ({load['locust']}), {load['duration']} each, one after the other.",
        "",
        "| deployment | requests | failures | requests/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["rows"].items():
        lines.append(
            f"| {name} | {row['requests']} | {row['failures']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | "
            f"{row['p95_ms']:.1f} | {row['p99_ms']:.1f} |"
        )
    lines += [
        "",
        f"Sharded p50 - unsharded p50: {report['sharded_minus_unsharded_p50_ms']:+.1f} ms (the router's "
        "cost mixed with each shard's smaller scan, under load).",
        "",
    ]
    overhead = report.get("router_overhead")
    if overhead:
        lines += [
            "## The router alone: a router over one shard vs that shard directly",
            "",
            f"The same server (the unsharded one above) called directly and through a router whose only shard "
            f"it is; {overhead['requests']} rounds of sequential calls (k={overhead['k']}, same user in a "
            "round, the order of the paths rotating), equal answers checked.",
            "",
            "| path | p50 ms | p95 ms |",
            "|---|---:|---:|",
            f"| the server's /recommend | {overhead['direct_p50_ms']:.2f} | {overhead['direct_p95_ms']:.2f} |",
            f"| the server's /recommend_batch, one query (BentoML's dispatcher) | "
            f"{overhead['direct_batch_p50_ms']:.2f} | {overhead['direct_batch_p95_ms']:.2f} |",
            f"| the router's /recommend | {overhead['routed_p50_ms']:.2f} | {overhead['routed_p95_ms']:.2f} |",
            "",
            f"**The router's added p50: {overhead['added_p50_ms']:+.2f} ms** (median of the paired "
            f"differences: {overhead['paired_median_ms']:+.2f} ms). A lone query through the server's "
            f"/recommend_batch (BentoML's dispatcher, which waits for company) adds "
            f"{overhead['dispatcher_added_p50_ms']:+.2f} ms at p50 over its /recommend: the router sends single "
            "queries to its shards' /recommend for that reason.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", default="30s")
    parser.add_argument("--locust-workers", type=int, default=2, help="locust worker processes (distributed mode)")
    parser.add_argument(
        "--router-requests",
        type=int,
        default=200,
        help="rounds of calls measuring a router over one shard vs the shard directly (0: skip)",
    )
    harness.add_timing_flags(parser)
    args = parser.parse_args(argv)
    outputs = [RESULTS / "loadtest-shards.json", RESULTS / "loadtest-shards.md"]
    source = harness.start(note="locust, S shards, the router and the unsharded server share the machine's cores")
    try:
        harness.check_start(source, outputs, allow_noisy=args.allow_noisy)
    except harness.NoisyMachine as exc:
        print(f"benchmarks.serving.shards: {exc}", file=sys.stderr)
        return 2
    report = {"provenance": source, **run(args)}
    if not harness.may_write(source, outputs, allow_noisy=args.allow_noisy, prog="benchmarks.serving.shards"):
        return 2
    atomic_write_json(RESULTS / "loadtest-shards.json", report)
    atomic_write_text(RESULTS / "loadtest-shards.md", render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
