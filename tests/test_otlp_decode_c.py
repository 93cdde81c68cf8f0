"""The compiled OTLP decoders (exporter/otlp/_otlp.c) against the Python decoders of decode.py,
the reference they stand beside: equal records (type, field types, attribute order) wherever the
reference accepts a body, a one-line refusal wherever it refuses one. Fed real Triton bodies,
Triton-shaped payloads, generated OTLP with what the formats allow (unicode and escapes, 64-bit
numbers as text, unknown fields of every type, nulls, repeated keys and merged fields), edge cases
found by probing the protobuf library and msgspec, and byte mutations and truncations of all."""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporter.otlp import cdecode, decode
from exporter.otlp.decode import PayloadError
from tests.otlp_payloads import T0, export_request, request_spans, to_json

SAMPLES = Path(__file__).resolve().parent / "samples" / "otlp"
COMPILED = decode._COMPILED
pytestmark = pytest.mark.skipif(COMPILED is None and bool(os.environ.get(cdecode.ENV)),
                                reason=f"{cdecode.ENV} is set: the Python decoders serve")
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


def compiled(kind: str, data: bytes) -> str:
    assert COMPILED is not None, cdecode.WHY
    try:
        return repr(COMPILED[kind == "protobuf"](data))
    except ValueError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
        return "refused"


def reference(kind: str, data: bytes) -> str:
    try:
        return repr((decode._protobuf_records if kind == "protobuf" else decode._json_records)(data))
    except PayloadError as e:
        assert (e.status, e.result) == (400, "malformed")
        return "refused"


def same(kind: str, data: bytes) -> str:
    """Both decoders' outcome (the records' repr, or "refused"), held equal."""
    got, want = compiled(kind, data), reference(kind, data)
    assert got == want, (data[:300], got[:300], want[:300])
    return got


def test_this_checkout_uses_the_compiled_decoders() -> None:
    # setup.sh builds the module: the receiver must be using it, its tables from the descriptors
    assert COMPILED is not None, cdecode.WHY
    assert cdecode.decoder_name().startswith("C ") and not cdecode.decoder_warning()


# --- real and Triton-shaped bodies ----------------------------------------------------------

def _protobuf_of(doc: dict[str, Any]) -> bytes:
    """An OTLP/JSON document (ids in hex) as protobuf, through the protobuf library's own reader."""
    doc = json.loads(json.dumps(doc))
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64encode(bytes.fromhex(s[k])).decode()
    return bytes(json_format.ParseDict(doc, ExportTraceServiceRequest()).SerializeToString())


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_real_triton_bodies_give_equal_records(path: Path) -> None:
    body = path.read_bytes()
    records = same("json", body)
    assert records != "refused" and "triton.model_name" in records
    assert same("protobuf", _protobuf_of(json.loads(body))) == records


@pytest.mark.parametrize("protocol", ["http", "grpc", "none"])
@pytest.mark.parametrize("ensemble", [None, "add_sub_ensemble"])
def test_triton_shaped_payloads_give_equal_records(protocol: str, ensemble: str | None) -> None:
    spans = []
    for i in range(4):
        spans += request_spans(T0 + i * 10**9, protocol=protocol, ensemble=ensemble, responses=1 + i % 3,
                               boot_sends=i == 2, request_id=f"r{i}")
    req = export_request(spans)
    records = same("protobuf", req.SerializeToString())
    assert records.count("SpanRecord(") == len(spans)
    assert same("json", to_json(req)) == records  # one body, two encodings: the same records


def test_a_refusal_is_one_line_through_decode() -> None:
    with pytest.raises(PayloadError) as e:
        decode.decode(b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":1}]}]}]}', "application/json", None)
    assert (e.value.status, e.value.result) == (400, "malformed")
    assert str(e.value).startswith("JSON body is not an ExportTraceServiceRequest: ") and "\n" not in str(e.value)
    with pytest.raises(PayloadError) as e:
        decode.decode(b"\x0a\x05\x12", "application/x-protobuf", None)
    assert str(e.value).startswith("protobuf body is not an ExportTraceServiceRequest: ")
    bad = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"00","spanId":"zz"}]}]}]}'
    with pytest.raises(PayloadError, match=r"^span 'zz' of trace '00': ids must be hex$"):
        decode.decode(bad, "application/json", None)


# --- JSON edge cases (each probed against msgspec's decoder) ----------------------------------

def _spans(*spans: str) -> str:
    return '{"resourceSpans":[{"scopeSpans":[{"spans":[' + ",".join(spans) + "]}]}]}"


def _event_time(text: str) -> str:
    return _spans('{"events":[{"name":"e","timeUnixNano":' + text + "}]}")


def _attr(value: str, key: str = "triton.a") -> str:
    return _spans('{"attributes":[{"key":"' + key + '","value":' + value + "}]}")


JSON_CASES = [
    "{}", "[]", " {} ", "{} x", "\ufeff{}", "null", "", " ", "{", '{"resourceSpans":null}', '{"a":1,"a":2}',
    '{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x"}]}]}],"resourceSpans":[]}',
    '{"resourceSpans":[],"resourceSpans":[{"scopeSpans":[{"spans":[{}]}]}]}',
    _spans('{"name":"a","name":"b"}'), _spans('{"n\\u0061me":"esc key"}'), _spans('{"name":"\\ud83d\\ude00 \\u00e9"}'),
    _spans('{"name":"\\ud800"}'), _spans('{"name":"\\udc00"}'), _spans('{"name":"\\ud800\\u0041"}'),
    _spans('{"name":"a\x01"}'), _spans('{"name":"a\x7f"}'), _spans('{"name":"\\q"}'), _spans('{"name":"\\u12G4"}'),
    _spans('{"name":"\\u00"}'), _spans('{"x":"\\ud800"}'), _spans('{"x":"\\u12"}'), _spans('{"name":1}'),
    _spans("null"), _spans("{}", "{}"), _spans('{"attributes":null}'), _spans('{"events":null}'),
    _spans('{"status":null}'), _spans('{"status":{"code":"2"}}'), _spans('{"status":{"code":2.0}}'),
    _spans('{"status":{"code":99999999999999999999999}}'), _spans('{"status":{"code":true}}'),
    _spans('{"status":{"code":null}}'), _spans('{"status":{"code":"STATUS_CODE_ERROR"}}'),
    _spans('{"status":{"code":"STATUS_CODE_OK","code":-7}}'), _spans('{"status":{"code":1},"status":{}}'),
    _spans('{"status":{"code":1.5}}'), _spans('{"status":{}}'), _spans('{"status":[]}'),
    _spans('{"traceId":"0a 0b","spanId":" 0a\\n","parentSpanId":"AB\\u000b"}'),
    _spans('{"traceId":"0a 0b","spanId":"0","parentSpanId":"AB"}'), _spans('{"traceId":"0a\\u001c0b"}'),
    _spans('{"traceId":"\\u0030\\u0061"}'), _spans('{"traceId":"zz","traceId":"00"}'), _spans('{"spanId":"é0"}'),
    _spans('{"traceId":"zz"}') + "x", _spans('{"traceId":"zz"}', '{"name":1}'),
    '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}],"scopeSpans":[]}]}',
    '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}],"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0g"}]}]}]}',
    _attr('{"intValue":2.0}'), _attr('{"intValue":-99999999999999999999999}'), _attr('{"intValue":true}'),
    _attr('{"stringValue":null,"intValue":"12"}'), _attr('{"stringValue":"x","intValue":"12"}'),
    _attr('{"stringValue":1}'), _attr('{"intValue":"007"}'), _attr('{"intValue":"-0"}'), _attr('{"intValue":"-007"}'),
    _attr('{"intValue":"+5"}'), _attr('{"intValue":" 5"}'), _attr('{"intValue":"²"}'), _attr('{"intValue":""}'),
    _attr('{"intValue":"-"}'), _attr('{"intValue":"%s"}' % ("9" * 4300)), _attr('{"intValue":"%s"}' % ("9" * 4301)),
    _attr('{"intValue":"-%s"}' % ("0" * 4300 + "1")), _attr('{"intValue":%s}' % ("9" * 4300)),
    _attr('{"intValue":-%s}' % ("9" * 4300)), _attr('{"intValue":1e300}'), _attr('{"intValue":9007199254740993.0}'),
    _attr('{"intValue":1}', key="other"), _attr("null"), _attr("{}"), _attr('{"boolValue":true}'),
    _spans('{"attributes":[{"key":"triton.a","value":{"stringValue":"x"}},{"key":"triton.a","value":{"boolValue":true}}]}'),
    _spans('{"attributes":[{"key":"triton.b","value":{"stringValue":"1"}},{"key":"triton.a","value":{"stringValue":"2"}},'
           '{"key":"triton.b","value":{"stringValue":"3"}}]}'),
    _spans('{"attributes":[{"value":{"stringValue":"v"},"key":"triton.late"}]}'),
    _spans('{"attributes":[{"key":"triton.a","value":{"stringValue":"v"},"value":null}]}'),
    _spans('{"attributes":[{"key":"triton.a","value":null,"value":{"stringValue":"v"}}]}'),
    _spans('{"attributes":[{"key":"triton.a","key":"x","value":{"stringValue":"v"}}]}'),
    _spans('{"attributes":[null,{"key":"triton.a","value":{"intValue":"1"}}],"attributes":[]}'),
    _spans('{"attributes":[{"key":"triton\\u002ea","value":{"stringValue":"\\u00e9"}}]}'),
    _spans('{"attributes":[{"key":null}]}'), _spans('{"attributes":[1]}'), _spans('{"attributes":[{}]}'),
    _spans('{"events":[null,{"name":"a"},{"timeUnixNano":"5"}],"events":[{"name":"b","timeUnixNano":1}]}'),
    _spans('{"events":[{}]}'), _spans('{"events":[[]]}'),
    *(_event_time(t) for t in [
        "1", '"1"', "1.0", '"1.0"', "1e3", '"1e3"', '" 1"', '"+1"', '"-0"', "-0", "-0.0", '"0x10"', "true", '"true"',
        "-1", '"-1"', "18446744073709551615", "18446744073709551616", '"18446744073709551616"', "1.5", '"01"', "01",
        "null", '"\u0661"', '"1_000"', "9223372036854775808", "1E2", '"1E2"', "0.0", "1e-0", "100e-2", '"100e-2"',
        "1.0e300", '""', '"nan"', '"inf"', '"-Infinity"', '"\\u0031"', '"1e-400"', '"9007199254740993.0"',
        "1e400", '"1e99999"', '"0e99999"', "1.", ".5", "-", "1e", "1e+", "+1", "0.5e1", '"%s"' % ("1" * 4300),
        '"%s"' % ("1" * 4301), "1" * 5000, '"1796061757936754807"', "[]", "{}", '"1"x']),
    _spans('{"x":[[[[{"a":[1,2,{"b":null}]}]]]],"y":"\\u00e9","z":true,"w":false,"v":-1.5e-3}'),
    _spans('{"x":[1,]}'), _spans('{"x":{"a":1,}}'), _spans('{"x":[,1]}'), _spans('{"x":{,}}'), _spans('{"x":tru}'),
    _spans('{"x":nul}'), _spans('{"x":{1:2}}'), _spans('{"x":[1 2]}'), _spans('{"x":01}'), _spans('{"x":"a\x1f"}'),
    _spans('{"x" 1}'), _spans('{"x":1,}'), _spans('{"name":"a"'), _spans('{"name":"a\\'), _spans('{"name":"a\\u00'),
    '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"t"}}]},'
    '"scopeSpans":[{"scope":{"name":"s"},"spans":[{"name":"n"}]}],"schemaUrl":"u"}]}',
    '{"resourceSpans":[{"scopeSpans":[{"spans":[]}]}] , "extra" : [ {} , [ ] ] }\n',
    '{"resourceSpans":[null]}', '{"resourceSpans":[{"scopeSpans":[null]}]}', '{"resourceSpans":[{"scopeSpans":{}}]}',
]


@pytest.mark.parametrize("text", JSON_CASES)
def test_json_edge_cases_as_the_reference(text: str) -> None:
    same("json", text.encode())


@pytest.mark.parametrize("raw", [
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\xff"}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"nam\xff":"a"}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"x":"\xff\xfe"}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\xed\xa0\x80"}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\xc0\x80"}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\xf4\x90\x80\x80"}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\xe2\x82"}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"events":[{"timeUnixNano":"1\xff"}]}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"other","value":{"stringValue":"\xff"}}]}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"status":{"code":"\xff"}}]}]}]}',
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"caf\xc3\xa9 \xf0\x9f\x98\x80"}]}]}]}',
    b'{}\x00', b' \t\n\r{}\n', b'\x0c{}',
])
def test_json_bytes_that_are_not_utf8_as_the_reference(raw: bytes) -> None:
    same("json", raw)


def test_json_nesting_is_bounded() -> None:
    """Unknown values nest to the compiled parser's bound (msgspec's is Python's recursion limit,
    about 1000 levels less the caller's stack); past it the body is refused, not the process."""
    bound = COMPILED_MAX = _c_module().JSON_MAX_DEPTH
    deep = lambda n: _spans('{"x":' + "[" * n + "1" + "]" * n + "}").encode()  # noqa: E731
    assert same("json", deep(bound - 10)) != "refused"  # 7 levels hold the span
    assert compiled("json", deep(COMPILED_MAX)) == "refused"
    assert same("json", deep(100_000)) == "refused"


def _c_module() -> Any:
    import importlib

    return importlib.import_module("exporter.otlp._otlp")


# --- protobuf edge cases (each probed against ParseFromString) --------------------------------

def _v(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def _tag(field: int, wt: int) -> bytes:
    return _v(field << 3 | wt)


def _ld(field: int, body: bytes) -> bytes:
    return _tag(field, 2) + _v(len(body)) + body


def _span(body: bytes) -> bytes:
    return _ld(1, _ld(2, _ld(2, body)))


def _nested_value(levels: int, inner: bytes) -> bytes:
    for _ in range(levels):
        inner = _ld(5, _ld(1, inner))  # AnyValue.array_value -> ArrayValue.values
    return inner


def _groups(n: int) -> bytes:
    out = b""
    for _ in range(n):
        out = _tag(20, 3) + out + _tag(20, 4)
    return out


_KV = _ld(1, b"triton.model_name") + _ld(2, _ld(1, b"m"))
PROTOBUF_CASES = {
    "empty": b"", "unknown group": _tag(5, 3) + _tag(1, 0) + _v(1) + _tag(5, 4),
    "group closed by another": _tag(5, 3) + _tag(6, 4), "lone end group": _tag(5, 4),
    "group in a span": _span(_tag(20, 3) + _tag(20, 4) + _ld(5, b"n")), "wire type 6": _tag(5, 6),
    "wire type 7": _tag(5, 7) + b"\0\0\0\0", "field 0": _tag(0, 0) + _v(1),
    "varint of 10 bytes": _tag(20, 0) + b"\xff" * 9 + b"\x01", "10th byte 0x7f": _tag(20, 0) + b"\xff" * 9 + b"\x7f",
    "varint of 11 bytes": _tag(20, 0) + b"\xff" * 10 + b"\x01", "tag of 6 bytes": b"\x80" * 5 + b"\x00" + _v(1),
    "tag past 32 bits": b"\xa8\x80\x80\x80\x10" + _v(1), "tag 0x0f": b"\xf8\xff\xff\xff\x0f" + _v(1),
    "tag not minimal": b"\xa8\x00" + _v(1), "largest field": _v((2**29 - 1) << 3) + _v(1),
    "length of 10 bytes": _tag(1, 2) + b"\x80" * 9 + b"\x00", "length of 11 bytes": _tag(1, 2) + b"\x80" * 10 + b"\x00",
    "length 2**32": _tag(1, 2) + _v(2**32), "length past the end": _span(_ld(5, b"abc"))[:-1],
    "name not UTF-8": _span(_ld(5, b"\xff")), "unknown not UTF-8": _span(_ld(50, b"\xff")),
    "trace_state not UTF-8": _span(_ld(3, b"\xff")), "schema_url not UTF-8": _ld(1, _ld(3, b"\xff")),
    "scope name not UTF-8": _ld(1, _ld(2, _ld(1, _ld(1, b"\xff")))), "surrogate": _span(_ld(5, b"\xed\xa0\x80")),
    "overlong": _span(_ld(5, b"\xc0\x80")), "nul": _span(_ld(5, b"a\x00b")), "name as varint": _span(_tag(5, 0) + _v(3)),
    "trace_id as varint": _span(_tag(1, 0) + _v(3) + _ld(1, b"ab")), "ids": _span(_ld(1, b"t" * 16) + _ld(2, b"s" * 8) +
                                                                                 _ld(4, b"p" * 8) + _ld(2, b"S")),
    "status code 2**32-1": _span(_ld(15, _tag(3, 0) + _v(2**32 - 1))),
    "status code 2**64-1": _span(_ld(15, _tag(3, 0) + _v(2**64 - 1))),
    "status merged": _span(_ld(15, _tag(3, 0) + _v(2)) + _ld(15, _ld(2, b"m"))),
    "status as a group": _span(_tag(15, 3) + _tag(3, 0) + _v(2) + _tag(15, 4)),
    "event": _span(_ld(11, _tag(1, 1) + (5).to_bytes(8, "little") + _ld(2, b"e"))),
    "event time as varint": _span(_ld(11, _tag(1, 0) + _v(5))), "event fixed64 truncated": _span(_ld(11, _tag(1, 1) + b"\0\0")),
    "event name not UTF-8": _span(_ld(11, _ld(2, b"\xff"))), "key not UTF-8": _span(_ld(9, _ld(1, b"\xff"))),
    "nested key not UTF-8": _span(_ld(9, _ld(2, _ld(6, _ld(1, _ld(1, b"\xff")))))),
    "bytes value not UTF-8": _span(_ld(9, _ld(2, _ld(7, b"\xff")))),
    "kind packed": _span(_ld(6, b"\x01\x02")), "bool as length": _span(_ld(9, _ld(1, b"triton.b") + _ld(2, _ld(2, b"\x01")))),
    "attribute": _span(_ld(9, _KV)), "int attribute": _span(_ld(9, _ld(1, b"triton.v") + _ld(2, _tag(3, 0) + _v(2**64 - 7)))),
    "string then bool": _span(_ld(9, _ld(1, b"triton.v") + _ld(2, _ld(1, b"s") + _tag(2, 0) + _v(1)))),
    "values merged": _span(_ld(9, _ld(1, b"triton.v") + _ld(2, _ld(1, b"s")) + _ld(2, b""))),
    "values merged, int last": _span(_ld(9, _ld(1, b"triton.v") + _ld(2, _ld(1, b"s")) + _ld(2, _tag(3, 0) + _v(4)))),
    "empty string value": _span(_ld(9, _ld(1, b"triton.v") + _ld(2, _ld(1, b"")))),
    "key twice": _span(_ld(9, _ld(1, b"other") + _ld(2, _ld(1, b"s")) + _ld(1, b"triton.k"))),
    "array value": _span(_ld(9, _ld(1, b"triton.v") + _ld(2, _ld(5, _ld(1, _ld(1, b"x")))))),
    "double then int": _span(_ld(9, _ld(1, b"triton.v") + _ld(2, _tag(4, 1) + b"\0" * 8 + _tag(3, 0) + _v(9)))),
    "unicode key": _span(_ld(9, _ld(1, "triton.é".encode()) + _ld(2, _ld(1, "ü".encode())))),
    "span twice merged": _ld(1, _ld(2, _ld(2, _ld(5, b"a") + _ld(9, _KV)) + _ld(2, _ld(5, b"b")))),
    "depth 100": _span(_ld(9, _ld(2, _nested_value(47, _ld(6, b""))))),
    "depth 101": _span(_ld(9, _ld(2, _nested_value(47, _ld(6, _ld(1, b"")))))),
    "empty message at 101": _span(_ld(9, _ld(2, _nested_value(48, b"")))),
    "group at 100": _span(_ld(9, _ld(2, _nested_value(47, _groups(1))))),
    "group at 101": _span(_ld(9, _ld(2, _nested_value(47, _groups(2))))),
    "groups 100": _groups(100), "groups 101": _groups(101), "groups 5000": _groups(5000),
    "group with field 0": _tag(20, 3) + _tag(0, 0) + _v(1) + _tag(20, 4),
    "group with wire type 6": _tag(20, 3) + _tag(3, 6) + _tag(20, 4), "group not closed": _tag(20, 3) + _tag(3, 0) + _v(1),
    "groups crossed": _tag(20, 3) + _tag(21, 3) + _tag(20, 4) + _tag(21, 4),
    "end group in a message": _ld(1, _tag(5, 4)), "end group in unknown bytes": _ld(20, _tag(5, 4)),
    "resource spans as a group": _tag(1, 3) + _tag(1, 4),
}


@pytest.mark.parametrize("name", list(PROTOBUF_CASES))
def test_protobuf_edge_cases_as_the_reference(name: str) -> None:
    same("protobuf", PROTOBUF_CASES[name])


# --- generated OTLP/JSON ----------------------------------------------------------------------

class Raw(str):
    """JSON text written as it is (a number in any of its forms)."""


class Obj(list):  # type: ignore[type-arg]
    """A JSON object as (key, value) pairs: a key may repeat."""


def _dump_str(s: str, rnd: random.Random) -> str:
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch in '"\\' or c < 0x20 or rnd.random() < 0.05:
            short = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f", "/": "\\/"}
            if ch in short and rnd.random() < 0.7:
                out.append(short[ch])
            elif c > 0xFFFF:
                c -= 0x10000
                out.append(f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04X}")
            else:
                out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump(v: Any, rnd: random.Random) -> str:
    ws = lambda: rnd.choice(["", "", " ", "\n  ", "\t"])  # noqa: E731
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, str):
        return _dump_str(v, rnd)
    if isinstance(v, Obj):
        return "{" + ws() + ",".join(f"{ws()}{_dump_str(k, rnd)}{ws()}:{ws()}{dump(x, rnd)}{ws()}" for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ws() + ",".join(ws() + dump(x, rnd) + ws() for x in v) + "]"
    return json.dumps(v)  # None, bool


text = st.text(max_size=10)
unknown_value = st.recursive(
    st.none() | st.booleans() | text | st.integers(-(2**70), 2**70).map(lambda i: Raw(str(i)))
    | st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Raw(json.dumps(f))),
    lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(text, inner), max_size=3).map(Obj),
    max_leaves=8)


def _number_forms(n: int) -> st.SearchStrategy[Any]:
    forms = [str(n), f"{n}.0", f"{n}e0", f"{n}0e-1", f"{n}E+0"] + (["-0", "-0.0"] if n == 0 else [])
    return st.sampled_from(forms).flatmap(lambda t: st.sampled_from([Raw(t), t]))  # a number, or its text


u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**53, 2**53 + 1, 2**64, 1796061757936754807]))
hex_id = st.one_of(st.binary(max_size=16).map(bytes.hex), st.binary(max_size=16).map(lambda b: b.hex().upper()),
                   st.sampled_from(["", " 0a 0b ", "0a\n0b", "zz", "0", "0g", "é1", "0a\u00a00b"]))
int_value = st.one_of(st.integers(-(2**63), 2**63 - 1).flatmap(_number_forms), st.none(), text,
                      st.sampled_from(["007", "-0", "+1", " 1", "1.0", "", "-"]))


def _fields(draw: st.DrawFn, fields: list[tuple[str, st.SearchStrategy[Any]]]) -> Obj:
    """Some of the fields, unknown ones among them, in any order, a few repeated."""
    chosen = [(k, draw(s)) for k, s in fields if draw(st.integers(0, 9)) < 8]
    chosen += draw(st.lists(st.tuples(text, unknown_value), max_size=2))
    if chosen and draw(st.integers(0, 9)) == 0:
        k, s = draw(st.sampled_from(fields))
        chosen.append((k, draw(s)))
    return Obj(draw(st.permutations(chosen)))


@st.composite
def any_value(draw: st.DrawFn) -> Obj:
    return _fields(draw, [("stringValue", st.none() | text), ("intValue", int_value),
                          ("boolValue", st.booleans()), ("arrayValue", unknown_value)])


@st.composite
def key_value(draw: st.DrawFn) -> Obj | None:
    if draw(st.integers(0, 19)) == 0:
        return None
    key = st.one_of(st.sampled_from(["triton.model_name", "triton.model_version", "triton.request_id"]),
                    text.map(lambda t: "triton." + t), text)
    return _fields(draw, [("key", key), ("value", st.none() | any_value())])


@st.composite
def event(draw: st.DrawFn) -> Obj | None:
    if draw(st.integers(0, 19)) == 0:
        return None
    return _fields(draw, [("name", st.sampled_from(["REQUEST_START", "COMPUTE_END"]) | text),
                          ("timeUnixNano", u64.flatmap(_number_forms))])


@st.composite
def json_span(draw: st.DrawFn) -> Obj:
    status = st.none() | st.builds(lambda c: Obj([("code", c)]), st.integers(-3, 5).map(lambda i: Raw(str(i))) | st.sampled_from(
        ["STATUS_CODE_OK", "STATUS_CODE_ERROR", "STATUS_CODE_UNSET", "2", "other"]))
    return _fields(draw, [("traceId", hex_id), ("spanId", hex_id), ("parentSpanId", hex_id), ("name", text),
                          ("attributes", st.lists(key_value(), max_size=4)), ("events", st.lists(event(), max_size=4)),
                          ("status", status), ("startTimeUnixNano", u64.map(str)), ("kind", st.integers(0, 5))])


@st.composite
def json_body(draw: st.DrawFn) -> bytes:
    scope = st.builds(lambda spans, extra: Obj([("spans", spans), *extra]), st.lists(json_span(), max_size=4),
                      st.lists(st.tuples(text, unknown_value), max_size=1))
    resource = st.builds(lambda scopes, extra: Obj([("scopeSpans", scopes), *extra]), st.lists(scope, max_size=2),
                         st.lists(st.tuples(text, unknown_value), max_size=1))
    doc = Obj([("resourceSpans", draw(st.lists(resource, min_size=1, max_size=2)))])
    text_ = dump(doc, draw(st.randoms(use_true_random=False)))
    return text_.encode("utf-8", "surrogatepass")


@FUZZ
@given(body=json_body())
def test_generated_json_gives_equal_records(body: bytes) -> None:
    same("json", body)


# --- generated protobuf -----------------------------------------------------------------------

def _field(draw: st.DrawFn) -> bytes:
    """An unknown field of any wire type (numbers past the ones OTLP uses)."""
    number = draw(st.integers(17, 2000))
    wt = draw(st.sampled_from([0, 1, 2, 5, 3]))
    if wt == 0:
        return _tag(number, 0) + _v(draw(st.integers(0, 2**64 - 1)))
    if wt in (1, 5):
        return _tag(number, wt) + draw(st.binary(min_size=8 if wt == 1 else 4, max_size=8 if wt == 1 else 4))
    if wt == 2:
        return _ld(number, draw(st.binary(max_size=12)))
    return _tag(number, 3) + _tag(number + 1, 0) + _v(1) + _tag(number, 4)


def _text_bytes(draw: st.DrawFn) -> bytes:
    return draw(text).encode("utf-8", "surrogatepass")


@st.composite
def pb_any_value(draw: st.DrawFn, depth: int = 0) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 2))):
        which = draw(st.integers(1, 7 if depth < 2 else 4))
        if which == 1:
            parts.append(_ld(1, _text_bytes(draw)))
        elif which == 3:
            parts.append(_tag(3, 0) + _v(draw(st.integers(0, 2**64 - 1))))
        elif which == 2:
            parts.append(_tag(2, 0) + _v(draw(st.integers(0, 3))))
        elif which == 4:
            parts.append(_tag(4, 1) + draw(st.binary(min_size=8, max_size=8)))
        elif which == 5:
            parts.append(_ld(5, _ld(1, draw(pb_any_value(depth + 1)))))
        elif which == 6:
            parts.append(_ld(6, _ld(1, _ld(1, _text_bytes(draw)) + _ld(2, draw(pb_any_value(depth + 1))))))
        else:
            parts.append(_ld(7, draw(st.binary(max_size=4))))
    if draw(st.integers(0, 9)) == 0:
        parts.append(_field(draw))
    return b"".join(parts)


@st.composite
def pb_span(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 12))):
        which = draw(st.sampled_from(["id", "name", "attr", "attr", "event", "event", "status", "other", "unknown"]))
        if which == "id":
            parts.append(_ld(draw(st.sampled_from([1, 2, 4])), draw(st.binary(max_size=16))))
        elif which == "name":
            parts.append(_ld(5, _text_bytes(draw)))
        elif which == "attr":
            key = draw(st.sampled_from([b"triton.model_name", b"triton.model_version", b"other"]) | st.builds(
                lambda t: b"triton." + t.encode("utf-8", "surrogatepass"), text))
            kv = [_ld(1, key)] + [_ld(2, draw(pb_any_value())) for _ in range(draw(st.integers(0, 2)))]
            parts.append(_ld(9, b"".join(draw(st.permutations(kv)))))
        elif which == "event":
            ev = [_tag(1, 1) + draw(u64).to_bytes(9, "little")[:8], _ld(2, _text_bytes(draw))]
            parts.append(_ld(11, b"".join(draw(st.lists(st.sampled_from(ev), max_size=3)))))
        elif which == "status":
            parts.append(_ld(15, _tag(3, 0) + _v(draw(st.integers(0, 2**64 - 1))) + _ld(2, _text_bytes(draw))))
        elif which == "other":  # known fields the records do not hold
            parts.append(draw(st.sampled_from([_tag(6, 0) + _v(2), _tag(7, 1) + b"\1" * 8, _ld(3, b"ts"),
                                               _ld(13, _ld(1, b"x") + _ld(4, _KV)), _tag(16, 5) + b"\0" * 4])))
        else:
            parts.append(_field(draw))
    return b"".join(parts)


@st.composite
def pb_body(draw: st.DrawFn) -> bytes:
    out = []
    for _ in range(draw(st.integers(1, 2))):
        scopes = [_ld(2, b"".join(_ld(2, draw(pb_span())) for _ in range(draw(st.integers(0, 3)))) +
                      draw(st.sampled_from([b"", _ld(1, _ld(1, b"scope")), _ld(3, b"url")])))
                  for _ in range(draw(st.integers(0, 2)))]
        out.append(_ld(1, _ld(1, _ld(1, _KV)) + b"".join(scopes)))
    return b"".join(out)


@FUZZ
@given(body=pb_body())
def test_generated_protobuf_gives_equal_records(body: bytes) -> None:
    same("protobuf", body)


# --- mutations of valid bodies ----------------------------------------------------------------

def _mutate(draw: st.DrawFn, body: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["truncate", "byte", "byte", "insert", "delete"]))
        if op == "truncate":
            body = body[:pos]
        elif op == "byte":
            body = body[:pos] + bytes([draw(st.integers(0, 255))]) + body[pos + 1:]
        elif op == "insert":
            body = body[:pos] + draw(st.binary(min_size=1, max_size=4) | st.sampled_from(
                [b'"', b"\\", b"{", b"[", b",", b"null", b"\\u", b"\xff", b"e9", b"\x80"])) + body[pos:]
        else:
            body = body[:pos] + body[pos + draw(st.integers(1, 8)):]
    return body


_TRITON = export_request(request_spans(T0, ensemble="add_sub_ensemble", responses=2))
_SAMPLE = (SAMPLES / "triton-2.51-stream.json").read_bytes()
JSON_SEEDS = [_SAMPLE, to_json(_TRITON)]
PROTOBUF_SEEDS = [_protobuf_of(json.loads(_SAMPLE)), _TRITON.SerializeToString()]


@FUZZ
@given(data=st.data())
def test_mutated_json_gives_equal_records_or_both_refuse(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(JSON_SEEDS) | json_body())
    same("json", _mutate(data.draw, seed))


@FUZZ
@given(data=st.data())
def test_mutated_protobuf_gives_equal_records_or_both_refuse(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(PROTOBUF_SEEDS) | pb_body())
    same("protobuf", _mutate(data.draw, seed))


# --- the table from the descriptors -----------------------------------------------------------

def test_the_walker_refuses_a_schema_that_is_not_the_one_it_reads() -> None:
    module = _c_module()

    class Other:
        ROLES, KINDS = module.ROLES, module.KINDS
        FIELDS = tuple((m, name, number + (name == "events"), kind, holds) for m, name, number, kind, holds in module.FIELDS)

    assert len(cdecode.tables(module)) > len(module.ROLES)
    with pytest.raises(ValueError, match=r"Span\.events is not field 12"):
        cdecode.tables(Other)


def test_check_names_the_otlp_decoder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.cli import main

    for k in [k for k in os.environ if k.startswith("INFPROF_")]:
        monkeypatch.delenv(k)
    main(["check", "--state-dir", str(tmp_path / "s"), "--triton", "none", "--ebpf", "off"])
    assert "OTLP decoder" not in capsys.readouterr().out  # without OTLP on, protobuf is not even imported
    main(["check", "--state-dir", str(tmp_path / "s"), "--triton", "none", "--ebpf", "off",
          "--otlp-listen", "127.0.0.1:0"])
    assert "PASS  OTLP decoder: C (compiled _otlp module)" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["stale", "forced"])
def test_a_stale_build_or_the_switch_leaves_the_python_decoders_serving(tmp_path: Path, case: str) -> None:
    """A build older than its source (the checkout moved on) is not used, and `check` warns; the
    switch INFPROF_PURE_PYTHON_OTLP (benchmarks) is obeyed without a warning."""
    import shutil
    import subprocess
    import sys

    import exporter

    copy = tmp_path / "exporter"
    shutil.copytree(Path(exporter.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__", "demo_models"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), cdecode.ENV: ""}
    if case == "stale":
        built = next((copy / "otlp").glob("_otlp*.so"))
        os.utime(copy / "otlp" / "_otlp.c", (built.stat().st_mtime + 10,) * 2)
    else:
        env[cdecode.ENV] = "1"
    out = subprocess.run([sys.executable, "-c", "from exporter.otlp import cdecode, decode; "
                          "print(decode._COMPILED is None, cdecode.decoder_warning(), cdecode.decoder_name())"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    want = "True True pure Python (the compiled _otlp" if case == "stale" else \
        f"True False pure Python ({cdecode.ENV} is set"
    assert out.stdout.startswith(want), out.stdout


def test_the_switch_is_not_taken_for_a_setting() -> None:
    from exporter.config import build

    build({}, {cdecode.ENV: "1"}, {})  # the daemon starts with it set (its settings refuse unknown INFPROF_*)
