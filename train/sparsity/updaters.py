"""*What* changes at a mask update: :class:`MaskUpdater` subclasses give drop and grow scores.

The registry :data:`UPDATERS` maps ``sparsity.updater`` names to them; :func:`make_updater`
builds one. The selection itself is :func:`train.sparsity.kernel.prune_and_regrow`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from .kernel import GrowScores


def random_masks(shapes: list[torch.Size], budget: int, generator: torch.Generator) -> list[Tensor]:
    """``budget`` positions chosen uniformly at random over all tensors (CPU ``bool`` masks)."""
    total = sum(math.prod(s) for s in shapes)
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=generator)[:budget]] = True
    return [p.reshape(s) for p, s in zip(torch.split(flat, [math.prod(s) for s in shapes]), shapes)]


GROW_FROM = ("accumulated", "batch")


class MaskUpdater:
    """What to drop and what to grow. Subclasses override the scores; selection is shared.

    ``gradient_source`` is ``None`` (no gradient needed), ``"accumulated"`` (gradients summed
    over the steps since the last update) or ``"batch"`` (the last batch's gradient).
    """

    name: ClassVar[str] = ""
    updates: ClassVar[bool] = True  # False: the initial mask is final

    def __init__(self, grow_from: str = "accumulated"):
        if grow_from not in GROW_FROM:
            raise ValueError(f"unknown grow_from {grow_from!r}; choose one of {sorted(GROW_FROM)}")
        self.grow_from = grow_from

    @property
    def gradient_source(self) -> str | None:
        return None

    def initial_masks(self, shapes: list[torch.Size], budget: int, generator: torch.Generator) -> list[Tensor]:
        return random_masks(shapes, budget, generator)

    def drop_scores(self, weights: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        return [w.abs() for w in weights]

    def grow_scores(
        self, weights: list[Tensor], masks: list[Tensor], gradients: list[Tensor] | None, generator: torch.Generator
    ) -> GrowScores:
        raise NotImplementedError

    def verify(self, masks: list[Tensor]) -> None:
        """Raise ``RuntimeError`` if the masks break this updater's structure."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grow_from={self.grow_from!r})"


class DSLUpdater(MaskUpdater):
    """DSL: drop the smallest ``|w|``, grow the largest ``|gradient|``."""

    name = "dsl"

    @property
    def gradient_source(self) -> str | None:
        return self.grow_from

    def grow_scores(self, weights, masks, gradients, generator):
        if gradients is None:
            raise ValueError("dsl grows by gradient; none given")
        return [g.abs() for g in gradients]


class SETUpdater(MaskUpdater):
    """SET (Mocanu et al. 2018): drop the smallest ``|w|``, grow uniformly at random."""

    name = "set"

    def grow_scores(self, weights, masks, gradients, generator):
        return [torch.rand(m.shape, generator=generator).to(m.device) for m in masks]


class StaticUpdater(MaskUpdater):
    """A random mask at the density, never changed."""

    name = "static"
    updates = False

    def grow_scores(self, weights, masks, gradients, generator):
        raise RuntimeError("a static mask is never updated")


def _is_prefix(mask: Tensor) -> Tensor:
    """Per row of a ``[rows, dim]`` mask: is the active set ``[0, L_r)``? Returns ``bool [rows]``."""
    lengths = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask == (positions < lengths)).all(dim=1)


def _prefix_masks(shapes: list[torch.Size], lengths: Tensor) -> list[Tensor]:
    """Masks whose row ``r`` keeps ``[0, lengths[r])``; ``lengths`` runs over the rows of all tables in order."""
    masks = []
    for (rows, dim), part in zip(shapes, torch.split(lengths, [s[0] for s in shapes])):
        masks.append(torch.arange(dim).unsqueeze(0) < part.unsqueeze(1))
    return masks


class NestedDSLUpdater(DSLUpdater):
    """DSL whose rows are always prefixes ``[0, L_r)`` of the dimensions.

    Users and items then share aligned dimensions (a score is a dot product; two independent
    masks at density ``p`` overlap on only ``~p^2`` of them). Drop: an active ``(r, j)`` scores
    the suffix max of ``|w|`` over ``(r, j..L_r-1)``, non-increasing in ``j``, so the smallest
    scores are suffixes. Grow: a candidate ``(r, j)`` scores the prefix min of ``|grad|`` over
    ``(r, L'_r..j)`` where ``L'_r`` is the length after the drop, non-increasing in ``j``, so the
    largest scores are prefixes of the remainder. Ties: :func:`prune_and_regrow` drops the highest
    index and grows the lowest, which keeps both sets closed.
    """

    name = "dsl-nested"

    def initial_masks(self, shapes, budget, generator):
        for s in shapes:
            if len(s) != 2:
                raise ValueError(f"dsl-nested needs [rows, dim] tables, got shape {tuple(s)}")
        total = sum(math.prod(s) for s in shapes)
        # floor(budget * dim / total) per row, the rest one by one to random rows with room
        lengths = torch.cat([torch.full((rows,), budget * dim // total, dtype=torch.long) for rows, dim in shapes])
        dims = torch.cat([torch.full((rows,), dim, dtype=torch.long) for rows, dim in shapes])
        remainder = budget - int(lengths.sum())
        while remainder > 0:
            room = (lengths < dims).nonzero().squeeze(1)
            pick = room[torch.randperm(len(room), generator=generator)[:remainder]]
            lengths[pick] += 1
            remainder -= len(pick)
        return _prefix_masks(shapes, lengths)

    def drop_scores(self, weights, masks):
        self.verify(masks)
        scores = []
        for w, m in zip(weights, masks):
            magnitude = torch.where(m, w.abs(), torch.full_like(w, -math.inf))
            scores.append(magnitude.flip(1).cummax(dim=1).values.flip(1))
        return scores

    def grow_scores(self, weights, masks, gradients, generator):
        if gradients is None:
            raise ValueError("dsl-nested grows by gradient; none given")
        magnitudes = [g.abs() for g in gradients]

        def after_drop(kept: list[Tensor]) -> list[Tensor]:
            scores = []
            for g, k in zip(magnitudes, kept):
                # +inf on the kept prefix leaves cummin = min over (L'_r..j) at candidates
                running = torch.where(k, torch.full_like(g, math.inf), g).cummin(dim=1).values
                scores.append(torch.where(k, torch.full_like(g, -math.inf), running))
            return scores

        return after_drop

    def verify(self, masks):
        for i, m in enumerate(masks):
            bad = int((~_is_prefix(m)).sum())
            if bad:
                raise RuntimeError(f"dsl-nested: {bad} rows of table {i} are not prefixes")


def lengths_from_priors(priors: Tensor, dims: Tensor, budget: int, exponent: float) -> Tensor:
    """Row lengths ``L_r = clip(c * prior_r^exponent, 1, dim_r)`` summing exactly to ``budget``.

    ``c`` is found by bisection; the rounding remainder goes to the rows with the largest
    fractional part (ties: lowest index). Rows get at least one dim while the budget allows.
    """
    weights = priors.double().clamp_min(1e-12) ** exponent
    dims_d = dims.double()
    low_floor = torch.minimum(torch.ones_like(dims_d), dims_d) if budget >= len(dims) else torch.zeros_like(dims_d)
    low, high = 0.0, float(dims_d.max() / weights.min()) + 1.0
    for _ in range(200):
        mid = (low + high) / 2
        if float(torch.minimum(torch.maximum(mid * weights, low_floor), dims_d).sum()) > budget:
            high = mid
        else:
            low = mid
    real = torch.minimum(torch.maximum(low * weights, low_floor), dims_d)
    lengths = real.floor().long()
    remainder = budget - int(lengths.sum())
    if remainder > 0:
        fraction = torch.where(lengths < dims, real - lengths.double(), torch.full_like(real, -1.0))
        order = torch.sort(-fraction, stable=True).indices
        room = order[(lengths[order] < dims[order])][:remainder]
        lengths[room] += 1
        remainder -= len(room)
    while remainder > 0:  # leftovers (every fractional row full): fill rows with room, lowest index first
        room = (lengths < dims).nonzero().squeeze(1)[:remainder]
        lengths[room] += 1
        remainder -= len(room)
    return lengths


class MixedDSLUpdater(NestedDSLUpdater):
    """dsl-nested started from mixed dimensions: row ``r`` begins with a prefix of length
    ``~ c * (degree_r + 1)^exponent`` (popular rows long, rare rows short; Ginart et al.'s mixed
    dimension embeddings), solved to the budget exactly, then moved by the DSL updates.

    Why: in MF a dimension that is zero in every user row (or every item row) has exactly zero
    gradient on the other side, so uniform prefixes of ~density x dim can never grow past their
    initial longest length. Spreading lengths by degree opens the long dimensions from the start.
    """

    name = "dsl-mixed"

    def __init__(self, grow_from: str = "accumulated", exponent: float = 0.5):
        super().__init__(grow_from)
        self.exponent = exponent
        self.row_priors: list[Tensor] | None = None

    def initial_masks(self, shapes, budget, generator):
        if self.row_priors is None:  # not silently dsl-nested: the lengths are what makes it dsl-mixed
            raise ValueError(
                "dsl-mixed needs row priors (one per row of every sparse table, e.g. train degree + 1) "
                "to set its initial row lengths; pass row_priors= to Sparsifier, or use dsl-nested"
            )
        priors = torch.cat([p.reshape(-1) for p in self.row_priors])
        dims = torch.cat([torch.full((rows,), dim, dtype=torch.long) for rows, dim in shapes])
        lengths = lengths_from_priors(priors, dims, budget, self.exponent)
        return _prefix_masks(shapes, lengths)


UPDATERS: dict[str, type[MaskUpdater]] = {
    "dsl": DSLUpdater,
    "set": SETUpdater,
    "static": StaticUpdater,
    "dsl-nested": NestedDSLUpdater,
    "dsl-mixed": MixedDSLUpdater,
}


def prefix_updater(name: str) -> bool:
    """Whether updater ``name`` keeps every row a prefix ``[0, L_r)`` (``dsl-nested``, ``dsl-mixed``)."""
    return name in UPDATERS and issubclass(UPDATERS[name], NestedDSLUpdater)


def random_initial_mask(name: str) -> bool:
    """Whether updater ``name`` starts from :func:`random_masks` (what ``sparsity.mask_init`` may replace):
    ``dsl``, ``set``, ``static``; not the prefix layouts of ``dsl-nested`` and ``dsl-mixed``."""
    return name in UPDATERS and UPDATERS[name].initial_masks is MaskUpdater.initial_masks


def make_updater(name: str, grow_from: str = "accumulated") -> MaskUpdater:
    """Build an updater from :data:`UPDATERS`; a wrong name raises ``ValueError`` listing them."""
    if name not in UPDATERS:
        raise ValueError(f"unknown updater {name!r}; choose one of {sorted(UPDATERS)}")
    return UPDATERS[name](grow_from=grow_from)
