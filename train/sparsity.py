"""The mask engine of Dynamic Sparse Learning: prune-and-regrow, schedules, updaters, Sparsifier.

*When* the mask changes is :class:`UpdateSchedule`; *what* changes is a :class:`MaskUpdater`
(drop scores and grow scores); the selection itself is the pure function
:func:`prune_and_regrow`, which checks that the number of non-zeros is unchanged.
:class:`Sparsifier` ties them to a model's masked tables and its optimizer. The training loop is::

    loss.backward(); sparsifier.before_step(); optimizer.step(); sparsifier.apply_masks()
    stats = sparsifier.step(global_step)   # the mask update

Tie-breaking, everywhere: among equal drop scores the position with the highest flat index goes
first; among equal grow scores the lowest flat index grows first ("drop from the end, grow from
the start"). It is deterministic, and it keeps the nested updater's per-row prefixes closed.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

GrowScores = list[Tensor] | Callable[[list[Tensor]], list[Tensor]]


# --------------------------------------------------------------------------------------------
# selection on tensors
# --------------------------------------------------------------------------------------------

def _select(values: Tensor, k: int, largest: bool, ties_from_end: bool) -> Tensor:
    """Exactly ``k`` entries of a 1-D tensor: the smallest (or largest), ties broken by position.

    Returns a ``bool`` tensor shaped like ``values`` with ``k`` true entries. ``ties_from_end``
    takes tied entries from the highest positions first, else from the lowest.
    """
    n = values.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    key = -values if largest else values
    threshold = torch.kthvalue(key, k).values
    chosen = key < threshold
    need = k - _count(chosen)
    tied = _positions(key == threshold)
    # fewer than k entries lie strictly below the k-th smallest, so 1 <= need <= len(tied)
    chosen[tied[len(tied) - need:] if ties_from_end else tied[:need]] = True
    return chosen


def _count(tensor: Tensor) -> int:
    """Non-zero (true) entries; ``count_nonzero`` ran 5x faster than a ``bool`` ``sum()`` here."""
    return int(torch.count_nonzero(tensor))


def _positions(flags: Tensor) -> Tensor:
    """Indices of the true entries of a 1-D ``bool`` tensor, ascending (``nonzero().squeeze(1)``).

    On CPU numpy's ``flatnonzero`` ran 4x faster than torch's ``nonzero`` over the 4.5M entries of
    the Gowalla LightGCN table; the mask update calls this three times.
    """
    if flags.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(flags.numpy()))
    return flags.nonzero().squeeze(1)


def _flatten(tensors: list[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    return torch.cat([t.reshape(-1) if dtype is None else t.reshape(-1).to(dtype) for t in tensors])


def _unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    parts = torch.split(flat, [t.numel() for t in like])
    return [p.reshape(t.shape) for p, t in zip(parts, like)]


def _score_dtype(scores: list[Tensor]) -> torch.dtype:
    dtype = scores[0].dtype
    for s in scores[1:]:
        dtype = torch.promote_types(dtype, s.dtype)
    return dtype if dtype.is_floating_point else torch.float32


def _check_scores(name: str, scores: list[Tensor], masks: list[Tensor]) -> None:
    if len(scores) != len(masks):
        raise ValueError(f"{name}: got {len(scores)} tensors for {len(masks)} masks")
    for i, (s, m) in enumerate(zip(scores, masks)):
        if s.shape != m.shape:
            raise ValueError(f"{name}[{i}]: shape {tuple(s.shape)} != mask shape {tuple(m.shape)}")


@torch.no_grad()
def prune_and_regrow(weights: list[Tensor], masks: list[Tensor], grow_scores: GrowScores,
                     drop_fraction: float, drop_scores: list[Tensor] | None = None
                     ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Drop the weakest active positions and grow as many new ones, globally over all tensors.

    ``n_drop = round(drop_fraction * nnz)`` active positions with the smallest drop score (default
    ``|w|``) are dropped; the ``n_drop`` positions with the largest grow score among those not kept
    (inactive before, or just dropped: the paper lets them regrow) are grown. The budget is shared:
    scores are compared across the concatenation of all tensors, so non-zeros move between them.

    Args:
        weights: tensors of any shapes.
        masks: ``bool`` tensors shaped like ``weights``.
        grow_scores: tensors shaped like ``weights``, or a function of the kept masks (after the
            drop) returning them, for updaters whose growth depends on what was dropped.
        drop_fraction: fraction of the active positions to move, in ``[0, 1]``.
        drop_scores: tensors shaped like ``weights``; ``None`` uses ``|w|``.

    Returns:
        ``(new_masks, dropped, grown)``, ``bool`` tensors shaped like ``masks``. ``dropped`` were
        active and are not kept; ``grown`` were not kept and are active now (a just-dropped
        position may be in both). The caller zeroes the weights at ``grown``.

    Raises:
        RuntimeError: if the selection broke an invariant (kept and grown overlap, nnz changed).
    """
    if not masks:
        raise ValueError("prune_and_regrow: no tensors")
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    _check_scores("weights", weights, masks)
    for i, m in enumerate(masks):
        if m.dtype != torch.bool:
            raise ValueError(f"masks[{i}] must be bool, got {m.dtype}")
    if drop_scores is None:
        drop_scores = [w.abs() for w in weights]
    _check_scores("drop_scores", drop_scores, masks)

    old = _flatten(masks)
    nnz = _count(old)
    n_drop = int(round(drop_fraction * nnz))

    active = _positions(old)
    drop_values = _flatten(drop_scores, _score_dtype(drop_scores))[active]
    if torch.isnan(drop_values).any():
        raise ValueError("drop scores contain NaN at active positions")
    dropped_index = active[_select(drop_values, n_drop, largest=False, ties_from_end=True)]
    kept = old.clone()
    kept[dropped_index] = False

    if callable(grow_scores):
        grow_scores = grow_scores(_unflatten(kept, masks))
    _check_scores("grow_scores", grow_scores, masks)
    candidates = _positions(~kept)
    grow_values = _flatten(grow_scores, _score_dtype(grow_scores))[candidates]
    if torch.isnan(grow_values).any():
        raise ValueError("grow scores contain NaN at candidate positions")
    grown_index = candidates[_select(grow_values, n_drop, largest=True, ties_from_end=False)]
    grown = torch.zeros_like(old)
    grown[grown_index] = True
    new = kept | grown
    dropped = old & ~kept

    n_new, n_dropped, n_grown = _count(new), _count(dropped), _count(grown)
    overlap = _count(kept & grown)
    if overlap or n_new != nnz or n_dropped != n_drop or n_grown != n_drop:
        raise RuntimeError(
            f"prune_and_regrow broke an invariant: nnz {nnz} -> {n_new}, asked to move {n_drop}, "
            f"dropped {n_dropped}, grown {n_grown}, kept and grown overlap on {overlap}")
    return _unflatten(new, masks), _unflatten(dropped, masks), _unflatten(grown, masks)


# --------------------------------------------------------------------------------------------
# when: the schedule
# --------------------------------------------------------------------------------------------

class UpdateSchedule:
    """When the mask changes and what fraction moves.

    Args:
        update_interval: optimizer steps between updates.
        total_steps: optimizer steps in the whole run.
        alpha0: drop fraction at step 0, cosine-decayed to 0 at ``end_fraction * total_steps``.
        end_fraction: no update at or after ``end_fraction * total_steps``.
    """

    def __init__(self, update_interval: int, total_steps: int, alpha0: float = 0.5, end_fraction: float = 1.0):
        if update_interval < 1:
            raise ValueError(f"update_interval must be >= 1, got {update_interval}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= alpha0 <= 1.0:
            raise ValueError(f"alpha0 must be in [0, 1], got {alpha0}")
        if not 0.0 < end_fraction <= 1.0:
            raise ValueError(f"end_fraction must be in (0, 1], got {end_fraction}")
        self.update_interval = update_interval
        self.total_steps = total_steps
        self.alpha0 = alpha0
        self.end_fraction = end_fraction
        self.end_step = end_fraction * total_steps

    def should_update(self, step: int) -> bool:
        """``step`` counts optimizer steps from 1."""
        return step > 0 and step % self.update_interval == 0 and step < self.end_step

    def drop_fraction(self, step: int) -> float:
        """``alpha0 / 2 * (1 + cos(pi * step / end_step))``; 0 from ``end_step`` on."""
        if step >= self.end_step:
            return 0.0
        return self.alpha0 / 2.0 * (1.0 + math.cos(math.pi * step / self.end_step))

    @property
    def last_update_step(self) -> int:
        """The last step that updates (0 when none does)."""
        last = math.ceil(self.end_step) - 1
        return last - last % self.update_interval

    def __repr__(self) -> str:
        return (f"UpdateSchedule(update_interval={self.update_interval}, total_steps={self.total_steps}, "
                f"alpha0={self.alpha0}, end_fraction={self.end_fraction})")


# --------------------------------------------------------------------------------------------
# what: the updaters
# --------------------------------------------------------------------------------------------

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

    def grow_scores(self, weights: list[Tensor], masks: list[Tensor], gradients: list[Tensor] | None,
                    generator: torch.Generator) -> GrowScores:
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
        masks = []
        for (rows, dim), part in zip(shapes, torch.split(lengths, [s[0] for s in shapes])):
            masks.append(torch.arange(dim).unsqueeze(0) < part.unsqueeze(1))
        return masks

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
            raise ValueError("dsl-mixed needs row priors (one per row of every sparse table, e.g. train degree + 1) "
                             "to set its initial row lengths; pass row_priors= to Sparsifier, or use dsl-nested")
        priors = torch.cat([p.reshape(-1) for p in self.row_priors])
        dims = torch.cat([torch.full((rows,), dim, dtype=torch.long) for rows, dim in shapes])
        lengths = lengths_from_priors(priors, dims, budget, self.exponent)
        masks = []
        for (rows, dim), part in zip(shapes, torch.split(lengths, [s[0] for s in shapes])):
            masks.append(torch.arange(dim).unsqueeze(0) < part.unsqueeze(1))
        return masks


UPDATERS: dict[str, type[MaskUpdater]] = {
    "dsl": DSLUpdater,
    "set": SETUpdater,
    "static": StaticUpdater,
    "dsl-nested": NestedDSLUpdater,
    "dsl-mixed": MixedDSLUpdater,
}

# Modes the Sparsifier accepts beyond the mask updaters: prune-finetune trains dense, then
# prune_to_budget() fixes the mask; small-dense is a smaller dense model (nothing to mask).
OTHER_MODES = ("prune-finetune", "small-dense")


def make_updater(name: str, grow_from: str = "accumulated") -> MaskUpdater:
    """Build an updater from :data:`UPDATERS`; a wrong name raises ``ValueError`` listing them."""
    if name not in UPDATERS:
        raise ValueError(f"unknown updater {name!r}; choose one of {sorted(UPDATERS)}")
    return UPDATERS[name](grow_from=grow_from)


# --------------------------------------------------------------------------------------------
# the object the training loop calls
# --------------------------------------------------------------------------------------------

def row_nnz_histogram(mask: Tensor, rows: slice | None = None) -> list[int]:
    """Rows by number of active dims: ``counts[k]`` = rows with exactly ``k`` non-zeros.

    Args:
        mask: ``bool [n_rows, dim]``.
        rows: optional row range (a row group, e.g. the items of LightGCN's joint table).

    Returns:
        ``dim + 1`` counts summing to the number of rows.
    """
    if rows is not None:
        mask = mask[rows]
    return torch.bincount(mask.sum(dim=1).cpu(), minlength=mask.shape[1] + 1).tolist()


class Sparsifier:
    """Keeps a model's masked tables at a fixed global budget and updates the masks.

    Args:
        model: exposes ``sparse_tables() -> {name: MaskedEmbedding}`` and ``row_groups()``.
        optimizer: the optimizer over the model's parameters (its state tensors shaped like a
            table are zeroed where the mask changes); may be ``None``.
        config: a ``SparsityConfig``.
        total_steps: optimizer steps in the whole run (for the cosine schedule).
        seed: seeds the generator of the random initial mask and of random growth.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, config, total_steps: int, seed: int,
                 row_priors: dict[str, Tensor] | None = None):
        self.model = model
        self.optimizer = optimizer
        self.config = config
        self.tables = dict(model.sparse_tables())
        self.groups = dict(model.row_groups())
        self.total_entries = sum(t.weight.numel() for t in self.tables.values())
        self.mode = config.updater
        if self.mode not in UPDATERS and self.mode not in OTHER_MODES:
            raise ValueError(f"unknown updater {self.mode!r}; choose one of {sorted(UPDATERS) + list(OTHER_MODES)}")
        if not config.density > 0.0:
            raise ValueError(f"density must be > 0, got {config.density}")
        self.dense = config.density >= 1.0 or self.mode == "small-dense" or self.total_entries == 0
        self.budget = self.total_entries if self.dense else int(round(config.density * self.total_entries))
        if self.budget < 1 and not self.dense:
            raise ValueError(f"density {config.density} leaves no non-zero out of {self.total_entries}")
        self.updater = make_updater(self.mode, config.grow_from) if self.mode in UPDATERS else None
        if isinstance(self.updater, MixedDSLUpdater):
            self.updater.exponent = config.row_prior_exponent
            if row_priors is None:
                raise ValueError("sparsity.updater=dsl-mixed needs row_priors (per-row train degrees; the Trainer "
                                 "passes them); without them use sparsity.updater=dsl-nested")
            missing = sorted(set(self.tables) - set(row_priors))
            if missing:
                raise ValueError(f"dsl-mixed: row_priors lack tables {missing}")
            self.updater.row_priors = [row_priors[name] for name in self.tables]
        if self.updater is None and config.grow_from not in GROW_FROM:
            raise ValueError(f"unknown grow_from {config.grow_from!r}; choose one of {sorted(GROW_FROM)}")
        self.schedule = UpdateSchedule(config.update_interval, total_steps, config.alpha0, config.end_fraction)
        self.generator = torch.Generator().manual_seed(seed)
        # masks_active: the masks constrain the weights (False while dense, incl. prune-finetune's
        # dense phase); updating: the masks will still change
        self.masks_active = not self.dense and self.updater is not None
        self.updating = (self.masks_active and self.updater.updates and self.schedule.last_update_step > 0)
        self.gradients: dict[str, Tensor] = {}
        if self.updating and self.updater.gradient_source is not None:
            self.gradients = {name: torch.zeros_like(t.weight, dtype=torch.float32) for name, t in self.tables.items()}
        self.n_updates = 0
        self._keep_cache: dict[str, tuple[tuple, Tensor]] = {}
        self.last_update: dict = {}
        self.last_dropped: dict[str, Tensor] = {}
        self.last_grown: dict[str, Tensor] = {}

    # ---- masks at start and around each optimizer step -------------------------------------

    @torch.no_grad()
    def init_masks(self) -> None:
        """Random global mask at the density (the updater's own for dsl-nested); weights *= mask."""
        if not self.masks_active:
            for table in self.tables.values():
                table.mask.fill_(True)
            return
        shapes = [t.weight.shape for t in self.tables.values()]
        masks = self.updater.initial_masks(shapes, self.budget, self.generator)
        for (name, table), mask in zip(self.tables.items(), masks):
            table.mask.copy_(mask.to(table.mask.device))
            table.apply_mask_()
            self._zero_optimizer_state(table.weight, ~table.mask)
        self.updater.verify([t.mask for t in self.tables.values()])
        self.check()
        log.info("init masks: %s, budget %d of %d (%.4f)", self.mode, self.budget, self.total_entries,
                 self.budget / self.total_entries)

    @torch.no_grad()
    def before_step(self) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: store gradients for growth,
        then ``grad *= mask`` so the optimizer's moments stay zero at inactive positions."""
        if not self.masks_active:
            return
        source = self.updater.gradient_source if self.updating else None
        for name, table in self.tables.items():
            grad = table.weight.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise TypeError(f"{name}: sparse gradients are not supported")
            if source == "accumulated":
                self.gradients[name].add_(grad)
            elif source == "batch":
                self.gradients[name].copy_(grad)
            grad.mul_(self._keep(name, table))

    @torch.no_grad()
    def apply_masks(self) -> None:
        """After ``optimizer.step()``: ``weight *= mask``."""
        if not self.masks_active:
            return
        for name, table in self.tables.items():
            table.weight.mul_(self._keep(name, table))

    def _keep(self, name: str, table) -> Tensor:
        """``table.mask`` in the weight's dtype, cached until the mask changes in place.

        Why: the two per-step multiplications are the sparsifier's hot path, and multiplying by a
        float tensor ran 2x faster than by a ``bool`` one (same values: ``x * 1.0 == x``, and
        ``x * 0.0`` is what the ``bool`` product gives too). Every in-place write to the mask
        (``copy_``, ``load_state_dict``) bumps its version counter, which invalidates the copy.
        """
        mask = table.mask
        key = (mask.data_ptr(), mask._version, table.weight.dtype, table.weight.device)
        cached = self._keep_cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, mask.to(table.weight.dtype))
            self._keep_cache[name] = cached
        return cached[1]

    # ---- the update ------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, step: int) -> dict | None:
        """Update the masks if the schedule says so at ``step`` (optimizer steps, from 1).

        Returns the stats of the update (see :meth:`stats`, plus ``step``, ``drop_fraction``,
        ``n_drop``, ``n_moved``, ``n_regrown``), or ``None`` when nothing was updated.
        """
        if not self.updating:
            return None
        if not self.schedule.should_update(step):
            if step >= self.schedule.last_update_step:
                self._finish_updates()
            return None
        names = list(self.tables)
        tables = [self.tables[n] for n in names]
        weights = [t.weight.detach() for t in tables]
        old_masks = [t.mask.clone() for t in tables]
        gradients = [self.gradients[n] for n in names] if self.gradients else None
        fraction = self.schedule.drop_fraction(step)
        drop = self.updater.drop_scores(weights, old_masks)
        grow = self.updater.grow_scores(weights, old_masks, gradients, self.generator)
        new_masks, dropped, grown = prune_and_regrow(weights, old_masks, grow, fraction, drop)
        for name, table, new, gone, born in zip(names, tables, new_masks, dropped, grown):
            table.mask.copy_(new)
            table.weight.masked_fill_(born, 0.0)  # regrown weights start at zero
            table.apply_mask_()
            self._zero_optimizer_state(table.weight, gone | born)
        for buffer in self.gradients.values():
            buffer.zero_()
        self.updater.verify([t.mask for t in tables])
        self.check()
        self.n_updates += 1
        self.last_dropped = dict(zip(names, dropped))
        self.last_grown = dict(zip(names, grown))
        self.last_update = {
            "step": int(step),
            "drop_fraction": float(fraction),
            "n_drop": sum(_count(d) for d in dropped),
            "n_moved": sum(_count(n & ~o) for n, o in zip(new_masks, old_masks)),
            "n_regrown": sum(_count(d & g) for d, g in zip(dropped, grown)),
        }
        if step >= self.schedule.last_update_step:
            self._finish_updates()
        stats = self.stats()
        log.debug("mask update: %s", stats)
        return stats

    def _finish_updates(self) -> None:
        """No update is left: stop accumulating and free the gradient buffers."""
        self.updating = False
        self.gradients = {}

    def _zero_optimizer_state(self, param: Tensor, positions: Tensor) -> None:
        """Zero every optimizer state tensor shaped like ``param`` (Adam's exp_avg, exp_avg_sq,
        max_exp_avg_sq; SGD's momentum_buffer) at ``positions``."""
        if self.optimizer is None:
            return
        state = self.optimizer.state.get(param, {})
        for value in state.values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.masked_fill_(positions, 0)

    @torch.no_grad()
    def prune_to_budget(self) -> dict:
        """Global magnitude prune to the budget (the prune-finetune baseline); masks fixed after.

        Keeps the ``budget`` largest ``|w|`` over all tables (ties: the lowest index kept).
        """
        if self.total_entries == 0 or self.mode == "small-dense":
            return self.stats()
        weights = [t.weight.detach() for t in self.tables.values()]
        keep = _select(_flatten([w.abs() for w in weights], torch.float32), self.budget, largest=True, ties_from_end=False)
        for table, mask in zip(self.tables.values(), _unflatten(keep, weights)):
            table.mask.copy_(mask)
            table.apply_mask_()
            self._zero_optimizer_state(table.weight, ~mask)
        self.masks_active = True
        self._finish_updates()
        self.check()
        return self.stats()

    # ---- checks and numbers ---------------------------------------------------------------

    @torch.no_grad()
    def check(self) -> None:
        """Raise ``RuntimeError`` if nnz differs from the budget or a weight outside its mask is not 0."""
        expected = self.budget if self.masks_active else self.total_entries
        nnz = sum(self.nnz_by_table().values())
        if nnz != expected:
            raise RuntimeError(f"mask nnz {nnz} != budget {expected} ({self.mode}, by table {self.nnz_by_table()})")
        for name, table in self.tables.items():
            bad = _count(table.weight.detach().masked_fill(table.mask, 0))
            if bad:
                outside = table.weight.detach().masked_select(~table.mask)
                raise RuntimeError(f"{name}: {bad} weights outside the mask are non-zero "
                                   f"(max |w| {float(outside.abs().max()):.3g})")

    def nnz_by_table(self) -> dict[str, int]:
        return {name: _count(t.mask) for name, t in self.tables.items()}

    @torch.no_grad()
    def stats(self) -> dict:
        """Flat, JSON-ready numbers: ``nnz``, ``budget``, ``nnz/<table>``, ``share/<group>`` (of
        the non-zeros), ``empty_rows/<group>`` (fraction of rows with no active dim), and after an
        update the last update's ``step``, ``drop_fraction``, ``n_drop``, ``n_moved``, ``n_regrown``."""
        by_table = self.nnz_by_table()
        nnz = sum(by_table.values())
        out: dict = {"nnz": nnz, "budget": self.budget, "density": nnz / max(self.total_entries, 1),
                     "n_updates": self.n_updates}
        out.update({f"nnz/{name}": n for name, n in by_table.items()})
        for group, (table_name, rows) in self.groups.items():
            mask = self.tables[table_name].mask[rows]
            per_row = mask.sum(dim=1)
            out[f"share/{group}"] = int(per_row.sum()) / max(nnz, 1)
            out[f"empty_rows/{group}"] = float((per_row == 0).float().mean()) if len(per_row) else 0.0
        out.update(self.last_update)
        return out

    def row_histograms(self) -> dict[str, list[int]]:
        """:func:`row_nnz_histogram` per row group (``users``, ``items``)."""
        return {group: row_nnz_histogram(self.tables[table].mask, rows) for group, (table, rows) in self.groups.items()}

    # ---- resume ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Tensors and plain Python only (stored by ``train.checkpoint.save_state``, no pickle). The masks
        themselves live in the model's state_dict, the moments in the optimizer's."""
        return {
            "format": 1,
            "mode": self.mode,
            "budget": self.budget,
            "generator": self.generator.get_state(),
            "gradients": {name: g.detach().cpu().clone() for name, g in self.gradients.items()},
            "masks_active": self.masks_active,
            "updating": self.updating,
            "n_updates": self.n_updates,
            "last_update": dict(self.last_update),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != 1:
            raise ValueError(f"unknown Sparsifier state format {state.get('format')!r}")
        if state["mode"] != self.mode or state["budget"] != self.budget:
            raise ValueError(f"Sparsifier state is for {state['mode']!r} at budget {state['budget']}, "
                             f"this one is {self.mode!r} at budget {self.budget}")
        unknown = sorted(set(state["gradients"]) - set(self.tables))
        if unknown:
            raise ValueError(f"Sparsifier state has gradients for unknown tables {unknown}")
        self.generator.set_state(state["generator"])
        self.masks_active = bool(state["masks_active"])
        self.updating = bool(state["updating"])
        self.gradients = {name: g.to(device=self.tables[name].weight.device, dtype=torch.float32).clone()
                          for name, g in state["gradients"].items()}
        self.n_updates = int(state["n_updates"])
        self.last_update = dict(state["last_update"])
