# syntax=docker/dockerfile:1
# Inference Profiler: the exporter in a venv over Debian 12's python3 and BCC (python3-bpfcc).
# No Triton in the image: it runs beside Triton (compose service, DaemonSet or sidecar).
#
#   docker build -t inference-profiler .
#
# Kernel headers for eBPF: BCC compiles its programs at start against the *host's* kernel
# headers, so they are not in the image. Mount the host's /lib/modules and /usr/src read-only
# at the same paths (/lib/modules/$(uname -r)/build usually links into /usr/src), plus
# /sys/kernel/tracing; on kernels built with CONFIG_IKHEADERS BCC can use
# /sys/kernel/kheaders.tar.xz instead. Without headers, `--ebpf auto` runs the other sources
# and `inference-profiler check` says why eBPF is off. See deploy/README.md.
#
# User: non-root (uid 10001) by default, enough for traces, Triton and perf_analyzer sources
# with --ebpf off. eBPF needs uid 0 with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE only
# (docker-compose.yml and deploy/kubernetes/ show it), under a seccomp profile that allows bpf() and
# perf_event_open() to them (deploy/seccomp/inference-profiler.json); never --privileged.

ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
# Debian's stable release pins package versions; the base image tag is the pin.
# gcc and python3-dev build the optional C fast paths, the trace scanner's and the OTLP decoders' (build stage only).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# dependencies first: their layer survives changes to the exporter's code
COPY deploy/docker/requirements.txt deploy/docker/install-venv.sh deploy/docker/
RUN sh deploy/docker/install-venv.sh /opt/inference-profiler
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
COPY bpf/ bpf/
RUN sh deploy/docker/install-venv.sh /opt/inference-profiler /src

FROM ${DEBIAN_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="inference-profiler" \
      org.opencontainers.image.description="Prometheus exporter for NVIDIA Triton Inference Server: per-stage latency from trace files, eBPF socket histograms, Triton endpoints" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${DEBIAN_IMAGE}"
# python3-bpfcc brings libbcc (with its own LLVM); no compiler or headers are installed.
# The state dir is group 0 writable: the eBPF variant runs as uid 0 without CAP_DAC_OVERRIDE.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-bpfcc ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/inference-profiler \
      --no-create-home --shell /usr/sbin/nologin profiler \
 && install -d -o 10001 -g 0 -m 0770 /var/lib/inference-profiler
COPY --from=build /opt/inference-profiler /opt/inference-profiler
COPY deploy/docker/healthcheck.py /opt/inference-profiler/healthcheck.py
ENV PATH=/opt/inference-profiler/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    INFPROF_LISTEN=:9478 \
    INFPROF_STATE_DIR=/var/lib/inference-profiler
USER 10001:10001
WORKDIR /var/lib/inference-profiler
EXPOSE 9478 4318
VOLUME ["/var/lib/inference-profiler"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/opt/inference-profiler/bin/python", "/opt/inference-profiler/healthcheck.py"]
ENTRYPOINT ["/opt/inference-profiler/bin/inference-profiler"]
CMD ["serve"]
