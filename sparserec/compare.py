"""``sparserec compare ART [ART ...]``: the user's artifacts side by side, and which are worth serving.

    sparserec compare artifacts/demo-lightgcn artifacts/demo-lightgcn-small artifacts/demo-lightgcn-dsl
    sparserec compare artifacts/a artifacts/b --out reports/ab --http --locust 20
    sparserec compare artifacts/a artifacts/b --no-latency --data ml-100k     # bytes and quality only
    make compare ARTS="artifacts/a artifacts/b" OUT=reports/ab

One row per artifact (any model, layout, index kind or value dtype): what it is (model, table
layout, index, values, non-zeros, dim or per-row lengths); the bytes a serving worker holds to
answer, mapped and read apart (``serving.footprint``), and the artifact's bytes on disk; test
quality (the manifest's exact figures, or recomputed on ``--data`` through the served vectors);
in-process latency through the real ``Recommender`` (seen items excluded) per batch size and
thread count; with ``--http`` the latency through a real server, with ``--locust USERS`` a load
test's requests per second and failures. The Pareto front (no other row has at least the quality
for at most the cost) is marked for served bytes and for batch-1 latency, and drawn in two plots.

Writes ``compare.md``, ``compare.json``, ``front-bytes.png`` and ``front-latency.png`` to ``--out``
(default ``reports/NAME``), nothing anywhere else. Timing refuses to start on a busy machine (1-minute
load above half the CPUs, ``common.provenance.busy_reason``) unless ``--allow-noisy``, which the
report then states; ``--no-latency`` times nothing. docs/compare.md explains every column.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from common.provenance import busy_reason, cpu_count, load_average, provenance, provenance_line
from common.timing import percentiles, time_calls

log = logging.getLogger("sparserec.compare")

QUALITY_K = 20
DEFAULT_BATCH_SIZES = (1, 32, 256)


# ---------------------------------------------------------------------------- the front
def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Which ``(quality, cost)`` points no other point beats: higher quality is better, lower cost is.

    A point is beaten when another has quality >= and cost <=, one of them strictly. Equal points do
    not beat each other, so both stay on the front. A point missing either value is not on it.

    Args:
        points: ``[(quality, cost)]``, ``None`` where unknown.
    Returns:
        ``[bool]``, one per point, in order.
    """
    known = [(q, c) for q, c in points if q is not None and c is not None]
    out = []
    for quality, cost in points:
        if quality is None or cost is None:
            out.append(False)
            continue
        beaten = any(q >= quality and c <= cost and (q > quality or c < cost) for q, c in known)
        out.append(not beaten)
    return out


# ---------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """What ``compare`` measures and where it writes (the command-line flags, see ``build_parser``)."""

    artifacts: tuple[Path, ...]
    out: Path
    latency: bool = True
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    threads: tuple[int, ...] = (1,)
    k: int = 10
    min_time_s: float = 0.5
    max_calls: int = 200
    http: bool = False
    requests: int = 200
    locust_users: int = 0
    locust_duration_s: float = 20.0
    data: str | None = None
    mmap: bool = True
    allow_noisy: bool = False
    seed: int = 0
    progress: bool = True

    @property
    def times_anything(self) -> bool:
        return self.latency or self.http or self.locust_users > 0


class CompareError(ValueError):
    """A bad argument or an unreadable artifact; the message names it (exit status 2)."""


# ---------------------------------------------------------------------------- one artifact
def artifact_facts(art: Any) -> dict[str, Any]:
    """What an artifact is: model, layouts, index, values, non-zeros, dim or row lengths, bytes on disk,
    and its recorded quality (the reader's accessors, and :func:`manifest_records`)."""
    summary = art.summary()
    index = summary["index"]
    layouts = sorted(set(summary["table_layouts"].values()))
    per_table = [_row_lengths(art.stored_table(name)) for name in summary["table_layouts"]]
    lengths = np.concatenate(per_table) if per_table else np.zeros(0, dtype=np.int64)  # pop: no tables
    full = not len(lengths) or int(lengths.min()) == art.dim
    return {
        "model": art.model_kind, "layout": "+".join(layouts) or "-", "index": index["kind"],
        "index_layout": index.get("layout"), "value_dtype": art.value_dtype, "nnz": summary["nnz"],
        "density": summary["density"], "dim": art.dim, "n_users": art.n_users, "n_items": art.n_items,
        "row_lengths": {"min": int(lengths.min()) if len(lengths) else 0,
                        "median": float(np.median(lengths)) if len(lengths) else 0.0,
                        "max": int(lengths.max()) if len(lengths) else 0, "all_full": full},
        "disk_bytes": int(summary["bytes"]["total"]),
        "index_recall@20_vs_flat": index.get("recall@20_vs_flat"),
        **manifest_records(art),
    }


def manifest_records(art: Any) -> dict[str, Any]:
    """The manifest's records that :meth:`Artifact.summary` leaves out: the export's exact test quality,
    the training run's test metrics and data config, the FAISS index file's bytes."""
    manifest = art.manifest
    index = manifest.index
    return {"manifest_quality": (manifest.quality or {}).get("exact"),
            "training_test": manifest.training.metrics.get("test"),
            "training_data": (manifest.training.config or {}).get("data"),
            "index_file_bytes": manifest.files[index.file].bytes if index.file is not None else None}


def _row_lengths(table: Any) -> np.ndarray:
    """Stored entries of each row of a table (prefix: its lengths; csr: row pointer differences)."""
    if getattr(table, "layout", None) == "prefix" or hasattr(table, "lengths"):
        return np.asarray(table.lengths, dtype=np.int64)
    return np.diff(np.asarray(table.indptr, dtype=np.int64))


def lengths_text(facts: dict[str, Any]) -> str:
    """``dim 64`` for full rows, else ``rows 3-64, median 16``."""
    lengths = facts["row_lengths"]
    if lengths["all_full"]:
        return f"dim {facts['dim']}"
    return f"rows {lengths['min']}-{lengths['max']}, median {lengths['median']:g} (dim {facts['dim']})"


def manifest_quality(facts: dict[str, Any]) -> dict[str, Any]:
    """Test NDCG@20 / Recall@20 of the served vectors as the manifest records them (exact, at export),
    else the training run's test figures; ``None`` values where neither has them."""
    for source, metrics in (("manifest (export, test, exact)", facts["manifest_quality"]),
                            ("training run (test)", facts["training_test"])):
        if metrics and f"ndcg@{QUALITY_K}" in metrics:
            return {"ndcg@20": float(metrics[f"ndcg@{QUALITY_K}"]), "recall@20": metrics.get(f"recall@{QUALITY_K}"),
                    "source": source}
    return {"ndcg@20": None, "recall@20": None, "source": "none recorded (pass --data)"}


class DataQuality:
    """Test quality recomputed on ``--data`` with each artifact's own split rules (loaded once per rules)."""

    def __init__(self, data: str) -> None:
        self.data = data
        self._datasets: dict[str, Any] = {}

    def dataset(self, training_data: dict[str, Any] | None) -> Any:
        if not training_data:
            raise CompareError("--data: the artifact records no training config, so its split rules are unknown")
        from train.config import ConfigError, TrainConfig
        from train.data import DataError, load_dataset

        try:
            config = dataclasses.replace(TrainConfig.from_dict({"data": training_data}).data, name=self.data)
            key = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
            if key not in self._datasets:
                self._datasets[key] = load_dataset(config, progress=False)
        except (ConfigError, DataError) as exc:
            raise CompareError(f"--data {self.data}: {exc}") from exc
        return self._datasets[key]

    def __call__(self, art: Any, facts: dict[str, Any]) -> dict[str, Any]:
        """Full ranking over every item through the served vectors, train and valid positives masked."""
        import scipy.sparse as sp

        from export.quality import recall_ndcg_at_k, topk_by_scores

        dataset = self.dataset(facts["training_data"])
        user_rows = _rows_in(dataset.user_ids, art.user_index())
        item_rows = _rows_in(dataset.item_ids, art.item_index())
        # positives on items the artifact does not know get columns past its catalogue: never ranked, still counted
        unknown_items = np.flatnonzero(item_rows < 0)
        item_cols = item_rows.copy()
        item_cols[unknown_items] = art.n_items + np.arange(len(unknown_items))
        n_cols = art.n_items + len(unknown_items)

        def in_artifact(matrix: sp.csr_matrix) -> sp.csr_matrix:
            coo = matrix.tocoo()
            keep = user_rows[coo.row] >= 0
            return sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (user_rows[coo.row[keep]],
                                  item_cols[coo.col[keep]])), shape=(art.n_users, n_cols))

        test = in_artifact(dataset.csr("test"))
        known = in_artifact(dataset.csr("train") + dataset.csr("valid"))[:, : art.n_items]
        users = np.flatnonzero(np.diff(test.indptr) > 0)
        _, ranked = topk_by_scores(art.user_vectors()[users], art.item_vectors(), QUALITY_K, exclude=known[users])
        metrics = recall_ndcg_at_k(ranked, test[users], QUALITY_K)
        return {"ndcg@20": metrics[f"ndcg@{QUALITY_K}"], "recall@20": metrics[f"recall@{QUALITY_K}"],
                "source": f"--data {self.data} (test, recomputed)", "n_users": metrics["n_users"],
                "users_not_in_artifact": int((user_rows < 0).sum()), "items_not_in_artifact": int(len(unknown_items))}


def _rows_in(external_ids: Sequence[str], index: dict[str, int]) -> np.ndarray:
    """Row of each external id in an artifact's id map, -1 where it has none."""
    return np.array([index.get(str(i), -1) for i in external_ids], dtype=np.int64)


def in_process_latency(model: Any, options: CompareOptions) -> list[dict[str, Any]]:
    """p50/p99 of ``Recommender.recommend`` (seen items excluded) per thread count and batch size."""
    from serving.backends import set_cpu_threads
    from serving.recommender import Query

    user_ids = list(model.user_index)
    rows = []
    try:
        for threads in options.threads:
            set_cpu_threads(threads)  # FAISS's OpenMP pool: what SPARSEREC_THREADS sets in a server
            for batch_size in options.batch_sizes:
                rng = np.random.default_rng(options.seed)

                def queries(size: int = batch_size) -> list[Query]:  # random known users, made outside the timing
                    return [Query(user_ids[i], options.k, True) for i in rng.integers(0, len(user_ids), size)]

                times = time_calls(model.recommend, queries, warmup=2, min_calls=min(5, options.max_calls),
                                   max_calls=options.max_calls, min_time_s=options.min_time_s)
                rows.append({"threads": threads, "batch_size": batch_size, **percentiles(times)})
    finally:
        set_cpu_threads(cpu_count())
    return rows


def http_latency(path: Path, user_ids: list[str], options: CompareOptions, log_dir: Path) -> dict[str, Any]:
    """p50/p99 of sequential POST /recommend through a real server (started on a free port, stopped by PID)."""
    import httpx

    from serving.config import thread_env
    from serving.process import ServerProcess, free_port, serving_command, serving_env

    threads = options.threads[0]
    port = free_port()
    server = ServerProcess(serving_command(path.resolve(), port, threads=threads, workers=1),
                           serving_env(**thread_env(threads), SPARSEREC_MMAP=str(int(options.mmap))), port,
                           log_path=log_dir / f"{path.name}.server.log")
    rng = np.random.default_rng(options.seed)
    warmup = 20
    times = []
    try:
        started = time.perf_counter()
        server.wait_ready(300)
        startup_s = time.perf_counter() - started
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for call in range(warmup + options.requests):
                body = {"user_id": user_ids[int(rng.integers(len(user_ids)))], "k": options.k, "exclude_seen": True}
                start = time.perf_counter()
                response = client.post("/recommend", json=body)
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    raise RuntimeError(f"{path.name}: POST /recommend answered {response.status_code}: "
                                       f"{response.text[:300]}")
                if call >= warmup:
                    times.append(elapsed)
    finally:
        server.stop()
    return {**percentiles(times), "server_threads": threads, "startup_s": round(startup_s, 2),
            "warmup_requests": warmup}


def locust_load(path: Path, name: str, options: CompareOptions, folder: Path) -> dict[str, Any]:
    """A ``python -m loadtest run`` subprocess on this artifact: its requests per second and failures."""
    from serving.process import REPO_ROOT, serving_env

    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "loadtest", "run", "--artifact", str(path.resolve()),
               "--users", str(options.locust_users), "--duration", f"{options.locust_duration_s:g}s",
               "--server-threads", str(options.threads[0]), "--seed", str(options.seed),
               "--results", str(folder.resolve()), "--name", name]
    done = subprocess.run(command, cwd=REPO_ROOT, env=serving_env(), capture_output=True, text=True,
                          timeout=options.locust_duration_s + 600)
    report = folder / f"loadtest-{name}.json"
    if done.returncode == 2 or not report.is_file():
        raise RuntimeError(f"{name}: python -m loadtest run failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    result = json.loads(report.read_text())
    return {"users": options.locust_users, "duration_s": options.locust_duration_s, "rps": result["rps"],
            "requests": result["requests"], "failures": result["failures"], "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "report": str(report)}


# ---------------------------------------------------------------------------- all artifacts
def _labels(paths: Sequence[Path]) -> list[str]:
    """Row labels: folder names, or the full paths where two folders share a name."""
    names = [p.name for p in paths]
    return [str(p) if names.count(p.name) > 1 else p.name for p in paths]


def latency_key(options: CompareOptions) -> tuple[int, int]:
    """``(threads, batch size)`` of the latency front: batch 1 (else the smallest) at the first thread count."""
    return options.threads[0], min(options.batch_sizes)


def compare(options: CompareOptions) -> dict[str, Any]:
    """Measure every artifact and mark the fronts; returns the report (``write_report`` writes it)."""
    from tqdm.auto import tqdm

    from export.artifact import ArtifactError, load_artifact
    from serving.footprint import served_bytes
    from serving.recommender import Recommender

    arts: list[Any] = []
    for path in options.artifacts:
        try:
            arts.append(load_artifact(path))
        except ArtifactError as exc:
            raise CompareError(f"{path}: {exc}") from exc
    start_load, cpus = load_average(), cpu_count()
    report: dict[str, Any] = {
        "provenance": provenance(),
        "settings": {**{key: value for key, value in dataclasses.asdict(options).items() if key != "progress"},
                     "artifacts": [str(p) for p in options.artifacts], "out": str(options.out)},
        "timing": {"cpus": cpus, "load_avg_1m_start": start_load, "busy_at_start": busy_reason(start_load, cpus),
                   "allow_noisy": options.allow_noisy, "timed": options.times_anything},
        "rows": [],
    }
    data_quality = DataQuality(options.data) if options.data else None
    stages = 3 + options.latency + options.http + (options.locust_users > 0)
    bar = tqdm(total=len(arts) * stages, desc="compare", unit="step", disable=not options.progress)
    try:
        for position, (label, path) in enumerate(zip(_labels(options.artifacts), options.artifacts)):
            art, arts[position] = arts[position], None  # dropped after its row: its caches go with it

            def stage(what: str) -> None:
                bar.set_postfix_str(f"{label}: {what}")

            stage("load")
            facts = artifact_facts(art)
            model = Recommender.from_artifact(art, mmap=options.mmap)  # as a server worker loads it
            bar.update()
            stage("served bytes")
            footprint = served_bytes(model, facts["index_file_bytes"])
            bar.update()
            stage("quality")
            quality = data_quality(art, facts) if data_quality else manifest_quality(facts)
            quality["index_recall@20_vs_flat"] = facts["index_recall@20_vs_flat"]
            bar.update()
            row = {"name": label, "path": str(path), **{k: v for k, v in facts.items() if k not in (
                "manifest_quality", "training_test", "training_data", "index_recall@20_vs_flat", "index_file_bytes")},
                "served_bytes": footprint, "quality": quality}
            if options.latency:
                stage("in-process latency")
                row["latency"] = in_process_latency(model, options)
                bar.update()
            if options.http:
                stage("HTTP latency")
                row["http"] = _or_error(lambda: http_latency(path, list(model.user_index), options,  # noqa: F821 (run at once, before the del)
                                                             options.out / "http"), label, "HTTP")
                bar.update()
            if options.locust_users:
                stage(f"locust, {options.locust_users} users")
                row["locust"] = _or_error(lambda: locust_load(path, re.sub(r"[^A-Za-z0-9_.-]", "_", label), options,
                                                              options.out / "locust"), label, "locust")
                bar.update()
            report["rows"].append(row)
            del model, art
    finally:
        bar.close()
    end_load = load_average()
    report["timing"].update(load_avg_1m_end=end_load, busy_at_end=busy_reason(end_load, cpus))
    report["timing"]["noisy"] = bool(options.times_anything and (report["timing"]["busy_at_start"]
                                                                  or report["timing"]["busy_at_end"]))
    mark_fronts(report["rows"], latency_key(options))
    return report


def _or_error(measure, label: str, what: str) -> dict[str, Any]:
    """``measure()``, or ``{"error": ...}`` when its server or load test failed (the other rows still run)."""
    from serving.process import ServerFailed

    try:
        return measure()
    except (ServerFailed, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.error("%s: %s failed: %s", label, what, exc)
        return {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}


def errors(report: dict[str, Any]) -> list[str]:
    """``NAME HTTP|locust: message`` for every measurement that failed."""
    return [f"{row['name']} {part}: {row[part]['error'].splitlines()[0]}" for row in report["rows"]
            for part in ("http", "locust") if isinstance(row.get(part), dict) and "error" in row[part]]


def batch1_p50(row: dict[str, Any], key: tuple[int, int]) -> float | None:
    """The row's in-process p50 at ``key = (threads, batch size)``, ``None`` where not timed."""
    for entry in row.get("latency", []):
        if (entry["threads"], entry["batch_size"]) == key:
            return entry["p50_ms"]
    return None


def mark_fronts(rows: list[dict[str, Any]], key: tuple[int, int]) -> None:
    """Set ``front_bytes`` and ``front_latency`` on every row (NDCG@20 against served bytes / p50 at ``key``)."""
    quality = [row["quality"]["ndcg@20"] for row in rows]
    on_bytes = pareto_front(list(zip(quality, [row["served_bytes"]["served"]["total"] for row in rows])))
    on_latency = pareto_front(list(zip(quality, [batch1_p50(row, key) for row in rows])))
    for row, by_bytes, by_latency in zip(rows, on_bytes, on_latency):
        row["front_bytes"] = by_bytes
        row["front_latency"] = by_latency if batch1_p50(row, key) is not None else None


# ---------------------------------------------------------------------------- report
def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(report: dict[str, Any]) -> str:
    """The one table, with how it was made and what the marks mean."""
    settings, timing, rows = report["settings"], report["timing"], report["rows"]
    key = (settings["threads"][0], min(settings["batch_sizes"]))
    latency_cols = [(t, b) for t in settings["threads"] for b in settings["batch_sizes"]] if settings["latency"] else []
    header = ["artifact", "model", "layout", "index", "values", "non-zeros", "dim / row lengths",
              "served (mapped + read)", "disk", f"NDCG@{QUALITY_K}", f"Recall@{QUALITY_K}"]
    header += [f"B={b} {t}T p50 / p99 ms" for t, b in latency_cols]
    if settings["http"]:
        header.append("HTTP p50 / p99 ms")
    if settings["locust_users"]:
        header.append(f"locust {settings['locust_users']} users: req/s (failures)")
    header.append("front")
    lines = [f"# sparserec compare: {len(rows)} artifact(s)", "", provenance_line(report["provenance"]), ""]
    if timing["timed"]:
        lines.append(f"Load average (1 min): {timing['load_avg_1m_start']} at start, {timing['load_avg_1m_end']} at "
                     f"end, {timing['cpus']} CPUs.")
        if timing["noisy"]:
            why = "; ".join(f"{when}: {r}" for when, r in (("at start", timing["busy_at_start"]),
                                                           ("at end", timing["busy_at_end"])) if r)
            lines += ["", f"**NOISY: timed on a busy machine ({why}), allowed by --allow-noisy. The timings below "
                          "are not figures to quote.**"]
        lines.append("")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        served = row["served_bytes"]["served"]
        index = row["index"] + (f" {row['index_layout']}" if row.get("index_layout") else "")
        cells = [row["name"], row["model"], row["layout"], index, row["value_dtype"], f"{row['nnz']:,}",
                 lengths_text(row),
                 f"{human_bytes(served['total'])} ({human_bytes(served['mapped'])} + {human_bytes(served['read'])})",
                 human_bytes(row["disk_bytes"]), _metric(row["quality"]["ndcg@20"]),
                 _metric(row["quality"]["recall@20"])]
        by_key = {(e["threads"], e["batch_size"]): e for e in row.get("latency", [])}
        cells += [f"{by_key[c]['p50_ms']:.3f} / {by_key[c]['p99_ms']:.3f}" if c in by_key else "-"
                  for c in latency_cols]
        if settings["http"]:
            http = row.get("http") or {}
            cells.append(f"{http['p50_ms']:.2f} / {http['p99_ms']:.2f}" if "p50_ms" in http
                         else "failed" if "error" in http else "-")
        if settings["locust_users"]:
            load = row.get("locust") or {}
            cells.append(f"{load['rps']:.1f} ({load['failures']})" if "rps" in load
                         else "failed" if "error" in load else "-")
        marks = [m for m, on in (("bytes", row["front_bytes"]), ("latency", row.get("front_latency"))) if on]
        cells.append(", ".join(marks) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    sources = sorted({row["quality"]["source"] for row in rows})
    lines += ["", f"Quality: {'; '.join(sources)}. Served: the item index, the user vectors and the id maps a "
                  f"server worker holds (SPARSEREC_MMAP={int(settings['mmap'])}); mapped parts are shared by every "
                  "worker on the machine, read parts are each worker's own (docs/compare.md)."]
    if latency_cols:
        lines.append(f"Latency: `Recommender.recommend` in-process, k = {settings['k']}, seen items excluded, "
                     f"random known users (seed {settings['seed']}); B = queries per call, T = FAISS threads.")
    if settings["http"]:
        lines.append(f"HTTP: `python -m serving`, one worker, {settings['threads'][0]} thread(s), "
                     f"{settings['requests']} sequential POST /recommend after 20 warm-up ones, client on the "
                     "same machine.")
    if settings["locust_users"]:
        lines.append(f"Locust: {settings['locust_users']} users for {settings['locust_duration_s']:g} s through "
                     "`python -m loadtest run` (its own reports under locust/).")
    lines.append(f"Front: no other row has at least its NDCG@{QUALITY_K} with at most its served bytes (`bytes`)"
                 + (f" or its B={key[1]} {key[0]}T p50 (`latency`)" if latency_cols else "") + "; equal rows share it.")
    return "\n".join(lines) + "\n"


def plot_front(rows: list[dict[str, Any]], costs: list[float | None], fronts: list[bool | None], xlabel: str,
               title: str) -> bytes | None:
    """PNG of NDCG@20 against one cost, the front drawn as a step line; ``None`` with nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(c, r["quality"]["ndcg@20"], r["name"], bool(f)) for r, c, f in zip(rows, costs, fronts)
              if c is not None and r["quality"]["ndcg@20"] is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for cost, quality, name, on in points:
        ax.scatter([cost], [quality], color="tab:red" if on else "tab:gray", zorder=3)
        ax.annotate(name, (cost, quality), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted((c, q) for c, q, _, on in points if on)
    if len(front) > 1:
        ax.step([c for c, _ in front], [q for _, q in front], where="post", color="tab:red", alpha=0.6,
                label="front")
        ax.legend(loc="lower right")
    xs = [c for c, *_ in points]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test NDCG@{QUALITY_K}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``compare.json``, ``compare.md`` and the front plots into ``out`` (each written atomically)."""
    rows, settings = report["rows"], report["settings"]
    written = [out / "compare.json", out / "compare.md"]
    atomic_write_json(written[0], report)
    atomic_write_text(written[1], markdown(report))
    key = (settings["threads"][0], min(settings["batch_sizes"]))
    plots = {"front-bytes.png": ([r["served_bytes"]["served"]["total"] for r in rows], [r["front_bytes"] for r in rows],
                                 "served bytes (index + user vectors + id maps)", "NDCG against served bytes")}
    if settings["latency"]:
        noisy = " (NOISY)" if report["timing"]["noisy"] else ""
        plots["front-latency.png"] = ([batch1_p50(r, key) for r in rows], [r["front_latency"] for r in rows],
                                      f"in-process p50 ms, B={key[1]}, {key[0]} thread(s)",
                                      f"NDCG against batch-{key[1]} latency{noisy}")
    for name, (costs, fronts, xlabel, title) in plots.items():
        png = plot_front(rows, costs, fronts, xlabel, title)
        if png is not None:
            atomic_write_bytes(out / name, png)
            written.append(out / name)
    return written


# ---------------------------------------------------------------------------- command line
def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,32,256") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def _threads(text: str) -> tuple[int, ...]:
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "all":
            values.append(cpu_count())
        elif part.isdigit() and int(part) >= 1:
            values.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"{text!r}: expected thread counts or 'all', e.g. 1,all")
    if not values:
        raise argparse.ArgumentTypeError("--threads: no thread count given")
    return tuple(dict.fromkeys(values))  # 1,all on one CPU is one setting


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparserec compare", description=__doc__.split("\n")[0].strip("`: "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Columns and how served bytes are counted: docs/compare.md")
    parser.add_argument("artifacts", type=Path, nargs="+", metavar="ART", help="artifact folders (python -m export)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default reports/NAME)")
    parser.add_argument("--name", default=None, help="report name for the default folder (default: from the artifacts)")
    parser.add_argument("--no-latency", dest="latency", action="store_false",
                        help="bytes and quality only: nothing is timed (no load check)")
    parser.add_argument("--batch-sizes", type=_int_list, default=DEFAULT_BATCH_SIZES, metavar="B,B,...",
                        help="in-process batch sizes (default 1,32,256)")
    parser.add_argument("--threads", type=_threads, default=_threads("1,all"), metavar="T,T,...",
                        help="FAISS threads for the in-process timings, a count or 'all' (default 1,all); the "
                             "first also serves --http and --locust")
    parser.add_argument("--k", type=_positive(int), default=10, help="items per query when timing (default 10)")
    parser.add_argument("--min-time", type=_positive(float), default=0.5,
                        help="seconds of timed calls per setting, at least (default 0.5)")
    parser.add_argument("--max-calls", type=_positive(int), default=200, help="timed calls per setting, at most "
                        "(default 200)")
    parser.add_argument("--http", action="store_true", help="also p50/p99 of POST /recommend through a real server")
    parser.add_argument("--requests", type=_positive(int), default=200, help="--http: timed requests (default 200)")
    parser.add_argument("--locust", type=_positive(int), default=0, metavar="USERS",
                        help="also a locust load test with USERS users (python -m loadtest run): req/s, failures")
    parser.add_argument("--locust-duration", type=_positive(float), default=20.0, help="seconds (default 20)")
    parser.add_argument("--data", default=None, help="recompute test quality on this dataset (name or path) "
                        "with each artifact's own split rules, instead of the manifest's figures")
    parser.add_argument("--no-mmap", dest="mmap", action="store_false",
                        help="load as a server with SPARSEREC_MMAP=0 does (everything read, nothing mapped)")
    parser.add_argument("--allow-noisy", action="store_true",
                        help="time even on a busy machine (load above half the CPUs); the report says so")
    parser.add_argument("--seed", type=int, default=0, help="seed of the users drawn for timing (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no table printed")
    return parser


def default_name(paths: Sequence[Path]) -> str:
    """A report name from the artifacts' folder names (shortened when long)."""
    name = "_".join(p.resolve().name for p in paths)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    if len(name) > 80:
        name = f"{len(paths)}-artifacts-{name[:60]}"
    return name


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out = args.out or Path("reports") / (args.name or default_name(args.artifacts))
    options = CompareOptions(
        artifacts=tuple(args.artifacts), out=out, latency=args.latency, batch_sizes=args.batch_sizes,
        threads=args.threads, k=args.k, min_time_s=args.min_time, max_calls=args.max_calls, http=args.http,
        requests=args.requests, locust_users=args.locust, locust_duration_s=args.locust_duration, data=args.data,
        mmap=args.mmap, allow_noisy=args.allow_noisy, seed=args.seed, progress=not args.quiet)
    missing = [str(p) for p in options.artifacts if not (p / "manifest.json").is_file()]
    if missing:
        print(f"error: not an artifact folder (no manifest.json): {', '.join(missing)}; make one with "
              "python -m export runs/NAME --out artifacts/NAME", file=sys.stderr)
        return 2
    if options.times_anything:
        reason = busy_reason(load_average(), cpu_count())
        if reason and not options.allow_noisy:
            print(f"error: refusing to time on a busy machine: {reason}. Stop what else runs, pass --allow-noisy "
                  "to time anyway (the report says so), or --no-latency for bytes and quality only.",
                  file=sys.stderr)
            return 2
    try:
        report = compare(options)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written = write_report(report, options.out)
    if not args.quiet:
        print(markdown(report))
        print("-> " + ", ".join(str(p) for p in written))
    failed = errors(report)
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
