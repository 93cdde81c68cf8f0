"""The compiled helpers of exporter/traces/_scan.c (the trace scanner, the exclusive-time sweep,
the histogram fill), where pip built them and the build matches its source; `load` serves the
other compiled modules (exporter/otlp/_otlp.c, _tree.c) by the same rule.

A build older than its source (the checkout moved on and nobody ran `pip install -e .` again)
may take other arguments or compute another model than the Python beside it expects; using it
could miscount without an error. So a stale build is not used: the pure-Python paths serve, and
`STALE` says why for the log and `check`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


def load(name: str) -> tuple[ModuleType | None, str]:
    """(the compiled module `name`, e.g. "exporter.otlp._tree", or None; why not, for the log)
    where it is built and not older than the C source beside it (its name with .c)."""
    try:
        module = importlib.import_module(name)
    except ImportError:  # no compiler where it was installed
        return None, ""
    built = Path(str(module.__file__))
    why = stale(built.with_name(name.rpartition(".")[2] + ".c"), built)
    return (None, why) if why else (module, "")


def stale(source: Path, built: Path) -> str:
    """Why `built` must not be used ("" where it may): it is older than `source`. Where the
    source is not installed beside it (a wheel), the build is trusted."""
    if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
        return f"the compiled {built.name} is older than {source.name}; rebuild it (pip install -e . in the checkout)"
    return ""


SCAN, STALE = load(__name__.rpartition(".")[0] + "._scan")
