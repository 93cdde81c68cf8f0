"""deploy/README.md matches the files: every repository path it names exists, every
inference-profiler command it shows parses with the real CLI, every kubectl/docker compose
command points at objects, services and kustomizations that exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.cli import parser
from exporter.webconfig import TLS_KEYS, TOP_KEYS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "deploy" / "README.md"
TOP = ("deploy", "prometheus", "grafana", "exporter", "tests", "scripts", "bpf")
PATH_RE = re.compile(r"(?<![\w/.$-])((?:" + "|".join(TOP) + r")/[\w./*-]*|Dockerfile|docker-compose\.yml)")
# flags in the text that belong to other tools
OTHER_FLAGS = {"--privileged", "--build-arg", "--profile", "--check", "--trace-config",  # docker, generate.py, Triton
               "--security-opt", "--variant"}  # docker/podman, debootstrap


def text() -> str:
    return README.read_text()


def code_blocks(lang: str) -> list[str]:
    return re.findall(r"```" + lang + r"\n(.*?)```", text(), re.S)


def shell_lines() -> list[str]:
    lines: list[str] = []
    for block in code_blocks("sh"):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [ln.split("  #")[0].strip() for ln in joined.splitlines() if ln.strip()]
    return lines


def profiler_args(tokens: list[str]) -> list[str] | None:
    """The arguments given to inference-profiler on a command line, if it runs it."""
    for i, tok in enumerate(tokens):
        runs_it = tok == "inference-profiler" and (
            i == 0 or tokens[i - 1] == "--" or (tokens[:3] == ["docker", "compose", "exec"] and i == 4))
        # the image's entrypoint is inference-profiler: `docker run ... IMAGE ARGS`
        runs_image = tok.startswith("inference-profiler:") and tokens[:2] == ["docker", "run"]
        if runs_it or runs_image:
            return tokens[i + 1:]
    return None


def test_named_paths_exist() -> None:
    found = {m.rstrip(".") for m in PATH_RE.findall(text())}
    assert len(found) > 20
    missing = [p for p in sorted(found) if not list(ROOT.glob(p.rstrip("/")))]
    assert not missing, f"deploy/README.md names paths that do not exist: {missing}"


def test_inference_profiler_commands_parse() -> None:
    runs = [a for a in (profiler_args(shlex.split(ln)) for ln in shell_lines()) if a is not None]
    assert len(runs) >= 4
    for args in runs:
        try:
            parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"deploy/README.md: `inference-profiler {shlex.join(args)}` is not a valid command")


def test_flags_named_in_the_text_exist() -> None:
    serve = parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    known = {opt for a in serve._actions for opt in a.option_strings}
    spans = re.findall(r"`([^`\n]+)`", text())
    flags = {m.split("=")[0] for s in spans for m in re.findall(r"(?<![\w-])--[a-z][\w-]*(?:=\S*)?", s)}
    assert flags
    unknown = sorted(flags - known - OTHER_FLAGS)
    assert not unknown, f"deploy/README.md names flags `serve` does not have: {unknown}"


def _kustomize(path: str) -> list[dict[str, object]]:
    r = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


KIND_ALIASES = {"daemonset": "DaemonSet", "deployment": "Deployment"}


def test_kubectl_commands_point_at_real_objects() -> None:
    lines = [shlex.split(ln) for ln in shell_lines() if ln.startswith("kubectl")]
    assert lines
    rendered: list[dict[str, object]] = []
    for toks in lines:
        for flag in ("-k",):
            if flag in toks:
                d = toks[toks.index(flag) + 1]
                assert (ROOT / d / "kustomization.yaml").is_file(), d
                rendered += _kustomize(d)
        if toks[1] == "kustomize":
            assert (ROOT / toks[2] / "kustomization.yaml").is_file(), toks[2]
    for toks in lines:
        if "-n" not in toks:
            continue
        ns = toks[toks.index("-n") + 1]
        refs = [t for t in toks if "/" in t and t.split("/")[0] in KIND_ALIASES]
        assert refs, toks
        for ref in refs:
            alias, name = ref.split("/", 1)
            match = [o for o in rendered if o["kind"] == KIND_ALIASES[alias]
                     and o["metadata"]["name"] == name and o["metadata"].get("namespace") == ns]  # type: ignore[index]
            assert match, f"deploy/README.md: no {KIND_ALIASES[alias]} {ns}/{name} in the applied kustomizations"
            if "-c" in toks:
                names = [c["name"] for o in match for c in o["spec"]["template"]["spec"]["containers"]]  # type: ignore[index]
                assert toks[toks.index("-c") + 1] in names, names


def test_docker_commands_match_the_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    lines = [shlex.split(ln) for ln in shell_lines() if ln.startswith("docker")]
    assert lines
    for toks in lines:
        if toks[1] == "compose":
            if "--profile" in toks:
                assert toks[toks.index("--profile") + 1] in profiles
            for verb in ("build", "exec"):
                if verb in toks:
                    assert toks[toks.index(verb) + 1] in compose["services"], toks
        elif toks[1] == "run":
            caps = {toks[i + 1] for i, t in enumerate(toks) if t == "--cap-add"}
            assert caps == set(compose["services"]["exporter"]["cap_add"])
        elif toks[1] == "build":
            assert toks[-1] == "." and (ROOT / "Dockerfile").is_file()


def test_python_script_commands_exist() -> None:
    lines = [shlex.split(ln) for ln in shell_lines() if ln.startswith("python ")]
    assert lines
    for toks in lines:
        script = ROOT / toks[1]
        assert script.is_file(), toks[1]
        help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
        for flag in (t for t in toks[2:] if t.startswith("--")):
            assert flag in help_text, f"{toks[1]} has no {flag}"


def test_web_config_example_uses_real_keys() -> None:
    [block] = code_blocks("yaml")
    example = yaml.safe_load(block)
    assert set(example) <= TOP_KEYS
    assert set(example["tls_server_config"]) <= TLS_KEYS
    commented = re.findall(r"#\s*(\w+):", block)
    assert set(commented) <= TLS_KEYS, commented
