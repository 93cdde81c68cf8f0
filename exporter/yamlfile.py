"""Reading a YAML file whose top level is a mapping: the config, the web config, the BPF declarations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_mapping(path: str | Path, what: str, error: type[Exception], hint: str = "") -> dict[str, Any]:
    """The file's top-level mapping ({} for an empty file).

    Every failure is `error` with one line naming `what` and the file; `hint` says how to
    fix a missing file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist{'; ' + hint if hint else ''}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # the composer recurses per nesting level
        raise error(f"{what} {path} is nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{what} {path}{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {path} must be a mapping of keys to values")
    return data
