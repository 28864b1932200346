"""The three stages of a flash-sale stampede, as pure arithmetic for the locust shape.

Ramp from 0 to ``ramp_users`` over ``ramp_s``; jump to ``peak_users`` and hold them for
``peak_s``; cool down to 0 over ``cool_s``; then stop.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stages:
    """Stage lengths in seconds and the user counts they aim at."""

    ramp_s: float = 10.0
    peak_s: float = 30.0
    cool_s: float = 10.0
    ramp_users: int = 50
    peak_users: int = 200

    @property
    def total_s(self) -> float:
        """Length of the whole run."""
        return self.ramp_s + self.peak_s + self.cool_s

    def at(self, elapsed_s: float) -> tuple[int, float] | None:
        """The (user count, spawn rate per second) to aim at ``elapsed_s`` into the run.

        Returns:
            None once the cool-down is over, which ends the run.
        """
        if elapsed_s < self.ramp_s:
            return self.ramp_users, max(self.ramp_users / max(self.ramp_s, 0.001), 1.0)
        if elapsed_s < self.ramp_s + self.peak_s:
            # The stampede: the peak arrives within about a second.
            return self.peak_users, float(max(self.peak_users, 1))
        if elapsed_s < self.total_s:
            return 0, max(self.peak_users / max(self.cool_s, 0.001), 1.0)
        return None
