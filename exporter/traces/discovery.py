"""Which files belong to a --trace-file pattern, in the order Triton wrote them.

`PATH` is what Triton was given as `triton,file=`; it writes `PATH.0, PATH.1, ...` (or
`PATH` alone with log-frequency 0). A `{name}` segment matches like `*` and its match
becomes a label: `/var/log/triton/{pod}/trace.json`.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from dataclasses import dataclass, field

_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_INDEX = re.compile(r"\.(\d+)$")


@dataclass
class TracePattern:
    spec: str
    label_names: list[str] = field(init=False)
    glob: str = field(init=False)
    _regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.label_names = _NAME.findall(self.spec)
        self.glob = _NAME.sub("*", self.spec)
        parts: list[str] = []
        pos = 0
        for m in _NAME.finditer(self.spec):
            parts.append(_glob_to_regex(self.spec[pos : m.start()]))
            parts.append(f"(?P<{m.group(1)}>[^/]+)")
            pos = m.end()
        parts.append(_glob_to_regex(self.spec[pos:]))
        self._regex = re.compile("".join(parts) + r"\Z")

    def labels(self, base: str) -> dict[str, str]:
        m = self._regex.match(base)
        if m is None:
            return dict.fromkeys(self.label_names, "")
        return {k: m.group(k) for k in self.label_names}

    def expand(self) -> dict[str, list[tuple[int, str]]]:
        """base path -> [(order, file path)], indexes ascending, the bare PATH last."""
        bases: dict[str, list[tuple[int, str]]] = {}
        for path in glob.glob(self.glob):
            if os.path.isfile(path):
                bases.setdefault(path, []).append((1 << 62, path))
        for path in glob.glob(glob.escape(self.glob) + ".*" if not glob.has_magic(self.glob) else self.glob + ".*"):
            base = stream_of(path)
            if base == path or not os.path.isfile(path):
                continue
            if glob.has_magic(self.glob) and not fnmatch.fnmatch(base, self.glob):
                continue
            bases.setdefault(base, []).append((int(path[len(base) + 1:]), path))
        for files in bases.values():
            files.sort()
        return bases


def stream_of(path: str) -> str:
    """The stream (Triton's `triton,file=` path) a file belongs to: PATH for PATH.N and PATH."""
    m = _INDEX.search(path)
    return path[: m.start()] if m else path


def _glob_to_regex(s: str) -> str:
    out: list[str] = []
    for ch in s:
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def label_names(patterns: list[TracePattern]) -> list[str]:
    """Every pattern's label names, each once, in the order the patterns name them."""
    out: list[str] = []
    for p in patterns:
        for n in p.label_names:
            if n not in out:
                out.append(n)
    return out
