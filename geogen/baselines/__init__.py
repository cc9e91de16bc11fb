"""Reference forecasts behind the same interface as learned models (geogen.forecasting)."""
