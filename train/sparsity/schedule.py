"""*When* the mask changes and what fraction moves: :class:`UpdateSchedule` (cosine-decayed drop fraction)."""

from __future__ import annotations

import math


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
        return (
            f"UpdateSchedule(update_interval={self.update_interval}, total_steps={self.total_steps}, "
            f"alpha0={self.alpha0}, end_fraction={self.end_fraction})"
        )
