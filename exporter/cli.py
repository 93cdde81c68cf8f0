"""Argument parsing and the subcommands, nothing else."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from . import __version__
from .config import ENV_PREFIX, Config, ConfigError, build, key_type, load_yaml
from .diagnose.rules import Thresholds

EPILOG_SERVE = """\
Every flag is also a key of the YAML --config file (dashes or underscores) and an
environment variable INFPROF_<KEY> (e.g. INFPROF_TRACE_FILE=/var/log/triton/trace.json).
Precedence: flags > environment > config file > defaults.

examples:
  inference-profiler serve --trace-file /var/log/triton/trace.json
  inference-profiler serve --trace-file '/var/log/triton/{pod}/trace.json' --ebpf on
  inference-profiler serve --config /etc/inference-profiler.yaml --triton none
  inference-profiler serve --otlp-listen 0.0.0.0:4318 --otlp-forward http://tempo:4318/v1/traces
"""


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=os.environ.get(ENV_PREFIX + "CONFIG"),
                   help="YAML config file (keys as the flags below)")
    g = p.add_argument_group("settings (also config keys and INFPROF_* env vars)")
    for f in fields(Config):
        t, is_list = key_type(f.name)
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata.get("help", "")}
        if f.metadata.get("metavar"):
            kw["metavar"] = f.metadata["metavar"]
        elif t is float:
            kw["metavar"] = "SECONDS" if f.name.endswith("_seconds") else "X"
        elif t is int:
            kw["metavar"] = "N"
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if is_list:
            kw["action"] = "append"
        elif t is bool:
            kw["action"] = argparse.BooleanOptionalAction
        default = f.default if not is_list else None
        if default not in (None, "", [], False) and not is_list:
            kw["help"] += f" (default: {default})"
        elif is_list:
            d = f.default_factory() if callable(f.default_factory) else []
            if d and f.name != "stage_buckets":
                kw["help"] += f" (default: {' '.join(map(str, d))})"
        g.add_argument(flag, **kw)


def config_from_args(args: argparse.Namespace) -> Config:
    file_values = load_yaml(args.config) if args.config else {}
    flag_values = {f.name: getattr(args, f.name, None) for f in fields(Config)}
    return build(file_values, os.environ, flag_values, args.config or "config")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inference-profiler",
        description="Where every millisecond of a Triton inference goes: per-stage latency from "
        "Triton's trace files, eBPF socket histograms and Triton's own endpoints, as Prometheus metrics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `inference-profiler demo`. Each command has --help.",
    )
    version = f"inference-profiler {__version__}"
    p.add_argument("--version", action="version", version=version)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="run the exporter daemon", epilog=EPILOG_SERVE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(s)

    c = sub.add_parser("check", help="preflight: config, trace dirs, Triton, eBPF; non-zero exit on failure")
    add_config_flags(c)

    m = sub.add_parser(
        "summary",
        help="offline report of trace files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  inference-profiler summary /var/log/triton/trace.json.*\n"
        "  inference-profiler summary --format trace_summary -t trace.json.0\n"
        "  inference-profiler summary --timeline --model resnet50 trace.json.*\n"
        "  inference-profiler summary --format json trace.json.* | jq .\n"
        "  inference-profiler summary --timeline --socket-turns turns.jsonl trace.json.*"
        "   (turns from `tcp-events --record turns.jsonl`)",
    )
    m.add_argument("files", nargs="+", metavar="FILE", help="trace files (Triton's triton,file= output)")
    m.add_argument("--format", choices=("table", "json", "trace_summary"), default="table",
                   help="table (default), json for scripts, or the layout of Triton's trace_summary.py")
    m.add_argument("-t", "--show-trace", action="store_true", help="print each trace's timestamps and gaps")
    m.add_argument("--timeline", action="store_true",
                   help="print the stage timeline per model: stages in order, offset and interval")
    m.add_argument("--model", action="append", help="only this model (repeatable)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    m.add_argument("--socket-turns", metavar="FILE",
                   help="socket turns recorded by `tcp-events --record FILE` while the traces were written: "
                        "join each traced request to its turn and add socket_wait, ack_wait and wire (with "
                        "--timeline: the timeline from the first byte in to the last byte acknowledged)")
    m.add_argument("--http-port", type=int, action="append", metavar="P",
                   help="Triton's HTTP port in the recorded turns (repeatable; default 8000)")
    m.add_argument("--grpc-port", type=int, action="append", metavar="P",
                   help="Triton's gRPC port in the recorded turns (repeatable; default 8001)")

    a = sub.add_parser(
        "diagnose",
        help="tuning advisor: findings per model, the change to make, what should move",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="inputs (one of):\n"
        "  inference-profiler diagnose trace.json.* [--triton localhost:8000]\n"
        "  inference-profiler diagnose --metrics-url http://localhost:9478/metrics --window 30\n"
        "  inference-profiler diagnose --prometheus-url http://prometheus:9090 --range 1h\n\n"
        "exit code: 0 nothing found, 1 findings (CI can gate on it), 2 error.\n"
        "thresholds (--set NAME=VALUE or a YAML --thresholds file; docs/tuning.md):\n"
        + "".join(f"  {f.name:<28}{f.default!s:>8}  {f.metadata['help']}\n" for f in fields(Thresholds)),
    )
    a.add_argument("files", nargs="*", metavar="FILE", help="trace files")
    a.add_argument("--metrics-url", metavar="URL", help="a running exporter's /metrics: two scrapes --window apart")
    a.add_argument("--prometheus-url", metavar="URL", help="Prometheus: increases over --range ending at --end")
    a.add_argument("--window", type=float, default=10.0, metavar="SECONDS",
                   help="with --metrics-url: seconds between the two scrapes (default: 10; 0: one scrape, "
                   "totals since the exporter started)")
    a.add_argument("--range", type=duration, default=3600.0, metavar="DURATION",
                   help="with --prometheus-url: the range, e.g. 15m, 1h (default: 1h)")
    a.add_argument("--end", type=float, default=None, metavar="UNIX_SECONDS",
                   help="with --prometheus-url: the end of the range (default: now)")
    a.add_argument("--triton", metavar="URL", help="with trace files: Triton's HTTP address, for the model configs")
    a.add_argument("--model", action="append", help="only this model (repeatable)")
    a.add_argument("--set", action="append", metavar="NAME=VALUE", help="set a threshold (repeatable)")
    a.add_argument("--thresholds", metavar="FILE", help="YAML file of thresholds (names as for --set)")
    a.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json")

    d = sub.add_parser("demo", help="start a local Triton with traffic and the exporter against it")
    d.add_argument("--listen", default="127.0.0.1:9478", metavar="HOST:PORT", help="exporter listen address")
    d.add_argument("--workdir", default=None, metavar="DIR", help="where models and traces go (default: a temp dir)")
    d.add_argument("--rate", type=float, default=50.0, help="requests per second of generated traffic")
    d.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")

    t = sub.add_parser("tcp-events", help="print live TCP send/recv events on Triton's ports (debugging)")
    t.add_argument("--port", type=int, action="append", metavar="P",
                   help="port to watch (repeatable; default 8000 and 8001)")
    t.add_argument("--count", type=int, default=0, help="exit after this many events (0: until Ctrl-C)")
    t.add_argument("--record", metavar="FILE",
                   help="instead of printing calls, append one JSON line per server-side socket turn (request "
                        "arrival, reads, writes, ACK of the response) to FILE, for `summary --socket-turns FILE`")
    for command in sub.choices.values():  # `serve --version` answers as the top level does
        command.add_argument("--version", action="version", version=version, help="print the version and exit")
    return p


def duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `1h`, `2d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 15m, 1h)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be > 0: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    try:
        return run(args)
    except ConfigError as e:
        print(f"inference-profiler: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and friends
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a file or device the system refused (state dir, BPF): its own words, one line
        print(f"inference-profiler: error: {e}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from . import logs

    if args.command == "serve":
        cfg = config_from_args(args)
        logs.setup(cfg.log_level, cfg.log_format)
        from .daemon import Daemon

        Daemon(cfg).run_forever()
        return 0
    if args.command == "check":
        try:
            cfg = config_from_args(args)
        except ConfigError as e:
            print(f"FAIL  config: {e}")  # check's own layout, then the usual one-line error and exit 2
            raise
        logs.setup("warning", "text")
        from .check import run_checks

        return run_checks(cfg)
    if args.command == "summary":
        from .summary import run_summary

        return run_summary(args)
    if args.command == "diagnose":
        logs.setup("warning", "text")
        from .diagnose import run_diagnose

        return run_diagnose(args)
    if args.command == "demo":
        logs.setup("info", "text")
        from .demo import run_demo

        return run_demo(args)
    if args.command == "tcp-events":
        logs.setup("warning", "text")
        from .ebpf.tcp_events import run_tcp_events

        return run_tcp_events(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
