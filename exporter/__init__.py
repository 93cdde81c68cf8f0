"""Inference Profiler: a Prometheus exporter for NVIDIA Triton Inference Server."""
__version__ = "0.1.0"
