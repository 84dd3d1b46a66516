"""Analyses (drift, depth study), figures and tables built from parquet results."""
