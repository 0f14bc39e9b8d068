"""Typed per-pool indicator time series and their cluster -> pool hierarchy (as in HARMONY).

A pool's series is a ``[T, K]`` array over fixed-step ticks with named columns; the cluster
view aggregates pools column by column: arrival and token rates take the largest pool's (every
request passes through both pools, so a sum would count it twice), queues and watts add, latency
percentiles take the worst pool, KV use averages; a pool that does not measure an indicator reports
NaN there and is left out of the cluster's value. Forecasters read the demand columns. The simulator
gives a run's series (``SimResult.indicators``); the live controller (to come) fills the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np
import pandas as pd

INDICATORS = (
    "arrival_rps",
    "input_tokens_per_s",
    "output_tokens_per_s",
    "queue_requests",
    "kv_use_fraction",
    "ttft_p99_s",
    "tpot_p99_s",
    "power_w",
)
# What demand forecasters predict: the columns a trace defines independently of any policy.
DEMAND_INDICATORS = INDICATORS[:3]
_AGGREGATE = {
    "arrival_rps": "max",  # every request visits both pools: the cluster rate is the pools' rate
    "input_tokens_per_s": "max",
    "output_tokens_per_s": "max",
    "queue_requests": "sum",
    "kv_use_fraction": "mean",
    "ttft_p99_s": "max",
    "tpot_p99_s": "max",
    "power_w": "sum",
}


class IndicatorError(ValueError):
    """Indicator series of inconsistent shape, step or names."""


@dataclass(frozen=True)
class IndicatorSeries:
    """One pool's indicators: ``values[t, k]`` for tick ``t`` starting at ``start_s + t * step_s``."""

    pool: str
    step_s: float
    start_s: float
    names: tuple[str, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise IndicatorError(f"pool {self.pool}: values shape {self.values.shape} does not match names {self.names}")
        unknown = set(self.names) - set(INDICATORS)
        if unknown:
            raise IndicatorError(f"pool {self.pool}: unknown indicators {sorted(unknown)}; known: {INDICATORS}")
        if len(set(self.names)) != len(self.names):
            raise IndicatorError(f"pool {self.pool}: indicator names repeat: {self.names}")
        if not (np.isfinite(self.step_s) and self.step_s > 0 and np.isfinite(self.start_s)):
            raise IndicatorError(f"pool {self.pool}: step_s must be a finite number > 0 and start_s finite, got "
                                 f"{self.step_s}, {self.start_s}")

    def __len__(self) -> int:
        return self.values.shape[0]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]


@dataclass(frozen=True)
class ClusterIndicators:
    """The hierarchy: a cluster of named pools sharing one clock."""

    pools: Mapping[str, IndicatorSeries]

    def __post_init__(self) -> None:
        series = list(self.pools.values())
        if not series:
            raise IndicatorError("a cluster needs at least one pool")
        first = series[0]
        for s in series[1:]:
            if (s.step_s, s.start_s, s.names, len(s)) != (first.step_s, first.start_s, first.names, len(first)):
                raise IndicatorError(f"pool {s.pool} is not aligned with pool {first.pool} (step, start, names, length)")
        object.__setattr__(self, "pools", MappingProxyType(dict(self.pools)))

    def cluster(self) -> IndicatorSeries:
        """The cluster-level series, each column aggregated across the pools that report it by its rule
        (NaN where none does)."""
        first = next(iter(self.pools.values()))
        stacked = np.stack([s.values for s in self.pools.values()])
        reported = ~np.isnan(stacked)
        count = reported.sum(0)
        zeroed = np.where(reported, stacked, 0.0)
        total = zeroed.sum(0)
        aggregated = {"sum": total, "mean": total / np.maximum(count, 1),
                      "max": np.where(reported, stacked, -np.inf).max(0)}
        columns = [aggregated[_AGGREGATE[name]][:, k] for k, name in enumerate(first.names)]
        values = np.where(count > 0, np.column_stack(columns), np.nan)
        return IndicatorSeries("cluster", first.step_s, first.start_s, first.names, values)

    def to_frame(self) -> pd.DataFrame:
        """One row per tick and level: ``t_s``, ``pool``, the indicators; the cluster's rows first, then each pool's."""
        frames = []
        for series in (self.cluster(), *self.pools.values()):
            frame = pd.DataFrame(series.values, columns=list(series.names))
            frame.insert(0, "pool", series.pool)
            frame.insert(0, "t_s", series.start_s + np.arange(len(series)) * series.step_s)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)
