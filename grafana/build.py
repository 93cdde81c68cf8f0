"""Generate the dashboards' JSON: `python -m grafana.build` writes grafana/dashboards/*.json,
`python -m grafana.build --check` exits 1 when a committed file differs from the code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from . import network, perf_analyzer, timeline, triton

OUT = Path(__file__).resolve().parent / "dashboards"

# file stem -> builder; the stem is also the dashboard uid
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    timeline.UID: timeline.dashboard,
    triton.UID: triton.dashboard,
    network.UID: network.dashboard,
    perf_analyzer.UID: perf_analyzer.dashboard,
}


# Grafana's import asks for this input and writes the chosen Prometheus wherever ${DS_PROMETHEUS}
# stands: only in the datasource variable's default, so file provisioning (the sidecar), which
# does not substitute inputs, falls back to its default Prometheus instead of a missing uid
DS_INPUT = "DS_PROMETHEUS"
MIN_GRAFANA = "10.0.0"


def importable(model: dict[str, Any]) -> dict[str, Any]:
    """What Grafana's "export for sharing externally" adds: __inputs, __requires and the
    datasource placeholder; and the Prometheus annotation fields the builder has no setter for."""
    out = json.loads(json.dumps(model, cls=JSONEncoder))
    out["__inputs"] = [{"name": DS_INPUT, "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
                        "pluginName": "Prometheus",
                        "description": "the Prometheus that scrapes the inference-profiler exporters"}]
    panel_types = sorted({p["type"] for top in out["panels"] for p in (top, *top.get("panels", []))
                          if p["type"] != "row"})
    out["__requires"] = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": MIN_GRAFANA},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        *({"type": "panel", "id": t, "name": t, "version": ""} for t in panel_types),
    ]
    for v in out["templating"]["list"]:
        if v["type"] == "datasource":
            placeholder = "${" + DS_INPUT + "}"
            v["current"] = {"selected": True, "text": placeholder, "value": placeholder}
    for a in out["annotations"]["list"]:
        a.setdefault("titleFormat", a["name"])
        a.setdefault("tagKeys", "instance,target")
    return out


def render(name: str) -> str:
    """The dashboard's JSON text, stable across runs (sorted keys, trailing newline)."""
    model = importable(DASHBOARDS[name]().build())
    return json.dumps(model, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grafana.build", description=__doc__)
    ap.add_argument("--check", action="store_true", help="compare with the committed JSON, write nothing")
    ap.add_argument("--out", type=Path, default=OUT, help="output directory")
    args = ap.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        path = args.out / f"{name}.json"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python -m grafana.build): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
