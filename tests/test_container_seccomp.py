"""The image, built with podman from a debootstrap base and run the way the manifests run it:
uid 0 with only CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE, a read-only root, the host's
tracefs and kernel headers read-only, against the wheel's Triton on the host network, under
three seccomp profiles:

- moby's default (deploy/seccomp/moby-default.json, as Docker applies it): eBPF works;
- podman's default (/usr/share/containers/seccomp.json, CRI-O's RuntimeDefault too): bpf()
  needs CAP_SYS_ADMIN there, so `check` must name seccomp and the fix;
- the shipped profile (deploy/seccomp/inference-profiler.json): eBPF works.

The image is built once per run (its tag is a hash of the build context, so an unchanged tree
reuses it); the debootstrap base is kept in .cache/image/ across runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.demo.launcher import MODEL, TritonServer, free_port
from exporter.demo.traffic import send_requests
from tests.triton_harness import Scrape

# the first test also builds the image: about 6 minutes cold on the CI machine, more when it is busy
pytestmark = [pytest.mark.podman, pytest.mark.ebpf, pytest.mark.triton, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "image"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]  # crun refuses this hybrid cgroup host
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]  # podman's defaults cannot be raised here
BASE = "localhost/inference-profiler-test-base:bookworm"
PROFILES = {
    "moby-default": ROOT / "deploy/seccomp/moby-default.json",
    "podman-default": Path("/usr/share/containers/seccomp.json"),
    "shipped": ROOT / "deploy/seccomp/inference-profiler.json",
}
EBPF_WORKS = {"moby-default": True, "podman-default": False, "shipped": True}
LATENCY = "inference_profiler_tcp_latency_seconds"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"podman {' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def context_hash() -> str:
    """The build context as .dockerignore admits it (see its allowlist)."""
    h = hashlib.sha256()
    files = [ROOT / "Dockerfile", ROOT / "pyproject.toml", ROOT / "README.md"]
    for d in ("exporter", "bpf", "deploy/docker"):
        files += sorted(p for p in (ROOT / d).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so"))
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def debian_mirror() -> str:
    """The host's Debian mirror: no registry is reachable, the package mirror is."""
    for f in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if f.exists():
            m = re.search(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s*)?)(\S+)", f.read_text(), re.M)
            if m:
                return m.group(1)
    raise AssertionError("no Debian mirror in /etc/apt/sources.list*")


def ensure_base() -> None:
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    tarball = CACHE / "bookworm-minbase.tar"
    if not tarball.exists():
        rootfs = CACHE / "rootfs"
        subprocess.run(["rm", "-rf", str(rootfs)], check=True)
        r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        subprocess.run(["rm", "-rf", str(rootfs / "var/cache/apt/archives"), str(rootfs / "var/lib/apt/lists")],
                       check=True)
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball) + ".part", "."], check=True)
        os.replace(str(tarball) + ".part", tarball)
        subprocess.run(["rm", "-rf", str(rootfs)], check=True)
    with open(tarball, "rb") as f:
        r = subprocess.run([*PODMAN, "import", "-", BASE], stdin=f, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tag = f"localhost/inference-profiler:test-{context_hash()}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs share the base and the image
        if podman("image", "exists", tag, check=False).returncode != 0:
            ensure_base()
            # the host's CA bundle reaches pip for the build only: a mount, never a layer
            ca = os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
            pip_conf = tmp_path_factory.mktemp("build") / "pip.conf"
            pip_conf.write_text("[global]\ncert = /run/host-ca.crt\n")
            started = time.monotonic()
            podman("build", "--format", "docker", "--network", "host", "--pull=never", *ULIMITS,
                   "-v", f"{ca}:/run/host-ca.crt:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro",
                   "--build-arg", f"DEBIAN_IMAGE={BASE}", "-t", tag, str(ROOT), timeout=1500)
            print(f"image {tag} built in {time.monotonic() - started:.0f} s")
    yield tag


def run_args(profile: str, *extra: str) -> list[str]:
    """`podman run` as the manifests run the exporter, under the given seccomp profile."""
    return ["run", "--network", "host", *ULIMITS, "--user", "0:0", "--cap-drop", "ALL",
            "--cap-add", "BPF,PERFMON,SYS_RESOURCE", "--read-only", "--tmpfs", "/tmp",
            "--security-opt", "no-new-privileges", "--security-opt", f"seccomp={PROFILES[profile]}",
            "-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro", "-v", "/lib/modules:/lib/modules:ro",
            "-v", "/usr/src:/usr/src:ro", *extra]


def test_shipped_profile_is_generated_from_the_vendored_moby_default() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "deploy/seccomp/generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_build_leaves_no_host_ca_or_pip_config_in_the_image(image: str) -> None:
    # buildah leaves the build mounts' targets behind as empty files: nothing of them may be in a layer
    r = podman("run", "--rm", *ULIMITS, "--entrypoint", "/bin/sh", image, "-c",
               "find /etc/pip.conf /run/host-ca.crt ! -empty 2>/dev/null; grep -rl host-ca /etc 2>/dev/null; true")
    assert r.stdout.strip() == "", r.stdout


@pytest.fixture
def triton(triton_factory: Callable[..., TritonServer]) -> TritonServer:
    return triton_factory(log_frequency=5)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_check_ebpf_on_under_seccomp_profile(image: str, triton: TritonServer, profile: str) -> None:
    assert triton.trace_file is not None
    r = podman(*run_args(profile, "--rm", "-v", f"{triton.trace_file.parent}:/var/log/triton:ro"), image,
               "check", "--ebpf", "on", "--ebpf-port", str(triton.http_port), "--triton", triton.http_url,
               "--triton-metrics-url", triton.metrics_url, "--trace-file", "/var/log/triton/trace.json",
               check=False, timeout=180)
    out = r.stdout
    assert re.search(r"^PASS\s+triton \S+: reachable", out, re.M), out + r.stderr
    assert re.search(r"^PASS\s+state dir: ", out, re.M), out
    if EBPF_WORKS[profile]:
        assert r.returncode == 0, out + r.stderr
        for program in ("tcp_messages",):
            assert re.search(rf"^PASS\s+ebpf {program}: loadable, attach method tracepoint", out, re.M), out
    else:
        assert r.returncode == 1, out + r.stderr
        fail = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
        assert len(fail) == 1 and fail[0].startswith("FAIL  ebpf: "), out
        assert "seccomp profile forbids it" in fail[0], fail[0]
        assert "deploy/seccomp/inference-profiler.json" in fail[0], fail[0]


def test_check_fails_when_retention_cannot_delete(image: str, tmp_path: Path) -> None:
    r = podman(*run_args("shipped", "--rm", "-v", f"{tmp_path}:/var/log/triton:ro"), image,
               "check", "--ebpf", "off", "--triton", "none", "--trace-file", "/var/log/triton/trace.json",
               "--trace-delete-ingested", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^FAIL\s+trace dir /var/log/triton: retention .* cannot delete in /var/log/triton: "
                     r"mount it writable", r.stdout, re.M), r.stdout


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return Scrape(resp.read().decode())


@pytest.mark.parametrize("profile", list(PROFILES))
def test_serve_under_seccomp_profile(image: str, triton: TritonServer, tmp_path: Path, profile: str) -> None:
    assert triton.trace_file is not None
    port = free_port()
    name = f"infprof-test-{uuid.uuid4().hex[:12]}"
    state = tmp_path / "state"
    state.mkdir()
    ebpf = "on" if EBPF_WORKS[profile] else "auto"
    started = time.monotonic()
    # the trace directory writable and retention on, as in compose and the DaemonSet
    podman(*run_args(profile, "-d", "--name", name, "-e", f"INFPROF_LISTEN=127.0.0.1:{port}",
                     "-v", f"{triton.trace_file.parent}:/var/log/triton",
                     "-v", f"{state}:/var/lib/inference-profiler"), image,
           "serve", "--ebpf", ebpf, "--ebpf-port", str(triton.http_port), "--triton", triton.http_url,
           "--triton-metrics-url", triton.metrics_url, "--trace-file", "/var/log/triton/trace.json",
           "--trace-delete-ingested")
    try:
        deadline = started + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                state_ = podman("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
                assert state_ == "true" and time.monotonic() < deadline, podman("logs", name).stderr[-3000:]
                time.sleep(0.2)
        print(f"{profile}: cold start to /readyz {time.monotonic() - started:.1f} s")
        assert podman("healthcheck", "run", name, check=False).returncode == 0, "the image's HEALTHCHECK fails"
        sent = 20
        counts = send_requests(triton.http_address, triton.grpc_address, {("http", MODEL): sent}, concurrency=1)
        assert counts.succeeded[("http", MODEL)] == sent, counts.last_error
        deadline = time.monotonic() + 30
        while True:
            triton.flush_traces()  # the exporter deletes what it counted: Triton's files are not ours to read
            s = scrape(port)
            done = s.total("inference_profiler_traces_total") >= sent
            done = done and s.total("inference_profiler_trace_files_bytes") == 0
            if EBPF_WORKS[profile]:
                done = done and s.total(LATENCY + "_count", port=str(triton.http_port), role="server") >= sent
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        got = podman("logs", name)
        logs = got.stdout + got.stderr
        assert s.total("inference_profiler_traces_total") == sent, logs[-3000:]
        assert s.total("inference_profiler_trace_files_bytes") == 0, logs[-3000:]
        assert s.total("inference_profiler_trace_files_total", result="parsed") >= 1
        assert triton.trace_files() == [], "retention left ingested trace files behind"
        assert s.total("inference_profiler_triton_up") == 1, logs[-3000:]
        for program in ("tcp_messages",):
            assert s.total("inference_profiler_ebpf_up", program=program) == (1 if EBPF_WORKS[profile] else 0)
        if EBPF_WORKS[profile]:
            # and more: the exporter's own polls of Triton and the test's trace flushes use that port too
            assert s.total(LATENCY + "_count", port=str(triton.http_port), role="server") >= sent
        else:
            # serve says why in one line, as check does: the seccomp profile, and the fix
            assert "eBPF collection off: bpf() fails with EPERM although CAP_BPF is effective: the seccomp " \
                   "profile forbids it; allow bpf and perf_event_open" in logs, logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)
