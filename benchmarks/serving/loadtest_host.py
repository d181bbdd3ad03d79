"""`loadtest run --host` against a separately started server beside the same load on a server the
tool starts itself: does pointing at a running server measure the same thing?

    python -m benchmarks.serving.loadtest_host --artifact artifacts/demo-lightgcn --users 20 --duration 60s

One run, one machine, one after the other: (1) `python -m serving --artifact ARTIFACT` started as a
separate process (serving.process), loaded with `python -m loadtest run --host URL` (user ids from
the server's GET /info), then stopped; (2) `python -m loadtest run --artifact ARTIFACT`, which
starts and stops its own server. Writes results/loadtest-host-vs-own.{json,md}: requests, failures,
p50/p95 of each and the p50 ratio (external / own). Both loads draw their users from the same
file (the sample of GET /info) so that only the way the server was started differs. Take it on a
quiet machine (no training, no second benchmark): the load average at start and end is recorded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.io import atomic_write_json, atomic_write_text
from common.provenance import provenance, provenance_line
from loadtest.run import LoadOptions, check_artifact, duration_arg, run_load
from loadtest.server import ServiceProcess, get_json


def compare(artifact: Path, users: int, duration_s: float, results: Path, seed: int) -> dict:
    """The two runs and their ratio (also written to results/loadtest-host-vs-own.{json,md})."""
    source = provenance()
    results.mkdir(parents=True, exist_ok=True)
    ids = results / ".loadtest-host-users.txt"
    common = dict(
        users=users,
        spawn_rate=10.0,
        duration_s=duration_s,
        seed=seed,
        results=results,
        max_fail_ratio=0.0,
        user_ids=ids,
    )
    with ServiceProcess(artifact, results / "loadtest-host-external.server.log") as server:
        # both runs draw from the server's own sample, so that only how the server was started differs
        ids.write_text("\n".join(get_json(server.url + "/info")["sample_user_ids"]) + "\n")
        external = run_load(LoadOptions(host=server.url, name="host-external", **common))
    own = run_load(LoadOptions(artifact=artifact, name="host-own", **common))
    ids.unlink()
    ratio = external["p50_ms"] / own["p50_ms"] if own["p50_ms"] else None
    keys = ("requests", "failures", "rps", "p50_ms", "p95_ms", "path")
    summary = {
        "provenance": source,
        "end": provenance(),
        "artifact": str(artifact),
        "users": users,
        "duration_s": duration_s,
        "external": {k: external[k] for k in keys},
        "own": {k: own[k] for k in keys},
        "p50_external_over_own": ratio,
        "target": "0 failures for both; p50 within 10% (0.9 <= ratio <= 1.1)",
        "meets_target": bool(
            external["failures"] == own["failures"] == 0 and ratio is not None and 0.9 <= ratio <= 1.1
        ),
    }
    atomic_write_json(results / "loadtest-host-vs-own.json", summary)
    rows = [
        f"| {name} | {r['requests']} | {r['failures']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |"
        for name, r in (
            ("--host (server started separately)", summary["external"]),
            ("--artifact (server started by the tool)", summary["own"]),
        )
    ]
    atomic_write_text(
        results / "loadtest-host-vs-own.md",
        "\n".join(
            [
                "# loadtest run --host against a running server vs a server of its own",
                "",
                provenance_line(source),
                "",
                "| run | requests | failures | req/s | p50 ms | p95 ms |",
                "|---|---:|---:|---:|---:|---:|",
                *rows,
                "",
                f"p50 external / own: {ratio:.3f}" if ratio else "p50 ratio: -",
                f"({users} users, {duration_s:g} s each, one after the other; target: {summary['target']})",
                "",
            ]
        ),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.loadtest_host", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--artifact", type=Path, required=True, help="artifact folder")
    parser.add_argument("--users", type=int, default=20, help="locust users (default 20)")
    parser.add_argument("--duration", default="60s", help="each run's length (default 60s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the traffic draws (default 0)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="report folder (default results/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    check_artifact(args.artifact)
    summary = compare(args.artifact, args.users, duration_arg(args.duration), args.results, args.seed)
    print((args.results / "loadtest-host-vs-own.md").read_text())
    return 0 if summary["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
