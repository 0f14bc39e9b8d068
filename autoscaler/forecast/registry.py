"""Forecasters by name, so configs and CLIs can pick one with a string.

Classes are imported on demand: only ``flow`` pulls in torch.
"""

from __future__ import annotations

from importlib import import_module

from .base import Forecaster, ForecastInputError

FORECASTERS = {
    "last": "naive:LastValue",
    "seasonal_naive": "naive:SeasonalNaive",
    "ewma": "naive:EWMA",
    "kalman": "kalman:KalmanForecaster",
    "quantile": "quantile:QuantileRegression",
    "flow": "flow:FlowForecaster",
}


def make_forecaster(name: str, **kw) -> Forecaster:
    """Build the forecaster called ``name`` with its keyword arguments (e.g. ``horizon=6`` for quantile/flow).

    Raises ``ForecastInputError`` listing the known names for an unknown one.
    """
    if name not in FORECASTERS:
        raise ForecastInputError(f"unknown forecaster {name!r}; known: {sorted(FORECASTERS)}")
    module, cls = FORECASTERS[name].split(":")
    return getattr(import_module(f"{__package__}.{module}"), cls)(**kw)
