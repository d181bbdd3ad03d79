"""Saturation: does the service queue rather than fail? /recommend beside /ping under the same load.

    python -m loadtest saturation --artifact artifacts/demo-lightgcn              # 40 and 100 users, 60 s each
    python -m loadtest saturation --artifact artifacts/demo-lightgcn --users 40 --duration 20s
    python -m loadtest saturation --artifact artifacts/demo-lightgcn --users 40 --batch-route always

For each concurrency N, one server (`python -m serving`, one worker, one thread) and one locust
run (a subprocess, 127.0.0.1 only, bounded in time) with N users sending single `/recommend`
queries (the locustfile's `SingleQueryUser`: Zipf users, k in {10, 20, 50}, 2% unknown users,
every answer checked) and N users sending `/ping` (`PingUser`, a constant answer: BentoML's own
cost), none with think time, so the server is saturated. Writes
results/loadtest-saturation.{json,md}: per N, failures, p50/p99 and requests/s of each endpoint
and /recommend's requests/s over /ping's (the target: 0 failures, >= 0.9x), with provenance.
`--batch-route R` serves with SPARSEREC_BATCH_ROUTE=R (how single /recommend queries use BentoML's
batching dispatcher) and writes results/loadtest-saturation-R.{json,md} instead.
Exit status 0 when every run meets both, 1 when one does not, 2 when a run could not be made.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from common.paths import repo_relative
from common.provenance import provenance, provenance_line

from .run import LoadOptions, ServerError, UsageError, check_artifact, duration_arg, run_load

log = logging.getLogger("sparserec.loadtest")

USER_CLASSES = ("SingleQueryUser", "PingUser")
MIN_RPS_RATIO = 0.9
ENDPOINTS = {"/recommend": "POST /recommend", "/ping": "POST /ping"}


def _endpoint(result: dict, key: str) -> dict:
    """One endpoint's figures; unknown-user queries are reported apart by the locustfile, so
    /recommend sums both names (requests, failures, rps) and keeps the known users' percentiles."""
    endpoints = result["endpoints"]
    main = endpoints.get(key, {})
    if key == "POST /recommend":
        extra = endpoints.get("POST /recommend [unknown user]", {})
        return {
            "requests": main.get("requests", 0) + extra.get("requests", 0),
            "failures": main.get("failures", 0) + extra.get("failures", 0),
            "rps": main.get("rps", 0.0) + extra.get("rps", 0.0),
            "p50_ms": main.get("p50_ms"),
            "p99_ms": main.get("p99_ms"),
        }
    return {k: main.get(k) for k in ("requests", "failures", "rps", "p50_ms", "p99_ms")}


def one_run(
    artifact: Path, users: int, duration_s: float, results: Path, seed: int, stem: str, locust_workers: int = 0
) -> dict:
    """N users on each endpoint for duration_s against a fresh server; the row of the report."""
    options = LoadOptions(
        artifact=artifact,
        users=2 * users,
        spawn_rate=float(users),
        duration_s=duration_s,
        wait_ms=(0.0, 0.0),
        server_threads=1,
        server_workers=1,
        seed=seed,
        results=results,
        name=f"{stem}-{users}",
        user_classes=USER_CLASSES,
        max_fail_ratio=0.0,
        locust_workers=locust_workers,
    )
    result = run_load(options)
    recommend, ping = _endpoint(result, ENDPOINTS["/recommend"]), _endpoint(result, ENDPOINTS["/ping"])
    ratio = recommend["rps"] / ping["rps"] if ping["rps"] else 0.0
    failures = int(result["failures"])
    return {
        "users_per_endpoint": users,
        "duration_s": duration_s,
        "locust_workers": locust_workers,
        "recommend": recommend,
        "ping": ping,
        "recommend_over_ping_rps": round(ratio, 3),
        "failures": failures,
        "errors": result.get("errors", []),
        "server_stats": (result["server"].get("serving_after") or {}).get("stats"),
        "batch_route": (result["server"].get("serving_after") or {}).get("batch_route"),
        "meets_target": failures == 0 and ratio >= MIN_RPS_RATIO,
        "report": result["path"],
    }


def markdown(report: dict) -> str:
    route = (report["runs"][0].get("batch_route") or {}) if report["runs"] else {}
    lines = [
        "# Saturation: /recommend beside /ping under the same load",
        "",
        provenance_line(report["provenance"]),
        "",
        f"Artifact `{report['artifact']}`; one server worker, one thread, SPARSEREC_BATCH_ROUTE="
        f"{route.get('setting')} (single queries through the batching dispatcher: "
        f"{route.get('single_queries_batched')}); locust on the same machine, "
        "N users on each endpoint, no think time. Target: 0 failed requests and /recommend's "
        f"requests/s >= {MIN_RPS_RATIO}x /ping's.",
        "",
        "| users per endpoint | seconds | /recommend req/s | /ping req/s | ratio | /recommend p50 / p99 ms | "
        "/ping p50 / p99 ms | failed | batches (largest) | target |",
        "|---:|---:|---:|---:|---:|---|---|---:|---|---|",
    ]
    for row in report["runs"]:
        rec, ping, stats = row["recommend"], row["ping"], row.get("server_stats") or {}
        lines.append(
            f"| {row['users_per_endpoint']} | {row['duration_s']:g} | {rec['rps']:.0f} | {ping['rps']:.0f} | "
            f"{row['recommend_over_ping_rps']:.2f} | {rec['p50_ms']:.0f} / {rec['p99_ms']:.0f} | "
            f"{ping['p50_ms']:.0f} / {ping['p99_ms']:.0f} | {row['failures']} of {rec['requests'] + ping['requests']} | "
            f"{stats.get('batches', '-')} ({stats.get('largest_batch', '-')}) | "
            f"{'met' if row['meets_target'] else 'MISSED'} |"
        )
    lines += [
        "",
        "Percentiles are locust's (whole milliseconds). `batches`: BentoML dispatcher batches the "
        "worker ran (the /recommend calls that arrived while others were in flight); the rest were "
        "answered directly (alone, or kept out by SPARSEREC_BATCH_ROUTE). The machine is shared: compare the ratio, not the absolute figures.",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest saturation", description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="artifact folder")
    parser.add_argument("--users", type=int, nargs="+", default=[40, 100], help="users per endpoint (default 40 100)")
    parser.add_argument("--duration", default="60s", help="locust run time per concurrency (default 60s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--locust-workers",
        type=int,
        default=0,
        help="locust as a master plus N worker processes (default 0: one process)",
    )
    parser.add_argument(
        "--batch-route",
        choices=("auto", "always", "never"),
        default=None,
        help="serve with SPARSEREC_BATCH_ROUTE set to this (default: the server's, auto)",
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="report folder (default results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        duration_s = duration_arg(args.duration)
        check_artifact(args.artifact)
        if any(users < 1 for users in args.users):
            raise UsageError("--users must be >= 1")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {
        "provenance": provenance(argv=None if argv is None else ["python", "-m", "loadtest", "saturation", *argv]),
        "artifact": repo_relative(args.artifact),
        "target": {"failures": 0, "min_rps_ratio": MIN_RPS_RATIO},
        "runs": [],
    }
    stem = "saturation" if args.batch_route is None else f"saturation-{args.batch_route}"
    if args.batch_route is not None:
        os.environ["SPARSEREC_BATCH_ROUTE"] = args.batch_route  # the server inherits it
    try:
        for users in args.users:
            row = one_run(args.artifact, users, duration_s, args.results, args.seed, stem, args.locust_workers)
            log.info(
                "%d users per endpoint: /recommend %.0f req/s, /ping %.0f req/s (%.2fx), %d failed",
                users,
                row["recommend"]["rps"],
                row["ping"]["rps"],
                row["recommend_over_ping_rps"],
                row["failures"],
            )
            report["runs"].append(row)
    except (ServerError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"loadtest-{stem}"
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", markdown(report))):
        tmp = out.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out.with_suffix(suffix))
    print(markdown(report))
    print(f"-> {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0 if all(row["meets_target"] for row in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
