"""OTLP/HTTP request bodies -> ExportTraceServiceRequest, and the replies the OTLP spec asks for.

Protobuf and JSON (ids in hex, as OTLP/JSON encodes them), optionally gzip; the body and
its inflated size are bounded, so a gzip bomb costs at most the limit. Every refusal is a
`PayloadError` carrying the HTTP status and a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY_BYTES = 8 << 20  # as received (compressed or not)
MAX_INFLATED_BYTES = 32 << 20  # after gzip
# OTLP/JSON carries these as hex; json_format expects base64 for bytes fields
_ID_KEYS = ("traceId", "spanId", "parentSpanId")


class PayloadError(Exception):
    def __init__(self, status: int, result: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.result = result  # the otlp_requests_total result label


def media_type(content_type: str | None) -> str:
    """The content type the body is decoded as (415 for anything but protobuf and JSON)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in (PROTOBUF, JSON):
        raise PayloadError(415, "unsupported_media_type",
                           f"content type {media or 'none'!r} is not supported; send {PROTOBUF} or {JSON}")
    return media


def inflate(body: bytes, encoding: str | None) -> bytes:
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc != "gzip":
        raise PayloadError(415, "unsupported_media_type", f"content encoding {enc!r} is not supported; use gzip")
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, MAX_INFLATED_BYTES + 1)
    except zlib.error as e:
        raise PayloadError(400, "malformed", f"gzip body is corrupt: {e}") from None
    if len(out) > MAX_INFLATED_BYTES:
        raise PayloadError(413, "too_large", f"gzip body inflates past {MAX_INFLATED_BYTES} bytes")
    if not d.eof:
        raise PayloadError(400, "malformed", "gzip body is truncated")
    return out


def _fix_ids(obj: Any) -> None:
    for k in _ID_KEYS:
        v = obj.get(k)
        if isinstance(v, str):
            try:
                obj[k] = base64.b64encode(bytes.fromhex(v)).decode()
            except ValueError:
                raise PayloadError(400, "malformed", f"{k} {v[:40]!r} is not hex") from None


def _hex_ids_to_base64(doc: dict[str, Any]) -> None:
    """OTLP/JSON's hex span and trace ids, in place, as the base64 json_format reads for bytes."""
    for rs in _list(doc.get("resourceSpans")):
        for ss in _list(rs.get("scopeSpans") if isinstance(rs, dict) else None):
            for span in _list(ss.get("spans") if isinstance(ss, dict) else None):
                if isinstance(span, dict):
                    _fix_ids(span)
                    for link in _list(span.get("links")):
                        if isinstance(link, dict):
                            _fix_ids(link)


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def decode(body: bytes, content_type: str | None, encoding: str | None) -> tuple[ExportTraceServiceRequest, str]:
    """The request and the media type its reply must use."""
    media = media_type(content_type)
    data = inflate(body, encoding)
    req = ExportTraceServiceRequest()
    if media == PROTOBUF:
        try:
            req.ParseFromString(data)
        except (DecodeError, RecursionError) as e:
            raise PayloadError(400, "malformed", f"protobuf body is not an ExportTraceServiceRequest: {e}") from None
        return req, media
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise PayloadError(400, "malformed", f"JSON body does not parse: {e}") from None
    if not isinstance(doc, dict):
        raise PayloadError(400, "malformed", "JSON body must be an object with resourceSpans")
    try:
        _hex_ids_to_base64(doc)
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError, binascii.Error) as e:
        raise PayloadError(400, "malformed", f"JSON body is not an ExportTraceServiceRequest: {e}") from None
    return req, media


def success_body(media: str, rejected: int, message: str) -> bytes:
    """ExportTraceServiceResponse; partial_success only when spans were rejected."""
    resp = ExportTraceServiceResponse()
    if rejected:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    if media == JSON:
        return json.dumps(json_format.MessageToDict(resp)).encode()
    return bytes(resp.SerializeToString())


def status_body(media: str, code: int, message: str) -> bytes:
    """A google.rpc.Status (code, message), the error body OTLP/HTTP asks for."""
    if media == JSON:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)
