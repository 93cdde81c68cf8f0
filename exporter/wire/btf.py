"""Member offsets of kernel structs from the running kernel's BTF (/sys/kernel/btf/vmlinux).

bpf/socket_turns.c reads two fields beyond the stable head of struct sock_common: the
socket's write sequence (struct tcp_sock) and an incoming segment's data pointer (struct
sk_buff). Both structs move between kernel versions, and the headers BCC compiles with
may be older than the kernel, so their offsets come from the kernel's own type
description where it has one; without BTF the program falls back to the headers' offsetof.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
_STRUCT, _UNION = 4, 5
# bytes following the 12-byte type header, per kind: fixed, or per member (vlen)
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64


class BtfError(Exception):
    """The BTF blob cannot be read or lacks what was asked; one line."""


def _types(blob: bytes) -> tuple[list[tuple[int, int, int, int, bytes]], bytes]:
    """[(name_off, kind, vlen, kind_flag, member bytes)] indexed by type id - 1, and the string section."""
    if len(blob) < 24:
        raise BtfError("BTF too short")
    magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
    if magic != _MAGIC:
        raise BtfError("not a little-endian BTF blob")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
    types_raw = blob[hdr_len + type_off: hdr_len + type_off + type_len]
    strings = blob[hdr_len + str_off: hdr_len + str_off + str_len]
    out: list[tuple[int, int, int, int, bytes]] = []
    pos = 0
    while pos + 12 <= len(types_raw):
        name_off, info, _size = struct.unpack_from("<III", types_raw, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        pos += 12
        extra = _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
        out.append((name_off, kind, vlen, kflag, types_raw[pos:pos + extra]))
        pos += extra
    return out, strings


def _name(strings: bytes, off: int) -> str:
    end = strings.index(b"\0", off)
    return strings[off:end].decode()


def _members(types: list[tuple[int, int, int, int, bytes]], strings: bytes, tid: int,
             base_bits: int) -> Iterator[tuple[str, int]]:
    """(name, bit offset) of a struct's members, anonymous structs and unions flattened."""
    _, _kind, vlen, kflag, raw = types[tid - 1]
    for i in range(vlen):
        name_off, mtype, moff = struct.unpack_from("<III", raw, 12 * i)
        bits = base_bits + (moff & 0xFFFFFF if kflag else moff)
        if name_off:
            yield _name(strings, name_off), bits
        elif 0 < mtype <= len(types) and types[mtype - 1][1] in (_STRUCT, _UNION):
            yield from _members(types, strings, mtype, bits)


def member_offsets(wanted: dict[str, tuple[str, ...]], blob: bytes) -> dict[tuple[str, str], int]:
    """Byte offset of each wanted (struct, member); BtfError when one is missing."""
    types, strings = _types(blob)
    found: dict[tuple[str, str], int] = {}
    for tid, (name_off, kind, _vlen, _kflag, _raw) in enumerate(types, start=1):
        if kind != _STRUCT or not name_off:
            continue
        sname = _name(strings, name_off)
        if sname not in wanted or any(k[0] == sname for k in found):
            continue
        for member, bits in _members(types, strings, tid, 0):
            if member in wanted[sname] and (sname, member) not in found:
                found[(sname, member)] = bits // 8
    missing = [f"{s}.{m}" for s, ms in wanted.items() for m in ms if (s, m) not in found]
    if missing:
        raise BtfError(f"BTF has no {', '.join(missing)}")
    return found


def kernel_offsets(wanted: dict[str, tuple[str, ...]], path: Path = VMLINUX) -> dict[tuple[str, str], int] | None:
    """member_offsets() of the running kernel, or None where it has no readable BTF."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        return member_offsets(wanted, blob)
    except (BtfError, struct.error, ValueError, IndexError):
        return None


def btf_defines(wanted: Mapping[str, Sequence[str]], path: Path = VMLINUX) -> list[str]:
    """`DEFINE=offset` for each {DEFINE: (struct, member)} from the running kernel's BTF; none
    where it has none (a program then falls back to its headers' offsetof)."""
    members: dict[str, tuple[str, ...]] = {}
    for struct_name, member in wanted.values():
        members[struct_name] = (*members.get(struct_name, ()), member)
    found = kernel_offsets(members, path) if members else None
    if found is None:
        return []
    return [f"{define}={found[(sn, m)]}" for define, (sn, m) in sorted(wanted.items())]
