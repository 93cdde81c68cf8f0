"""/metrics bodies written without prometheus_client's per-sample generic work, byte for byte its own.

prometheus_client validates and escapes every metric and label name again on every sample
(in OpenMetrics, the sample name character by character), which made the scrape the
exporter's largest CPU cost. Here each name is checked once, each label pair is rendered
once per scrape, and a label value is escaped only when it holds a backslash, newline or
quote. What this does not reproduce goes to prometheus_client itself, one family at a
time (its encoders render families independently): names outside [a-zA-Z_][a-zA-Z0-9_]*
or starting with "__", native histograms, types it does not know, and any family it
would refuse. Escaping schemes other than underscores and allow-utf-8 (the two are the
same for such names) and OpenMetrics other than 1.0.0 are served by it whole.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Timestamp

log = logging.getLogger("server")

Encoder = Callable[[Collector], bytes]

_PLAIN = re.compile(r"(?!__)[a-zA-Z_][a-zA-Z0-9_]*\Z")  # unchanged by every escaping we render
_ESCAPINGS = ("underscores", "allow-utf-8")
# every type prometheus_client knows, with its text-format name suffix and TYPE (OpenMetrics-only
# types munged as prometheus_client does)
_TEXT_TYPES = {"counter": ("_total", "counter"), "gauge": ("", "gauge"), "summary": ("", "summary"),
               "histogram": ("", "histogram"), "gaugehistogram": ("", "histogram"),
               "unknown": ("", "untyped"), "info": ("_info", "gauge"), "stateset": ("", "gauge")}
_GO_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}
_EOF = "# EOF\n"

_plain_names: set[str] = set()  # names seen to match _PLAIN: checked once, not per sample


class _Fallback(Exception):
    """This family is prometheus_client's to render."""


def _plain(name: str) -> bool:
    if name in _plain_names:
        return True
    if type(name) is not str or not _PLAIN.match(name):
        return False
    if len(_plain_names) > 100_000:  # names are a fixed set; bound it against a runaway collector anyway
        _plain_names.clear()
    _plain_names.add(name)
    return True


def go_float(v: float) -> str:
    """prometheus_client's floatToGoString, without its isnan/compare calls on the common path."""
    s = repr(float(v))
    if s[-1] in "fn":  # inf, -inf, nan
        return _GO_SPECIAL[s]
    dot = s.find(".")
    if dot > 6 and s[0] != "-":  # Go switches to an exponent sooner than Python does
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def valid_text(v: str) -> str:
    """A label value as valid UTF-8: bytes that were not (a file or pod name read with
    surrogateescape, a lone surrogate from JSON) become U+FFFD, not a failed scrape."""
    if v.isascii():
        return v
    try:
        v.encode("utf-8")
        return v
    except UnicodeEncodeError:
        try:
            return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return v.encode("utf-8", "replace").decode("utf-8")


def _valid_labels(metric: Metric) -> Metric:
    """`metric`, or a copy whose label values are valid UTF-8 (for prometheus_client's encoders)."""
    def valid(v: str) -> str:
        return valid_text(v) if isinstance(v, str) else v  # a non-string fails as the library fails it

    if all(valid(v) is v for s in metric.samples for v in s.labels.values()):
        return metric
    out = copy.copy(metric)
    out.samples = [s._replace(labels={k: valid(v) for k, v in s.labels.items()}) for s in metric.samples]
    return out


def _valid_encoder(registry: Collector, encoder: Encoder) -> bytes:
    return encoder(_Families([_valid_labels(m) for m in registry.collect()]))


def _pair(item: tuple[str, str]) -> str:
    k, v = item
    if type(k) is not str or type(v) is not str or not _plain(k):
        raise _Fallback
    v = valid_text(v)  # every label value of the fast path passes here once per scrape
    if "\\" in v or "\n" in v or '"' in v:
        v = v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return f'{k}="{v}"'


def _labels(labels: dict[str, str], pairs: dict[tuple[str, str], str]) -> str:
    """{k="v",...} sorted by name; `pairs` holds this scrape's rendered pairs (values repeat a lot)."""
    items = sorted(labels.items())
    try:
        return "{" + ",".join([pairs[i] for i in items]) + "}"
    except KeyError:
        for i in items:
            if i not in pairs:
                pairs[i] = _pair(i)
        return "{" + ",".join([pairs[i] for i in items]) + "}"


def _exemplar(metric: Metric, sample: str, e: Exemplar) -> str:
    if not ((metric.type == "counter" and sample.endswith("_total"))
            or (metric.type in ("histogram", "gaugehistogram") and sample.endswith("_bucket"))):
        raise _Fallback  # prometheus_client refuses it: let it say so
    labels = ",".join(['{}="{}"'.format(k, v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\""))
                       for k, v in sorted(e.labels.items())])
    ts = "" if e.timestamp is None else f" {e.timestamp}"
    return f" # {{{labels}}} {go_float(e.value)}{ts}"


def _openmetrics_family(metric: Metric, out: list[str], pairs: dict[tuple[str, str], str]) -> None:
    name = metric.name
    if metric.type not in _TEXT_TYPES or not _plain(name):
        raise _Fallback
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
    if metric.unit:
        out.append(f"# UNIT {name} {metric.unit}\n")
    for sname, labels, value, ts, ex, nh in metric.samples:
        if nh is not None or (sname not in _plain_names and not _plain(sname)):
            raise _Fallback
        ls = _labels(labels, pairs) if labels else ""
        v = "" if value is None else go_float(value)
        if ts is None and not ex:
            out.append(f"{sname}{ls} {v}\n")
        else:
            t = "" if ts is None else f" {ts}"
            out.append(f"{sname}{ls} {v}{t}{_exemplar(metric, sname, ex) if ex else ''}\n")


def _text_family(metric: Metric, out: list[str], pairs: dict[tuple[str, str], str]) -> None:
    name = metric.name
    if metric.type not in _TEXT_TYPES or not _plain(name):
        raise _Fallback
    suffix, typ = _TEXT_TYPES[metric.type]
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    out.append(f"# HELP {name}{suffix} {doc}\n# TYPE {name}{suffix} {typ}\n")
    # OpenMetrics-only samples: each kind goes after the family, as a gauge of its own
    apart = {name + s: s for s in ("_created", "_gsum", "_gcount")}
    held: dict[str, list[str]] = {}
    for sname, labels, value, ts, _ex, nh in metric.samples:
        if nh is not None or (sname not in _plain_names and not _plain(sname)):
            raise _Fallback
        ls = _labels(labels, pairs) if labels else ""
        t = "" if ts is None else f" {int(float(ts) * 1000):d}"
        line = f"{sname}{ls} {go_float(value)}{t}\n"
        kind = apart.get(sname)
        if kind is None:
            out.append(line)
        else:
            held.setdefault(kind, []).append(line)
    for kind, lines in sorted(held.items()):
        out.append(f"# HELP {name}{kind} {doc}\n# TYPE {name}{kind} gauge\n")
        out.extend(lines)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def reusable(metric: Metric) -> Metric:
    """Marks a family that its collector hands out unchanged until its data changes (the trace
    families between two commits): each format renders it once and reuses the text."""
    setattr(metric, RENDERED, {})
    return metric


RENDERED = "_infprof_rendered"  # format -> the family's rendered text or bytes


def render(registry: Collector, encoder: Encoder, openmetrics: bool) -> bytes:
    """The body `encoder` (prometheus_client's, underscores or allow-utf-8) would write for `registry`."""
    family = _openmetrics_family if openmetrics else _text_family
    out: list[str] = []
    pairs: dict[tuple[str, str], str] = {}
    key = (openmetrics, getattr(encoder, "keywords", {}).get("escaping"))
    for metric in registry.collect():
        rendered: dict[object, str] | None = getattr(metric, RENDERED, None)
        if rendered is not None and key in rendered:
            out.append(rendered[key])
            continue
        n = len(out)
        try:
            family(metric, out, pairs)
        except Exception:
            del out[n:]
            body = encoder(_Families([_valid_labels(metric)])).decode("utf-8")
            out.append(body[: -len(_EOF)] if openmetrics else body)
        if rendered is not None:
            rendered[key] = "".join(out[n:])
    if openmetrics:
        out.append(_EOF)
    return "".join(out).encode("utf-8")


def fast_encoder(encoder: Encoder) -> Encoder | None:
    """Our renderer standing in for prometheus_client's `encoder`, or None where we have none."""
    if encoder is text_format.generate_latest:
        return partial(render, encoder=encoder, openmetrics=False)
    if not isinstance(encoder, partial) or encoder.args:
        return None
    kw = encoder.keywords
    if encoder.func is text_format.generate_latest and kw.keys() == {"escaping"}:
        openmetrics = False
    elif encoder.func is om_format.generate_latest and kw.keys() == {"escaping", "version"} \
            and kw["version"] == "1.0.0":
        openmetrics = True
    else:
        return None
    return partial(render, encoder=encoder, openmetrics=openmetrics) if kw["escaping"] in _ESCAPINGS else None


def choose_encoder(accept: str) -> tuple[Encoder, str]:
    """prometheus_client's choice of format for `accept`, rendered by us where we render it the same;
    the Prometheus protobuf format (native histograms) where the scraper asks for it first."""
    from . import exposition_protobuf  # it renders with our RENDERED cache: imported after us

    if exposition_protobuf.asks_for_protobuf(accept):
        return exposition_protobuf.render, exposition_protobuf.CONTENT_TYPE
    encoder, content_type = text_format.choose_encoder(accept)
    fast = fast_encoder(encoder)
    if fast is not None and _self_check():
        return fast, content_type
    return partial(_valid_encoder, encoder=encoder), content_type


# --- a check of the installed prometheus_client against us, once per process -----------------

def _canary_families() -> Iterator[Metric]:
    """One family of every type with what sets the formats apart: escapes, exemplars, timestamps,
    units, created, a name we leave to prometheus_client."""
    c = CounterMetricFamily("canary_requests", 'a "b" \\ c\nd', labels=["path", "code"])
    c.add_metric(['/a"\\\n', "200"], 1e21, created=1.5, timestamp=Timestamp(12, 5))
    c.add_metric(["", "ü"], 7, exemplar=Exemplar({"trace_id": 'x"y'}, -0.0, 1.25))
    yield c
    g = GaugeMetricFamily("canary_temperature", "t", labels=["zone"], unit="celsius")
    g.add_metric(["a"], float("nan"), timestamp=1.0005)
    g.add_metric(["b"], float("-inf"))
    yield g
    h = HistogramMetricFamily("canary_seconds", "h", labels=["m"])
    h.add_metric(["x"], [("0.5", 1.0, Exemplar({"a": "1"}, 0.25)), ("+Inf", 3.0)], 1234567.5)
    yield h
    gh = GaugeHistogramMetricFamily("canary_queue", "g", labels=["q"])
    gh.add_metric(["y"], [("1.0", 2.0), ("+Inf", 4.0)], gsum_value=9.0)
    yield gh
    s = SummaryMetricFamily("canary_size", "s", labels=["m"])
    s.add_metric(["x"], 3, 1e-300)
    yield s
    i = InfoMetricFamily("canary_build", "i")
    i.add_metric([], {"version": "1.0", "commit": "abc"})
    yield i
    st = StateSetMetricFamily("canary_state", "s", labels=["n"])
    st.add_metric(["1"], {"up": True, "down": False})
    yield st
    u = UnknownMetricFamily("canary_other", "u")
    u.add_metric([], 2**70)
    yield u
    colon = GaugeMetricFamily("canary:ratio", "prometheus_client escapes it per format", labels=["__x"])
    colon.add_metric(["1"], 0.5)
    yield colon


_checked: bool | None = None


def _self_check() -> bool:
    """True when the installed prometheus_client writes the canary families exactly as we do."""
    global _checked
    if _checked is None:
        ok = True
        try:
            families = _Families(list(_canary_families()))
            for accept in ("text/plain", "text/plain;version=1.0.0;escaping=allow-utf-8",
                           "application/openmetrics-text;version=1.0.0",
                           "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8"):
                encoder = text_format.choose_encoder(accept)[0]
                fast = fast_encoder(encoder)
                ok = ok and fast is not None and fast(families) == encoder(families)
        except Exception:  # an older prometheus_client without some of it
            ok = False
        if not ok:
            log.warning("the installed prometheus_client renders /metrics unlike exporter/exposition.py: "
                        "it renders every scrape itself (slower)")
        _checked = ok
    return _checked
