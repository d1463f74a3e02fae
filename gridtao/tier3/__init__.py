"""Tier 3, the hourly planner: its inputs (a forecast of the node's natural IT draw with low
quantiles; price and carbon signals) and the plan. docs/planner-inputs.md."""

from gridtao.tier3.forecast import Forecast, ForecastError, forecast_draw, persistence_forecast
from gridtao.tier3.scores import ForecastScore, evaluate_holdout, score
from gridtao.tier3.signals import Provenance, Series, SignalError, Signals, merge, parse_signals

__all__ = ["Forecast", "ForecastError", "ForecastScore", "Provenance", "Series", "SignalError",
           "Signals", "evaluate_holdout", "forecast_draw", "merge", "parse_signals",
           "persistence_forecast", "score"]
