"""Serve an artifact, send a few queries over HTTP, print the answers, stop (the tail of `make demo`).

    python -m benchmarks.serving.demo --artifact artifacts/demo-lightgcn
    python -m benchmarks.serving.demo --artifact artifacts/demo-lightgcn --compare artifacts/demo-lightgcn-small artifacts/demo-lightgcn-dsl

Starts ``python -m serving`` on a free port of 127.0.0.1, waits for /readyz, queries
/recommend (a known user, an unknown one), /recommend_batch and /info, then stops the server
by its PID. With ``--compare`` it does the same for more artifacts and prints them side by side:
test NDCG@20 of the served vectors, the served index (kind, layout, bytes) and /recommend p50.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

from common.paths import REPO_ROOT
from export.artifact import Manifest, read_manifest
from serving.process import ServerProcess, free_port, serving_command, serving_env

EXAMPLE_QUERY = json.loads((REPO_ROOT / "serving" / "example_query.json").read_text())


def query_server(artifact: Path) -> dict:
    """Start a server on ``artifact``, send the demo queries, stop it; returns what it answered."""
    port = free_port()
    started = time.perf_counter()
    server = ServerProcess(serving_command(artifact, port), serving_env(SPARSEREC_ARTIFACT=str(artifact)), port=port)
    try:
        server.wait_ready(timeout=120)
        ready_s = time.perf_counter() - started
        with httpx.Client(base_url=server.url, timeout=30) as client:
            info = client.get("/info").json()
            known = client.post("/recommend", json=EXAMPLE_QUERY)
            unknown = client.post("/recommend", json={**EXAMPLE_QUERY, "user_id": "no-such-user"})
            batch_queries = [{"user_id": user, "k": 5, "exclude_seen": True} for user in ("1", "2", "3")]
            batch = client.post("/recommend_batch", json={"queries": batch_queries})
            bad = client.post("/recommend", json={**EXAMPLE_QUERY, "k": 0})
            timings = []
            for _ in range(50):
                start = time.perf_counter()
                client.post("/recommend", json=EXAMPLE_QUERY).raise_for_status()
                timings.append((time.perf_counter() - start) * 1000)
    finally:
        server.stop()
    timings.sort()
    return {
        "artifact": str(artifact),
        "ready_s": ready_s,
        "info": info,
        "known": known.json(),
        "unknown": unknown.json(),
        "batch_status": batch.status_code,
        "batch": batch.json(),
        "bad_status": bad.status_code,
        "bad": bad.text[:200],
        "p50_ms": timings[len(timings) // 2],
    }


def describe(result: dict) -> str:
    info = result["info"]
    lines = [f"artifact {result['artifact']}: ready in {result['ready_s']:.1f} s"]
    lines.append("  /info: " + json.dumps({k: info[k] for k in list(info)[:8]}, default=str)[:300])
    known = result["known"]
    items = ", ".join(f"{it['item_id']} ({it['score']:.2f})" for it in known["items"][:5])
    lines.append(f"  POST /recommend {json.dumps(EXAMPLE_QUERY)}")
    lines.append(f"    -> top {len(known['items'])}, fallback={known['fallback']}: {items}, ...")
    unknown = result["unknown"]
    lines.append(
        f"  unknown user -> fallback={unknown['fallback']}: "
        + ", ".join(it["item_id"] for it in unknown["items"][:5])
        + ", ..."
    )
    lines.append(f"  POST /recommend_batch (3 users) -> HTTP {result['batch_status']}")
    lines.append(f"  k=0 -> HTTP {result['bad_status']}: {result['bad'][:120]}")
    lines.append(f"  /recommend p50 over 50 sequential calls: {result['p50_ms']:.2f} ms")
    return "\n".join(lines)


def served_index(manifest: Manifest) -> tuple[str, int]:
    """(``kind`` or ``kind layout``, bytes of the served item index files) from a manifest."""
    index = manifest.index
    kind = index.kind + (f" {index.layout}" if index.layout else "")
    nbytes = (manifest.bytes or {}).get("index")
    return kind, int(nbytes if nbytes is not None else (index.bytes or 0))


def report_table(results: list[dict]) -> str:
    """Dense, small-dense and sparse side by side: served quality, sizes from the manifest, latency.

    Test NDCG/Recall@20 are those of the served vectors (the manifest's exact full ranking over the
    test split, train and valid excluded), else the training run's figures.
    """
    header = (
        "| artifact | model | density | dim | non-zeros | table bytes | served index | index bytes | "
        "artifact bytes | test NDCG@20 | test Recall@20 | /recommend p50 |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        manifest = read_manifest(Path(result["artifact"]))
        test = (manifest.quality or {}).get("exact") or manifest.training.metrics.get("test", {})
        kind, index_bytes = served_index(manifest)
        lines.append(
            f"| {Path(result['artifact']).name} | {manifest.model_kind} | {manifest.density:g} | "
            f"{manifest.dim} | {manifest.nnz:,} | {manifest.table_bytes:,} | {kind} | "
            f"{index_bytes:,} | {manifest.total_bytes:,} | "
            f"{test.get('ndcg@20', float('nan')):.4f} | {test.get('recall@20', float('nan')):.4f} | "
            f"{result['p50_ms']:.2f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="*",
        default=[],
        help="more artifacts to serve and query the same way (e.g. small-dense, then DSL)",
    )
    args = parser.parse_args(argv)
    results = []
    for artifact in [args.artifact, *args.compare]:
        results.append(query_server(artifact))
        print(describe(results[-1]), flush=True)
    print("\n" + report_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
