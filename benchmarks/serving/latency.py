"""Latency of the serving path, in-process and over HTTP; writes results/serve.json and .md.

    python -m benchmarks.serving.latency --artifact artifacts/ml100k-mf
    python -m benchmarks.serving.latency --artifact artifacts/ml100k-mf --synthetic-items 200000 --requests 300
    python -m benchmarks.serving.latency --artifact artifacts/ml100k-mf --synthetic-items 0      # ML-100K only
    python -m benchmarks.serving.latency --out results/serve-sparse --compare artifacts/synthetic-1m-sparse,\
        artifacts/synthetic-1m-small-dense,artifacts/synthetic-1m-dense    # issue 10: HTTP, side by side

Three measurements, in one run (timings are ratios on a shared machine; the machine is recorded):
1. in-process `Recommender.recommend` (search + seen filtering + id mapping, no HTTP) for one
   query and batches of 32 and 256, on the given artifact;
2. the same on a synthetic catalogue (default 1M items x 64, random vectors, an index built with
   `export.index.ItemIndex.build`, no training);
3. HTTP p50/p99 of POST /recommend against POST /ping (a BentoML endpoint returning a constant)
   on one server, requests interleaved, so BentoML's own cost is visible: the target is a
   /recommend p50 within 1.3x of /ping's on ML-100K.

With ``--compare A,B,...`` (issue 10): one server per artifact, all started first, then
POST /recommend sent to each in turn, round after round (so load on the shared machine falls on
all alike); p50/p99 per artifact, each artifact's /info and index (kind, layout, bytes, non-zeros)
and the p50 ratios against the artifact whose name ends in ``small-dense`` (target: sparse <= 1.2x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks import harness
from benchmarks.harness import provenance_line
from common.io import atomic_write_text
from common.paths import REPO_ROOT, repo_relative
from common.timing import percentiles, time_calls
from serving.config import thread_env
from serving.process import ServerProcess, free_port, serving_command, serving_env
from serving.recommender import Query, Recommender

logger = logging.getLogger("sparserec.benchmarks.serving.latency")

TARGET_RATIO = 1.3
BATCH_SIZES = (1, 32, 256)


def bench_in_process(
    name: str, model: Recommender, calls: int, budget_s: float, k: int, seed: int
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    user_ids = list(model.user_index)
    rows = []
    for batch_size in BATCH_SIZES:

        def queries(size: int = batch_size) -> list[Query]:  # random known users, made outside the timing
            return [Query(user_ids[i], k, True) for i in rng.integers(0, len(user_ids), size)]

        most = calls if batch_size == 1 else max(3, calls // 4)
        times = time_calls(
            model.recommend, queries, warmup=2, min_calls=min(3, most), max_calls=most, min_time_s=budget_s
        )
        row = {
            "catalogue": name,
            "n_items": model.n_items,
            "batch_size": batch_size,
            "k": k,
            **percentiles(times),
            "per_query_p50_ms": round(float(np.percentile(times, 50)) * 1e3 / batch_size, 4),
        }
        logger.info(
            "%s batch %d: p50 %.3f ms  p99 %.3f ms (%d calls)", name, batch_size, row["p50_ms"], row["p99_ms"], row["n"]
        )
        rows.append(row)
    return rows


def synthetic_model(
    n_items: int, dim: int, n_users: int, seen_per_user: int, index_kind: str, seed: int
) -> tuple[Recommender, float]:
    """A random catalogue served like an artifact; returns the model and the index build seconds."""
    from export.index import ItemIndex
    from serving.backends import FaissSearch

    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)
    users = rng.standard_normal((n_users, dim), dtype=np.float32)
    cols = rng.integers(0, n_items, (n_users, seen_per_user))
    seen = sp.csr_matrix(
        (np.ones(cols.size, np.float32), (np.repeat(np.arange(n_users), seen_per_user), cols.ravel())),
        shape=(n_users, n_items),
    )
    seen.data[:] = 1
    popularity = np.asarray(seen.sum(axis=0)).ravel().astype(np.int64)
    start = time.perf_counter()
    index = ItemIndex.build(index_kind, items)
    build_s = time.perf_counter() - start
    model = Recommender(
        [str(u) for u in range(n_users)], [str(i) for i in range(n_items)], users, seen, popularity, FaissSearch(index)
    )
    return model, build_s


def bench_http(artifact: Path, requests: int, threads: int, k: int, seed: int) -> dict[str, Any]:
    """p50/p99 of /ping, /recommend and /recommend_batch (32) on one server, interleaved."""
    import httpx

    from export.artifact import load_artifact

    user_ids = load_artifact(artifact, verify=False).user_ids
    port = free_port()
    server = ServerProcess(
        serving_command(artifact, port, threads=threads, workers=1), serving_env(**thread_env(threads)), port
    )
    rng = np.random.default_rng(seed)
    try:
        started = time.perf_counter()
        server.wait_ready(120)
        startup_s = time.perf_counter() - started
        with httpx.Client(base_url=server.url, timeout=60) as client:

            def one() -> dict[str, Any]:
                return {"user_id": user_ids[rng.integers(len(user_ids))], "k": k, "exclude_seen": True}

            calls = {
                "/ping": lambda: client.post("/ping", json={}),
                "/recommend": lambda: client.post("/recommend", json=one()),
                "/recommend_batch (32)": lambda: client.post(
                    "/recommend_batch", json={"queries": [one() for _ in range(32)]}
                ),
            }
            times: dict[str, list[float]] = {name: [] for name in calls}
            for round_ in range(requests + 50):
                for name, call in calls.items():
                    start = time.perf_counter()
                    response = call()
                    elapsed = time.perf_counter() - start
                    if response.status_code != 200:
                        raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.text[:300]}")
                    if round_ >= 50:  # the first rounds warm up connections and caches
                        times[name].append(elapsed)
            info = client.get("/info").json()
    finally:
        server.stop()
    result = {name: percentiles(t) for name, t in times.items()}
    ratio = result["/recommend"]["p50_ms"] / result["/ping"]["p50_ms"]
    return {
        "endpoints": result,
        "recommend_over_ping_p50": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
        "server_startup_s": round(startup_s, 2),
        "server_threads": threads,
        "serving": info.get("serving"),
    }


COMPARE_TARGET = 1.2  # issue 10: /recommend p50 of the sparse artifact <= 1.2x the small-dense one's


def bench_http_compare(artifacts: list[Path], requests: int, threads: int, k: int, seed: int) -> dict[str, Any]:
    """/recommend p50/p99 of several artifacts' servers, requests interleaved across them."""
    import httpx

    from export.artifact import load_artifact

    env = serving_env(**thread_env(threads))
    manifests = {path.name: load_artifact(path, verify=False) for path in artifacts}
    user_ids = {name: artifact.user_ids for name, artifact in manifests.items()}
    manifests = {name: artifact.manifest for name, artifact in manifests.items()}
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {path.name: [] for path in artifacts}
    servers: dict[str, ServerProcess] = {}
    startup: dict[str, float] = {}
    infos: dict[str, Any] = {}
    try:
        for path in artifacts:  # all up before any timing
            port = free_port()
            servers[path.name] = ServerProcess(serving_command(path, port, threads=threads, workers=1), env, port)
        for name, server in servers.items():
            started = time.perf_counter()
            server.wait_ready(900)
            startup[name] = round(time.perf_counter() - started, 2)
        clients = {name: httpx.Client(base_url=server.url, timeout=120) for name, server in servers.items()}
        try:
            for round_ in range(requests + 20):
                for name, client in clients.items():
                    ids = user_ids[name]
                    body = {"user_id": ids[rng.integers(len(ids))], "k": k, "exclude_seen": True}
                    start = time.perf_counter()
                    response = client.post("/recommend", json=body)
                    elapsed = time.perf_counter() - start
                    if response.status_code != 200:
                        raise RuntimeError(f"{name} /recommend: HTTP {response.status_code}: {response.text[:300]}")
                    if round_ >= 20:  # warm-up rounds
                        times[name].append(elapsed)
            infos = {name: client.get("/info").json() for name, client in clients.items()}
        finally:
            for client in clients.values():
                client.close()
    finally:
        for server in servers.values():
            server.stop()
    rows = {}
    for path in artifacts:
        manifest = manifests[path.name]
        index = manifest.index
        rows[path.name] = {
            "artifact": repo_relative(path),
            **percentiles(times[path.name]),
            "startup_s": startup.get(path.name),
            "n_items": manifest.n_items,
            "dim": manifest.dim,
            "nnz": manifest.nnz,
            "index": index.kind,
            "index_layout": index.layout,
            "index_bytes": index.bytes or (manifest.bytes or {}).get("index"),
            "info": infos.get(path.name, {}),
        }
    base = next((name for name in rows if name.endswith("small-dense")), None)
    if base:
        for row in rows.values():
            row["p50_over_small_dense"] = round(row["p50_ms"] / rows[base]["p50_ms"], 3)
    sparse = next((name for name in rows if name.endswith("-sparse")), None)
    verdict = None
    if base and sparse:
        verdict = {
            "sparse": sparse,
            "small_dense": base,
            "ratio": rows[sparse]["p50_over_small_dense"],
            "target": COMPARE_TARGET,
            "met": bool(rows[sparse]["p50_over_small_dense"] <= COMPARE_TARGET),
        }
    return {"rows": rows, "requests": requests, "threads": threads, "k": k, "target": verdict}


def markdown_compare(report: dict[str, Any]) -> str:

    compare = report["compare"]
    lines = [
        "# HTTP /recommend: sparse artifact beside small-dense and dense (issue 10)",
        "",
        provenance_line(report["provenance"]),
        "",
        f"One server per artifact (one worker, {compare['threads']} OpenMP thread(s)), all running together; "
        f"{compare['requests']} POST /recommend per artifact (k = {compare['k']}, exclude_seen = true), sent "
        "to each server in turn round after round, after 20 warm-up rounds; client and servers on the same "
        "shared machine. Artifacts: `make synthetic-1m` (random values; sparse: trained-like prefix masks).",
        "",
        "| artifact | items | dim | nnz | index | layout | index bytes | p50 ms | p99 ms | p50 / small-dense |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in compare["rows"].items():
        nbytes = row.get("index_bytes")
        lines.append(
            f"| {name} | {row['n_items']:,} | {row['dim']} | {row['nnz']:,} | {row['index']} | "
            f"{row.get('index_layout') or '-'} | {f'{nbytes / 2**20:.1f} MiB' if nbytes else '-'} | "
            f"{row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row.get('p50_over_small_dense', '-')} |"
        )
    target = compare.get("target")
    if target:
        lines += [
            "",
            f"Sparse /recommend p50 / small-dense p50 = **{target['ratio']:.2f}x** "
            f"({'meets' if target['met'] else 'misses'} the {target['target']}x target).",
        ]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    import faiss

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Serving latency ({report['date']})",
        "",
        provenance_line(report["provenance"]),
        "",
        f"Machine: {report['machine']['processor']}, {report['machine']['cpu_count']} CPUs, "
        f"load {report['machine']['load_avg_1m']} at start; {report['threads']} OpenMP thread(s); "
        f"k = {report['k']}, exclude_seen = true.",
        "",
        "## In-process (`Recommender.recommend`: search, seen filtering, ids)",
        "",
        "| catalogue | items | batch | p50 ms | p99 ms | p50 ms / query | calls |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["in_process"]:
        lines.append(
            f"| {row['catalogue']} | {row['n_items']:,} | {row['batch_size']} | {row['p50_ms']:.3f} | "
            f"{row['p99_ms']:.3f} | {row['per_query_p50_ms']:.4f} | {row['n']} |"
        )
    if report.get("synthetic"):
        syn = report["synthetic"]
        lines += [
            "",
            f"Synthetic: {syn['n_items']:,} random items x {syn['dim']}, {syn['index']} index "
            f"(built in {syn['index_build_s']:.1f} s), {syn['n_users']:,} users with "
            f"{syn['seen_per_user']} seen items each.",
        ]
    if report.get("http"):
        http = report["http"]
        lines += [
            "",
            f"## HTTP, one worker ({report['artifact_name']})",
            "",
            "| endpoint | p50 ms | p99 ms | requests |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, row in http["endpoints"].items():
            lines.append(f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['n']} |")
        verdict = "meets" if http["meets_target"] else "misses"
        lines += [
            "",
            f"/recommend p50 / /ping p50 = **{http['recommend_over_ping_p50']:.2f}x** ({verdict} the "
            f"{http['target_ratio']}x target). Requests were sequential over one keep-alive "
            "connection, endpoints interleaved, client and server on the same machine; a lone "
            "/recommend is answered without the batching dispatcher (serving/service.py).",
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving.latency", description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, default=None, help="artifact folder (the ML-100K export)")
    parser.add_argument(
        "--compare",
        default="",
        help="comma-separated artifact folders: HTTP /recommend side by "
        "side (issue 10); only this is measured when given",
    )
    parser.add_argument("--synthetic-items", type=int, default=1_000_000, help="0 skips the synthetic catalogue")
    parser.add_argument("--synthetic-dim", type=int, default=64)
    parser.add_argument("--synthetic-users", type=int, default=10_000)
    parser.add_argument("--synthetic-seen", type=int, default=50, help="seen items per synthetic user")
    parser.add_argument("--synthetic-index", default="flat", help="index kind of the synthetic catalogue")
    parser.add_argument("--calls", type=int, default=400, help="in-process calls of one query (batches: a quarter)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds at most per in-process setting")
    parser.add_argument("--requests", type=int, default=500, help="HTTP requests per endpoint (0 skips HTTP)")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads, in-process and in the server")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "results" / "serve",
        help="output stem: writes STEM.json and STEM.md (default results/serve)",
    )
    harness.add_timing_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = harness.start()  # the load before any work
    outputs = [args.out.with_suffix(".json"), args.out.with_suffix(".md")]
    try:
        harness.check_start(source, outputs, allow_noisy=args.allow_noisy)
    except harness.NoisyMachine as exc:
        print(f"benchmarks.serving.latency: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    import faiss

    from export.artifact import load_artifact

    faiss.omp_set_num_threads(args.threads)
    if args.compare:
        return compare_main(args, source, outputs)
    if args.artifact is None:
        print("error: --artifact (or --compare) is needed", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "provenance": source,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "k": args.k,
        "artifact": repo_relative(args.artifact),
        "artifact_name": args.artifact.name,
        "in_process": [],
    }
    art = load_artifact(args.artifact)
    model = Recommender.from_artifact(art)
    report["in_process"] += bench_in_process(
        f"{args.artifact.name} ({art.model_kind}, {art.index_kind})", model, args.calls, args.budget, args.k, args.seed
    )
    del model
    if args.synthetic_items > 0:
        logger.info(
            "building a synthetic %d x %d %s index", args.synthetic_items, args.synthetic_dim, args.synthetic_index
        )
        model, build_s = synthetic_model(
            args.synthetic_items,
            args.synthetic_dim,
            args.synthetic_users,
            args.synthetic_seen,
            args.synthetic_index,
            args.seed,
        )
        report["synthetic"] = {
            "n_items": args.synthetic_items,
            "dim": args.synthetic_dim,
            "n_users": args.synthetic_users,
            "seen_per_user": args.synthetic_seen,
            "index": args.synthetic_index,
            "index_build_s": round(build_s, 2),
        }
        report["in_process"] += bench_in_process(
            f"synthetic {args.synthetic_items // 1000}k x {args.synthetic_dim} ({args.synthetic_index})",
            model,
            args.calls,
            args.budget,
            args.k,
            args.seed,
        )
        del model
    if args.requests > 0:
        report["http"] = bench_http(args.artifact, args.requests, args.threads, args.k, args.seed)
        logger.info(
            "HTTP: /recommend p50 %.3f ms, /ping p50 %.3f ms, ratio %.2f",
            report["http"]["endpoints"]["/recommend"]["p50_ms"],
            report["http"]["endpoints"]["/ping"]["p50_ms"],
            report["http"]["recommend_over_ping_p50"],
        )
    if not harness.may_write(source, outputs, allow_noisy=args.allow_noisy, prog="benchmarks.serving.latency"):
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(outputs[0], json.dumps(report, indent=2) + "\n")
    atomic_write_text(outputs[1], markdown(report))
    print(markdown(report))
    return 0


def compare_main(args: argparse.Namespace, source: dict[str, Any], outputs: list[Path]) -> int:
    paths = [Path(p.strip()) for p in args.compare.split(",") if p.strip()]
    missing = [str(p) for p in paths if not (p / "manifest.json").is_file()]
    if missing:
        print(
            f"error: not an artifact folder: {', '.join(missing)} (make synthetic-1m builds the 1M ones)",
            file=sys.stderr,
        )
        return 2
    report = {
        "provenance": source,
        "compare": bench_http_compare(paths, args.requests, args.threads, args.k, args.seed),
    }
    if not harness.may_write(source, outputs, allow_noisy=args.allow_noisy, prog="benchmarks.serving.latency"):
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(outputs[0], json.dumps(report, indent=2) + "\n")
    atomic_write_text(outputs[1], markdown_compare(report))
    print(markdown_compare(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
