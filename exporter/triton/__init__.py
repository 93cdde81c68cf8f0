"""Triton's own endpoints (/metrics, statistics, model config) and perf_analyzer CSV files."""
