"""Typed per-pool indicator time series and their cluster -> pool hierarchy (as in HARMONY).

A pool's series is a ``[T, K]`` array over fixed-step ticks with named columns; the cluster
view aggregates pools column by column: arrival and token rates take the largest pool's (every
request passes through both pools, so a sum would count it twice), queues and watts add, latency
percentiles take the worst pool, KV use averages. Forecasters read the demand columns. The live
controller (to come) fills these series; the simulator keeps its per-tick records in ``SimResult``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

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
        if self.step_s <= 0:
            raise IndicatorError(f"pool {self.pool}: step_s must be positive, got {self.step_s}")

    def __len__(self) -> int:
        return self.values.shape[0]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    def window(self, end_tick: int, length: int) -> np.ndarray:
        """The ``length`` rows before ``end_tick`` (fewer at the start), never rows at or after it."""
        return self.values[max(0, end_tick - length):end_tick]


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
        """The cluster-level series, each column aggregated across pools by its rule."""
        first = next(iter(self.pools.values()))
        stacked = np.stack([s.values for s in self.pools.values()])
        columns = []
        for k, name in enumerate(first.names):
            rule = _AGGREGATE[name]
            col = stacked[:, :, k]
            columns.append(col.sum(0) if rule == "sum" else col.max(0) if rule == "max" else col.mean(0))
        return IndicatorSeries("cluster", first.step_s, first.start_s, first.names, np.column_stack(columns))
