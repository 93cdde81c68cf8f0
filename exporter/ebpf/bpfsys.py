"""The few bpf(2) map commands the daemon needs, on map fds it was handed: no BCC, no LLVM.

The daemon reads and trims maps that a short-lived child compiled, loaded and attached
(exporter/ebpf/handoff.py); these are plain syscalls on the fds the child passed over.
Layouts are those of `union bpf_attr` in linux/bpf.h (stable kernel ABI).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# bpf(2) by architecture; the daemon falls back to loading in-process elsewhere
SYSCALL_NUMBERS = {"x86_64": 321, "aarch64": 280}
BPF_MAP_LOOKUP_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 1, 3, 4
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
PERCPU_MAP_TYPES = {5, 6, 10, 21}  # percpu hash, percpu array, lru percpu hash, percpu cgroup storage
_ELEM = struct.Struct("<I4xQQQ")  # map_fd, key, value/next_key, flags
_INFO = struct.Struct("<IIQ")  # bpf_fd, info_len, info
_BATCH = struct.Struct("<QQQQIIQQ")  # in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags
_MAP_INFO = struct.Struct("<IIIIII16s")  # type, id, key_size, value_size, max_entries, map_flags, name
BATCH_SIZE = 256


class BpfError(OSError):
    """A bpf(2) command failed; errno says why."""


def syscall_number() -> int | None:
    return SYSCALL_NUMBERS.get(platform.machine())


_libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd: int, attr: bytearray) -> int:
    """One bpf(2) call on attr (read back in place: the kernel writes results into it)."""
    nr = syscall_number()
    if nr is None:
        raise BpfError(errno.ENOSYS, f"no bpf(2) number known for {platform.machine()}")
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    ret = int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr))))
    if ret < 0:
        e = ctypes.get_errno()
        raise BpfError(e, os.strerror(e))
    return ret


def possible_cpus() -> int:
    """Per-CPU map values hold one slot per possible CPU (not online: possible)."""
    n = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


@dataclass(frozen=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    out = ctypes.create_string_buffer(128)  # struct bpf_map_info is longer; the kernel fills what fits
    attr = bytearray(_INFO.pack(fd, len(out), ctypes.addressof(out)))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    kind, _id, key_size, value_size, max_entries, _flags, name = _MAP_INFO.unpack_from(out.raw)
    return MapInfo(kind, key_size, value_size, max_entries, name.split(b"\0", 1)[0].decode(errors="replace"))


class BpfMap:
    """A map by fd. Values of per-CPU maps come back as one bytes of every CPU's slot, each
    `value_size` rounded up to 8 (slot_size)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.info = map_info(fd)
        self.percpu = self.info.type in PERCPU_MAP_TYPES
        self.slot_size = (self.info.value_size + 7) // 8 * 8 if self.percpu else self.info.value_size
        self.cpus = possible_cpus() if self.percpu else 1
        self._batch_ok = True

    @property
    def value_bytes(self) -> int:
        return self.slot_size * self.cpus

    def _elem(self, cmd: int, key: bytes | None, value: ctypes.Array[ctypes.c_char] | None,
              flags: int = 0) -> None:
        k = ctypes.create_string_buffer(key, self.info.key_size) if key is not None else None
        bpf(cmd, bytearray(_ELEM.pack(self.fd, _addr(k), _addr(value), flags)))

    def lookup(self, key: bytes) -> bytes | None:
        out = ctypes.create_string_buffer(self.value_bytes)
        try:
            self._elem(BPF_MAP_LOOKUP_ELEM, key, out)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return out.raw

    def delete(self, key: bytes) -> bool:
        """False when the key was not there."""
        try:
            self._elem(BPF_MAP_DELETE_ELEM, key, None)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        key: bytes | None = None
        nxt = ctypes.create_string_buffer(self.info.key_size)
        while True:
            try:
                self._elem(BPF_MAP_GET_NEXT_KEY, key, nxt)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            key = nxt.raw
            yield key

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value): by batches where the kernel has them (5.6+), else key by key."""
        if self._batch_ok:
            try:
                return self._items_batched()
            except BpfError as e:
                if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS, 524, errno.ENOSPC):  # 524: ENOTSUPP
                    raise
                self._batch_ok = False
        out: list[tuple[bytes, bytes]] = []
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:  # deleted between the two calls
                out.append((k, v))
        return out

    def _items_batched(self) -> list[tuple[bytes, bytes]]:
        ks, vs = self.info.key_size, self.value_bytes
        keys = ctypes.create_string_buffer(ks * BATCH_SIZE)
        values = ctypes.create_string_buffer(vs * BATCH_SIZE)
        token_in = ctypes.create_string_buffer(max(ks, 8))
        token_out = ctypes.create_string_buffer(max(ks, 8))
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            attr = bytearray(_BATCH.pack(0 if first else ctypes.addressof(token_in), ctypes.addressof(token_out),
                                         ctypes.addressof(keys), ctypes.addressof(values), BATCH_SIZE,
                                         self.fd, 0, 0))
            done = False
            try:
                bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except BpfError as e:
                if e.errno != errno.ENOENT:
                    raise
                done = True
            count = _BATCH.unpack_from(attr)[4]
            kraw, vraw = keys.raw, values.raw
            out.extend((kraw[i * ks:(i + 1) * ks], vraw[i * vs:(i + 1) * vs]) for i in range(count))
            if done:
                return out
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
