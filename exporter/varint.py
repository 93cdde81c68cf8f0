"""The protobuf wire format's base-128 varint, for the few messages written by hand: the
length prefixes of delimited MetricFamily bodies and the OTLP receiver's status replies."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """n >= 0 as a protobuf varint: seven bits a byte, least significant first."""
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)
