"""The object the training loop calls: :class:`Sparsifier` keeps a model's masked tables at the budget.

loss.backward(); sparsifier.before_step(); optimizer.step(); sparsifier.apply_masks()
stats = sparsifier.step(global_step)   # the mask update
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, nn

# OTHER_MODES: the modes accepted beyond the mask updaters (prune-finetune trains dense, then
# prune_to_budget() fixes the mask; small-dense is a smaller dense model); re-exported here
from ..config import OTHER_MODES, SparsityConfig
from .budget import budget_for
from .kernel import count, flatten, prune_and_regrow, select, unflatten
from .nmf import MASK_INITS, nmf_masks, prefix_masks
from .schedule import UpdateSchedule
from .updaters import GROW_FROM, UPDATERS, MixedDSLUpdater, make_updater, prefix_updater, random_initial_mask

log = logging.getLogger(__name__)


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
        seed: seeds the generator of the random initial mask and of random growth, and the NMF's start.
        row_priors: per-row priors of every table (``dsl-mixed``'s initial row lengths).
        interactions: the train pairs ``(users, items)`` (``sparsity.mask_init=nmf`` factorises them).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        config: SparsityConfig,
        total_steps: int,
        seed: int,
        row_priors: dict[str, Tensor] | None = None,
        interactions: tuple[np.ndarray, np.ndarray] | None = None,
    ):
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
        self.dense = not config.has_mask or self.total_entries == 0
        shapes = [t.weight.shape for t in self.tables.values()]
        self.budget = self.total_entries if self.dense else budget_for(shapes, config.density, config.budget_rule)
        if self.budget < 1 and not self.dense:
            raise ValueError(f"density {config.density} leaves no non-zero out of {self.total_entries}")
        self.updater = make_updater(self.mode, config.grow_from) if self.mode in UPDATERS else None
        if isinstance(self.updater, MixedDSLUpdater):
            self.updater.exponent = config.row_prior_exponent
            if row_priors is None:
                raise ValueError(
                    "sparsity.updater=dsl-mixed needs row_priors (per-row train degrees; the Trainer "
                    "passes them); without them use sparsity.updater=dsl-nested"
                )
            missing = sorted(set(self.tables) - set(row_priors))
            if missing:
                raise ValueError(f"dsl-mixed: row_priors lack tables {missing}")
            self.updater.row_priors = [row_priors[name] for name in self.tables]
        if self.updater is None and config.grow_from not in GROW_FROM:
            raise ValueError(f"unknown grow_from {config.grow_from!r}; choose one of {sorted(GROW_FROM)}")
        self.schedule = UpdateSchedule(config.update_interval, total_steps, config.alpha0, config.end_fraction)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        # masks_active: the masks constrain the weights (False while dense, incl. prune-finetune's
        # dense phase); updating: the masks will still change
        self.masks_active = not self.dense and self.updater is not None
        self.mask_init = config.mask_init
        if self.mask_init not in MASK_INITS:
            raise ValueError(f"unknown mask_init {self.mask_init!r}; choose one of {list(MASK_INITS)}")
        if self.mask_init == "nmf":
            if not self.masks_active or not (random_initial_mask(self.mode) or prefix_updater(self.mode)):
                raise ValueError(
                    f"mask_init=nmf replaces the initial mask of a masked updater; "
                    f"updater={self.mode!r} at density {config.density} has none"
                )
            if interactions is None:
                raise ValueError(
                    "mask_init=nmf needs the train pairs (interactions=(users, items); the Trainer passes them)"
                )
        self.interactions = interactions
        self.init_info: dict = {}
        self.updating = self.masks_active and self.updater.updates and self.schedule.last_update_step > 0
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
        """Random global mask at the density (the updater's own for dsl-nested; with ``mask_init=nmf``
        the largest entries of an NMF of the train interactions, :mod:`train.sparsity.nmf`); weights *= mask."""
        if not self.masks_active:
            for table in self.tables.values():
                table.mask.fill_(True)
            return
        shapes = [t.weight.shape for t in self.tables.values()]
        if self.mask_init == "nmf":
            index = {name: i for i, name in enumerate(self.tables)}
            groups = {group: (index[table], rows) for group, (table, rows) in self.groups.items()}
            users, items = self.interactions
            masks, self.init_info = nmf_masks(shapes, groups, users, items, self.budget, self.seed, self.generator)
            if prefix_updater(self.mode):  # each row the prefix of its NMF count (train.sparsity.nmf)
                masks = prefix_masks(masks)
                self.init_info["layout"] = "prefix of each row's NMF count"
            log.info("init masks from NMF: %s", self.init_info)
        else:
            masks = self.updater.initial_masks(shapes, self.budget, self.generator)
        for (name, table), mask in zip(self.tables.items(), masks):
            table.mask.copy_(mask.to(table.mask.device))
            table.apply_mask_()
            self._zero_optimizer_state(table.weight, ~table.mask)
        self.updater.verify([t.mask for t in self.tables.values()])
        self.check()
        log.info(
            "init masks: %s (%s), budget %d of %d (%.4f)",
            self.mode,
            self.mask_init,
            self.budget,
            self.total_entries,
            self.budget / self.total_entries,
        )

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
            "n_drop": sum(count(d) for d in dropped),
            "n_moved": sum(count(n & ~o) for n, o in zip(new_masks, old_masks)),
            "n_regrown": sum(count(d & g) for d, g in zip(dropped, grown)),
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
        if self.dense:  # nothing to prune: density 1, small-dense, or no table
            return self.stats()
        weights = [t.weight.detach() for t in self.tables.values()]
        keep = select(
            flatten([w.abs() for w in weights], torch.float32), self.budget, largest=True, ties_from_end=False
        )
        for table, mask in zip(self.tables.values(), unflatten(keep, weights)):
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
            bad = count(table.weight.detach().masked_fill(table.mask, 0))
            if bad:
                outside = table.weight.detach().masked_select(~table.mask)
                raise RuntimeError(
                    f"{name}: {bad} weights outside the mask are non-zero (max |w| {float(outside.abs().max()):.3g})"
                )

    def nnz_by_table(self) -> dict[str, int]:
        return {name: count(t.mask) for name, t in self.tables.items()}

    @torch.no_grad()
    def stats(self) -> dict:
        """Flat, JSON-ready numbers: ``nnz``, ``budget``, ``nnz/<table>``, ``share/<group>`` (of
        the non-zeros), ``empty_rows/<group>`` (fraction of rows with no active dim), and after an
        update the last update's ``step``, ``drop_fraction``, ``n_drop``, ``n_moved``, ``n_regrown``."""
        by_table = self.nnz_by_table()
        nnz = sum(by_table.values())
        out: dict = {
            "nnz": nnz,
            "budget": self.budget,
            "density": nnz / max(self.total_entries, 1),
            "n_updates": self.n_updates,
        }
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
            raise ValueError(
                f"Sparsifier state is for {state['mode']!r} at budget {state['budget']}, "
                f"this one is {self.mode!r} at budget {self.budget}"
            )
        unknown = sorted(set(state["gradients"]) - set(self.tables))
        if unknown:
            raise ValueError(f"Sparsifier state has gradients for unknown tables {unknown}")
        self.generator.set_state(state["generator"])
        self.masks_active = bool(state["masks_active"])
        self.updating = bool(state["updating"])
        self.gradients = {
            name: g.to(device=self.tables[name].weight.device, dtype=torch.float32).clone()
            for name, g in state["gradients"].items()
        }
        self.n_updates = int(state["n_updates"])
        self.last_update = dict(state["last_update"])
