"""Typed, frozen configuration: ``TrainConfig(data, model, sparsity, optim, run)``.

Overrides come as dotted flags (``--sparsity.density=0.2``) and at most one YAML preset.
Unknown keys and values of the wrong type fail loudly with the key named.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type."""


COLUMN_ROLES = ("user", "item", "rating", "timestamp")


@dataclass(frozen=True)
class ColumnsConfig:
    """Which column of a delimited file holds each role: a 0-based position (digits) or a header name.

    ``""`` leaves the role to the file's header names (or, without a header, to its default
    position: user 0, item 1, rating 2, timestamp 3); ``none`` (rating, timestamp) reads no such
    column even where the header has one. On the command line either
    ``--data.columns user=COL,item=COL,rating=COL,timestamp=COL`` or ``--data.columns.user=COL``.
    """

    user: str = ""
    item: str = ""
    rating: str = ""
    timestamp: str = ""

    def __post_init__(self) -> None:
        given = self.given()
        for role, column in given.items():
            if column != column.strip():
                raise ConfigError(f"data.columns.{role}={column!r}: leading or trailing spaces")
            if column.lower() == "none" and role in ("user", "item"):
                raise ConfigError(f"data.columns.{role}=none: every file needs a {role} column")
        seen: dict[str, str] = {}
        for role, column in given.items():
            if column.lower() == "none":
                continue
            if column in seen:
                raise ConfigError(f"data.columns: {seen[column]} and {role} both name the column {column!r}")
            seen[column] = role

    def given(self) -> dict[str, str]:
        """The roles placed explicitly: ``{role: column}`` in ``COLUMN_ROLES`` order."""
        return {role: getattr(self, role) for role in COLUMN_ROLES if getattr(self, role)}

    def __str__(self) -> str:
        return ",".join(f"{role}={column}" for role, column in self.given().items())


# sparsity.updater values that are not mask updaters: prune-finetune trains dense, then prunes once
# and fine-tunes a fixed mask; small-dense is a smaller dense model (nothing to mask)
OTHER_MODES = ("prune-finetune", "small-dense")


def small_dense_dim(density: float, dim: int) -> int:
    """The equal-budget dense rival's width: ``max(1, round(density x dim))``."""
    return max(1, int(round(density * dim)))


@dataclass(frozen=True)
class DataConfig:
    """Where interactions come from and how they are split."""

    name: str = "ml-100k"  # a shipped name (ml-100k, gowalla, synthetic, synthetic-longtail) or a path
    format: str = "auto"  # auto | movielens | ratings-dat | recbole | csv | lightgcn | synthetic
    delimiter: str = ""  # csv: "" sniffs it; or , tab ; | :: space
    # csv: the column of each role, by header name or 0-based position; unset roles go by header names
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    header: str = "auto"  # csv: auto (detected: docs/data.md) | yes (the first row names the columns) | no
    threshold: float | None = None  # keep ratings >= threshold; None keeps every interaction
    k_core: int = 0  # iteratively drop users/items with fewer interactions; 0 = off
    split: str = "random"  # random (per-user ratios) | time (leave-last-out)
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2024
    cache_dir: str = "data"
    # hide this many test users' train and valid interactions from training (a seeded choice,
    # `train.data.split.choose_holdout_users`), to measure serving-time fold-in on them; 0 = off
    holdout_users: int = 0
    # synthetic generator
    n_users: int = 2000
    n_items: int = 3000
    n_factors: int = 16
    interactions_per_user: float = 30.0
    popularity_exponent: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lightgcn"  # mf | lightgcn | pop
    dim: int = 64
    n_layers: int = 3
    init_std: float = 0.1
    mask_output: bool = False  # lightgcn: propagated vectors * base mask in the forward pass (served sparse)


@dataclass(frozen=True)
class SparsityConfig:
    density: float = 1.0  # fraction of embedding weights kept non-zero; 1.0 = dense
    updater: str = "dsl"  # dsl | set | static | prune-finetune | small-dense | dsl-<variant>
    update_interval: int = 100  # optimizer steps between mask updates
    alpha0: float = 0.5  # initial drop fraction, cosine-decayed to 0
    # mask updates (and the cosine decay of the drop fraction) end at this share of run.epochs;
    # model selection and early stopping only look at evaluations after the last update
    end_fraction: float = 0.5
    # small-dense: every masked run holds exactly the small-dense rival's non-zeros,
    # sum over tables of n_rows x round(density x dim); density: round(density x all entries)
    budget_rule: str = "small-dense"
    grow_from: str = "accumulated"  # accumulated (gradients summed over the interval) | batch
    row_prior_exponent: float = 0.5  # dsl-mixed: initial row length ~ (degree + 1) ** exponent
    finetune_epochs: int = (
        0  # prune-finetune: fine-tuning epochs after the dense phase stops (0: a quarter of --epochs)
    )
    # the initial mask of dsl, set, static: random (uniform over all entries) | nmf (SparseRec: the
    # largest entries of an NMF of the train interactions, rank model.dim; train/sparsity/nmf.py)
    mask_init: str = "random"

    # The one place that decides what a (density, updater) pair trains.
    @property
    def dense(self) -> bool:
        """Density 1: a dense model, whatever the updater."""
        return self.density >= 1.0

    @property
    def small_dense(self) -> bool:
        """The equal-budget rival: a dense model of width ``small_dense_dim(density, dim)``."""
        return self.updater == "small-dense" and not self.dense

    @property
    def prunes(self) -> bool:
        """prune-finetune below density 1: dense training, one magnitude prune, then a fixed mask."""
        return self.updater == "prune-finetune" and not self.dense

    @property
    def has_mask(self) -> bool:
        """The trained tables end with a mask: any updater but small-dense, below density 1."""
        return not self.dense and not self.small_dense

    @property
    def masked(self) -> bool:
        """Masks constrain the embedding tables from the first step (a mask updater below density 1)."""
        return not self.dense and self.updater not in OTHER_MODES

    @property
    def label(self) -> str:
        """``dense`` at density 1, else the updater (the ``updater`` of a run's metrics)."""
        return "dense" if self.dense else self.updater

    def width(self, dim: int) -> int:
        """The embedding width trained for a model of width ``dim``: ``dim``, or the small-dense rival's."""
        return small_dense_dim(self.density, dim) if self.small_dense else dim


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    batch_size: int = 2048
    weight_decay: float = 1e-4  # L2 on the batch embeddings, as LightGCN's reference does
    n_negatives: int = 1
    # which positive pairs an epoch visits: interaction (every training pair once, shuffled) | user
    # (as many draws, each a user uniformly among those with a training pair, then one of that
    # user's pairs uniformly: the sampler of LightGCN's reference code, which weighs users equally)
    sampling: str = "interaction"


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/default"
    epochs: int = 200
    seed: int = 2024
    eval_every: int = 1
    patience: int = 10  # evaluations without valid NDCG@20 improvement before stopping
    min_epochs: int = 0  # never stop early before this epoch
    topk: int = 20
    threads: int = 0  # torch threads; 0 = the cores available to this process
    device: str = "cpu"  # cpu | cuda
    eval_batch_size: int = 1024


# run keys that say where a run's folder is and where it trains, not what the run is: a moved folder, or a run
# stopped on a GPU and resumed (or tabled) on a CPU, is the same experiment
WHERE = ("out", "device")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def width(self) -> int:
        """The embedding width the model trains with (``model.dim``, or small-dense's narrower one)."""
        return self.sparsity.width(self.model.dim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def experiment(self) -> dict[str, Any]:
        """``to_dict()`` without the run keys of ``WHERE``: two configs with equal experiments are one run.

        The one rule for "the same run", used where a checkpoint resumes and where a table decides whether a
        finished run folder counts.
        """
        d = self.to_dict()
        d["run"] = {k: v for k, v in d["run"].items() if k not in WHERE}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        return _build(cls, raw, prefix="")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (possibly a string from the command line) to ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: cannot read {value!r} as {annotation}")
    if origin is tuple:
        if isinstance(value, str):
            value = [part for part in value.replace("(", "").replace(")", "").split(",") if part]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {annotation}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)} "
            f"(known in {where}: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if isinstance(value, str):  # the one-flag form: --data.columns user=userId,item=2
                value = _parse_pairs(value, prefix + name)
            kwargs[name] = _build(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _parse_pairs(text: str, key: str) -> dict[str, str]:
    """``"a=x,b=y"`` -> ``{"a": "x", "b": "y"}``; a part without ``=`` or a repeated key is a ConfigError."""
    pairs: dict[str, str] = {}
    for part in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"{key}: expected name=value pairs separated by commas, got {text!r}")
        if name in pairs:
            raise ConfigError(f"{key}: {name} given twice in {text!r}")
        pairs[name] = value.strip()
    return pairs


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (values stay strings; typed later)."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = raw
        parts = key.lstrip("-").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return raw


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Build a config from the defaults, an optional YAML/JSON preset, then dotted overrides."""
    raw: dict[str, Any] = {}
    if preset is not None:
        text = Path(preset).read_text()
        if str(preset).endswith((".yaml", ".yml")):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raw = json.loads(text)
    raw = apply_overrides(raw, overrides or [])
    return TrainConfig.from_dict(raw)


def replace(config: TrainConfig, **sections: dict[str, Any]) -> TrainConfig:
    """Return ``config`` with fields of the named sections replaced (typed and checked)."""
    raw = config.to_dict()
    for section, values in sections.items():
        if section not in raw:
            raise ConfigError(f"unknown config section {section!r}")
        raw[section].update(values)
    return TrainConfig.from_dict(raw)
