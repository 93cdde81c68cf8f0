"""What one `check` item reports; a leaf module, so every source's checks can import it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config import Config


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass", "warn" or "fail"
    detail: str


Check = Callable[[Config], Iterable[CheckResult]]
