#!/usr/bin/env bash
# One-shot setup for a fresh Debian/Ubuntu machine: system packages (BCC, kernel
# headers, Prometheus, bpftrace, podman for the image test), kernel header links for BCC, a venv with the
# project, the Triton wheel and the dev tools. Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- system packages ---------------------------------------------------------
KVER=$(uname -r)
pkgs=(python3-bpfcc bpfcc-tools bpftrace prometheus python3-venv curl unzip)
# the image test builds and runs the Dockerfile: a debootstrap base, podman with runc
pkgs+=(podman runc debootstrap)
if [ -f /etc/os-release ] && grep -q '^ID=ubuntu' /etc/os-release; then
    pkgs+=("linux-headers-$KVER")
elif apt-cache show "linux-headers-$KVER" >/dev/null 2>&1; then
    pkgs+=("linux-headers-$KVER")
else
    # Debian, or a kernel without a headers package of its own (this VM): the
    # distribution's headers plus the links below are what BCC needs.
    pkgs+=(linux-headers-amd64)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian prometheus package may start a system service on :9090; we run our own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
fi

# --- kernel headers for BCC --------------------------------------------------
if [ ! -e "/lib/modules/$KVER/build" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$hdr" ]; then
        say "linking kernel headers for BCC: /lib/modules/$KVER/build -> $hdr"
        $SUDO mkdir -p "/lib/modules/$KVER"
        $SUDO ln -sfn "$hdr" "/lib/modules/$KVER/build"
        [ -n "$common" ] && $SUDO ln -sfn "$common" "/lib/modules/$KVER/source"
    else
        say "WARNING: no kernel headers found under /usr/src; eBPF will be unavailable"
    fi
fi
# tracefs, where BCC finds tracepoint formats
if [ ! -e /sys/kernel/tracing/events ] && [ -d /sys/kernel/tracing ]; then
    $SUDO mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
# per-program run time/count for inference_profiler_ebpf_run_seconds_total
$SUDO sysctl -q -w kernel.bpf_stats_enabled=1 2>/dev/null || true

# --- Python environment ------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $($PY --version)"
    $PY -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
say "installing the project and its dependencies into .venv"
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v -e '^WARNING: Location' -e 'BuildBackendWarning' || true
.venv/bin/python -c 'import exporter, prometheus_client, tritonclient' || { say "pip install failed"; exit 1; }

SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# BCC's bindings come from the distribution (PyPI's "bcc" is unrelated).
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
    ln -sfn /usr/lib/python3/dist-packages/bcc "$SITE/bcc"
fi
# Triton's python backend needs its stub beside the backend for our Python.
PYVER=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
TS="$SITE/pytriton/tritonserver"
if [ -d "$TS" ] && [ -f "$TS/python_backend_stubs/$PYVER/triton_python_backend_stub" ]; then
    cp -f "$TS/python_backend_stubs/$PYVER/triton_python_backend_stub" "$TS/backends/python/"
fi

# perf_analyzer: only tritonclient 2.41.1's wheel still carries the binary; the libb64 and
# libcudart it links come from the Triton wheel's bundled libraries.
PA=.venv/opt/perf_analyzer
if [ ! -x "$PA/perf_analyzer" ]; then
    say "provisioning perf_analyzer into $PA"
    mkdir -p .cache/perf_analyzer "$PA/lib"
    whl=$(ls .cache/perf_analyzer/tritonclient-2.41.1-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$whl" ]; then
        .venv/bin/python -m pip download -q --no-deps --only-binary=:all: tritonclient==2.41.1 \
            -d .cache/perf_analyzer 2>&1 | grep -v '^WARNING: Location' || true
        whl=$(ls .cache/perf_analyzer/tritonclient-2.41.1-*.whl | head -n1)
    fi
    unzip -o -j -q "$whl" 'tritonclient-2.41.1.data/data/bin/perf_analyzer' -d "$PA"
    chmod +x "$PA/perf_analyzer"
fi
mkdir -p "$PA/lib"
ln -sfn "$(ls "$SITE"/nvidia_pytriton.libs/libb64-*.so.0d | head -n1)" "$PA/lib/libb64.so.0d"
ln -sfn "$(ls "$SITE"/nvidia_pytriton.libs/libcudart-*.so.12* | head -n1)" "$PA/lib/libcudart.so.12"
if LD_LIBRARY_PATH="$PA/lib" ldd "$PA/perf_analyzer" | grep -q 'not found'; then
    say "WARNING: perf_analyzer misses libraries: $(LD_LIBRARY_PATH="$PA/lib" ldd "$PA/perf_analyzer" | grep 'not found' | tr -s ' \t\n' ' ')"
fi

say "done. Try: .venv/bin/inference-profiler demo"
