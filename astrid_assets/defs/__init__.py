"""Dagster wiring, by domain: each module reads inputs, calls science, returns outputs."""
