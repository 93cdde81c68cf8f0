"""A compiled _scan older than its source is not used: after a checkout moves on without a
rebuild, the C side may take other arguments or model requests differently than the Python
beside it, and count wrong without an error (seen: a daemon on a stale build counted 0 of
31,684 OTLP traces). The pure-Python paths serve instead, and `check` warns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from exporter.traces import compiled, scanner


def test_a_build_older_than_its_source_is_refused_and_a_newer_one_used(tmp_path: Path) -> None:
    source, built = tmp_path / "_scan.c", tmp_path / "_scan.so"
    source.write_text("/* source */")
    built.write_bytes(b"\0")
    os.utime(source, (1_000_000, 1_000_000))
    os.utime(built, (2_000_000, 2_000_000))
    assert compiled.stale(source, built) == ""
    os.utime(source, (3_000_000, 3_000_000))  # the checkout moved on
    assert "older than _scan.c" in compiled.stale(source, built)
    source.unlink()  # a wheel: no source beside the build
    assert compiled.stale(source, built) == ""


def test_this_checkout_uses_its_fresh_build() -> None:
    # setup.sh builds the module after the checkout: it must be the one in use
    assert compiled.STALE == "" and compiled.SCAN is not None, compiled.STALE
    assert scanner.FileScan is scanner.CFileScan


def test_check_warns_of_a_stale_build(tmp_path: Path) -> None:
    """A real stale build: the module's source touched after it, in a copy of the package."""
    import shutil

    import exporter

    pkg = Path(exporter.__file__).parent
    copy = tmp_path / "exporter"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__", "demo_models"))
    built = next((copy / "traces").glob("_scan*.so"))
    os.utime(copy / "traces" / "_scan.c", (built.stat().st_mtime + 10,) * 2)
    out = subprocess.run([sys.executable, "-c", "from exporter.traces import compiled, scanner; "
                          "print(compiled.SCAN is None, scanner.scanner_name())"],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True pure Python (the compiled _scan"), out.stdout
