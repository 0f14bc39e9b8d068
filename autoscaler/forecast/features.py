"""Log scaling and lagged windows shared by the learned forecasters (quantile regression, flow).

Rates move multiplicatively and span orders of magnitude, so models work on
``z = log(x + offset)``; windows look at the recent past and at the same
clock time on previous days (the daily season), never past the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import ForecastInputError


@dataclass(frozen=True)
class LogScale:
    """``z = log(x + offset)`` per indicator; ``offset`` keeps zero rates finite."""

    offset: np.ndarray

    @classmethod
    def fit(cls, history: np.ndarray, rel_offset: float = 0.01) -> "LogScale":
        """Offset = ``rel_offset`` x the indicator's mean (a tiny floor for all-zero indicators)."""
        return cls(offset=rel_offset * history.mean(axis=0) + 1e-6)

    def to_log(self, x: np.ndarray) -> np.ndarray:
        return np.log(x + self.offset)

    def from_log(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(np.exp(z) - self.offset, 0.0)


@dataclass(frozen=True)
class WindowSpec:
    """Which past rows one origin ``t`` sees.

    ``recent``: rows ``t-context+1..t``. ``seasonal`` (for ``d`` in ``1..seasons``):
    rows ``t-d*period-pre+1 .. t-d*period+horizon``, i.e. the horizon's clock
    times on earlier days plus ``pre`` rows before them. ``seasons == 0`` when
    the history is too short for a day.
    """

    context: int
    horizon: int
    period: int
    seasons: int
    pre: int

    def __post_init__(self) -> None:
        if min(self.context, self.horizon, self.period, self.pre) < 1 or self.seasons < 0:
            raise ForecastInputError(f"invalid window spec {self}")
        if self.seasons and self.horizon > self.period:
            raise ForecastInputError(f"horizon {self.horizon} exceeds the season of {self.period} steps")

    @property
    def season_len(self) -> int:
        return self.pre + self.horizon

    @property
    def first_origin(self) -> int:
        """Smallest origin index whose windows lie inside the history."""
        return max(self.context - 1, self.seasons * self.period + self.pre - 1)

    def recent(self, z: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """``[N, context, K]``."""
        idx = origins[:, None] + np.arange(-self.context + 1, 1)[None, :]
        return z[idx]

    def seasonal(self, z: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """``[N, seasons, pre + horizon, K]`` (``seasons`` may be 0)."""
        offs = np.arange(-self.pre + 1, self.horizon + 1)
        days = np.arange(1, self.seasons + 1) * self.period
        idx = origins[:, None, None] - days[None, :, None] + offs[None, None, :]
        return z[idx]

    def target(self, z: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """``[N, horizon, K]``: rows ``t+1..t+horizon`` (training only)."""
        idx = origins[:, None] + np.arange(1, self.horizon + 1)[None, :]
        return z[idx]

    def missing(self, earliest: int) -> int:
        """Rows :meth:`pad` puts in front so that row ``earliest`` is a valid origin."""
        return max(0, self.first_origin - earliest)

    def pad(self, z: np.ndarray, earliest: int | None = None) -> np.ndarray:
        """Repeat the oldest row in front so that row ``earliest`` (default: the last) is a valid origin
        (early in a trace); its index then moves up by :meth:`missing`."""
        missing = self.missing(z.shape[0] - 1 if earliest is None else earliest)
        if missing == 0:
            return z
        return np.concatenate([np.repeat(z[:1], missing, axis=0), z], axis=0)
