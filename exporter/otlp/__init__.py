"""Triton's OpenTelemetry mode as a trace source: an OTLP/HTTP receiver feeding the trace aggregate."""
