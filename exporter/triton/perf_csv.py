"""perf_analyzer `-f` CSV results, parsed with pandas (pure apart from reading the text).

Accepts the plain layout, `--verbose-csv` (extra columns ignored) and request-rate
runs, whose first column is "Request Rate": their load level goes into the
`concurrency` label as "<rate>/s" so the two kinds never collide. Values in the file
are microseconds; they come out in seconds.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass

import pandas as pd

# perf_analyzer column -> stage label (docs/metrics.md)
STAGE_COLUMNS: dict[str, str] = {
    "Client Send": "client_send",
    "Network+Server Send/Recv": "network",
    "Server Queue": "queue",
    "Server Compute Input": "compute_input",
    "Server Compute Infer": "compute_infer",
    "Server Compute Output": "compute_output",
    "Client Recv": "client_recv",
}
THROUGHPUT = "Inferences/Second"
LOAD_COLUMNS = ("Concurrency", "Request Rate")
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?) latency$")


class PerfCsvError(ValueError):
    """A perf_analyzer CSV that cannot be read; `reason` is the errors_total reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class PerfRow:
    concurrency: str  # "4" for concurrency runs, "50/s" for request-rate runs
    throughput: float  # inferences per second
    stage_seconds: dict[str, float]
    latency_seconds: dict[str, float]  # quantile ("0.99") -> seconds


def _number_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _quantile(percentile: str) -> str:
    return f"{float(percentile) / 100:g}"


def parse_perf_csv(text: str) -> list[PerfRow]:
    """Rows of one perf_analyzer CSV, ordered by load level; PerfCsvError with a one-line reason."""
    if not text.strip():
        raise PerfCsvError("empty", "file is empty")
    try:
        with warnings.catch_warnings():
            # a row longer than the header would otherwise be silently cut (index_col=False)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                             index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError, UnicodeError) as e:
        raise PerfCsvError("malformed_csv", f"not a CSV table: {str(e).strip().splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    load = next((c for c in LOAD_COLUMNS if c in df.columns), None)
    missing = [c for c in [THROUGHPUT, *STAGE_COLUMNS] if c not in df.columns]
    if load is None:
        missing.insert(0, " or ".join(f"'{c}'" for c in LOAD_COLUMNS))
    if missing:
        names = ", ".join(m if m.startswith("'") else f"'{m}'" for m in missing)
        raise PerfCsvError("missing_column", f"missing column(s) {names} (is this a perf_analyzer -f file?)")
    assert load is not None
    if df.empty:
        raise PerfCsvError("empty", "header only, no result rows")
    percentiles = {c: _quantile(m.group(1)) for c in df.columns if (m := _PERCENTILE.match(c))}
    wanted = [load, THROUGHPUT, *STAGE_COLUMNS, *percentiles]
    values = pd.DataFrame(index=df.index)
    for c in wanted:
        col = pd.to_numeric(df[c].str.strip(), errors="coerce").astype(float)
        arr = col.to_numpy()
        for i, (v, raw) in enumerate(zip(arr, df[c].to_numpy(), strict=True)):
            if not math.isfinite(v):
                raise PerfCsvError("not_a_number", f"row {i + 2} column '{c}': {raw!r} is not a number")
            if v < 0:
                raise PerfCsvError("negative_value", f"row {i + 2} column '{c}': {raw} is negative")
        values[c] = col
    values = values.sort_values(load, kind="stable")
    rows: dict[str, PerfRow] = {}
    suffix = "/s" if load == "Request Rate" else ""
    for _, r in values.iterrows():
        level = _number_text(float(r[load])) + suffix
        rows[level] = PerfRow(  # a level listed twice: the later row wins
            concurrency=level,
            throughput=float(r[THROUGHPUT]),
            stage_seconds={stage: float(r[c]) / 1e6 for c, stage in STAGE_COLUMNS.items()},
            latency_seconds={q: float(r[c]) / 1e6 for c, q in percentiles.items()},
        )
    return list(rows.values())
