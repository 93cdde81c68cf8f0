"""Triton's /metrics text, parsed into per-model counters (pure; no I/O).

Only the families docs/metrics.md normalises are read (and, for the optional raw
passthrough, every nv_* family). The text is read line by line, one family at a time:
a family that does not parse costs its own lines, not the others'; the lines of models
past the model cap are skipped before they are parsed; and a family that would take the
series kept past `max_series` is dropped whole. NaN, infinite and negative counters are
dropped, and a series Triton repeats is kept once. Each refusal is counted by reason
in `problems`.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

ModelKey = tuple[str, str]  # (model, version)
SeriesId = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels

# Triton family -> our stage label (values are microseconds)
STAGE_FAMILIES: dict[str, str] = {
    "nv_inference_request_duration_us": "request",
    "nv_inference_queue_duration_us": "queue",
    "nv_inference_compute_input_duration_us": "compute_input",
    "nv_inference_compute_infer_duration_us": "compute_infer",
    "nv_inference_compute_output_duration_us": "compute_output",
}
STAGES: tuple[str, ...] = tuple(STAGE_FAMILIES.values())
OTHER_FAMILIES = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                  "nv_inference_exec_count", "nv_inference_pending_request_count")
NORMALISED = frozenset([*STAGE_FAMILIES, *OTHER_FAMILIES])
# sample names a family's samples may carry besides its own name
_SUFFIXES = ("_total", "_created", "_sum", "_count", "_bucket", "_gsum", "_gcount", "_info")
_MODEL_LABEL = re.compile(r'[{,]\s*model\s*=\s*"((?:[^"\\]|\\.)*)"')
_VERSION_LABEL = re.compile(r'[{,]\s*version\s*=\s*"((?:[^"\\]|\\.)*)"')
Admit = Callable[[str, str], bool]  # (model, version) -> read its lines, or not (the model cap)
_SAMPLE_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
NO_LIMIT = 1 << 62
# A plain sample line, as Triton writes them: read here at a fraction of the cost of
# prometheus_client's general parser, which still reads every other line
_PLAIN_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})?'
                           r"[ \t]+(\S+)")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ALLOWED_SUFFIXES = {"counter": ("",), "gauge": ("",), "summary": ("", "_count", "_sum"),
                     "histogram": ("_count", "_sum", "_bucket")}


@dataclass
class Problems:
    """What a fetch refused, by errors_total reason: how often, and the first case for the log."""

    counts: Counter[str] = field(default_factory=Counter)
    details: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self.details.setdefault(reason, detail)

    def merge(self, other: Problems) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            self.details.setdefault(reason, other.details.get(reason, ""))


class MetricsTextError(ValueError):
    """Triton's /metrics answer had no line that parses as Prometheus text."""


@dataclass
class ModelCounters:
    stage_us: dict[str, float] = field(default_factory=dict)
    success: float | None = None
    failures: dict[str, float] = field(default_factory=dict)  # by Triton's `reason` ("" where it has none)
    inferences: float | None = None
    executions: float | None = None
    pending: float | None = None


@dataclass
class TritonMetricsText:
    models: dict[ModelKey, ModelCounters]
    raw: list[Metric]  # every nv_* family as parsed, for the passthrough
    counters: dict[SeriesId, float] = field(default_factory=dict)  # every counter sample kept
    problems: Problems = field(default_factory=Problems)


def _key(labels: dict[str, str]) -> ModelKey | None:
    model = labels.get("model")
    if model is None:
        return None
    return model, labels.get("version", "")


class _Parser:
    def __init__(self, admit: Admit, max_series: int, keep_raw: bool) -> None:
        self.admit = admit
        self.max_series = max_series
        self.keep_raw = keep_raw
        self.out = TritonMetricsText({}, [])
        self.seen: set[SeriesId] = set()
        self.kept = 0  # sample lines kept so far, against max_series
        self.good = self.bad = 0
        self.family: str | None = None
        self.header: list[str] = []
        self.lines: list[str] = []
        self.dropping = False  # the rest of this family is past the series cap
        self.skip_prefix = b""  # lines of the current family start so while it is not read at all

    def problem(self, reason: str, detail: str) -> None:
        self.out.problems.add(reason, detail)

    def wanted(self, family: str) -> bool:
        return family in NORMALISED or (self.keep_raw and family.startswith("nv_"))

    def line(self, raw: bytes) -> None:
        if self.skip_prefix and raw.startswith(self.skip_prefix) and raw[len(self.skip_prefix):][:1] in b"{ \t":
            return  # a sample of a family dropped or not wanted
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.bad += 1
            self.problem("bad_line", "a line that is not UTF-8")
            return
        if not text:
            return
        if text.startswith("#"):
            parts = text.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if parts[2] != self.family or self.lines:  # a new family, or one Triton repeats
                    self.start(parts[2])
                self.header.append(text)
            return
        m = _SAMPLE_NAME.match(text)
        if m is None:
            self.bad += 1
            self.problem("bad_line", f"not Prometheus text: {text[:80]!r}")
            return
        name = m.group(0)
        fam = self.family
        if fam is None or not (name == fam or (name.startswith(fam) and name[len(fam):] in _SUFFIXES)):
            self.start(name)
            fam = name
        if self.dropping or not self.wanted(fam):
            self.skip_prefix = fam.encode()
            return
        model = _MODEL_LABEL.search(text)
        if model is not None:
            version = _VERSION_LABEL.search(text)
            if not self.admit(model.group(1), version.group(1) if version else ""):
                return
        if self.kept + len(self.lines) >= self.max_series:
            self.problem("too_many_series", f"family {fam} would pass the cap of {self.max_series:,} series "
                         "per target (--triton-max-series)")
            self.lines, self.dropping, self.skip_prefix = [], True, fam.encode()
            return
        self.lines.append(text)

    def start(self, family: str) -> None:
        self.flush()
        self.family, self.header, self.lines, self.dropping, self.skip_prefix = family, [], [], False, b""

    def flush(self) -> None:
        if not self.lines:
            return
        lines, self.lines = self.lines, []
        self.kept += len(lines)
        name, doc, typ = self.family or "", "", "untyped"
        for h in self.header:
            parts = h.split(None, 3)
            if parts[1] == "TYPE" and len(parts) == 4:
                typ = parts[3].strip()
            elif parts[1] == "HELP":
                doc = parts[3] if len(parts) == 4 else ""
        allowed = {name + s for s in _ALLOWED_SUFFIXES.get(typ, ("",))}
        samples: list[Sample] = []
        slow: list[str] = []
        for one in lines:
            m = _PLAIN_SAMPLE.fullmatch(one)
            value = _number(m.group(3)) if m else None
            if m is None or value is None or m.group(1) not in allowed:
                slow.append(one)
                continue
            labels = {k: (_unescape(v) if "\\" in v else v) for k, v in _LABEL_PAIR.findall(m.group(2) or "")}
            samples.append(Sample(m.group(1), labels, value))
        if samples:
            self.take(_family(name, doc, typ, samples))
        for one in slow:  # prometheus_client's reading of anything unusual, line by line
            try:
                fams = list(text_string_to_metric_families("\n".join([*self.header, one]) + "\n"))
            except (ValueError, TypeError, IndexError) as e:
                self.bad += 1
                self.problem("bad_line", f"not Prometheus text: {one[:80]!r} ({e})")
                continue
            for f in fams:
                self.take(f)

    def take(self, fam: Metric) -> None:
        kept = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        for s in fam.samples:
            sid: SeriesId = (s.name, tuple(sorted(s.labels.items())))
            checked = fam.type == "counter" or fam.name in NORMALISED
            if checked and (math.isnan(s.value) or math.isinf(s.value) or s.value < 0):
                self.problem("bad_value", f"{s.name}{s.labels} = {s.value}: not a count")
                continue
            if sid in self.seen:
                self.problem("duplicate_series", f"{s.name}{s.labels} given twice; the first is kept")
                continue
            self.seen.add(sid)
            self.good += 1
            kept.samples.append(s)
            if fam.type == "counter":
                self.out.counters[sid] = s.value
            self.normalise(fam.name, s.name, s.labels, s.value)
        if self.keep_raw and fam.name.startswith("nv_") and kept.samples:
            self.out.raw.append(kept)

    def normalise(self, family: str, sample: str, labels: dict[str, str], value: float) -> None:
        key = _key(labels)
        # the parser names counter samples <family>_total; summaries' _sum/_count are not ours
        if key is None or family not in NORMALISED or sample not in (family, family + "_total"):
            return
        c = self.out.models.setdefault(key, ModelCounters())
        if family in STAGE_FAMILIES:
            c.stage_us[STAGE_FAMILIES[family]] = value
        elif family == "nv_inference_request_success":
            c.success = value
        elif family == "nv_inference_request_failure":
            reason = labels.get("reason", "")
            c.failures[reason] = c.failures.get(reason, 0.0) + value
        elif family == "nv_inference_count":
            c.inferences = value
        elif family == "nv_inference_exec_count":
            c.executions = value
        elif family == "nv_inference_pending_request_count":
            c.pending = value


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _unescape(value: str) -> str:
    return re.sub(r'\\\\|\\"|\\n', lambda m: _ESCAPES[m.group(0)], value)


def _family(name: str, doc: str, typ: str, samples: list[Sample]) -> Metric:
    """As prometheus_client's text parser builds it: counters named without _total, samples with."""
    if typ == "counter":
        if name.endswith("_total"):
            name = name[:-6]
        else:
            samples = [s._replace(name=s.name + "_total") if not s.name.endswith("_total") else s for s in samples]
    fam = Metric(name, _unescape_help(doc), typ)
    fam.samples = samples
    return fam


def _unescape_help(doc: str) -> str:
    return doc.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")


@functools.lru_cache(maxsize=64)
def _skip_patterns(prefix: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """A sample line of the family `prefix`, and the end of a run of them."""
    sample = re.escape(prefix) + rb"[{ \t]"
    return re.compile(sample), re.compile(rb"\n(?!" + sample + rb")")


def parse_metrics_chunks(chunks: Iterable[bytes], admit: Admit = lambda model, version: True,
                         max_series: int = NO_LIMIT, keep_raw: bool = True) -> TritonMetricsText:
    """Per-(model, version) counters from Triton's /metrics body as it arrives in chunks.

    `admit(model, version)` says whether a model's lines are read at all (the model cap);
    `keep_raw` keeps every nv_* family for the passthrough. The lines of a family that is
    not read (unwanted, or past the series cap) are skipped a run at a time, undecoded.
    """
    p = _Parser(admit, max_series, keep_raw)
    rest = b""
    for chunk in chunks:
        buf, pos = rest + chunk, 0
        while True:
            if p.skip_prefix and buf.startswith(p.skip_prefix, pos):
                # a run of the skipped family's samples: jump to the first line that is not one
                this, after = _skip_patterns(p.skip_prefix)
                if this.match(buf, pos):
                    m = after.search(buf, pos)
                    if m is None:
                        pos = max(pos, buf.rfind(b"\n") + 1)
                        break
                    pos = m.end()
                    continue
            end = buf.find(b"\n", pos)
            if end < 0:
                break
            p.line(buf[pos:end])
            pos = end + 1
        rest = buf[pos:]
    if rest:
        p.line(rest)
    p.flush()
    if p.bad and not p.good:
        raise MetricsTextError(p.out.problems.details.get("bad_line", "not Prometheus text"))
    return p.out


def parse_metrics_text(text: str, admit: Admit = lambda model, version: True,
                       max_series: int = NO_LIMIT, keep_raw: bool = True) -> TritonMetricsText:
    return parse_metrics_chunks([text.encode()], admit, max_series, keep_raw)
