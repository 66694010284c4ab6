"""Pipeline stages: pure functions from DataFrames and config to DataFrames."""
