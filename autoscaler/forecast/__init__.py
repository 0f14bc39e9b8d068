"""Forecasters of per-pool demand: predictive samples over a horizon, baselines and the flow."""

from .base import Forecast, Forecaster, ForecastInputError
from .registry import FORECASTERS, make_forecaster

__all__ = ["FORECASTERS", "Forecast", "ForecastInputError", "Forecaster", "make_forecaster"]
