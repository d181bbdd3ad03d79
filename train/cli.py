"""The training command line: ``python -m train`` (and ``sparserec train``, see sparserec/__init__.py).

python -m train --data ml-100k --model lightgcn --out runs/lgn --epochs 200 --seed 2024
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing

from .config import ConfigError, TrainConfig, load_config

TOP_FLAGS = {
    "data": ("data.name", "dataset: a shipped name (ml-100k, gowalla, synthetic, synthetic-longtail) or a path"),
    "model": ("model.name", "mf | lightgcn | pop"),
    "out": ("run.out", "run folder to write (metrics.json, best.safetensors, checkpoint.safetensors, data/)"),
    "epochs": ("run.epochs", "maximum epochs (early stopping may end sooner)"),
    "seed": ("run.seed", "seed for initialisation, masks and sampling (the split has --data.seed)"),
}


def config_keys_help() -> str:
    """One line per dotted config key, with its type and default."""
    lines = ["config keys (override with --section.key=value):"]
    defaults = TrainConfig()
    for section in dataclasses.fields(TrainConfig):
        obj = getattr(defaults, section.name)
        hints = typing.get_type_hints(type(obj))
        for item in dataclasses.fields(obj):
            hint = hints[item.name]
            value = getattr(obj, item.name)
            if dataclasses.is_dataclass(value):  # a keyed group (data.columns): one flag of pairs, or one per key
                flag, keys = f"--{section.name}.{item.name}", [part.name for part in dataclasses.fields(value)]
                lines.append(
                    f"  {flag}={','.join(f'{key}=COL' for key in keys)}  (header names or 0-based "
                    f"positions; or {flag}.{keys[0]}=COL; unset: by header)"
                )
                continue
            type_name = getattr(hint, "__name__", str(hint)).replace("typing.", "")
            lines.append(f"  --{section.name}.{item.name}={value!r}  ({type_name})")
    return "\n".join(lines)


EXAMPLES = """examples:
  python -m train --data ml-100k --model lightgcn --out runs/lgn --epochs 200 --seed 2024
  python -m train --data ml-100k --model mf --out runs/mf-dsl --seed 2024 --sparsity.density=0.2 --sparsity.updater=dsl
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train MF / LightGCN / popularity, dense or with Dynamic Sparse Learning (--sparsity.density < 1).",
        epilog=config_keys_help() + "\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for flag, (_, text) in TOP_FLAGS.items():
        parser.add_argument(f"--{flag}", help=text)
    parser.add_argument("--config", help="a YAML or JSON preset (at most one); flags override it")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.safetensors")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs as --log-level says)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="log level (info: the config, a JSON line per evaluation and mask update)",
    )
    return parser


def parse_train_args(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides: list[str] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or "." not in token.split("=")[0]:
            parser.error(f"unrecognised argument {token!r} (config overrides look like --section.key=value)")
        if "=" in token:
            overrides.append(token[2:])
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            overrides.append(f"{token[2:]}={rest[i + 1]}")
            i += 1
        else:
            parser.error(f"{token} needs a value")
        i += 1
    for flag, (key, _) in TOP_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    return config, args


def train_main(argv: list[str] | None = None) -> int:
    config, args = parse_train_args(argv)
    from . import distributed

    args.quiet = args.quiet or distributed.env_rank() > 0  # under torchrun only rank 0 logs
    logging.basicConfig(
        level=logging.WARNING if args.quiet else getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .checkpoint import CheckpointError
    from .data import DataError
    from .loop import train

    try:
        with distributed.process_group(config.run.device):  # torchrun: join its group (gloo/NCCL)
            metrics = train(config, resume=args.resume, progress=not (args.quiet or args.no_progress))
    except (
        DataError,
        ConfigError,
        CheckpointError,
        distributed.WorldSizeError,
    ) as exc:  # a user can fix these: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # anything else (the sparsifier's invariant checks, diverged replicas, a torch error) is a bug: it keeps its traceback
    if distributed.env_rank() > 0:
        return 0  # rank 0 prints the summary
    k = config.run.topk
    test = metrics["test"]
    summary = {
        "model": metrics["model"],
        "updater": metrics["updater"],
        "density": metrics["density"],
        f"test_ndcg@{k}": round(test[f"ndcg@{k}"], 4),
        f"test_recall@{k}": round(test[f"recall@{k}"], 4),
        f"valid_ndcg@{k}": round(metrics["valid"].get(f"ndcg@{k}", float("nan")), 4),
        "best_epoch": metrics["best_epoch"],
        "epochs": metrics["epochs"],
        "nnz": metrics["nnz"],
        "seconds": metrics["seconds"],
        "out": config.run.out,
    }
    print(json.dumps(summary))
    return 0
