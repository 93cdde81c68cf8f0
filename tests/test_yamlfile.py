"""The config, the web config and the BPF declarations are read by one YAML-mapping loader:
the same mistakes give the same one-line errors, each naming its kind of file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.config import ConfigError, load_yaml
from exporter.ebpf.declaration import DeclarationError, load_declaration
from exporter.webconfig import load_web_config

LOADERS: dict[str, tuple[Callable[[Path], Any], type[Exception]]] = {
    "config file": (lambda p: load_yaml(str(p)), ConfigError),
    "web config": (lambda p: load_web_config(str(p)), ConfigError),
    "BPF declaration": (load_declaration, DeclarationError),
}
BAD = {
    "not valid YAML": b"a: [1,\n",
    "must be a mapping": b"- a\n- b\n",
    "not UTF-8": b"a: \xff\xfe\n",
}


@pytest.mark.parametrize("what", sorted(LOADERS))
@pytest.mark.parametrize("problem", sorted(BAD))
def test_bad_files_are_one_line_errors(tmp_path: Path, what: str, problem: str) -> None:
    load, error = LOADERS[what]
    path = tmp_path / "file.yaml"
    path.write_bytes(BAD[problem])
    with pytest.raises(error) as e:
        load(path)
    msg = str(e.value)
    assert msg.startswith(f"{what} {path}") and problem in msg and "\n" not in msg, msg


@pytest.mark.parametrize("what", sorted(LOADERS))
def test_a_missing_file_names_itself(tmp_path: Path, what: str) -> None:
    load, error = LOADERS[what]
    with pytest.raises(error, match=f"^{what} {tmp_path}/absent.yaml does not exist"):
        load(tmp_path / "absent.yaml")


def test_an_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing but a comment\n")
    assert load_yaml(str(path)) == {}
    assert load_web_config(str(path)) == (None, None)
    with pytest.raises(DeclarationError, match="needs program and source"):
        load_declaration(path)
