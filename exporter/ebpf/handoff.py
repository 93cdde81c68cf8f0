"""Compile in a short-lived child, run in the daemon: the daemon never holds BCC or LLVM.

BCC's compiler (clang and LLVM inside libbcc) is most of a loaded exporter's memory, and
it is needed only to build the programs. So `serve` starts this module as a child
process: the child compiles, loads and attaches the programs with BCC, exactly as an
in-process load would, then passes the file descriptors that keep them alive over a
Unix socket (SCM_RIGHTS) and exits without detaching anything: the attachments (perf
event and link fds), the programs and their maps. The daemon owns them from then on,
reads the maps with plain bpf(2) calls (bpfsys.py), and closing them at stop detaches.
No bpffs mount is needed, and nothing outlives the daemon.

    parent                                  child (python -m exporter.ebpf.handoff)
    socketpair, spawn ------------------->  privileges, BCC, headers; compile, load, attach
                                            per program: method, defines, fd roles | reason
    recv_fds  <-------- one message ------  os._exit(0): no BCC cleanup (it would detach)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .bpfsys import BpfError, BpfMap, syscall_number
from .declaration import ProgramDecl, declared_programs, metric_key
from .loader import (
    LoadedProgram,
    LoadError,
    SeriesKey,
    environment_problem,
    fdinfo_run_stats,
    load_programs,
    scratch_fd,
)

log = logging.getLogger("ebpf")

FD_ENV = "INFPROF_HANDOFF_FD"
MAX_FDS = 250  # SCM_RIGHTS carries at most 253 per message
MAX_MESSAGE = 256 * 1024
DEBUG_LINES = 100  # of BCC's compiler output, passed back for the debug log
_METRIC_VALUE = struct.Struct("<QQ")  # struct metric_value of bpf/histogram.h: count, sum
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def available() -> bool:
    """Whether the daemon can read maps by itself here (it knows bpf(2)'s number)."""
    return syscall_number() is not None


@dataclass
class Handed:
    """A program the child loaded and attached; this process holds every fd keeping it alive."""

    decl: ProgramDecl
    method: str
    defines: tuple[str, ...]
    maps: dict[str, BpfMap]
    progs: list[int]
    links: list[int]  # perf event / link fds: the attachments; closing them detaches
    attached: bool = True
    _closed: bool = field(default=False, repr=False)

    def run_stats(self) -> tuple[int, int]:
        return fdinfo_run_stats(self.progs)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.attached = False
        for fd in [*self.links, *self.progs]:  # detach first
            os.close(fd)
        for m in self.maps.values():
            m.close()


H = TypeVar("H", bound=Handed)


@dataclass
class HandedProgram(Handed):
    """A metric program (bpf/histogram.h's maps), read as the collector reads a loaded one."""

    def __post_init__(self) -> None:
        self._key = metric_key(self.decl.source.parent).packing()
        metrics = self.maps["metrics"]
        if metrics.info.key_size != self._key.size or metrics.info.value_size != _METRIC_VALUE.size:
            raise LoadError(f"{self.decl.program}: map metrics has key/value sizes {metrics.info.key_size}/"
                            f"{metrics.info.value_size}, struct metric_key/metric_value here are "
                            f"{self._key.size}/{_METRIC_VALUE.size}")

    def attach(self) -> None:
        """Attached by the child already."""

    def read_series(self) -> dict[SeriesKey, tuple[int, int]]:
        """Every series of the per-CPU `metrics` map (bpf/histogram.h): (count, sum) over CPUs."""
        m = self.maps["metrics"]
        out: dict[SeriesKey, tuple[int, int]] = {}
        for k, v in m.items():
            n = total = 0
            for cpu in range(m.cpus):
                c, s = _METRIC_VALUE.unpack_from(v, cpu * m.slot_size)
                n, total = n + c, total + s
            out[self._key.unpack(k)] = (n, total)
        return out

    def delete_series(self, keys: Sequence[SeriesKey]) -> None:
        m = self.maps["metrics"]
        for values in keys:
            m.delete(self._key.pack(*values))  # False: already gone

    def read_errors(self) -> list[int]:
        m = self.maps["errors"]
        out = []
        for i in range(m.info.max_entries):
            v = m.lookup(_U32.pack(i))
            out.append(_U64.unpack_from(v)[0] if v else 0)
        return out


# --- the parent ------------------------------------------------------------------


def load_in_child(decls: Sequence[ProgramDecl], ports: Sequence[int], forced: str = "auto",
                  extra_defines: Sequence[str] = (), selected: Sequence[str] = (), timeout: float = 300.0,
                  ) -> tuple[str | None, list[HandedProgram | LoadError]]:
    """(why nothing could load, or None; then per declaration its handed program or why not).

    Programs come back loaded and attached. The child's compiler output goes to the debug log."""
    if not decls:
        return None, []
    request = {"bpf_dir": str(decls[0].source.parent), "programs": [d.program for d in decls], "ports": list(ports),
               "forced": forced, "defines": list(extra_defines), "selected": list(selected)}
    return _load(decls, request, timeout, HandedProgram)


def load_plain_in_child(decl: ProgramDecl, ports: Sequence[int], btf: dict[str, tuple[str, str]],
                        timeout: float = 300.0) -> Handed:
    """One program that feeds no metric (its maps read by whoever asked), loaded and attached by a
    child; LoadError if not. `btf` names -D values the child takes from the kernel's BTF:
    {define: (struct, member)} for the member's byte offset (none defined where there is no BTF)."""
    request = {"bpf_dir": str(decl.source.parent), "programs": [decl.program], "ports": list(ports),
               "forced": "auto", "defines": [], "selected": [], "btf": {k: list(v) for k, v in btf.items()}}
    problem, results = _load([decl], request, timeout, Handed)
    if problem:
        raise LoadError(problem)
    (result,) = results
    if isinstance(result, LoadError):
        raise result
    return result


def _load(decls: Sequence[ProgramDecl], request: dict[str, Any], timeout: float,
          kind: type[H]) -> tuple[str | None, list[H | LoadError]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err = scratch_fd("compile-child-stderr")
    with ours:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "exporter.ebpf.handoff", json.dumps(request)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pass_fds=(theirs.fileno(),), env={**os.environ, FD_ENV: str(theirs.fileno())})
        except OSError as e:
            theirs.close()
            os.close(err)
            return f"cannot start the BPF compile child: {e.strerror or e}", []
        theirs.close()
        ours.settimeout(timeout)
        try:
            data, fds, _flags, _addr = socket.recv_fds(ours, MAX_MESSAGE, MAX_FDS)
        except TimeoutError:
            proc.kill()
            data, fds = b"", []
        finally:
            proc.wait()
        text = os.pread(err, os.fstat(err).st_size, 0).decode(errors="replace")
        os.close(err)
        if not data:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            return f"the BPF compile child ended without handing programs over: {why}", []
    return _receive(decls, json.loads(data), fds, kind)


def _receive(decls: Sequence[ProgramDecl], reply: dict[str, Any], fds: list[int],
             kind: type[H]) -> tuple[str | None, list[H | LoadError]]:
    for line in reply.get("debug", []):
        log.debug("bcc: %s", line)
    owned = set(fds)
    results: list[H | LoadError] = []
    try:
        if reply.get("problem"):
            return str(reply["problem"]), []
        by_name = {p["program"]: p for p in reply["programs"]}
        for d in decls:
            p = by_name.get(d.program)
            if p is None or p.get("error"):
                results.append(LoadError(p["error"] if p else f"{d.program}: not handed over by the child"))
                continue
            maps = {name: BpfMap(fds[i]) for name, i in p["maps"].items()}
            progs, links = [fds[i] for i in p["progs"]], [fds[i] for i in p["links"]]
            owned -= {*(fds[i] for i in p["maps"].values()), *progs, *links}
            try:
                results.append(kind(d, p["method"], tuple(p["defines"]), maps, progs, links))
            except LoadError as e:
                for fd in (*links, *progs):
                    os.close(fd)
                for m in maps.values():
                    m.close()
                results.append(e)
    except (KeyError, IndexError, TypeError, BpfError) as e:
        for r in results:
            if isinstance(r, Handed):
                r.close()
        return f"the BPF compile child's answer is unusable: {type(e).__name__}: {e}", []
    finally:
        for fd in owned:  # anything not kept by a program
            os.close(fd)
    return None, results


# --- the child -------------------------------------------------------------------


def _attach_fds(bpf: Any) -> list[int]:
    """The fds holding BCC's attachments of a loaded BPF object (kprobes are nested by event)."""
    out: list[int] = []
    for table in ("tracepoint_fds", "raw_tracepoint_fds", "kfunc_entry_fds", "kfunc_exit_fds"):
        out.extend(getattr(bpf, table, {}).values())
    for per_event in getattr(bpf, "kprobe_fds", {}).values():
        out.extend(per_event.values())
    return out


def _table_names(bpf: Any) -> list[bytes]:
    """Every map of a BPF object: the daemon may inspect any (bcc's Python binds no lister)."""
    import ctypes as ct

    from bcc.libbcc import lib

    lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ct.c_size_t, [ct.c_void_p]
    lib.bpf_table_name.restype, lib.bpf_table_name.argtypes = ct.c_char_p, [ct.c_void_p, ct.c_size_t]
    return [lib.bpf_table_name(bpf.module, i) for i in range(lib.bpf_num_tables(bpf.module))]


def _child(request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    problem = environment_problem()
    if problem:
        return {"problem": problem}, []
    wanted = set(request["programs"])
    decls = [d for d in declared_programs(Path(request["bpf_dir"])) if d.program in wanted]
    from ..wire.btf import btf_defines  # read here: the kernel's BTF is megabytes of types

    defines = [*request["defines"], *btf_defines(request.get("btf", {}))]
    fds: list[int] = []
    programs: list[dict[str, Any]] = []
    for d, r in zip(decls, load_programs(decls, request["ports"], request["forced"], defines,
                                              request["selected"]),
                    strict=True):
        if isinstance(r, LoadedProgram):
            try:
                r.attach()
            except LoadError as e:
                r = e
        if isinstance(r, LoadError):
            programs.append({"program": d.program, "error": str(r)})
            continue

        def slots(new: list[int]) -> list[int]:
            fds.extend(new)
            return list(range(len(fds) - len(new), len(fds)))

        maps = {n.decode(): slots([r.bpf[n].map_fd])[0] for n in _table_names(r.bpf)}
        programs.append({"program": d.program, "method": r.method, "defines": list(r.defines), "maps": maps,
                         "progs": slots([fn.fd for fn in r.bpf.funcs.values()]),
                         "links": slots(_attach_fds(r.bpf))})
    return {"programs": programs}, fds


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage()[:300])


def main(argv: Sequence[str]) -> int:
    sock = socket.socket(fileno=int(os.environ[FD_ENV]))
    lines = _Lines()
    logging.getLogger("ebpf").addHandler(lines)
    logging.getLogger("ebpf").setLevel(logging.DEBUG)
    try:
        reply, fds = _child(json.loads(argv[0]))
    except Exception as e:  # anything unexpected is a reason, not a traceback
        reply, fds = {"problem": f"the BPF compile child failed: {type(e).__name__}: {e}"}, []
    reply["debug"] = [ln.removeprefix("bcc: ") for ln in lines.lines[-DEBUG_LINES:]]
    if len(fds) > MAX_FDS:
        reply, fds = {"problem": f"{len(fds)} fds to hand over, more than {MAX_FDS}"}, []
    socket.send_fds(sock, [json.dumps(reply).encode()], fds)
    sys.stdout.flush()
    os._exit(0)  # no BCC cleanup: it would detach what the daemon now holds


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
