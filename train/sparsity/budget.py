"""How many non-zeros a masked run may hold: the equal-budget rule against the small-dense rival."""

from __future__ import annotations

import math

import torch

from ..config import small_dense_dim  # the width rule lives with the config that decides it

BUDGET_RULES = ("small-dense", "density")


def budget_for(shapes: list[torch.Size], density: float, rule: str = "small-dense") -> int:
    """Non-zeros a masked run may hold.

    ``small-dense``: exactly the small-dense rival's count, ``sum(n_rows x small_dense_dim)`` over
    the ``[n_rows, dim]`` tables, so every sparse run and its rival have the same number of
    weights (density 0.1 at dim 64 keeps 6 of 64 per row on average, 0.09375).
    ``density``: ``round(density x all entries)``.
    """
    if rule not in BUDGET_RULES:
        raise ValueError(f"unknown budget_rule {rule!r}; choose one of {list(BUDGET_RULES)}")
    if rule == "density":
        return int(round(density * sum(math.prod(s) for s in shapes)))
    for s in shapes:
        if len(s) != 2:
            raise ValueError(f"budget_rule=small-dense needs [rows, dim] tables, got shape {tuple(s)}")
    return sum(int(s[0]) * small_dense_dim(density, int(s[1])) for s in shapes)
