"""The perf_analyzer source: a poller that re-reads changed CSV files, and its collector.

Files are matched by the --perf-analyzer-csv globs on every poll; a file is parsed
again when its size, mtime or inode changes (perf_analyzer rewrites it at the end of a
run). A file that does not parse is logged once per version, counted, and exposes
nothing; the other files keep working.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Config
from ..polling import PolledSource, PollThread
from ..source import PREFIX, ErrorCounts
from .perf_csv import STAGE_COLUMNS, PerfCsvError, PerfRow, parse_perf_csv

log = logging.getLogger("perf_analyzer")

MAX_CSV_BYTES = 16 << 20  # a result file is a few KB; refuse to load anything absurd
FileSig = tuple[int, int, int]  # (inode, size, mtime_ns)


@dataclass(frozen=True)
class PerfResult:
    path: str
    sig: FileSig
    rows: tuple[PerfRow, ...]  # empty when the file was rejected
    error: str = ""


def run_names(paths: list[str]) -> dict[str, str]:
    """run label per path: the file's name, or its whole path where two matched files share a name."""
    base = {p: os.path.basename(p) for p in paths}
    counts: dict[str, int] = {}
    for b in base.values():
        counts[b] = counts.get(b, 0) + 1
    return {p: (b if counts[b] == 1 else p) for p, b in base.items()}


class PerfAnalyzerFiles:
    def __init__(self, patterns: list[str], on_error: Callable[[str], None] = lambda reason: None) -> None:
        self.patterns = list(patterns)
        self.on_error = on_error
        self.results: dict[str, PerfResult] = {}  # replaced whole on each poll; read by the collector

    def matched(self) -> list[str]:
        out: set[str] = set()
        for pat in self.patterns:
            paths = glob.glob(pat) if glob.has_magic(pat) else [pat]
            out.update(os.path.abspath(p) for p in paths if os.path.isfile(p))
        return sorted(out)

    def poll(self) -> None:
        current = self.results
        fresh: dict[str, PerfResult] = {}
        for path in self.matched():
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone between glob and stat: next poll
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            old = current.get(path)
            fresh[path] = old if old is not None and old.sig == sig else self._read(path, sig)
        self.results = fresh

    def _read(self, path: str, sig: FileSig) -> PerfResult:
        try:
            if sig[1] > MAX_CSV_BYTES:
                raise PerfCsvError("too_large", f"{sig[1]} bytes, more than a perf_analyzer result can be")
            with open(path, encoding="utf-8") as f:
                rows = parse_perf_csv(f.read())
        except PerfCsvError as e:
            return self._reject(path, sig, e.reason, str(e))
        except UnicodeDecodeError:
            return self._reject(path, sig, "not_utf8", "not UTF-8 text")
        except OSError as e:
            return self._reject(path, sig, "unreadable", e.strerror or str(e))
        log.info("perf_analyzer %s: %d result row(s)", path, len(rows))
        return PerfResult(path, sig, tuple(rows))

    def _reject(self, path: str, sig: FileSig, reason: str, detail: str) -> PerfResult:
        self.on_error(reason)
        log.warning("perf_analyzer %s rejected: %s", path, detail)
        return PerfResult(path, sig, (), detail)


class PerfAnalyzerCollector(Collector):
    def __init__(self, files: PerfAnalyzerFiles) -> None:
        self.files = files

    def describe(self) -> Iterator[Metric]:
        return perf_families({})

    def collect(self) -> Iterator[Metric]:
        return perf_families(self.files.results)


def perf_families(results: Mapping[str, PerfResult]) -> Iterator[Metric]:
    """The perf_analyzer families from the parsed files (pure)."""
    runs = run_names(list(results))
    stage = GaugeMetricFamily(PREFIX + "perf_analyzer_stage_seconds",
                              "Average time per stage in a perf_analyzer run, per load level.",
                              labels=["run", "concurrency", "stage"])
    thr = GaugeMetricFamily(PREFIX + "perf_analyzer_throughput",
                            "Inferences per second in a perf_analyzer run, per load level.",
                            labels=["run", "concurrency"])
    # a summary (quantiles only: the CSV has no count or sum), so `quantile` is where tools expect it
    lat = Metric(PREFIX + "perf_analyzer_latency_seconds",
                 "Client latency percentiles of a perf_analyzer run, per load level.", "summary")
    for path in sorted(results, key=lambda p: runs[p]):
        run = runs[path]
        for row in results[path].rows:
            for st in STAGE_COLUMNS.values():
                stage.add_metric([run, row.concurrency, st], row.stage_seconds[st])
            thr.add_metric([run, row.concurrency], row.throughput)
            for q, v in row.latency_seconds.items():
                lat.add_sample(lat.name, {"run": run, "concurrency": row.concurrency, "quantile": q}, v)
    yield stage
    yield thr
    yield lat


class PerfAnalyzerSource(PolledSource):
    name = "perf_analyzer"

    def __init__(self, cfg: Config, errors: ErrorCounts) -> None:
        self.files = PerfAnalyzerFiles(cfg.perf_analyzer_csv, lambda reason: errors.inc("perf_analyzer", reason))
        self.thread = PollThread("perf-analyzer", self.files.poll, cfg.perf_analyzer_poll_seconds,
                                 self.files.on_error, log)

    def collectors(self) -> list[Collector]:
        return [PerfAnalyzerCollector(self.files)]
