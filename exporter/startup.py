"""What the config names on this machine, checked once at start-up (and by `check`): config
validation reads only the values, so the files it names are looked at here."""

from __future__ import annotations

import contextlib
import os

from .config import Config, ConfigError


def check_files(cfg: Config) -> None:
    """ConfigError when the web config file is missing or an eBPF family is not declared in bpf/."""
    if cfg.web_config_file and not os.path.isfile(cfg.web_config_file):
        raise ConfigError(f"web_config_file {cfg.web_config_file} does not exist")
    if cfg.ebpf_metric:
        from .ebpf.declaration import DeclarationError, metric_programs, unknown_metrics

        with contextlib.suppress(DeclarationError):  # a broken bpf/ is reported where it is loaded
            if why := unknown_metrics(cfg.ebpf_metric, metric_programs()):
                raise ConfigError(why)
