"""`diagnose`: a tuning advisor. Evidence per model from one of three sources, rules over it,
findings with the change to make and what should move (docs/tuning.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from .evidence import Evidence, ModelConfig
from .evidence_inputs import (
    SourceError,
    evidence_from_groups,
    evidence_from_samples,
    metrics_window,
    prometheus_window,
    triton_configs,
)
from .report import as_json, print_report
from .rules import Finding, Thresholds, diagnose

__all__ = ["Evidence", "Finding", "ModelConfig", "Thresholds", "diagnose", "gather", "run_diagnose"]

EXIT_NOTHING, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    values: dict[str, Any] = {}
    if args.thresholds:
        try:
            with open(args.thresholds, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read thresholds file {args.thresholds}: {e}") from None
        section = doc.get("diagnose", doc) if isinstance(doc, dict) else doc  # its own file, or a section
        if not isinstance(section, dict):
            raise ValueError(f"{args.thresholds}: expected a mapping of threshold names to numbers")
        values.update(section)
    for item in args.set or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected NAME=VALUE")
        values[name.strip()] = value.strip()
    return Thresholds().replace(values)


def gather(args: argparse.Namespace) -> tuple[list[Evidence], str]:
    """The evidence from whichever source the arguments name, and a line saying what it was."""
    given = [bool(args.files), bool(args.metrics_url), bool(args.prometheus_url)]
    if sum(given) != 1:
        raise SourceError("give exactly one input: trace FILEs, --metrics-url or --prometheus-url")
    if args.metrics_url:
        samples, window = metrics_window(args.metrics_url, args.window)
        span = f"over {window:.1f} s" if window is not None else "since the exporter started"
        return evidence_from_samples(samples, window), f"{args.metrics_url} {span}"
    if args.prometheus_url:
        samples, window = prometheus_window(args.prometheus_url, args.range, args.end)
        return evidence_from_samples(samples, window), f"{args.prometheus_url} over the last {window:.0f} s"
    from ..summary import Progress, collect

    for p in args.files:
        if not os.path.isfile(p):
            raise SourceError(f"{p} is not a readable file")
    try:
        groups, _rejected = collect(args.files, args.model, Progress(0, False), shapes=True)
    except OSError as e:
        raise SourceError(f"cannot read {e.filename}: {e.strerror}") from None
    if not groups:  # an empty, binary or unrelated file is an error, as for `summary`, not a clean bill
        raise SourceError(f"no complete traces found in {', '.join(args.files)}")
    models = sorted({(m, v) for m, v, _ in groups})
    configs = triton_configs(args.triton, models) if args.triton else {}
    n = len(args.files)
    return evidence_from_groups(groups, configs), f"{n} trace file{'s' if n > 1 else ''}"


def run_diagnose(args: argparse.Namespace) -> int:
    try:
        t = thresholds_from_args(args)
        evidence, source = gather(args)
    except (ValueError, SourceError) as e:
        print(f"inference-profiler: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.model:
        evidence = [e for e in evidence if e.model in args.model]
    findings = diagnose(evidence, t)
    if args.format == "json":
        json.dump(as_json(evidence, findings, source, t), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(evidence, findings, source, sys.stdout)
    return EXIT_FINDINGS if findings else EXIT_NOTHING
