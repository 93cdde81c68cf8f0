"""`inference-profiler demo`: a local Triton with traffic and the exporter against it."""
