"""CLI correctness: `summary` in a pipe, filters that match nothing, flag combinations,
empty files, standard input and gzip, trace_summary in bounded memory, JSON log fields."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main
from tests import tracegen
from tests.conftest import ROLLING_TRACES

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
    return subprocess.run([sys.executable, "-m", "exporter.cli", *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def traces_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("cli") / "trace.json.0"
    tracegen.write_file(str(f), tracegen.traces(3000, models=("a", "b"), ensemble_every=5))
    return f


@pytest.mark.parametrize("fmt", [["-t"], ["--format", "trace_summary", "-t"], ["--format", "json"]])
def test_summary_into_head_exits_quietly(traces_file: Path, fmt: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
    p = subprocess.Popen([sys.executable, "-m", "exporter.cli", "summary", *fmt, str(traces_file)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.readline()
    p.stdout.close()  # what `| head -1` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0
    assert err == "", err


def test_model_filter_that_matches_nothing_is_named_and_exits_1(traces_file: Path) -> None:
    for fmt in ([], ["--format", "json"], ["--format", "trace_summary"], ["--timeline"]):
        r = _cli("summary", *fmt, "--model", "nosuch", str(traces_file))
        assert r.returncode == 1, (fmt, r.stderr)
        assert r.stderr == "inference-profiler: no complete traces found for model nosuch\n", fmt


def test_file_without_traces_is_named_and_exits_1(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello, this is not a trace file\n")
    r = _cli("summary", str(f))
    assert r.returncode == 1
    assert r.stderr == f"inference-profiler: no complete traces found in {f}\n"
    assert "malformed_json=1" in r.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "json", "-t"], "-t/--show-trace prints text; it cannot go with --format json"),
    (["--format", "trace_summary", "--timeline"], "--timeline is a layout of its own; it cannot go with "
                                                  "--format trace_summary"),
    (["--format", "json", "--timeline"], "--timeline is a layout of its own; it cannot go with --format json"),
])
def test_flag_combinations_that_cannot_be_honoured_are_refused(traces_file: Path, args: list[str],
                                                               message: str) -> None:
    r = _cli("summary", *args, str(traces_file))
    assert r.returncode == 2
    assert r.stderr == f"inference-profiler: error: {message}\n" and r.stdout == ""


def test_trace_summary_honours_model(traces_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--format", "trace_summary", "--model", "b", str(traces_file)]) == 0
    out = capsys.readouterr().out
    models = set(re.findall(r"^Summary for (\S+) ", out, flags=re.M))
    assert models == {"b"}


def test_empty_file_is_counted_as_empty_file(traces_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "trace.json.1"
    empty.write_bytes(b"")
    assert main(["summary", "--format", "json", str(traces_file), str(empty)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rejected"]["empty_file"] == 1 and out["files"] == 2
    assert sum(g["traces"] for g in out["groups"]) > 0


def test_stdin_and_gzip_read_like_the_file(traces_file: Path, tmp_path: Path) -> None:
    plain = _cli("summary", "--format", "json", str(traces_file))
    gz = tmp_path / "trace.json.0.gz"
    gz.write_bytes(gzip.compress(traces_file.read_bytes()))
    zipped = _cli("summary", "--format", "json", str(gz))
    piped = _cli("summary", "--format", "json", "-", stdin=traces_file.read_bytes())
    assert plain.returncode == zipped.returncode == piped.returncode == 0, (zipped.stderr, piped.stderr)
    assert json.loads(plain.stdout) == json.loads(zipped.stdout) == json.loads(piped.stdout)
    ts_plain = _cli("summary", "--format", "trace_summary", str(traces_file)).stdout
    ts_gz = _cli("summary", "--format", "trace_summary", str(gz)).stdout
    assert ts_plain.replace(str(traces_file), "F") == ts_gz.replace(str(gz), "F")


def test_truncated_gzip_is_one_line_error(traces_file: Path, tmp_path: Path) -> None:
    gz = tmp_path / "cut.json.gz"
    gz.write_bytes(gzip.compress(traces_file.read_bytes())[:5000])
    r = _cli("summary", str(gz))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("path", sorted(ROLLING_TRACES.iterdir()), ids=lambda p: p.name)
def test_streamed_trace_summary_equals_the_whole_file_pass(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The streaming pass (no -t) prints the same summary blocks as the in-memory pass -t uses."""
    assert main(["summary", "--format", "trace_summary", str(path)]) == 0
    streamed = capsys.readouterr().out
    assert main(["summary", "--format", "trace_summary", "-t", str(path)]) == 0
    whole = capsys.readouterr().out

    def summary_lines(text: str) -> list[str]:  # without -t's per-trace lines
        return [ln for ln in text.splitlines() if ln.startswith("Summary for ") or "(avg): " in ln]

    assert summary_lines(streamed) and summary_lines(streamed) == summary_lines(whole)


def test_trace_summary_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Peak RSS of --format trace_summary does not follow the file's size (20 MB, then 60 MB)."""
    peaks = {}
    for mb in (20, 60):
        f = tmp_path / f"t{mb}.json"
        with open(f, "w") as out:
            out.write("[")
            n, first = 0, True
            while out.tell() < mb << 20:
                for o in tracegen.traces(2000, seed=n, start_id=1 + n):
                    out.write(o if first else "," + o)
                    first = False
                n += 2000
            out.write("]")
        code = ("import sys, io; from exporter.trace_summary_format import run_trace_summary;"
                f"run_trace_summary([{str(f)!r}], False, io.StringIO());"
                "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           timeout=300)
        peaks[mb] = int(r.stdout.split()[-1]) / 1024
        f.unlink()
    print(f"trace_summary peak RSS: {peaks[20]:.0f} MB for 20 MB, {peaks[60]:.0f} MB for 60 MB")
    # holding the file's traces would take ~3.7x the file (about 220 MB here); streaming stays near
    # the scanner's fixed buffers, with some allocator growth
    assert peaks[60] < 130 and peaks[60] < peaks[20] + 35, peaks


def test_json_log_puts_fields_as_keys(traces_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from exporter import logs
    from exporter.histogram import DEFAULT_STAGE_BUCKETS
    from exporter.traces.source import bounds_ns
    from exporter.traces.tailer import TailerSettings, TraceTailer

    logs.setup("info", "json")
    try:
        t = TraceTailer(TailerSettings([str(traces_file.parent / "trace.json")], None,
                                       bounds_ns(list(DEFAULT_STAGE_BUCKETS))))
        t.poll()
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    ingested = [x for x in lines if x["msg"].startswith("ingested")]
    assert len(ingested) == 1
    rec = ingested[0]
    assert rec["file"] == str(traces_file) and rec["traces"] == sum(t.live.traces.values())
    assert rec["level"] == "info" and rec["logger"] == "traces" and isinstance(rec["seconds"], float)


def test_summary_on_lone_surrogate_labels_has_no_traceback(tmp_path: Path) -> None:
    objs = [*tracegen.traces(4), '{"id":900001,"model_name":"s\\ud800","model_version":1}',
            '{"id":900001,"timestamps":[{"name":"REQUEST_START","ns":1}]}',
            '{"id":900001,"timestamps":[{"name":"REQUEST_END","ns":9}]}']
    f = tmp_path / "trace.json.0"
    tracegen.write_file(str(f), objs)
    for fmt in ("table", "json", "trace_summary"):
        r = _cli("summary", "--format", fmt, str(f))
        assert r.returncode == 0 and "Traceback" not in r.stderr, (fmt, r.stderr)
    out = json.loads(_cli("summary", "--format", "json", str(f)).stdout)
    assert out["rejected"]["bad_label"] == 1 and sum(g["traces"] for g in out["groups"]) == 4


@pytest.mark.parametrize("pure_python", [False, True], ids=["c-scanner", "python-scanner"])
def test_streamed_trace_summary_equals_the_whole_file_pass_with_ensembles(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pure_python: bool) -> None:
    from exporter import trace_summary_format
    from exporter.traces import scanner

    monkeypatch.setattr(trace_summary_format, "FileScan", scanner.PyFileScan if pure_python else scanner.FileScan)
    f = tmp_path / "trace.json.0"
    tracegen.write_file(str(f), tracegen.traces(2500, models=("a", "b"), ensemble_every=3))
    for extra in ([], ["--model", "a"]):
        assert main(["summary", "--format", "trace_summary", *extra, str(f)]) == 0
        streamed = capsys.readouterr().out
        assert main(["summary", "--format", "trace_summary", "-t", *extra, str(f)]) == 0
        whole = capsys.readouterr().out
        lines = [[ln for ln in t.splitlines() if ln.startswith(("Summary for ", "Data Flow")) or "(avg): " in ln]
                 for t in (streamed, whole)]
        assert lines[0] and lines[0] == lines[1]
        assert "Data Flow:" in streamed


def test_streamed_trace_summary_finds_a_parent_from_an_earlier_batch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A parent finished in a batch without children, its child in the next batch: the child is
    still summed under the parent's frontend."""
    import random

    from exporter import trace_summary_format
    from exporter.traces import scanner

    monkeypatch.setattr(trace_summary_format, "FileScan", scanner.PyFileScan)  # batches of scanner.BATCH
    monkeypatch.setattr(trace_summary_format, "WINDOW", 50)  # traces finish as the file streams
    rng = random.Random(4)
    objs: list[str] = []
    n = scanner.BATCH + 300
    for i in range(1, n + 1):
        objs += tracegen.trace_objects(i, rng, 1_000_000 * i, protocol="grpc")
        if i == scanner.BATCH - 5:  # the ensemble parent, in the first batch ...
            objs += tracegen.trace_objects(10**6, rng, 1_000_000 * i, model="ens", protocol="grpc")
    # ... and its child only after the first batch is full
    objs += tracegen.trace_objects(10**6 + 1, rng, 1_000_000 * n, model="child", parent=10**6)
    f = tmp_path / "trace.json.0"
    tracegen.write_file(str(f), objs)
    assert main(["summary", "--format", "trace_summary", str(f)]) == 0
    streamed = capsys.readouterr().out
    assert "Summary for child (1): trace count = 1" in streamed
    assert main(["summary", "--format", "trace_summary", "-t", str(f)]) == 0
    whole = capsys.readouterr().out
    lines = [[ln for ln in t.splitlines() if ln.startswith("Summary for ") or "(avg): " in ln]
             for t in (streamed, whole)]
    assert lines[0] == lines[1]


@pytest.mark.parametrize("command", ["", "serve", "check", "summary", "diagnose", "demo", "tcp-events"])
def test_every_command_answers_version(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from exporter import __version__

    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--version"])  # summary's required FILE is not asked for
    assert e.value.code == 0
    assert capsys.readouterr().out == f"inference-profiler {__version__}\n"
