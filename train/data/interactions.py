"""What every reader and the generator return: :class:`RawInteractions`, and :class:`DataError`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """Bad input data or a bad data option; the message names the file (and line where relevant)."""


@dataclass(frozen=True)
class RawInteractions:
    """Interactions as read, in input order, before any filtering.

    Attributes:
        users, items: ``[n]`` external ids, ``str`` arrays (files) or ``int64`` (generated,
            LightGCN files).
        ratings: ``[n]`` float64 or ``None`` when the source has no rating column.
        timestamps: ``[n]`` float64 or ``None`` when the source has no timestamp column.
        source: where they came from, for messages.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.users)
