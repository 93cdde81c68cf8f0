"""Triton trace files: tailing rolling files, checkpoint, record assembly, the trace collector."""
