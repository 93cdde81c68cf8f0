"""eBPF TCP collection with BCC: loading, attach-method choice, map reading, the collector.

The kernel side lives in bpf/: each program (`*.c`) beside the declaration of the
metrics it feeds (`*.yaml`). Nothing here knows any one program: adding a probe
means adding a program and a declaration.
"""
