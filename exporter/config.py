"""One typed config, loaded from defaults <- YAML file <- INFPROF_* env <- flags.

Every key of `Config` is also a `serve` flag (`--key-name`) and an env var
(`INFPROF_KEY_NAME`); lists come from repeated flags, YAML lists, or commas in env.
Errors are `ConfigError` with one line saying what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .histogram import DEFAULT_STAGE_BUCKETS, MIN_SCHEMA, STORE_SCHEMA
from .listen import ListenAddressError, parse_listen
from .stages import ALL_STAGES
from .wire.names import WIRE_STAGES
from .yamlfile import load_mapping

ENV_PREFIX = "INFPROF_"
# INFPROF_* variables that are not config keys: the config file path, the test suite's
# switch that turns skips of real-part tests into failures, and the scanner override
NOT_KEYS = frozenset({"config", "require", "pure_python_scanner", "pure_python_otlp"})
MAX_EBPF_SOCKETS = 1 << 22  # ~4M sockets: about 470 MB of kernel memory for the map (112 B each)
OPEN_TRACES = 16384  # traces held open while a file streams (the trace pipeline's default window)
MAX_BUCKET_SECONDS = 1e6  # ~11.6 days: bounds in ns must fit the int64 stage math with room to spare
MAX_OPEN_TRACES = 1_000_000  # the scanner allocates this many slots up front
MAX_POLL_SECONDS = 86400.0
MIN_POLL_SECONDS = 0.01  # below this a poll loop is a busy loop


class ConfigError(Exception):
    """A user mistake in the config; its message is one line for the terminal."""


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/inference-profiler"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "inference-profiler")


def _opt(default: Any, help: str, *, metavar: str | None = None, choices: tuple[str, ...] = (),
         low: float | None = None, high: float | None = None) -> Any:
    """A config field: its help, metavar, choices and bounds (low..high, inclusive; for a list, of
    each item) in one place; validate() checks them all the same way."""
    meta = {"help": help, "metavar": metavar, "choices": choices, "low": low, "high": high}
    if isinstance(default, list):
        items: list[Any] = list(default)
        return field(default_factory=items.copy, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    listen: str = _opt(":9478", "where /metrics, /healthz and /readyz are served: ':P' and '[::]:P' are every "
                       "address of both families (dual-stack), '0.0.0.0:P' IPv4 only, '[::1]:P' IPv6 loopback",
                       metavar="HOST:PORT")
    trace_file: list[str] = _opt(
        [],
        "Triton's triton,file= path; PATH and PATH.N are read. Globs allowed; a {name} "
        "segment matches like * and becomes label 'name' (repeatable)",
        metavar="PATH",
    )
    state_dir: str = _opt(default_state_dir(), "checkpoint and trace histogram state (survives restarts)", metavar="DIR")
    triton: list[str] = _opt(
        ["http://localhost:8000"], "Triton HTTP endpoint (repeatable); 'none' for no Triton source", metavar="URL"
    )
    triton_metrics_url: list[str] = _opt(
        [], "Triton /metrics URL per --triton (default: port 8002 of the same host)", metavar="URL"
    )
    triton_timeout_seconds: float = _opt(2.0, "timeout of one Triton scrape (keep below Prometheus' scrape_timeout)",
                                         low=0.0)
    triton_cache_seconds: float = _opt(1.0, "answers from Triton are reused for this long", low=0.0)
    triton_passthrough: bool = _opt(False, "also expose Triton's raw nv_* families")
    triton_max_response_bytes: int = _opt(32 * 1024 * 1024, "largest answer read from Triton (/metrics, "
                                          "statistics, a config); a larger one is refused", low=1024)
    triton_max_series: int = _opt(20000, "most series kept from one Triton's /metrics; families past it "
                                  "are dropped", low=1)
    ebpf: str = _opt("auto", "eBPF TCP collection: auto runs it where the kernel allows", choices=("auto", "on", "off"))
    ebpf_port: list[int] = _opt([8000, 8001], "Triton port watched by eBPF (repeatable)", metavar="N", low=1,
                                high=65535)
    wire_join: str = _opt("auto", "join each traced request to its socket turn: the stages socket_wait, "
                          "ack_wait, wire and inference_profiler_socket_joins_total. auto: where traces are "
                          "read, eBPF runs here and --ebpf-port holds a --wire-http-port or --wire-grpc-port; "
                          "on: wherever eBPF is not off; off saves about 3 %% of a core at 300 traced "
                          "requests/s (docs/traces.md)",
                          choices=("auto", "on", "off"))
    wire_http_port: list[int] = _opt([8000], "port of Triton's HTTP frontend, for the socket join (repeatable)",
                                     metavar="N", low=1, high=65535)
    wire_grpc_port: list[int] = _opt([8001], "port of Triton's gRPC frontend, for the socket join (repeatable)",
                                     metavar="N", low=1, high=65535)
    ebpf_attach: str = _opt("auto", "eBPF attach method: auto takes the first the kernel allows",
                            choices=("auto", "tracepoint", "fentry", "kprobe"))
    ebpf_metric: list[str] = _opt([], "eBPF family to collect (repeatable; default every one): the programs and "
                                  "the optional hooks no chosen family needs are not compiled",
                                  metavar="NAME")
    ebpf_max_sockets: int = _opt(65536, "sockets on the watched ports followed at once by eBPF (its map size); "
                                 "past it new connections count bytes only", low=1, high=MAX_EBPF_SOCKETS)
    kubernetes: str = _opt("auto", "label eBPF series with the namespace, pod and container owning the socket, "
                           "from the node's files (auto: where --container-log-dir exists)",
                           choices=("auto", "on", "off"))
    container_log_dir: str = _opt("/var/log/containers", "the kubelet's <pod>_<namespace>_<container>-<id>.log "
                                  "links", metavar="DIR")
    cgroup_root: str = _opt("/sys/fs/cgroup", "the cgroup v2 mount (a hybrid host's unified/ is found by itself)",
                            metavar="DIR")
    kubernetes_refresh_seconds: float = _opt(10.0, "an unknown cgroup id or container is looked up again at most "
                                             "this often", low=0.0)
    kubernetes_forget_seconds: float = _opt(300.0, "the eBPF series of a pod are deleted once its cgroup has been "
                                            "gone this long", low=0.0)
    perf_analyzer_csv: list[str] = _opt([], "perf_analyzer -f result file to expose (repeatable, globs)", metavar="PATH")
    perf_analyzer_poll_seconds: float = _opt(5.0, "how often perf_analyzer CSV globs are re-read for new or "
                                             "rewritten files", low=MIN_POLL_SECONDS, high=MAX_POLL_SECONDS)
    stage_buckets: list[float] = _opt(list(DEFAULT_STAGE_BUCKETS), "stage histogram bucket bounds in seconds")
    trace_stage: list[str] = _opt([], "stage exposed in stage_duration_seconds (repeatable; default every stage): "
                                  "leave out the stages you never look at to save series", metavar="STAGE")
    native_schema: int = _opt(STORE_SCHEMA, f"resolution of the native histograms served in the protobuf format, "
                              f"{MIN_SCHEMA}..{STORE_SCHEMA}: each bucket is 2**(2**-schema) times the previous, "
                              f"so {STORE_SCHEMA} keeps a quantile within 4.4 per cent of the true one", metavar="N")
    ebpf_buckets: int = _opt(20, "classic buckets per eBPF histogram, chosen among the kernel's (which stay "
                             "4 per power of two); 0: every kernel bucket", metavar="N")
    max_models: int = _opt(100, "cap on distinct (model, version) pairs per source (trace files; each Triton "
                           "target): past it they are left out, counted", low=1)
    trace_poll_seconds: float = _opt(0.25, "how often trace directories are scanned", low=MIN_POLL_SECONDS,
                                     high=MAX_POLL_SECONDS)
    trace_settle_seconds: float = _opt(
        10.0, "a trace file left incomplete this long is ingested as far as it is valid", low=0.0
    )
    trace_delete_ingested: bool = _opt(False, "delete trace files once ingested (retention)")
    trace_keep_bytes: int = _opt(
        0, "keep at most this many bytes of trace files per trace file set, deleting the oldest "
        "ingested ones (retention; 0: no limit)", metavar="N", low=0
    )
    trace_open_traces: int = _opt(
        OPEN_TRACES, "traces held open while a file streams; bounds memory on huge files", low=1, high=MAX_OPEN_TRACES
    )
    trace_child_hold_seconds: float = _opt(
        30.0, "how long an ensemble/BLS child waits for its parent's protocol in a later file", low=0.0
    )
    otlp_listen: str = _opt(
        "", "receive OTLP/HTTP traces (POST /v1/traces) from Triton's --trace-config mode=opentelemetry; "
        "they feed the same stage families as trace files (docs/otlp.md)", metavar="HOST:PORT")
    otlp_forward: list[str] = _opt(
        [], "pass every accepted OTLP payload on, unchanged, to this trace backend URL (repeatable)", metavar="URL")
    otlp_hold_seconds: float = _opt(
        60.0, "how long a request's spans wait for its root span (a gRPC stream's comes when it closes)", low=0.0)
    otlp_pace_seconds: float = _opt(
        0.2, "answer an OTLP POST smaller than its connection's largest (and than 512 spans) no sooner than "
        "this after the connection's previous answer; it is committed first. A sender that exports again "
        "as soon as it is answered (Triton's batch span processor) then sends fewer, larger POSTs, each "
        "costing one commit (docs/otlp.md); 0: answer at once", low=0.0, high=2.0)
    web_config_file: str = _opt("", "TLS and basic auth for the endpoint (exporter-toolkit web config)", metavar="FILE")
    log_level: str = _opt("info", "log level", choices=("debug", "info", "warning", "error"))
    log_format: str = _opt("text", "log line format", choices=("text", "json"))

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)  # host "" is every address, both families


KEYS: dict[str, Any] = {f.name: f for f in fields(Config)}


def key_type(name: str) -> tuple[type, bool]:
    """(scalar type, is_list) of a config key."""
    hints = typing.get_type_hints(Config)
    t = hints[name]
    if typing.get_origin(t) is list:
        return typing.get_args(t)[0], True
    if isinstance(t, types.UnionType):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t, False


def _coerce_scalar(key: str, t: type, raw: Any, origin: str) -> Any:
    try:
        if t is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if t is int:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(str(raw).strip())
        if t is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(str(raw).strip())
        if isinstance(raw, (dict, list)):
            raise ValueError(raw)
        return str(raw)
    except ValueError:
        raise ConfigError(f"{origin}: {key} must be {t.__name__}, got {raw!r}") from None


def coerce(key: str, raw: Any, origin: str) -> Any:
    t, is_list = key_type(key)
    if is_list:
        items: list[Any] = []
        for v in raw if isinstance(raw, list) else [raw]:
            # "a,b" in env vars and flags is two items (paths with commas are not supported)
            items.extend(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else items.append(v)
        return [_coerce_scalar(key, t, v, origin) for v in items]
    return _coerce_scalar(key, t, raw, origin)


def load_yaml(path: str) -> dict[str, Any]:
    data = load_mapping(path, "config file", ConfigError, "pass an existing file to --config")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build(file_values: Mapping[str, Any], env: Mapping[str, str], flag_values: Mapping[str, Any],
          file_name: str = "config") -> Config:
    """Merge the three layers over the defaults and validate."""
    values: dict[str, Any] = {}
    for k, v in file_values.items():
        if k not in KEYS:
            raise ConfigError(f"{file_name}: unknown key '{k}' (known: {', '.join(sorted(KEYS))})")
        values[k] = coerce(k, v, file_name)
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        k = name[len(ENV_PREFIX):].lower()
        if k in NOT_KEYS:
            continue
        if k not in KEYS:
            raise ConfigError(f"environment: unknown variable {name} (keys: {', '.join(sorted(KEYS))})")
        values[k] = coerce(k, raw, f"env {name}")
    for k, v in flag_values.items():
        if v is not None:
            values[k] = coerce(k, v, f"--{k.replace('_', '-')}")
    cfg = normalize(Config(**values))
    validate(cfg)
    return cfg


# each bound is a line per series on every scrape and a count in the state: 20 by default
MAX_STAGE_BUCKETS = 100


def _check_text(cfg: Config) -> None:
    """Every string must be valid Unicode: env vars and files may carry undecodable bytes."""
    for f in fields(Config):
        v = getattr(cfg, f.name)
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ConfigError(f"{f.name} is not valid UTF-8 text: {item.encode('utf-8', 'replace')!r}") from None


def normalize(cfg: Config) -> Config:
    """The config as the sources read it: `triton: none` is no target, family names without the prefix."""
    triton = [] if any(t.strip().lower() == "none" for t in cfg.triton) else list(cfg.triton)
    metrics = [m.removeprefix("inference_profiler_") for m in cfg.ebpf_metric]
    return dataclasses.replace(cfg, triton=triton, ebpf_metric=metrics)


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else f"{x:g}"


def _check_bounds(cfg: Config) -> None:
    """Each field's bounds from its metadata: durations finite and not negative, numbers in range."""
    for f in fields(Config):
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if low is None and high is None:
            continue
        v = getattr(cfg, f.name)
        for x in v if isinstance(v, list) else [v]:
            if not math.isfinite(x) or (high is None and low == 0 and x < 0):
                unit = " of seconds" if f.name.endswith("_seconds") else ""
                raise ConfigError(f"{f.name} must be a finite number{unit}, not negative, got {x!r}")
            if (low is not None and x < low) or (high is not None and x > high):
                want = f"between {_num(low)} and {_num(high)}" if high is not None else f"at least {_num(low)}"
                raise ConfigError(f"{f.name} must be {want}, got {x!r}")


def validate(cfg: Config) -> None:
    """ConfigError for the first value that is wrong; reads only (no files, no changes)."""
    _check_text(cfg)
    for key in ("listen", "otlp_listen") if cfg.otlp_listen else ("listen",):
        try:
            parse_listen(getattr(cfg, key))
        except ListenAddressError as e:
            raise ConfigError(f"{key} must be HOST:PORT (e.g. :9478, 0.0.0.0:4318, [::1]:9478): {e}") from None
    for k in KEYS.values():
        choices = k.metadata.get("choices")
        if choices and getattr(cfg, k.name) not in choices:
            raise ConfigError(f"{k.name} must be one of {', '.join(choices)}, got {getattr(cfg, k.name)!r}")
    _check_bounds(cfg)
    for url in cfg.triton + cfg.triton_metrics_url:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"Triton URL must start with http:// or https://, got {url!r}")
    if cfg.triton_metrics_url and len(cfg.triton_metrics_url) != len(cfg.triton):
        raise ConfigError("give one --triton-metrics-url per --triton, in the same order")
    b = cfg.stage_buckets
    if len(b) > MAX_STAGE_BUCKETS:
        raise ConfigError(f"stage_buckets has {len(b)} bounds; at most {MAX_STAGE_BUCKETS} (every bound is a "
                          "line per series on every scrape)")
    if not b or any(not math.isfinite(x) or x <= 0 for x in b) or any(b2 <= b1 for b1, b2 in itertools.pairwise(b)):
        raise ConfigError("stage_buckets must be finite, positive and strictly increasing")
    if b[-1] > MAX_BUCKET_SECONDS:
        raise ConfigError(f"stage_buckets must be at most {MAX_BUCKET_SECONDS:g} seconds, got {b[-1]:g}")
    ns = [round(x * 1e9) for x in b]
    if any(n2 <= n1 for n1, n2 in itertools.pairwise(ns)) or ns[0] < 1:
        raise ConfigError("stage_buckets must differ by at least a nanosecond")
    for url in cfg.otlp_forward:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"otlp_forward must be an http:// or https:// URL (e.g. http://tempo:4318/v1/traces), "
                              f"got {url!r}")
    if cfg.otlp_forward and not cfg.otlp_listen:
        raise ConfigError("otlp_forward needs otlp_listen: only received OTLP payloads are forwarded")
    if not MIN_SCHEMA <= cfg.native_schema <= STORE_SCHEMA:
        raise ConfigError(f"native_schema must be {MIN_SCHEMA}..{STORE_SCHEMA}, got {cfg.native_schema}")
    if cfg.ebpf_buckets < 0:
        raise ConfigError(f"ebpf_buckets must be 0 (every kernel bucket) or more, got {cfg.ebpf_buckets}")
    if unknown := sorted(set(cfg.trace_stage) - set(ALL_STAGES) - set(WIRE_STAGES)):
        raise ConfigError(f"trace_stage: unknown stage {', '.join(unknown)} "
                          f"(stages: {', '.join((*ALL_STAGES, *WIRE_STAGES))})")

