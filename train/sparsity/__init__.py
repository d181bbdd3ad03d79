"""The mask engine of Dynamic Sparse Learning: prune-and-regrow, schedules, updaters, Sparsifier.

*When* the mask changes is :class:`UpdateSchedule` (``schedule``); *what* changes is a
:class:`MaskUpdater` (``updaters``: drop scores and grow scores); the selection itself is the pure
function :func:`prune_and_regrow` (``kernel``), which checks that the number of non-zeros is
unchanged; how many non-zeros a run holds is ``budget``. :class:`Sparsifier` (``sparsifier``) ties
them to a model's masked tables and its optimizer. The training loop is::

    loss.backward(); sparsifier.before_step(); optimizer.step(); sparsifier.apply_masks()
    stats = sparsifier.step(global_step)   # the mask update

Tie-breaking, everywhere: among equal drop scores the position with the highest flat index goes
first; among equal grow scores the lowest flat index grows first ("drop from the end, grow from
the start"). It is deterministic, and it keeps the nested updater's per-row prefixes closed.
The names below are the package's interface; import them from ``train.sparsity``.
"""

from .budget import BUDGET_RULES, budget_for, small_dense_dim
from .kernel import GrowScores, prune_and_regrow
from .nmf import MASK_INITS, nmf, nmf_masks
from .schedule import UpdateSchedule
from .sparsifier import OTHER_MODES, Sparsifier, row_nnz_histogram
from .updaters import (
    GROW_FROM,
    UPDATERS,
    DSLUpdater,
    MaskUpdater,
    MixedDSLUpdater,
    NestedDSLUpdater,
    SETUpdater,
    StaticUpdater,
    lengths_from_priors,
    make_updater,
    prefix_updater,
    random_initial_mask,
    random_masks,
)

__all__ = [
    "BUDGET_RULES",
    "GROW_FROM",
    "MASK_INITS",
    "OTHER_MODES",
    "UPDATERS",
    "DSLUpdater",
    "GrowScores",
    "MaskUpdater",
    "MixedDSLUpdater",
    "NestedDSLUpdater",
    "SETUpdater",
    "Sparsifier",
    "StaticUpdater",
    "UpdateSchedule",
    "budget_for",
    "lengths_from_priors",
    "make_updater",
    "nmf",
    "nmf_masks",
    "prefix_updater",
    "prune_and_regrow",
    "random_initial_mask",
    "random_masks",
    "row_nnz_histogram",
    "small_dense_dim",
]
