"""OTLP/HTTP request bodies -> ExportTraceServiceRequest, and the replies the OTLP spec asks for.

Protobuf and JSON (ids in hex, as OTLP/JSON encodes them), optionally gzip; the body and
its inflated size are bounded, so a gzip bomb costs at most the limit. Every refusal is a
`PayloadError` carrying the HTTP status and a one-line message.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, NamedTuple

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ..varint import varint
from . import cdecode

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY_BYTES = 8 << 20  # as received (compressed or not)
MAX_INFLATED_BYTES = 32 << 20  # after gzip
# All connections decode within one budget: a request holds its body, its inflated bytes and the
# decoder's working set (measured: the span records of a body take about 4x its JSON bytes, 7x its
# protobuf bytes, at the peak of decoding) until it is counted.
DECODE_BUDGET_BYTES = 160 << 20
WORKING_SET_FACTOR = {JSON: 5, PROTOBUF: 10}
BUDGET_WAIT_SECONDS = 2.0  # a request waits this long for room, then gets 503 and Retry-After
RETRY_AFTER_SECONDS = 1
INFLATE_STEP = 1 << 20  # gzip inflates in steps, each charged before the next


class PayloadError(Exception):
    def __init__(self, status: int, result: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.result = result  # the otlp_requests_total result label
        self.retry_after = retry_after  # seconds, sent as Retry-After


Charge = Callable[[int], None]  # adds bytes to a request's share of the budget, or raises 503


class DecodeBudget:
    """One bound in bytes on what every connection's decoding holds at once. A request that
    does not fit waits up to `wait` seconds for others to finish, then is refused with 503 and
    Retry-After (the OTLP exporters' retry signal); a request bigger than the whole budget runs
    alone. Nothing is queued beyond the connections' own threads."""

    def __init__(self, total: int = DECODE_BUDGET_BYTES, wait: float = BUDGET_WAIT_SECONDS) -> None:
        self.total = total
        self.wait = wait
        self.used = 0
        self.peak = 0  # the most held at once (tests and the bench read it)
        self.refused = 0
        self._cond = threading.Condition()

    def _take(self, n: int, held: int) -> None:
        deadline = time.monotonic() + self.wait
        with self._cond:
            # a request alone may exceed the total: it waits only for the others to finish
            while self.used + n > self.total and self.used > held:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.refused += 1
                    raise PayloadError(503, "throttled", "the receiver is decoding other requests; retry",
                                       retry_after=RETRY_AFTER_SECONDS)
                self._cond.wait(left)
            self.used += n
            self.peak = max(self.peak, self.used)

    @contextmanager
    def hold(self, n: int) -> Iterator[Charge]:
        held = 0

        def charge(more: int) -> None:
            nonlocal held
            if more > 0:
                self._take(more, held)
                held += more

        try:
            charge(n)
            yield charge
        finally:
            with self._cond:
                self.used -= held
                self._cond.notify_all()


def media_type(content_type: str | None) -> str:
    """The content type the body is decoded as (415 for anything but protobuf and JSON)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in (PROTOBUF, JSON):
        raise PayloadError(415, "unsupported_media_type",
                           f"content type {media or 'none'!r} is not supported; send {PROTOBUF} or {JSON}")
    return media


def inflate(body: bytes, encoding: str | None, charge: Charge = lambda n: None) -> bytes:
    """The body as sent; gzip inflated in steps, each step's bytes charged before it is made."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc != "gzip":
        raise PayloadError(415, "unsupported_media_type", f"content encoding {enc!r} is not supported; use gzip")
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    parts: list[bytes] = []
    size = 0
    rest = body
    try:
        while not d.eof and size <= MAX_INFLATED_BYTES:
            charge(INFLATE_STEP)
            part = d.decompress(rest, INFLATE_STEP)
            rest = d.unconsumed_tail
            if not part and not rest:
                break
            parts.append(part)
            size += len(part)
    except zlib.error as e:
        raise PayloadError(400, "malformed", f"gzip body is corrupt: {e}") from None
    if size > MAX_INFLATED_BYTES:
        raise PayloadError(413, "too_large", f"gzip body inflates past {MAX_INFLATED_BYTES} bytes")
    if not d.eof:
        raise PayloadError(400, "malformed", "gzip body is truncated")
    return b"".join(parts)


class SpanRecord(NamedTuple):
    """One span as the body carries it, before any check: the receiver's own record, built
    straight from the JSON or protobuf body (only the triton.* attributes, as text)."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    name: str
    attrs: dict[str, str]
    events: list[tuple[str, int]]  # (event name, time_unix_nano)
    status: int  # the OTel status code: 0 unset, 1 ok, 2 error


Decoded = list[SpanRecord]
_record = tuple.__new__  # a SpanRecord from a tuple of its fields, without NamedTuple's Python-level __new__
# the compiled (JSON, protobuf) decoders, or None (cdecode.WHY says why): the Python ones below serve
_COMPILED = cdecode.decoders(SpanRecord)


# OTLP/JSON's shape, only the fields the receiver reads: unknown fields are skipped unparsed.
# 64-bit integers come as JSON numbers or decimal text (proto3 JSON): the decoder is lax on that.
_U64 = Annotated[int, msgspec.Meta(ge=0)]
_I64 = int


class _Value(msgspec.Struct, gc=False):
    stringValue: str | None = None
    intValue: _I64 | str | None = None  # text that is not a number drops the attribute, not the body


class _KeyValue(msgspec.Struct, gc=False):
    key: str = ""
    value: _Value | None = None


class _Event(msgspec.Struct, gc=False):
    name: str = ""
    timeUnixNano: _U64 = 0


class _Status(msgspec.Struct, gc=False):
    code: int | str = 0  # the enum's number or its name


class _Span(msgspec.Struct, gc=False):
    traceId: str = ""
    spanId: str = ""
    parentSpanId: str = ""
    name: str = ""
    attributes: list[_KeyValue | None] = []  # a null item (a real Triton 2.51 sent one under load) is skipped
    events: list[_Event | None] = []
    status: _Status | None = None


class _ScopeSpans(msgspec.Struct, gc=False):
    spans: list[_Span] = []


class _ResourceSpans(msgspec.Struct, gc=False):
    scopeSpans: list[_ScopeSpans] = []


class _Request(msgspec.Struct, gc=False):
    resourceSpans: list[_ResourceSpans] = []


_JSON_DECODER = msgspec.json.Decoder(_Request, strict=False)
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


_MAX_DIGITS = 4300  # int()'s limit on decimal text: longer text is not read as a number either


def _integer(text: str) -> str | None:
    """proto3 JSON's int64 as decimal text, normalised ("007" -> "7"); None for anything else (a span
    whose triton.model_version is unreadable is then rejected alone, as missing_attribute)."""
    digits = text[1:] if text[:1] == "-" else text
    return str(int(text)) if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS else None


def _json_records(data: bytes) -> Decoded:
    try:
        req = _JSON_DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError) as e:
        raise PayloadError(400, "malformed", f"JSON body is not an ExportTraceServiceRequest: {e}") from None
    out: Decoded = []
    fromhex = bytes.fromhex
    for rs in req.resourceSpans:
        for ss in rs.scopeSpans:
            for s in ss.spans:
                attrs: dict[str, str] = {}
                for kv in s.attributes:
                    if kv is None or kv.value is None or not kv.key.startswith("triton."):
                        continue
                    v = kv.value
                    if v.stringValue is not None:
                        attrs[kv.key] = v.stringValue
                    elif isinstance(v.intValue, int):
                        attrs[kv.key] = str(v.intValue)
                    elif v.intValue is not None and (n := _integer(v.intValue)) is not None:
                        attrs[kv.key] = n
                code = s.status.code if s.status is not None else 0
                try:
                    ids = fromhex(s.traceId), fromhex(s.spanId), fromhex(s.parentSpanId)
                except ValueError:
                    raise PayloadError(400, "malformed", f"span {s.spanId[:40]!r} of trace {s.traceId[:40]!r}: "
                                       "ids must be hex") from None
                out.append(_record(SpanRecord, (*ids, s.name, attrs, [(e.name, e.timeUnixNano) for e in s.events if e is not None],
                                                _STATUS_NAMES.get(code, 0) if isinstance(code, str) else code)))
    return out


def _protobuf_records(data: bytes) -> Decoded:
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(data)
    except (DecodeError, RecursionError) as e:
        raise PayloadError(400, "malformed", f"protobuf body is not an ExportTraceServiceRequest: {e}") from None
    out: Decoded = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs: dict[str, str] = {}
                for kv in s.attributes:
                    key = kv.key
                    if key.startswith("triton."):
                        v = kv.value
                        text = v.string_value  # the common case first: one field read, no oneof lookup
                        if text or v.HasField("string_value"):
                            attrs[key] = text
                        elif v.HasField("int_value"):
                            attrs[key] = str(v.int_value)
                out.append(SpanRecord(s.trace_id, s.span_id, s.parent_span_id, s.name, attrs,
                                      [(e.name, e.time_unix_nano) for e in s.events], s.status.code))
    return out


def decode(body: bytes, content_type: str | None, encoding: str | None,
           charge: Charge = lambda n: None) -> tuple[Decoded, str]:
    """The request's span records and the media type its reply must use. The inflated bytes and
    the decoder's working set are charged (to the caller's hold on the DecodeBudget) before
    they are made."""
    media = media_type(content_type)
    data = inflate(body, encoding, charge)
    charge(len(data) * WORKING_SET_FACTOR[media])
    if _COMPILED is None:
        return (_protobuf_records(data) if media == PROTOBUF else _json_records(data)), media
    try:
        return _COMPILED[media == PROTOBUF](data), media
    except ValueError as e:  # the compiled decoders' one-line refusal
        raise PayloadError(400, "malformed", str(e)) from None


def success_body(media: str, rejected: int, message: str) -> bytes:
    """ExportTraceServiceResponse; partial_success when spans were rejected or with a warning."""
    if not (rejected or message):
        return _FULL_SUCCESS[media]  # every span taken: the same bytes each time
    resp = ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = rejected
    resp.partial_success.error_message = message
    if media == JSON:
        return json.dumps(json_format.MessageToDict(resp)).encode()
    return bytes(resp.SerializeToString())


_FULL_SUCCESS = {JSON: json.dumps(json_format.MessageToDict(ExportTraceServiceResponse())).encode(),
                 PROTOBUF: ExportTraceServiceResponse().SerializeToString()}


def status_body(media: str, code: int, message: str) -> bytes:
    """A google.rpc.Status (code, message), the error body OTLP/HTTP asks for."""
    if media == JSON:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode()
    return b"\x08" + varint(code) + b"\x12" + varint(len(text)) + text


