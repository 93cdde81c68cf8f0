"""Pure logic of the eBPF source: declarations, attach choice, map series -> families."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from prometheus_client.core import HistogramMetricFamily

from exporter.ebpf.attach import plan_attach
from exporter.ebpf.collector import metric_families
from exporter.ebpf.declaration import (
    SHARED_DECLARATION,
    DeclarationError,
    bpf_dir,
    load_declaration,
    load_metric_key,
    metric_key,
    metric_programs,
    unknown_metrics,
)
from exporter.ebpf.kernel import need_missing
from exporter.histogram import (
    log_linear_bound,
    log_linear_cumulative,
    log_linear_index,
    log_linear_les,
)

SPEC_EBPF = {
    "tcp_latency_seconds": ("histogram", ("port", "role", "cgroup")),
    "tcp_socket_queue_seconds": ("histogram", ("port", "cgroup")),
    "tcp_message_bytes": ("histogram", ("port", "role", "direction", "cgroup")),
    "tcp_srtt_seconds": ("histogram", ("port", "cgroup")),
    "tcp_bytes_total": ("counter", ("port", "role", "direction", "cgroup")),
    "tcp_retransmits_total": ("counter", ("port", "cgroup")),
}


def test_declarations_cover_the_spec_metrics_exactly() -> None:
    declared = {m.name: (m.type, m.labels) for d in metric_programs() for m in d.metrics}
    assert declared == SPEC_EBPF


def test_every_program_source_uses_only_its_declared_metric_ids() -> None:
    for d in metric_programs():
        text = d.source.read_text()
        used = {w for w in text.replace("(", " ").replace(",", " ").split() if w.startswith("METRIC_")}
        assert used == {f"METRIC_{m.name}" for m in d.metrics}, d.program


def test_tcp_events_declaration_feeds_no_metric() -> None:
    d = load_declaration(bpf_dir() / "tcp_events.yaml")
    assert d.metrics == () and [m.method for m in d.attach] == ["tracepoint", "fentry", "kprobe"]


def test_bad_declaration_is_one_line_error(tmp_path: Path) -> None:
    shutil.copy(bpf_dir() / SHARED_DECLARATION, tmp_path)
    p = tmp_path / "x.yaml"
    p.write_text("program: x\nsource: x.c\nattach: [{method: tracepoint}]\n"
                 "metrics: [{name: m, help: h, type: histogram, labels: [port, colour]}]\n")
    with pytest.raises(DeclarationError, match=r"labels \['colour'\] not in the metric key \(role, port, direction, cgroup\)"):
        load_declaration(p)
    p.write_text("program: x\nsource: x.c\nattach: [{method: tracepoint}]\n"
                 "metrics: [{name: m, help: h, type: counter, labels: [port, role], zero_per_port: true}]\n")
    with pytest.raises(DeclarationError, match=r"zero_per_port needs labels \[port\]"):
        load_declaration(p)


def test_attach_prefers_tracepoints_then_fentry_then_kprobes() -> None:
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    all_there = plan_attach(d, lambda need: None)
    assert [c.method for c in all_there.candidates] == ["tracepoint", "fentry", "kprobe"]
    assert all_there.defines == ("HAVE_SK_DATA_READY", "HAVE_TCP_PROBE", "HAVE_TCP_RETRANSMIT")

    old_kernel = plan_attach(d, lambda need: "missing" if "sock:sock_" in need or "sk_data_ready" in need
                             or "tcp:tcp_probe" in need or "retransmit" in need else None)
    assert [c.method for c in old_kernel.candidates] == ["fentry", "kprobe"]
    assert old_kernel.defines == ()
    assert old_kernel.refused == ("tracepoint: missing",)

    only_kprobes = plan_attach(d, lambda need: None if need.startswith(
        ("kprobe", "tracepoint sock:inet", "tracepoint tcp:")) else "no")
    assert [c.method for c in only_kprobes.candidates] == ["kprobe"]


def test_only_what_the_selected_metrics_need_is_compiled_and_exposed() -> None:
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    core = ["tcp_latency_seconds", "tcp_bytes_total"]
    assert plan_attach(d, lambda need: None, selected=core).defines == ()
    assert plan_attach(d, lambda need: None, selected=[*core, "tcp_srtt_seconds"]).defines == ("HAVE_TCP_PROBE",)
    assert d.wanted([]) and d.wanted(core) and not d.wanted(["tcp_other"])
    # a selected metric whose part the kernel lacks is not collected; nothing is when not loaded
    names = [m.name for m in d.metrics]
    active = dict(zip(names, d.active(["tcp_srtt_seconds", "tcp_latency_seconds"], ("HAVE_SK_DATA_READY",)),
                      strict=True))
    assert [n for n, on in active.items() if on] == ["tcp_latency_seconds"]
    assert [n for n, on in zip(names, d.active([], None), strict=True) if on] == [
        "tcp_latency_seconds", "tcp_message_bytes", "tcp_bytes_total"]
    retransmits = names.index("tcp_retransmits_total")
    raw = {"metric": retransmits, "role": 0, "port": 8001, "direction": 0, "bucket": 0, "cgroup": 0}
    series = {tuple(raw[n] for n in metric_key().names): (2, 0)}
    fams = metric_families(d, series, ports=[8000], active=d.active(core, ()))
    assert sorted(f.name for f in fams) == ["inference_profiler_tcp_bytes", "inference_profiler_tcp_latency_seconds"]
    assert unknown_metrics(["tcp_srtt_seconds"], [d]) is None
    why = unknown_metrics(["tcp_rtt"], [d])
    assert why is not None and why.startswith("ebpf_metric 'tcp_rtt' is not an eBPF family; choose from tcp_bytes")


def test_attach_problems_say_why(tmp_path: Path) -> None:
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    nothing = plan_attach(d, lambda need: f"no {need}")
    assert nothing.problem is not None and "no tracepoint sock:inet_sock_set_state" in nothing.problem
    forced = plan_attach(d, lambda need: None if need.startswith("tracepoint") else "no kprobes", "kprobe")
    assert forced.candidates == ()
    assert forced.problem == "tcp_messages: no attach method available (kprobe: no kprobes)"
    only_tracepoint = tmp_path / "x.yaml"
    only_tracepoint.write_text("program: x\nsource: x.c\nattach: [{method: tracepoint, needs: []}]\n")
    shutil.copy(bpf_dir() / SHARED_DECLARATION, tmp_path)
    x = load_declaration(only_tracepoint)
    assert "not declared" in str(plan_attach(x, lambda need: None, "fentry").problem)


def test_need_check_rejects_unknown_kinds() -> None:
    assert need_missing("uprobe foo") == "unknown need 'uprobe foo'"


def test_metric_families_decode_labels_buckets_and_sum() -> None:
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    ids = {m.name: i for i, m in enumerate(d.metrics)}
    lat = ids["tcp_latency_seconds"]
    i5ms = log_linear_index(5_000_000)
    series = {
        (lat, 0, 8000, 0, i5ms): (3, 15_000_000),  # server, 3 observations around 5 ms
        (lat, 1, 8000, 0, 0): (1, 0),  # client, one 0 ns observation: below the first bound
        (ids["tcp_bytes_total"], 0, 8001, 1, 0): (1234, 0),
        (ids["tcp_socket_queue_seconds"], 0, 8000, 0, 250): (2, 7),  # above the last bound: +Inf only
        (ids["tcp_socket_queue_seconds"], 1, 8000, 0, 250): (1, 1),  # role is no label: summed
    }
    fams = {f.name: f for f in metric_families(d, series)}
    h = fams["inference_profiler_tcp_latency_seconds"]
    assert isinstance(h, HistogramMetricFamily)
    server = {s.labels["le"]: s.value for s in h.samples
              if s.labels.get("role") == "server" and s.name.endswith("_bucket")}
    le5 = repr(log_linear_bound(i5ms) / 1e9)
    prev = repr(log_linear_bound(i5ms - 1) / 1e9)
    assert server[le5] == 3 and server[prev] == 0 and server["+Inf"] == 3
    sums = {s.labels["role"]: s.value for s in h.samples if s.name.endswith("_sum")}
    assert sums == {"server": 0.015, "client": 0.0}
    client_first = next(s for s in h.samples if s.labels.get("role") == "client" and s.name.endswith("_bucket"))
    assert client_first.labels["le"] == "1.024e-06" and client_first.value == 1
    b = fams["inference_profiler_tcp_bytes"]
    assert [(s.labels, s.value) for s in b.samples if s.name.endswith("_total")] == [
        ({"port": "8001", "role": "server", "direction": "recv"}, 1234.0)]
    q = [s for s in fams["inference_profiler_tcp_socket_queue_seconds"].samples if s.name.endswith("_bucket")]
    assert [s.value for s in q if s.labels["le"] != "+Inf"] == [0.0] * (len(q) - 1)
    assert [s.value for s in q if s.labels["le"] == "+Inf"] == [3.0]


def test_port_counters_start_at_zero_for_every_watched_port() -> None:
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    retransmits = next(i for i, m in enumerate(d.metrics) if m.name == "tcp_retransmits_total")
    raw = {"metric": retransmits, "role": 0, "port": 8001, "direction": 0, "bucket": 0, "cgroup": 0}
    series = {tuple(raw[n] for n in metric_key().names): (2, 0)}
    fams = {f.name: f for f in metric_families(d, series, ports=[8000, 8001])}
    r = fams["inference_profiler_tcp_retransmits"]
    assert sorted((s.labels["port"], s.value) for s in r.samples if s.name.endswith("_total")) == [
        ("8000", 0.0), ("8001", 2.0)]
    with_pods = {f.name: f for f in metric_families(d, series, ports=[8000, 8001], pods=lambda c: ("", "", ""))}
    r = with_pods["inference_profiler_tcp_retransmits"]
    assert sorted((s.labels["port"], s.labels["pod"], s.value) for s in r.samples if s.name.endswith("_total")) == [
        ("8000", "", 0.0), ("8001", "", 2.0)], "outside any pod: one series per port, from the start"


def test_log_linear_buckets_fold_out_of_range_indexes_exactly() -> None:
    got = list(zip(log_linear_les(10, 11, 1.0), log_linear_cumulative({0: 1, 10: 2, 11: 4, 12: 8, 200: 16}, 10, 11),
                   strict=True))
    assert got == [(repr(float(log_linear_bound(10))), 3.0), (repr(float(log_linear_bound(11))), 7.0),
                   ("+Inf", 31.0)]


def test_check_fails_when_no_program_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.config import build
    from exporter.ebpf import check

    monkeypatch.setattr(check, "metric_programs", lambda: [])
    results = list(check.ebpf_checks(build({}, {}, {"ebpf": "on"})))
    assert [(r.status, "no BPF programs found" in r.detail) for r in results] == [("fail", True)]


# --- the codes C and Python share: one owner, histogram.yaml -----------------------------

def test_metric_key_renders_the_struct_with_explicit_padding_and_every_code() -> None:
    header = metric_key().c_header()
    struct = header[header.index("struct metric_key {"):]
    assert struct.splitlines()[1:10] == ["    u8 metric;", "    u8 role;", "    u16 port;", "    u8 direction;",
                                        "    u8 _pad0[3];", "    u32 bucket;", "    u8 _pad1[4];",
                                        "    u64 cgroup;", "};"]
    defines = dict(re.findall(r"#define (\w+) (\d+)", header))
    assert defines == {"ROLE_SERVER": "0", "ROLE_CLIENT": "1", "DIRECTION_SEND": "0", "DIRECTION_RECV": "1",
                       "ERR_MAP_FULL": "0", "ERR_READ_FAILED": "1", "ERR_SLOTS": "2"}


def test_series_keys_decode_in_the_declared_field_order(tmp_path: Path) -> None:
    """Swap role's codes in the declaration: Python decodes by it (C is generated from it too)."""
    for f in bpf_dir().glob("*.yaml"):
        shutil.copy(f, tmp_path)
    shared = tmp_path / SHARED_DECLARATION
    shared.write_text(shared.read_text().replace("labels: [server, client]", "labels: [client, server]"))
    assert "#define ROLE_CLIENT 0" in load_metric_key(shared).c_header()
    d = next(d for d in metric_programs(tmp_path) if d.program == "tcp_messages")
    names = metric_key(tmp_path).names
    raw = {"metric": 3, "role": 0, "port": 8000, "direction": 1, "bucket": 0, "cgroup": 0}  # tcp_bytes_total
    fams = {f.name: f for f in metric_families(d, {tuple(raw[n] for n in names): (7, 0)})}
    (sample,) = [s for s in fams["inference_profiler_tcp_bytes"].samples if s.name.endswith("_total")]
    assert sample.labels == {"port": "8000", "role": "client", "direction": "recv"} and sample.value == 7


def test_cgroup_ids_become_pod_labels_and_series_of_one_pod_add_up() -> None:
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    names = metric_key().names
    pods = {11: ("ns", "a", "c"), 12: ("ns", "a", "c"), 13: ("", "", "")}
    series = {}
    for cgroup, n in ((11, 2), (12, 3), (13, 5), (0, 7)):
        raw = {"metric": 3, "role": 0, "port": 8000, "direction": 0, "bucket": 0, "cgroup": cgroup}
        series[tuple(raw[k] for k in names)] = (n, 0)
    fams = {f.name: f for f in metric_families(d, series, pods=lambda c: pods.get(c, ("", "", "")))}
    got = {(s.labels["namespace"], s.labels["pod"], s.labels["container"]): s.value
           for s in fams["inference_profiler_tcp_bytes"].samples if s.name.endswith("_total")}
    assert got == {("ns", "a", "c"): 5, ("", "", ""): 12}
    plain = {f.name: f for f in metric_families(d, series)}
    (sample,) = [s for s in plain["inference_profiler_tcp_bytes"].samples if s.name.endswith("_total")]
    assert "pod" not in sample.labels and sample.value == 17, "without --kubernetes: no pod labels, one series"


GENERATED_NAME = re.compile(r"^\s*#\s*define\s+(\w+)|^\s*struct\s+(metric_key)\s*\{", re.M)


def test_no_code_of_histogram_yaml_is_defined_by_hand_in_bpf() -> None:
    """Every ROLE_*, DIRECTION_*, ERR_* and struct metric_key comes from histogram.yaml: a
    hand-written twin in bpf/ (which could disagree with it) fails here."""
    generated = set(metric_key().c_defines()) | {"metric_key"}
    twins = []
    for src in sorted([*bpf_dir().glob("*.c"), *bpf_dir().glob("*.h")]):
        for m in GENERATED_NAME.finditer(src.read_text()):
            name = m.group(1) or m.group(2)
            if name in generated:
                line = src.read_text().count("\n", 0, m.start()) + 1
                twins.append(f"{src.name}:{line} defines {name}")
    assert twins == []


@pytest.mark.parametrize("n", [0, 1 << 23])
def test_socket_map_size_outside_its_range_is_one_line_config_error(n: int) -> None:
    from exporter.config import ConfigError, build

    with pytest.raises(ConfigError, match=r"^ebpf_max_sockets must be between 1 and 4194304, got "):
        build({}, {}, {"ebpf_max_sockets": n})
