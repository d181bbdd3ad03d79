"""Export a trained run as a serving artifact, or verify an artifact.

    python -m export runs/mf --out artifacts/mf                                  # fp32 tables, index auto (sparse or flat)
    python -m export runs/mf-dsl --out artifacts/mf-dsl-sparse --index sparse --index-param round_to=4
    python -m export runs/lgn-dsl --out artifacts/lgn-dsl-masked --lightgcn-output masked   # option (b), measured
    python -m export runs/mf-dsl --out artifacts/mf-dsl-int8 --values int8 --index hnsw
    python -m export runs/mf-nested --out artifacts/mf-nested --table-layout prefix   # refused unless prefix masks
    python -m export runs/lgn --out artifacts/lgn --values fp16 --index ivf --index-param nprobe=16
    python -m export runs/mf --out artifacts/mf-pq --index pq --onnx-int8 --overwrite
    python -m export verify artifacts/mf                                         # checksums, shapes, version
    python -m export seal artifacts/old-mf        # an artifact older than manifest.sha256: verify, then seal
    python -m benchmarks.export.size                                                  # results/size.{json,md}

Exit status 0 on success; on a refused artifact, 1 with the offending file named on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--index-param {text!r} must look like name=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


EXAMPLES = """Verify an artifact with: python -m export verify ARTIFACT

examples:
  python -m export runs/lgn --out artifacts/lgn
  python -m export runs/lgn-dsl --out artifacts/lgn-dsl --index sparse --values fp16 --overwrite
"""


def export_parser() -> argparse.ArgumentParser:
    from .exporter import INDEX_CHOICES, LIGHTGCN_OUTPUTS
    from .to_sparse import VALUE_DTYPES

    parser = argparse.ArgumentParser(
        prog="python -m export",
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", type=Path, help="training run folder (runs/NAME)")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to create (artifacts/NAME)")
    parser.add_argument(
        "--values", choices=list(VALUE_DTYPES), default="fp32", help="stored value dtype (default fp32)"
    )
    parser.add_argument(
        "--table-layout",
        choices=["auto", "csr", "prefix"],
        default="auto",
        help="stored table layout: prefix (row lengths + values, no column indices) where every "
        "mask row is a prefix [0, L) as dsl-nested/dsl-mixed train them, else csr (auto); "
        "or forced (prefix refuses other masks)",
    )
    parser.add_argument(
        "--index",
        choices=list(INDEX_CHOICES),
        default="auto",
        help="item index: auto (default: the exact sparse index or a flat faiss index, whichever "
        "answers faster at export, where the served item vectors are sparse; flat where dense), "
        "sparse (exact, memory and time follow the non-zeros), or a faiss kind",
    )
    parser.add_argument(
        "--index-param",
        type=_parse_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="index parameter, e.g. nlist=64, nprobe=8, M=32, efSearch=128, m=16; sparse: "
        "layout=prefix|gaps|postings, round_to=4, threaded=true (repeatable)",
    )
    parser.add_argument(
        "--lightgcn-output",
        choices=list(LIGHTGCN_OUTPUTS),
        default="auto",
        help="LightGCN's served vectors: auto (masked for a model trained with "
        "--model.mask_output=true, else propagated), propagated (dense), masked (each row "
        "times its own mask: sparse, costs quality on a standard model; both measured)",
    )
    parser.add_argument(
        "--onnx-layout",
        choices=["auto", "dense", "packed"],
        default="auto",
        help="user rows in ONNX: packed CSR arrays where smaller (auto), or forced",
    )
    parser.add_argument("--onnx-int8", action="store_true", help="also write an int8 dynamically quantised scorer")
    parser.add_argument("--no-memory", action="store_true", help="skip measuring onnxruntime session memory")
    parser.add_argument("--sample-users", type=int, default=1000, help="users sampled for index recall (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing artifact folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="S",
        help="also split the artifact into S item-disjoint parts (export.shards): <out>/shards/",
    )
    return parser


def verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export verify", description="Recompute checksums and shapes of an artifact folder."
    )
    parser.add_argument("artifact", type=Path, help="artifact folder (artifacts/NAME)")
    parser.add_argument("--json", action="store_true", help="print the artifact summary as JSON")
    return parser


def verify_main(argv: list[str]) -> int:
    from .artifact import Artifact, ArtifactError, verify_artifact

    args = verify_parser().parse_args(argv)
    try:
        manifest = verify_artifact(args.artifact, deep=True)
    except ArtifactError as exc:
        print(f"verify: REFUSED: {exc}", file=sys.stderr)
        return 1
    summary = Artifact(args.artifact, manifest).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{args.artifact}: OK ({len(manifest.files)} files, {summary['bytes']['total']} bytes; "
            f"{summary['model_kind']} {summary['n_users']} users x {summary['n_items']} items, dim {summary['dim']}, "
            f"density {summary['density']}, values {summary['value_dtype']}, index {summary['index']['kind']})"
        )
    return 0


def seal_main(argv: list[str]) -> int:
    """Write ``manifest.sha256`` for an artifact written before the manifest covered itself: every file
    is verified against the manifest first (deep), and only then is the manifest sealed as it is."""
    from .artifact import MANIFEST_SHA256, ArtifactError, seal_manifest, verify_artifact

    parser = argparse.ArgumentParser(prog="python -m export seal", description=seal_main.__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path, help="artifact folder (artifacts/NAME) without manifest.sha256")
    args = parser.parse_args(argv)
    if (args.artifact / MANIFEST_SHA256).exists():
        print(
            f"seal: REFUSED: {args.artifact / MANIFEST_SHA256} exists; a sealed manifest is not resealed "
            f"(re-export the artifact instead)",
            file=sys.stderr,
        )
        return 1
    try:
        digest = seal_manifest(args.artifact)
        verify_artifact(args.artifact, deep=True)
    except ArtifactError as exc:
        (args.artifact / MANIFEST_SHA256).unlink(missing_ok=True)
        print(f"seal: REFUSED: {exc}", file=sys.stderr)
        return 1
    print(f"{args.artifact}: sealed (manifest.json sha256 {digest})")
    return 0


def export_main(argv: list[str]) -> int:
    from .exporter import ExportError, ExportOptions, export_run

    args = export_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from .to_onnx import drop_preprocess_advice

    logging.getLogger().addFilter(drop_preprocess_advice)  # onnxruntime's advice at every int8 quantisation
    options = ExportOptions(
        values=args.values,
        table_layout=args.table_layout,
        index=args.index,
        index_params=dict(args.index_param),
        lightgcn_output=args.lightgcn_output,
        onnx_layout=args.onnx_layout,
        onnx_int8=args.onnx_int8,
        measure_memory=not args.no_memory,
        sample_users=args.sample_users,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    try:
        out = export_run(args.run, args.out, options)
    except (ExportError, FileNotFoundError, ValueError) as exc:
        print(f"export: FAILED: {exc}", file=sys.stderr)
        return 1
    if args.shards is not None:  # a post-processing step of the finished artifact (export/shards.py)
        from .shards import split_artifact

        report_shards = [str(p) for p in split_artifact(out, args.shards, progress=not args.quiet)]
    from .artifact import read_manifest

    manifest = read_manifest(out)
    index = manifest.index
    report = {
        "artifact": str(out),
        "bytes": manifest.bytes,
        "density": manifest.density,
        "table_layouts": {name: entry.layout for name, entry in manifest.tables.items()},
        "fidelity": {key: value for key, value in (manifest.fidelity or {}).items() if "overlap" in key},
        "index": {
            "kind": index.kind,
            **{
                key: value
                for key, value in (("layout", index.layout), ("nnz", index.nnz), ("bytes", index.bytes))
                if value is not None
            },
            **{
                key: value
                for key, value in index.extra.items()
                if key.startswith(("recall@", "tie_aware_recall@")) or key == "choice"
            },
        },
        "onnx_user_tower": manifest.onnx["user_tower"].info["layout"],
        "quality": manifest.quality,
    }
    if index.auto is not None:
        report["index"]["timing_ms_per_query"] = index.auto["timing_ms_per_query"]
    if manifest.lightgcn_output is not None:
        report["lightgcn_output"] = {
            key: value for key, value in manifest.lightgcn_output.items() if key not in ("trained_with_mask_output",)
        }
    if args.shards is not None:
        report["shards"] = report_shards
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "verify":
        return verify_main(argv[1:])
    if argv and argv[0] == "seal":
        return seal_main(argv[1:])
    return export_main(argv)


if __name__ == "__main__":
    sys.exit(main())
