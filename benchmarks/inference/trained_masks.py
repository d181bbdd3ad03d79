"""Masks that look like trained ones, for the 1M-item benchmark (issue 10).

    python -m benchmarks.inference.trained_masks                  # from the ML-100K runs of `make bench-mask-output`
    python -m benchmarks.inference.trained_masks --prefix-runs runs/X,runs/Y --unstructured-runs runs/Z --out F.json

A *profile* holds what a trained LightGCN table's mask looks like, per row group (users, items):
the histogram of non-zeros per row and, for unstructured masks, each dimension's share of the
non-zeros. It is taken from trained runs (dsl-mixed for the prefix layout, plain dsl for the
unstructured one) and stored in ``benchmarks/inference/trained_masks.json`` (committed; this module rebuilds
it). The benchmark then draws masks of any size and density from it:

- prefix: row lengths drawn from the trained histogram of the nearest trained density, scaled by
  one factor so the expected density is the target one, stochastically rounded, clipped to [0, dim];
- unstructured: per-row counts drawn and scaled the same way, then each row's dimensions drawn
  without replacement with probability proportional to the trained per-dimension share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "trained_masks.json"
DEFAULT_RUNS = Path("runs/bench-mask-output")
DEFAULT_PREFIX_RUNS = ("lightgcn-dsl-mixed-0.2", "lightgcn-dsl-mixed-0.05")
DEFAULT_UNSTRUCTURED_RUNS = ("lightgcn-dsl-0.2", "lightgcn-dsl-0.05")
LAYOUTS = ("prefix", "unstructured")


class ProfileError(ValueError):
    """A profile file or run does not hold what is needed."""


def profile_of_mask(mask: np.ndarray, groups: dict[str, slice]) -> dict[str, Any]:
    """Per group: ``row_nnz_histogram`` (rows with 0..dim non-zeros) and ``dim_share`` (share of non-zeros per dim).

    Args:
        mask: ``bool [n_rows, dim]``.
        groups: row ranges by name (``users``, ``items``).
    """
    dim = mask.shape[1]
    out: dict[str, Any] = {"dim": int(dim), "density": float(mask.mean()), "groups": {}}
    for name, rows in groups.items():
        part = mask[rows]
        counts = part.sum(axis=1)
        per_dim = part.sum(axis=0).astype(np.float64)
        out["groups"][name] = {
            "rows": int(part.shape[0]),
            "density": float(part.mean()),
            "row_nnz_histogram": np.bincount(counts, minlength=dim + 1).tolist(),
            "dim_share": (per_dim / max(per_dim.sum(), 1.0)).round(6).tolist(),
            "is_prefix": bool(np.all(part == (np.arange(dim)[None, :] < counts[:, None]))),
        }
    return out


def profile_of_run(run_dir: Path) -> dict[str, Any]:
    """The mask profile of a trained LightGCN run's best model (users and items of the joint table)."""
    from train.checkpoint import load_trained

    model, _, config, metrics = load_trained(run_dir)
    if config.model.name != "lightgcn":
        raise ProfileError(f"{run_dir}: a lightgcn run is needed, found {config.model.name}")
    mask = model.embedding.mask.cpu().numpy().astype(bool)
    profile = profile_of_mask(mask, {"users": slice(0, model.n_users), "items": slice(model.n_users, None)})
    profile.update(
        run=str(run_dir),
        data=config.data.name,
        updater=config.sparsity.updater,
        target_density=config.sparsity.density,
        seed=config.run.seed,
        best_epoch=metrics.get("best_epoch"),
        test_ndcg20=metrics.get("test", {}).get("ndcg@20"),
    )
    return profile


def build_profiles(prefix_runs: list[Path], unstructured_runs: list[Path]) -> dict[str, Any]:
    from common.provenance import provenance

    profiles: dict[str, Any] = {"provenance": provenance(), "how": __doc__.split("\n\n")[2].strip(), "layouts": {}}
    for layout, runs in (("prefix", prefix_runs), ("unstructured", unstructured_runs)):
        entries = []
        for run in runs:
            profile = profile_of_run(run)
            if layout == "prefix" and not all(g["is_prefix"] for g in profile["groups"].values()):
                raise ProfileError(f"{run}: its mask is not prefix-shaped (train it with dsl-mixed or dsl-nested)")
            entries.append(profile)
        profiles["layouts"][layout] = sorted(entries, key=lambda p: p["density"])
    return profiles


def load_profiles(path: Path = DEFAULT_OUT) -> dict[str, Any]:
    if not path.is_file():
        raise ProfileError(f"{path}: no mask profile file; build it with `make bench-masks`")
    profiles = json.loads(path.read_text())
    for layout in LAYOUTS:
        if not profiles.get("layouts", {}).get(layout):
            raise ProfileError(f"{path}: no {layout!r} profile; rebuild it with `make bench-masks`")
    return profiles


def nearest(profiles: dict[str, Any], layout: str, density: float) -> dict[str, Any]:
    """The profile of ``layout`` whose trained density is nearest ``density`` (on a log scale)."""
    entries = profiles["layouts"][layout]
    return min(entries, key=lambda p: abs(np.log(p["density"]) - np.log(density)))


def _scaled_counts(histogram: list[int], n_rows: int, density: float, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Row counts drawn from ``histogram`` (over 0..len-1, rescaled to ``dim``), scaled to mean ``density * dim``."""
    hist = np.asarray(histogram, dtype=np.float64)
    source_dim = len(hist) - 1
    draws = rng.choice(np.arange(len(hist)), size=n_rows, p=hist / hist.sum()) * (dim / source_dim)
    target = density * dim
    low, high = 0.0, float(dim) / max(draws.mean(), 1e-9) * 4 + 1
    for _ in range(60):  # one scale factor so that the clipped mean is the target
        mid = (low + high) / 2
        if np.minimum(draws * mid, dim).mean() < target:
            low = mid
        else:
            high = mid
    scaled = np.minimum(draws * (low + high) / 2, dim)
    counts = np.floor(scaled + rng.random(n_rows))  # stochastic rounding keeps the mean
    return np.clip(counts, 0, dim).astype(np.int64)


def sample_mask(
    profile: dict[str, Any], group: str, n_rows: int, density: float, dim: int, rng: np.random.Generator, layout: str
) -> np.ndarray:
    """``bool [n_rows, dim]`` mask of about ``density`` drawn from a trained profile (module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    entry = profile["groups"][group]
    counts = _scaled_counts(entry["row_nnz_histogram"], n_rows, density, dim, rng)
    if layout == "prefix":
        return np.arange(dim)[None, :] < counts[:, None]
    share = np.asarray(entry["dim_share"], dtype=np.float64)
    if len(share) != dim:  # a profile of another width: stretch its per-dim shares
        share = np.interp(np.linspace(0, len(share) - 1, dim), np.arange(len(share)), share)
    log_weight = np.log(np.maximum(share, 1e-12))
    mask = np.zeros((n_rows, dim), dtype=bool)
    block = 65_536
    for start in range(0, n_rows, block):  # Gumbel top-k: weighted draws without replacement, per row
        stop = min(start + block, n_rows)
        keys = log_weight[None, :] - np.log(-np.log(rng.random((stop - start, dim))))
        order = np.argsort(-keys, axis=1)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(dim)[None, :].repeat(stop - start, axis=0), axis=1)
        mask[start:stop] = rank < counts[start:stop, None]
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.inference.trained_masks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--prefix-runs", default=",".join(str(DEFAULT_RUNS / r) for r in DEFAULT_PREFIX_RUNS))
    parser.add_argument(
        "--unstructured-runs", default=",".join(str(DEFAULT_RUNS / r) for r in DEFAULT_UNSTRUCTURED_RUNS)
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from common.io import atomic_write_json
    from train.checkpoint import BEST

    runs = {
        name: [Path(p) for p in getattr(args, name).split(",") if p] for name in ("prefix_runs", "unstructured_runs")
    }
    missing = [str(p) for paths in runs.values() for p in paths if not (p / BEST).is_file()]
    if missing:
        print(f"error: no trained run at {', '.join(missing)}; run `make bench-mask-output` first", file=sys.stderr)
        return 2
    profiles = build_profiles(runs["prefix_runs"], runs["unstructured_runs"])
    atomic_write_json(args.out, profiles)
    for layout, entries in profiles["layouts"].items():
        for p in entries:
            print(
                f"{layout}: {p['run']} density {p['density']:.4f} (users {p['groups']['users']['density']:.4f}, "
                f"items {p['groups']['items']['density']:.4f})"
            )
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
