"""Experiments: several jobs run as one — the pipeline, sweeps, and their results and reports."""
