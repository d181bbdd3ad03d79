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
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.provenance import busy_reason, cpu_count, load_average, provenance

from .compare_front import batch1_p50, mark_fronts, pareto_front, plot_front
from .compare_latency import (
    _or_error,
    errors,
    http_latency,
    in_process_latency,
    locust_load,
)
from .compare_report import human_bytes, markdown, write_report
from .compare_rows import (
    DEFAULT_BATCH_SIZES,
    QUALITY_K,
    CompareError,
    CompareOptions,
    DataQuality,
    artifact_facts,
    lengths_text,
    manifest_quality,
    manifest_records,
)

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "QUALITY_K",
    "CompareError",
    "CompareOptions",
    "DataQuality",
    "artifact_facts",
    "batch1_p50",
    "build_parser",
    "compare",
    "default_name",
    "errors",
    "http_latency",
    "human_bytes",
    "in_process_latency",
    "latency_key",
    "lengths_text",
    "locust_load",
    "main",
    "manifest_quality",
    "manifest_records",
    "mark_fronts",
    "markdown",
    "pareto_front",
    "plot_front",
    "write_report",
]

log = logging.getLogger("sparserec.compare")


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
        "settings": {
            **{key: value for key, value in dataclasses.asdict(options).items() if key != "progress"},
            "artifacts": [str(p) for p in options.artifacts],
            "out": str(options.out),
        },
        "timing": {
            "cpus": cpus,
            "load_avg_1m_start": start_load,
            "busy_at_start": busy_reason(start_load, cpus),
            "allow_noisy": options.allow_noisy,
            "timed": options.times_anything,
        },
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
            row = {
                "name": label,
                "path": str(path),
                **{
                    k: v
                    for k, v in facts.items()
                    if k
                    not in (
                        "manifest_quality",
                        "training_test",
                        "training_data",
                        "index_recall@20_vs_flat",
                        "index_file_bytes",
                    )
                },
                "served_bytes": footprint,
                "quality": quality,
            }
            if options.latency:
                stage("in-process latency")
                row["latency"] = in_process_latency(model, options)
                bar.update()
            if options.http:
                stage("HTTP latency")
                row["http"] = _or_error(
                    lambda: http_latency(
                        path,
                        list(model.user_index),  # noqa: F821 (run at once, before the del)
                        options,
                        options.out / "http",
                    ),
                    label,
                    "HTTP",
                )
                bar.update()
            if options.locust_users:
                stage(f"locust, {options.locust_users} users")
                row["locust"] = _or_error(
                    lambda: locust_load(path, re.sub(r"[^A-Za-z0-9_.-]", "_", label), options, options.out / "locust"),
                    label,
                    "locust",
                )
                bar.update()
            report["rows"].append(row)
            del model, art
    finally:
        bar.close()
    end_load = load_average()
    report["timing"].update(load_avg_1m_end=end_load, busy_at_end=busy_reason(end_load, cpus))
    report["timing"]["noisy"] = bool(
        options.times_anything and (report["timing"]["busy_at_start"] or report["timing"]["busy_at_end"])
    )
    mark_fronts(report["rows"], latency_key(options))
    return report


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
    parser = argparse.ArgumentParser(
        prog="sparserec compare",
        description=__doc__.split("\n")[0].strip("`: "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Columns and how served bytes are counted: docs/compare.md",
    )
    parser.add_argument("artifacts", type=Path, nargs="+", metavar="ART", help="artifact folders (python -m export)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default reports/NAME)")
    parser.add_argument("--name", default=None, help="report name for the default folder (default: from the artifacts)")
    parser.add_argument(
        "--no-latency",
        dest="latency",
        action="store_false",
        help="bytes and quality only: nothing is timed (no load check)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=DEFAULT_BATCH_SIZES,
        metavar="B,B,...",
        help="in-process batch sizes (default 1,32,256)",
    )
    parser.add_argument(
        "--threads",
        type=_threads,
        default=_threads("1,all"),
        metavar="T,T,...",
        help="FAISS threads for the in-process timings, a count or 'all' (default 1,all); the "
        "first also serves --http and --locust",
    )
    parser.add_argument("--k", type=_positive(int), default=10, help="items per query when timing (default 10)")
    parser.add_argument(
        "--min-time",
        type=_positive(float),
        default=0.5,
        help="seconds of timed calls per setting, at least (default 0.5)",
    )
    parser.add_argument(
        "--max-calls", type=_positive(int), default=200, help="timed calls per setting, at most (default 200)"
    )
    parser.add_argument("--http", action="store_true", help="also p50/p99 of POST /recommend through a real server")
    parser.add_argument("--requests", type=_positive(int), default=200, help="--http: timed requests (default 200)")
    parser.add_argument(
        "--locust",
        type=_positive(int),
        default=0,
        metavar="USERS",
        help="also a locust load test with USERS users (python -m loadtest run): req/s, failures",
    )
    parser.add_argument("--locust-duration", type=_positive(float), default=20.0, help="seconds (default 20)")
    parser.add_argument(
        "--data",
        default=None,
        help="recompute test quality on this dataset (name or path) "
        "with each artifact's own split rules, instead of the manifest's figures",
    )
    parser.add_argument(
        "--no-mmap",
        dest="mmap",
        action="store_false",
        help="load as a server with SPARSEREC_MMAP=0 does (everything read, nothing mapped)",
    )
    parser.add_argument(
        "--allow-noisy",
        action="store_true",
        help="time even on a busy machine (load above half the CPUs); the report says so",
    )
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
        artifacts=tuple(args.artifacts),
        out=out,
        latency=args.latency,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        k=args.k,
        min_time_s=args.min_time,
        max_calls=args.max_calls,
        http=args.http,
        requests=args.requests,
        locust_users=args.locust,
        locust_duration_s=args.locust_duration,
        data=args.data,
        mmap=args.mmap,
        allow_noisy=args.allow_noisy,
        seed=args.seed,
        progress=not args.quiet,
    )
    missing = [str(p) for p in options.artifacts if not (p / "manifest.json").is_file()]
    if missing:
        print(
            f"error: not an artifact folder (no manifest.json): {', '.join(missing)}; make one with "
            "python -m export runs/NAME --out artifacts/NAME",
            file=sys.stderr,
        )
        return 2
    if options.times_anything:
        reason = busy_reason(load_average(), cpu_count())
        if reason and not options.allow_noisy:
            print(
                f"error: refusing to time on a busy machine: {reason}. Stop what else runs, pass --allow-noisy "
                "to time anyway (the report says so), or --no-latency for bytes and quality only.",
                file=sys.stderr,
            )
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
