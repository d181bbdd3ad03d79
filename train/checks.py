"""The training config's checks that the dataclass types cannot make: names, ranges, combinations.

    from train.checks import validate
    validate(config)          # ConfigError naming the key, before any data is read or model built

``train.loop.train`` calls it first; the CLI reports its ``ConfigError`` as a usage error.
"""

from __future__ import annotations

from .config import ConfigError, TrainConfig
from .models import MODELS
from .sparsity import BUDGET_RULES, GROW_FROM, MASK_INITS, OTHER_MODES, UPDATERS, prefix_updater, random_initial_mask


def validate(config: TrainConfig) -> None:
    """Fail before any work (``ConfigError``) on names and ranges that the dataclass types cannot check."""
    choices = {
        "model.name": (config.model.name, sorted(MODELS)),
        "sparsity.updater": (config.sparsity.updater, sorted(UPDATERS) + list(OTHER_MODES)),
        "sparsity.grow_from": (config.sparsity.grow_from, list(GROW_FROM)),
        "data.split": (config.data.split, ["random", "time"]),
        "run.device": (config.run.device.split(":")[0], ["cpu", "cuda"]),
        "optim.sampling": (config.optim.sampling, ["interaction", "user"]),
        "sparsity.mask_init": (config.sparsity.mask_init, list(MASK_INITS)),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {allowed}")
    if config.sparsity.budget_rule not in BUDGET_RULES:
        raise ConfigError(f"sparsity.budget_rule={config.sparsity.budget_rule!r} is not one of {list(BUDGET_RULES)}")
    if not 0.0 < config.sparsity.end_fraction <= 1.0:
        raise ConfigError(f"sparsity.end_fraction={config.sparsity.end_fraction} must be in (0, 1]")
    if not 0.0 < config.sparsity.density <= 1.0:
        raise ConfigError(f"sparsity.density={config.sparsity.density} must be in (0, 1]")
    for key, value in {
        "run.epochs": config.run.epochs,
        "optim.batch_size": config.optim.batch_size,
        "sparsity.update_interval": config.sparsity.update_interval,
        "model.dim": config.model.dim,
        "run.eval_every": config.run.eval_every,
        "run.patience": config.run.patience,
        "optim.n_negatives": config.optim.n_negatives,
    }.items():
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    if config.optim.lr <= 0:
        raise ConfigError(f"optim.lr={config.optim.lr} must be positive")
    if config.sparsity.mask_init == "nmf":
        updater = config.sparsity.updater
        if config.sparsity.dense:
            raise ConfigError(
                "sparsity.mask_init=nmf chooses the initial mask of a masked run; "
                f"sparsity.density={config.sparsity.density:g} trains dense (set sparsity.density < 1)"
            )
        if not (random_initial_mask(updater) or prefix_updater(updater)):
            why = (
                "it has no initial mask to choose (small-dense is a smaller dense "
                "model; prune-finetune takes its mask from the trained dense weights)"
            )
            allowed = [name for name in UPDATERS if random_initial_mask(name) or prefix_updater(name)]
            raise ConfigError(
                f"sparsity.mask_init=nmf does not combine with sparsity.updater={updater!r}: {why}; "
                f"use it with sparsity.updater in {allowed}, or sparsity.mask_init=random"
            )
    if config.model.mask_output and config.model.name != "lightgcn":
        raise ConfigError(
            f"model.mask_output=true applies to lightgcn only (model.name={config.model.name!r}: "
            "its scored vectors are the masked tables already)"
        )
