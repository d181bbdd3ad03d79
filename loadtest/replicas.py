"""Resident memory of 1, 2 and 4 server workers on one artifact, index mapped vs read (issue 12).

    python -m loadtest.replicas --artifact artifacts/synthetic-1m      # make bench-replicas

For each worker count and each SPARSEREC_MMAP setting (1: the index files are mapped, so the
workers share one copy in the page cache; 0: each worker reads its own), it starts
`python -m serving --workers N --threads 1`, waits for /readyz, sends queries from several
threads so that every worker searches (touching every page of a flat index), then sums, over the
server's whole process tree (the BentoML arbiter and every worker), psutil's

- PSS (proportional set size: each shared page divided among the processes mapping it; the sum
  is the memory the tree really holds), the headline figure, and
- USS (pages only that process maps) and RSS (counts shared pages once per process) beside it.

"Added by each extra worker" is (PSS(N) - PSS(1)) / (N - 1), compared with the index file's bytes
(the target: <= 15% of them). Writes results/replicas.{json,md} with provenance.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from common.io import atomic_write_json, atomic_write_text
from common.provenance import provenance, provenance_line
from serving.process import REPO_ROOT, ServerProcess, free_port, serving_command, serving_env

RESULTS = REPO_ROOT / "results"


def tree_memory(pid: int) -> dict[str, Any]:
    """Summed PSS, USS and RSS (bytes) of a process and all its descendants, and the count."""
    root = psutil.Process(pid)
    procs = [root] + root.children(recursive=True)
    total = {"pss": 0, "uss": 0, "rss": 0, "processes": 0}
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total["pss"] += info.pss
        total["uss"] += info.uss
        total["rss"] += info.rss
        total["processes"] += 1
    return total


def _index_bytes(artifact: Path) -> int:
    manifest = json.loads((artifact / "manifest.json").read_text())
    entry = manifest["index"]
    names = sorted(entry["files"].values()) if entry["kind"] == "sparse" else [entry["file"]]
    return sum(int(manifest["files"][name]["bytes"]) for name in names)


def measure(artifact: Path, workers: int, mmap: bool, queries: int, timeout: float) -> dict[str, Any]:
    port = free_port()
    env = serving_env(SPARSEREC_MMAP="1" if mmap else "0", OMP_NUM_THREADS="1")
    server = ServerProcess(serving_command(artifact, port, threads=1, workers=workers) + ["--no-verify"], env, port)
    try:
        start = time.monotonic()
        server.wait_ready(timeout)
        ready_s = time.monotonic() - start
        users = json.loads((artifact / "user_ids.json").read_text())
        with httpx.Client(base_url=server.url, timeout=120) as client:
            def ask(i: int) -> int:
                return client.post("/recommend", json={"user_id": str(users[i % len(users)]), "k": 10}).status_code

            with cf.ThreadPoolExecutor(max(4, 2 * workers)) as pool:
                codes = list(pool.map(ask, range(queries)))
        if any(code != 200 for code in codes):
            raise RuntimeError(f"{sum(c != 200 for c in codes)} of {queries} queries failed")
        time.sleep(1.0)
        memory = tree_memory(server.process.pid)
    finally:
        server.stop()
    return {"workers": workers, "mmap": mmap, "ready_s": round(ready_s, 1), **memory}


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def render(report: dict[str, Any]) -> str:
    index = report["index_bytes"]
    lines = [provenance_line(report["provenance"]), "",
             f"# Replicas: memory of N workers on {report['artifact']} ({report['n_items']:,} items, "
             f"index {report['index_kind']}, {_mb(index)} MiB)", "",
             "Summed over the server's process tree (BentoML arbiter + workers). PSS divides each shared page "
             "among the processes mapping it; its sum is what the tree holds. RSS counts shared pages once per "
             "process. Added per extra worker = (PSS(N) - PSS(1)) / (N - 1).", "",
             "| index | workers | processes | PSS MiB | USS MiB | RSS MiB | added per extra worker, MiB | of index bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        added = row.get("added_per_extra_worker")
        lines.append(f"| {'mapped' if row['mmap'] else 'read'} | {row['workers']} | {row['processes']} | "
                     f"{_mb(row['pss'])} | {_mb(row['uss'])} | {_mb(row['rss'])} | "
                     f"{_mb(added) if added is not None else '-'} | "
                     f"{f'{100 * added / index:.0f}%' if added is not None else '-'} |")
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--queries", type=int, default=200, help="queries sent before measuring (default 200)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for /readyz")
    parser.add_argument("--out", type=Path, default=RESULTS / "replicas")
    args = parser.parse_args(argv)
    manifest = json.loads((args.artifact / "manifest.json").read_text())
    rows = []
    for mmap in (True, False):
        base = None
        for workers in args.workers:
            print(f"replicas: {workers} worker(s), index {'mapped' if mmap else 'read'} ...", file=sys.stderr, flush=True)
            row = measure(args.artifact, workers, mmap, args.queries, args.timeout)
            if workers == 1:
                base = row
            elif base is not None:
                row["added_per_extra_worker"] = (row["pss"] - base["pss"]) / (workers - 1)
            rows.append(row)
            print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
    report = {"provenance": provenance(note="shared 2-core machine, other engineers' jobs running"),
              "artifact": str(args.artifact), "n_items": manifest["n_items"], "n_users": manifest["n_users"],
              "dim": manifest["dim"], "index_kind": manifest["index"]["kind"],
              "index_bytes": _index_bytes(args.artifact), "rows": rows,
              "note": "Memory is psutil's memory_full_info (Linux /proc/PID/smaps_rollup) read once after the "
                      "queries; the figures move by a few MiB between runs on this shared machine."}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), report)
    atomic_write_text(args.out.with_suffix(".md"), render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
