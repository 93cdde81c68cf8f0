"""The families docs/metrics.md documents, read from its tables (the in-repo metric contract)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
# a table row (ours, or the shared process_* names): | `inference_profiler_x` | type | labels | unit | what |
ROW = re.compile(r"^\| `((?:inference_profiler|process)_\w+)` \| (counter|gauge|histogram|summary) \| ([^|]*)\|", re.M)


def documented_families() -> dict[str, str]:
    """Exposed family name (counters with _total) -> type, as the doc's tables list them."""
    return {m[1]: m[2] for m in ROW.finditer(DOC.read_text())}


def documented_labels() -> dict[str, tuple[str, ...]]:
    return {m[1]: tuple(x.strip() for x in m[3].split(",") if x.strip()) for m in ROW.finditer(DOC.read_text())}


def documented_sample_names() -> set[str]:
    """Every name a query may use: the families, plus _bucket/_sum/_count of histograms."""
    names: set[str] = set()
    for name, typ in documented_families().items():
        names.add(name)
        if typ == "histogram":
            names |= {f"{name}_{s}" for s in ("bucket", "sum", "count")}
    return names
