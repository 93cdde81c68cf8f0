"""Compiling and loading a declared program with BCC, attaching it, and reading its maps back.

Loading and attaching are two steps, as in ebpf_exporter (New, then Attach): loading
compiles the program and has the kernel verify it (a refusal falls through to the next
attach method); attaching hooks it to the kernel, when the source starts.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .attach import plan_attach
from .declaration import SHARED_HEADER, ProgramDecl, metric_key
from .kernel import bcc_problem, headers_problem, need_missing, privilege_problem, seccomp_problem

log = logging.getLogger("ebpf")

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"')
SeriesKey = tuple[int, ...]  # the fields of struct metric_key, in metric_key().names order
# BCC's naming of hook functions -> the program type the kernel loads them as
_HOOK_TYPES = {b"tracepoint__": "TRACEPOINT", b"kprobe__": "KPROBE", b"kretprobe__": "KPROBE",
               b"kfunc__": "TRACING", b"kretfunc__": "TRACING"}


class LoadError(Exception):
    """Why a program could not be loaded; its message is one line."""


def program_text(source: Path, _seen: set[Path] | None = None) -> str:
    """The source with its local "..." includes inlined: BCC rewrites map calls only in its main file.
    "metric_key.h" is the C generated from the declaration of the shared codes (histogram.yaml)."""
    seen = _seen if _seen is not None else set()
    out: list[str] = []
    for line in source.read_text().splitlines():
        m = _INCLUDE.match(line)
        if m is None:
            out.append(line)
            continue
        inc = (source.parent / m.group(1)).resolve()
        if inc in seen:
            continue
        seen.add(inc)
        if m.group(1) == SHARED_HEADER:
            out.append(metric_key(source.parent).c_header())
        else:
            out.append(program_text(inc, seen))
    return "\n".join(out) + "\n"


class StderrCapture:
    """What was written to fd 2 while captured (readable during the capture too)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.final: list[str] | None = None

    def lines(self) -> list[str]:
        if self.final is not None:
            return self.final
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0).decode(errors="replace").splitlines()


def scratch_fd(name: str) -> int:
    """An anonymous in-memory file (no /tmp needed: a read-only root may have none)."""
    try:
        return os.memfd_create(name, os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or memfd refused: a temp file then
        fd, path = tempfile.mkstemp(prefix=f"{name}.")
        os.unlink(path)
        return fd


@contextlib.contextmanager
def captured_stderr() -> Iterator[StderrCapture]:
    """libbcc prints compiler and verifier output on fd 2; keep it for the debug log instead."""
    fd = scratch_fd("bcc-stderr")
    cap = StderrCapture(fd)
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield cap
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        cap.final = cap.lines()
        os.close(fd)


def environment_problem(bcc: bool = True) -> str | None:
    """The first reason no program can load here (privileges, seccomp, BCC, headers), or None.
    bcc=False leaves BCC out: a process that only takes programs over never imports it."""
    return privilege_problem() or seccomp_problem() or (bcc_problem() if bcc else None) or headers_problem()


class Program(Protocol):
    """A loaded program as the collector and the source use it: loaded here (LoadedProgram) or
    handed over by a child that compiled it (handoff.HandedProgram)."""

    decl: ProgramDecl
    method: str
    defines: tuple[str, ...]
    attached: bool

    def attach(self) -> None: ...
    def read_series(self) -> dict[SeriesKey, tuple[int, int]]: ...
    def delete_series(self, keys: Sequence[SeriesKey]) -> None: ...
    def read_errors(self) -> list[int]: ...
    def run_stats(self) -> tuple[int, int]: ...
    def close(self) -> None: ...


def fdinfo_run_stats(fds: Sequence[int]) -> tuple[int, int]:
    """(run time ns, runs) summed over these program fds, from their fdinfo."""
    ns = runs = 0
    for fd in fds:
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name == "run_time_ns":
                ns += int(value)
            elif name == "run_cnt":
                runs += int(value)
    return ns, runs


@dataclass
class LoadedProgram:
    decl: ProgramDecl
    method: str
    bpf: Any  # bcc.BPF
    defines: tuple[str, ...] = ()
    attached: bool = False
    _closed: bool = field(default=False, repr=False)

    def set_ports(self, ports: Sequence[int]) -> None:
        table = self.bpf[b"watched_ports"]
        for p in ports:
            table[ct.c_int(p)] = ct.c_uint8(1)

    def attach(self) -> None:
        """Hook the loaded functions to the kernel (BCC's own naming says where); LoadError if refused."""
        from bcc import BPF

        if self.attached:
            return
        try:
            BPF._trace_autoload(self.bpf)
        except Exception as e:  # BCC raises bare Exception for every refusal
            raise LoadError(f"{self.decl.program}: cannot attach by {self.method}: {_one_line(e, [])}") from None
        self.attached = True

    def read_series(self) -> dict[SeriesKey, tuple[int, int]]:
        """Every series of the program's per-CPU `metrics` map (bpf/histogram.h): (count, sum)."""
        table = self.bpf[b"metrics"]
        try:
            pairs = list(table.items_lookup_batch())
        except Exception:  # kernels before 5.6 have no batch lookup; one syscall per key then
            pairs = list(table.items())
        names = metric_key(self.decl.source.parent).names
        out: dict[SeriesKey, tuple[int, int]] = {}
        for k, per_cpu in pairs:
            values = per_cpu if isinstance(per_cpu, ct.Array) else [per_cpu]
            out[tuple(int(getattr(k, name)) for name in names)] = (
                sum(int(v.count) for v in values), sum(int(v.sum) for v in values))
        return out

    def delete_series(self, keys: Sequence[SeriesKey]) -> None:
        """Remove these series from the `metrics` map (series of a pod that is gone)."""
        table = self.bpf[b"metrics"]
        names = metric_key(self.decl.source.parent).names
        for values in keys:
            k = table.Key()
            for name, v in zip(names, values, strict=True):
                setattr(k, name, v)
            with contextlib.suppress(KeyError):  # already gone
                del table[k]

    def read_errors(self) -> list[int]:
        """errors[] of bpf/histogram.h, one count per slot of histogram.yaml's `errors`."""
        table = self.bpf[b"errors"]
        return [int(table[ct.c_int(i)].value) for i in range(len(table))]

    def run_stats(self) -> tuple[int, int]:
        """(run time ns, runs) summed over the program's functions."""
        return fdinfo_run_stats([fn.fd for fn in self.bpf.funcs.values()])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.bpf.cleanup()


def _one_line(exc: BaseException, stderr: Sequence[str]) -> str:
    """The line that says why: a compiler error if there was one, else BCC's message."""
    errs = [ln.strip() for ln in stderr if "error:" in ln]
    text = errs[0] if errs else str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Need super-user privileges" in text and privilege_problem() is None:
        text = "the kernel refused the program (EPERM)"  # BCC says this for any EPERM, even as root
    return re.sub(r"b'([^']*)'", r"\1", text)


def unattached(bpf_class: Any) -> Any:
    """bcc.BPF, minus the attaching its constructor does (BCC has no switch for that)."""
    return type("UnattachedBPF", (bpf_class,), {"_trace_autoload": lambda self: None})


def verify_hooks(bpf: Any) -> None:
    """Load every hook function into the kernel, which verifies it; attach() reuses them."""
    from bcc import BPF
    from bcc.libbcc import lib

    for i in range(lib.bpf_num_functions(bpf.module)):
        name = lib.bpf_function_name(bpf.module, i)
        kind = next((k for prefix, k in _HOOK_TYPES.items() if name.startswith(prefix)), None)
        if kind is not None:
            bpf.load_func(name, getattr(BPF, kind))


def _compile(decl: ProgramDecl, ports: Sequence[int], forced: str, extra_defines: Sequence[str],
             selected: Sequence[str], stderr: StderrCapture) -> LoadedProgram:
    from bcc import BPF

    plan = plan_attach(decl, need_missing, forced, selected)
    if plan.problem:
        raise LoadError(plan.problem)
    text = program_text(decl.source)
    tried: list[str] = list(plan.refused)  # methods ruled out before trying, then those refused
    for cand in plan.candidates:
        defines = [*decl.metric_defines(), *plan.defines, *extra_defines]
        if cand.define:
            defines.append(cand.define)
        before = len(stderr.lines())
        try:
            bpf = unattached(BPF)(text=text.encode(), cflags=[f"-D{d}" for d in defines])
        except Exception as e:  # BCC raises bare Exception for compile and map-creation failures
            tried.append(f"{cand.method}: {_one_line(e, stderr.lines()[before:])}")
            continue
        try:
            verify_hooks(bpf)
        except Exception as e:  # the kernel refused a function (verifier, EPERM): next method
            bpf.cleanup()
            tried.append(f"{cand.method}: {_one_line(e, stderr.lines()[before:])}")
            continue
        prog = LoadedProgram(decl, cand.method, bpf, plan.defines)
        try:
            prog.set_ports(ports)
        except Exception as e:
            prog.close()
            raise LoadError(f"{decl.program}: cannot set watched ports: {e}") from None
        return prog
    raise LoadError(f"{decl.program}: {'; '.join(tried)}")


def load_programs(decls: Sequence[ProgramDecl], ports: Sequence[int], forced: str = "auto",
                  extra_defines: Sequence[str] = (), selected: Sequence[str] = ()) -> list[LoadedProgram | LoadError]:
    """Load every program, each loaded (not attached yet) or why not, with the optional parts
    the `selected` metrics need (none selected: every one). One at a time: BCC's compiler is
    not thread-safe."""
    problem = environment_problem()
    if problem:
        return [LoadError(problem) for _ in decls]
    results: list[LoadedProgram | LoadError] = []
    with captured_stderr() as stderr:
        for d in decls:
            try:
                results.append(_compile(d, ports, forced, extra_defines, selected, stderr))
            except LoadError as e:
                results.append(e)
            except Exception as e:  # anything else from BCC is also a refusal, with its reason
                results.append(LoadError(f"{d.program}: {_one_line(e, [])}"))
    for line in stderr.lines():
        if line.strip():
            log.debug("bcc: %s", line)
    return results


def load_program(decl: ProgramDecl, ports: Sequence[int], forced: str = "auto",
                 extra_defines: Sequence[str] = ()) -> LoadedProgram:
    """One program, loaded and attached, or LoadError saying why not."""
    (result,) = load_programs([decl], ports, forced, extra_defines)
    if isinstance(result, LoadError):
        raise result
    try:
        result.attach()
    except LoadError:
        result.close()
        raise
    return result

