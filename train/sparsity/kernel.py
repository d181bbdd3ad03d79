"""The selection kernel: :func:`prune_and_regrow` on plain tensors, no model.

Tie-breaking: among equal drop scores the position with the highest flat index goes first; among
equal grow scores the lowest flat index grows first ("drop from the end, grow from the start").
It is deterministic, and it keeps the nested updater's per-row prefixes closed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

GrowScores = list[Tensor] | Callable[[list[Tensor]], list[Tensor]]


def select(values: Tensor, k: int, largest: bool, ties_from_end: bool) -> Tensor:
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
    threshold = kth_smallest(key, k)
    chosen = key < threshold
    need = k - count(chosen)
    tied = _positions(key == threshold)
    # fewer than k entries lie strictly below the k-th smallest, so 1 <= need <= len(tied)
    chosen[tied[len(tied) - need :] if ties_from_end else tied[:need]] = True
    return chosen


def kth_smallest(values: Tensor, k: int, by_sort: bool | None = None) -> Tensor:
    """The ``k``-th smallest entry (from 1) of a 1-D tensor, as a 0-d tensor on its device.

    ``by_sort`` (default: on CUDA) reads it from a full sort instead of ``torch.kthvalue``: on CUDA
    ``kthvalue`` runs one radix select in a single thread block for a 1-D tensor, about 20x slower
    than the device-wide sort (pytorch/pytorch#75599, open), and the mask update selects twice, over
    the active and over the inactive positions (4.5M in all on Gowalla's LightGCN). On CPU
    ``kthvalue``'s quickselect is the faster.
    Both give the same value (NaN sorts last in both).
    """
    if by_sort is None:
        by_sort = values.is_cuda
    if by_sort:
        return torch.sort(values).values[k - 1]
    return torch.kthvalue(values, k).values


def count(tensor: Tensor) -> int:
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


def flatten(tensors: list[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    return torch.cat([t.reshape(-1) if dtype is None else t.reshape(-1).to(dtype) for t in tensors])


def unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
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
def prune_and_regrow(
    weights: list[Tensor],
    masks: list[Tensor],
    grow_scores: GrowScores,
    drop_fraction: float,
    drop_scores: list[Tensor] | None = None,
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

    old = flatten(masks)
    nnz = count(old)
    n_drop = int(round(drop_fraction * nnz))

    active = _positions(old)
    drop_values = flatten(drop_scores, _score_dtype(drop_scores))[active]
    if torch.isnan(drop_values).any():
        raise ValueError("drop scores contain NaN at active positions")
    dropped_index = active[select(drop_values, n_drop, largest=False, ties_from_end=True)]
    kept = old.clone()
    kept[dropped_index] = False

    if callable(grow_scores):
        grow_scores = grow_scores(unflatten(kept, masks))
    _check_scores("grow_scores", grow_scores, masks)
    candidates = _positions(~kept)
    grow_values = flatten(grow_scores, _score_dtype(grow_scores))[candidates]
    if torch.isnan(grow_values).any():
        raise ValueError("grow scores contain NaN at candidate positions")
    grown_index = candidates[select(grow_values, n_drop, largest=True, ties_from_end=False)]
    grown = torch.zeros_like(old)
    grown[grown_index] = True
    new = kept | grown
    dropped = old & ~kept

    n_new, n_dropped, n_grown = count(new), count(dropped), count(grown)
    overlap = count(kept & grown)
    if overlap or n_new != nnz or n_dropped != n_drop or n_grown != n_drop:
        raise RuntimeError(
            f"prune_and_regrow broke an invariant: nnz {nnz} -> {n_new}, asked to move {n_drop}, "
            f"dropped {n_dropped}, grown {n_grown}, kept and grown overlap on {overlap}"
        )
    return unflatten(new, masks), unflatten(dropped, masks), unflatten(grown, masks)
