"""The shape of the package: the trace package imports no producer built on it, every module
stays readable, and a state directory written before the aggregator/store split still loads."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

from exporter.histogram import DEFAULT_STAGE_BUCKETS
from exporter.otlp.ingest import OtlpIngest
from exporter.traces.source import bounds_ns
from exporter.traces.tailer import JOURNAL_FILE, STATE_FILE, TailerSettings, TraceTailer

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exporter"
MAX_LINES = 450


def _imports(path: Path) -> set[str]:
    """Every module path.py imports, absolute (relative imports resolved against its package)."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def test_traces_imports_nothing_from_otlp() -> None:
    """Producers depend on the trace package, never the other way (lazy imports included)."""
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.startswith("exporter.otlp"))
                 for p in sorted((PACKAGE / "traces").rglob("*.py"))}
    assert {p: m for p, m in offenders.items() if m} == {}
    # the walk sees relative imports: the receiver's own imports of the trace package are found
    assert any(m.startswith("exporter.traces.aggregator") for m in _imports(PACKAGE / "otlp" / "ingest.py"))


def test_no_module_over_450_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by concern: {long}"


def test_a_state_written_before_the_split_loads_with_its_counts(tmp_path: Path) -> None:
    """tests/data/state-main: a snapshot of version 2 and a version-1 journal of 9 records on top,
    written by the exporter before this change (generate.py, run with that version's code): trace
    files of two pods, a child waiting for its parent, OTLP requests, one of them waiting for its root."""
    data = ROOT / "tests" / "data" / "state-main"
    expected = json.loads((data / "expected.json").read_text())
    state = tmp_path / "state"
    state.mkdir()
    for name in (STATE_FILE, JOURNAL_FILE):
        shutil.copy(data / name, state / name)
    settings = TailerSettings([], str(state), bounds_ns(list(DEFAULT_STAGE_BUCKETS)), child_hold_seconds=10**9)

    def check(t: TraceTailer, otlp: OtlpIngest) -> None:
        v = t.live.to_json()
        assert sorted([list(row[0]), row[1]] for row in v["traces"]) == expected["traces"]
        assert v["files"] == expected["files"] and v["rejected"] == expected["rejected"]
        assert sum(row[3] for row in v["histograms"]) == expected["histogram_counts"]
        assert sorted(str(Path(p).relative_to("/tmp/structure/gen")) for p in t.entries) == expected["entries"]
        assert sum(len(s.pending) for s in t.streams.values()) == expected["pending"]
        assert len(otlp.held) == expected["held_traces"]
        assert len(otlp.legacy) == expected["seen_spans"]

    t = TraceTailer(settings)
    assert not (state / (STATE_FILE + ".corrupt")).exists() and t.journal is not None
    otlp = OtlpIngest(t.aggregator, 10**9)
    check(t, otlp)
    t.close()  # written again in today's form
    saved = json.loads((state / STATE_FILE).read_text())
    assert saved["version"] == 3 and "producers" in saved and "feeds" not in saved
    t2 = TraceTailer(settings)
    otlp2 = OtlpIngest(t2.aggregator, 10**9)
    check(t2, otlp2)
    assert otlp2.held.keys() == otlp.held.keys()


def test_config_imports_no_source_package() -> None:
    sources = ("exporter.traces", "exporter.otlp", "exporter.ebpf", "exporter.triton")
    assert sorted(m for m in _imports(PACKAGE / "config.py") if m.startswith(sources)) == []


def test_validation_changes_nothing_and_reads_no_file(tmp_path: Path) -> None:
    """Normalising is its own step; validate() reads values only: files it names are checked at start-up."""
    import dataclasses

    import pytest

    from exporter.config import Config, ConfigError, build, normalize, validate
    from exporter.startup import check_files

    raw = Config(triton=["None"], ebpf_metric=["inference_profiler_tcp_bytes"],
                 web_config_file=str(tmp_path / "absent.yml"))
    before = dataclasses.asdict(raw)
    cfg = normalize(raw)
    assert dataclasses.asdict(raw) == before  # a new config, the given one untouched
    assert cfg.triton == [] and cfg.ebpf_metric == ["tcp_bytes"]
    validate(cfg)  # the missing file is not validation's business
    assert dataclasses.asdict(cfg) == dataclasses.asdict(normalize(raw))
    with pytest.raises(ConfigError, match=r"web_config_file .*absent\.yml does not exist"):
        check_files(cfg)
    with pytest.raises(ConfigError, match=r"^ebpf_metric 'nope' is not an eBPF family"):
        check_files(build({}, {}, {"ebpf_metric": ["nope"]}))
    # the bounds live beside the help: every bounded field says so in its metadata
    bounded = {f.name for f in dataclasses.fields(Config) if f.metadata.get("low") is not None}
    assert {"trace_poll_seconds", "ebpf_max_sockets", "trace_open_traces", "ebpf_port", "max_models"} <= bounded
    with pytest.raises(ConfigError, match=r"^ebpf_port must be between 1 and 65535, got 0$"):
        build({}, {}, {"ebpf_port": [8000, 0]})
