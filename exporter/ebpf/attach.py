"""Which attach method a program uses: the first of its declared ones the kernel allows."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from .declaration import AttachMethod, ProgramDecl

# Why one need is not met (None: met); exporter.ebpf.kernel.need_missing in the daemon.
NeedCheck = Callable[[str], "str | None"]


@dataclass(frozen=True)
class AttachPlan:
    candidates: tuple[AttachMethod, ...]  # to try in this order (a load can still be refused)
    refused: tuple[str, ...]  # "method: reason" for each declared method ruled out
    defines: tuple[str, ...]  # optional parts whose needs are met
    problem: str | None = None  # why nothing can be tried


def plan_attach(decl: ProgramDecl, missing: NeedCheck, forced: str = "auto",
                selected: Collection[str] = ()) -> AttachPlan:
    """Attach candidates for decl; `forced` (a method name) keeps only that method. Optional
    parts are compiled in where the kernel meets their needs and a `selected` metric (none
    selected: every one) needs them."""
    for need in decl.needs:
        why = missing(need)
        if why:
            return AttachPlan((), (), (), f"{decl.program}: {why}")
    candidates: list[AttachMethod] = []
    refused: list[str] = []
    for m in decl.attach:
        if forced != "auto" and m.method != forced:
            continue
        whys = [w for w in map(missing, m.needs) if w]
        if whys:
            refused.append(f"{m.method}: {whys[0]}")
        else:
            candidates.append(m)
    defines = tuple(o.define for o in decl.wanted_parts(selected) if not any(missing(n) for n in o.needs))
    problem = None
    if not candidates:
        if refused:
            problem = f"{decl.program}: no attach method available ({'; '.join(refused)})"
        else:
            declared = ", ".join(m.method for m in decl.attach)
            problem = f"{decl.program}: attach method {forced} not declared (it has {declared})"
    return AttachPlan(tuple(candidates), tuple(refused), defines, problem)
