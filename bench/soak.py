"""Soak run (not CI): steady traced traffic through the whole stack for a long time.

A real Triton (rolling traces, trace rate 1) serves add_sub and its ensemble over HTTP and
gRPC at --rate requests/s; `inference-profiler serve` runs with every source on (traces,
Triton endpoints, eBPF where the kernel allows); a real Prometheus scrapes it every 5 s
with our rules. At the end the traces the exporter counted must equal the requests sent
(an ensemble request is two traces: the ensemble and its add_sub child).

Reports the exporter's CPU (% of one core), its RSS at start and end, and, as the
same-run baseline, the same figures for Triton with the ratios exporter/Triton; and the
bytes of trace state (--state-dir) written per ingested trace file.

    .venv/bin/python bench/soak.py                       # 10 minutes at 300 req/s
    .venv/bin/python bench/soak.py --duration 120        # a shorter run
    .venv/bin/python bench/soak.py --otlp                # OTLP mode, see below

--otlp-triton: the same run with Triton's own OpenTelemetry tracing (--trace-config
mode=opentelemetry, its batch span processor at its defaults unless --otlp-bsp-delay is given)
posting to `serve --otlp-listen` instead of a trace file; reports Triton's CPU beside the
exporter's and the spans per POST Triton sent. --otlp-pace S runs the exporter with
`--otlp-pace-seconds S` (0: every answer at once, as before the pacing; unset: the exporter's
default), so one checkout compares both.

    .venv/bin/python bench/soak.py --otlp-triton --duration 120
    .venv/bin/python bench/soak.py --otlp-triton --duration 120 --otlp-pace 0

--otlp: `serve --otlp-listen` alone, fed by a client that posts Triton-shaped OTLP/JSON
(about a dozen spans a POST, as Triton 2.51 sends them) over ONE keep-alive connection at
--rate requests/s, one POST at a time, pausing --otlp-pause seconds (less than the
listener's 60 s idle deadline) every --otlp-pause-every seconds. Every request must be
counted once: traces counted == requests posted, every POST answered 200 on the same
connection (a connection the exporter cut is reported, reopened and its POST resent). This
client does not batch: give --otlp-pace 0 to post at --rate (paced answers slow it down).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.demo.launcher import ENSEMBLE, MODEL, TritonServer, copy_model_repository, free_port  # noqa: E402
from exporter.demo.traffic import TrafficDriver  # noqa: E402


def scrape_traces(url: str, family: str = "inference_profiler_traces_total", result: str = "") -> float:
    """The family's total (only its series with result="<result>" where given)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith((family + "{", family + " ")) and (not result or f'result="{result}"' in ln))


def state_cost(url: str) -> tuple[float, float]:
    """(bytes of trace state written, trace files ingested) so far, from the exporter's counters."""
    return (scrape_traces(url, "inference_profiler_state_written_bytes_total"),
            scrape_traces(url, "inference_profiler_trace_files_total"))


def state_bytes_per_file(before: tuple[float, float], after: tuple[float, float]) -> float:
    """State bytes written per file ingested between two state_cost() readings (0: no file)."""
    files = after[1] - before[1]
    return (after[0] - before[0]) / files if files else 0.0


def file_bytes_written(pid: int) -> int:
    """Bytes the process wrote to files so far (wchar of /proc/PID/io: write(2) and friends, not
    sends on sockets): its state and its log. Comparable across exporter versions, which the
    state counters (new with the journal) are not."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def pace_args(args: argparse.Namespace) -> list[str]:
    """serve's --otlp-pace-seconds when --otlp-pace is given (an exporter before it has no such flag)."""
    return [] if args.otlp_pace is None else ["--otlp-pace-seconds", f"{args.otlp_pace:g}"]


def write_result(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def exporter_line(exp: dict[str, float], cpu_digits: int) -> str:
    return (f"exporter: CPU {exp['cpu_percent']:.{cpu_digits}f} % of a core, RSS {exp['rss_start_mb']:.1f} MB at "
            f"start, {exp['rss_end_mb']:.1f} MB at end (max {exp['rss_max_mb']:.1f})")


def wait_ready(exporter: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until the exporter's /readyz answers (30 s at most); its log's tail if it exits first."""
    for _ in range(300):
        if exporter.poll() is not None:
            raise SystemExit(f"exporter exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/readyz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)


def start_prometheus(work: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    cfg = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "5s", "evaluation_interval": "5s"}
    cfg["scrape_configs"][0]["scrape_timeout"] = "5s"
    cfg["scrape_configs"][0]["static_configs"][0]["targets"] = [target]
    cfg["rule_files"] = [str(ROOT / "prometheus" / "rules" / "*.rules.yml")]
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(["prometheus", f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_logged(log: Path, lines: tuple[str, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if any(ln in text for ln in lines):
            print(next(ln for ln in text.splitlines() if any(w in ln for w in lines)).strip(), flush=True)
            return
        time.sleep(0.5)
    sys.exit(f"the exporter did not log any of {lines} within {timeout:g} s")


class Usage:
    """CPU seconds and RSS of a process and its children (Triton's python backend stubs)
    between two points in time."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.procs = [self.proc, *self.proc.children(recursive=True)]
        self._cpu_seen: dict[int, float] = {}  # a child that ends (a compile child) keeps its last CPU
        self.t0 = time.monotonic()
        self.cpu0 = self._cpu()
        self.rss0 = self._rss()
        self.rss_max = self.rss0

    def _cpu(self) -> float:
        for p in self.procs:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            self._cpu_seen[p.pid] = t.user + t.system
        return float(sum(self._cpu_seen.values()))

    def _rss(self) -> int:
        total = 0
        for p in self.procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def sample(self) -> None:
        self.rss_max = max(self.rss_max, self._rss())

    def result(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        return {"cpu_percent": 100 * (self._cpu() - self.cpu0) / wall, "processes": len(self.procs),
                "rss_start_mb": self.rss0 / 2**20, "rss_end_mb": self._rss() / 2**20,
                "rss_max_mb": self.rss_max / 2**20, "seconds": wall}


def otlp_soak(args: argparse.Namespace) -> int:
    import http.client

    from tests.otlp_payloads import T0, export_request, request_spans, to_json

    work = Path(tempfile.mkdtemp(prefix="soak-otlp-"))
    port, otlp_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    exporter: subprocess.Popen[bytes] | None = None
    per_post = 4  # requests per POST: 12 spans (InferRequest, model and compute span each)
    try:
        with open(work / "exporter.log", "wb") as log:
            exporter = subprocess.Popen(
                [args.exporter, "serve", "--listen", f"127.0.0.1:{port}", "--otlp-listen", f"127.0.0.1:{otlp_port}",
                 "--triton", "none", "--ebpf", "off", "--state-dir", str(work / "state"), *pace_args(args)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(exporter, url, work / "exporter.log")
        print(f"work dir {work}; OTLP at 127.0.0.1:{otlp_port}; {args.rate:g} POST/s of {per_post * 3} spans for "
              f"{args.duration:g} s on one connection, pausing {args.otlp_pause:g} s every {args.otlp_pause_every:g} s",
              flush=True)
        use = Usage(exporter.pid)
        conn = http.client.HTTPConnection("127.0.0.1", otlp_port, timeout=30)
        posts = cuts = not_ok = requests = 0
        t = T0
        start = time.monotonic()
        end, next_pause, next_report = start + args.duration, start + args.otlp_pause_every, start + 30
        next_post = start
        while time.monotonic() < end:
            spans = []
            for i in range(per_post):
                t += 10**6
                spans += request_spans(t, protocol=("http", "grpc")[i % 2], request_id=f"s{requests + i}")
            body = to_json(export_request(spans))
            for _attempt in range(2):
                try:
                    conn.request("POST", "/v1/traces", body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    break
                except (http.client.HTTPException, OSError):
                    cuts += 1  # the exporter closed our connection: reopen, resend (a duplicate if it counted)
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", otlp_port, timeout=30)
            posts += 1
            requests += per_post
            not_ok += r.status != 200
            now = time.monotonic()
            if now >= next_pause:
                time.sleep(min(args.otlp_pause, max(0.0, end - now)))
                next_pause = time.monotonic() + args.otlp_pause_every
                next_post = time.monotonic()
            else:
                next_post += per_post / args.rate  # --rate is requests/s: a POST carries per_post of them
                time.sleep(max(0.0, next_post - now))
            if now >= next_report:
                use.sample()
                next_report = now + 30
                print(f"  {now - start:6.0f} s: {posts} POSTs, {cuts} connections cut, exporter RSS "
                      f"{use.rss_max / 2**20:.1f} MB", flush=True)
        conn.close()
        use.sample()
        exp = use.result()
        counted = scrape_traces(url)
        answered = scrape_traces(url, "inference_profiler_otlp_requests_total")
        ok = counted == requests and cuts == 0 and not_ok == 0 and answered == posts
        result = {"mode": "otlp", "duration_s": args.duration, "posts": posts, "requests": requests,
                  "spans": requests * 3, "connections_cut": cuts, "answers_not_200": not_ok,
                  "otlp_requests_counted": answered, "traces_counted": counted, "exporter": exp}
        write_result(args.out, result)
        print(f"\n{posts} POSTs ({requests} requests, {requests * 3} spans) on one connection in "
              f"{exp['seconds']:.0f} s; connections cut by the exporter: {cuts}; answers other than 200: {not_ok}")
        print(exporter_line(exp, cpu_digits=2))
        print(f"counted:  {answered:.0f} OTLP requests, {counted:.0f} traces for {requests} requests: "
              f"{'EQUAL' if ok else 'DIFFERENT'}")
        print(f"written {args.out}")
        return 0 if ok else 1
    finally:
        if exporter is not None and exporter.poll() is None:
            exporter.send_signal(signal.SIGTERM)
            try:
                exporter.wait(20)
            except subprocess.TimeoutExpired:
                exporter.kill()
        if os.environ.get("SOAK_KEEP") is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    ap.add_argument("--rate", type=float, default=300.0, help="requests per second in total (default 300)")
    ap.add_argument("--concurrency", type=int, default=8, help="client threads")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds of traffic before measuring")
    ap.add_argument("--ebpf", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--wire-join", default="off", choices=("auto", "on", "off"),
                    help="join traced requests to eBPF socket turns (serve --wire-join, default off as there); "
                         "a run with it on against one with it off gives the joiner's CPU and memory")
    ap.add_argument("--no-prometheus", action="store_true", help="do not run a Prometheus scraping the exporter")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak.json")
    ap.add_argument("--exporter", default=str(ROOT / ".venv" / "bin" / "inference-profiler"),
                    help="the inference-profiler to soak (another checkout's, for a before/after)")
    ap.add_argument("--no-retention", action="store_true",
                    help="keep ingested trace files (for an exporter from before --trace-delete-ingested)")
    ap.add_argument("--otlp", action="store_true", help="OTLP mode: one keep-alive client posting Triton-shaped spans")
    ap.add_argument("--otlp-triton", action="store_true",
                    help="Triton's OpenTelemetry tracing posts to the exporter's OTLP listener (no trace file)")
    ap.add_argument("--otlp-bsp-delay", type=int, default=None,
                    help="--otlp-triton: Triton's bsp_schedule_delay in ms (default: Triton's own)")
    ap.add_argument("--otlp-pace", type=float, default=None,
                    help="serve --otlp-pace-seconds in the OTLP modes (default: the exporter's own)")
    ap.add_argument("--otlp-pause", type=float, default=55.0, help="OTLP mode: seconds the connection stays idle")
    ap.add_argument("--otlp-pause-every", type=float, default=120.0, help="OTLP mode: seconds between pauses")
    args = ap.parse_args()
    if args.otlp:
        return otlp_soak(args)

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    otlp_port = free_port()
    if args.otlp_triton:  # Triton posts its spans to the exporter's OTLP listener
        otel = ["--trace-config", "mode=opentelemetry", "--trace-config", "rate=1", "--trace-config", "level=TIMESTAMPS",
                "--trace-config", f"opentelemetry,url=http://127.0.0.1:{otlp_port}/v1/traces"]
        if args.otlp_bsp_delay is not None:
            otel += ["--trace-config", f"opentelemetry,bsp_schedule_delay={args.otlp_bsp_delay}"]
        triton = TritonServer(copy_model_repository(work), work / "triton", extra_args=otel)
        traces_from = ["--otlp-listen", f"127.0.0.1:{otlp_port}", *pace_args(args)]
    else:
        triton = TritonServer(copy_model_repository(work), work / "triton", trace_file=work / "traces" / "trace.json",
                              log_frequency=1000, trace_rate=1)
        traces_from = ["--trace-file", str(triton.trace_file), *([] if args.no_retention else ["--trace-delete-ingested"])]
    exporter: subprocess.Popen[bytes] | None = None
    prom: subprocess.Popen[bytes] | None = None
    driver: TrafficDriver | None = None
    try:
        triton.start()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(work / "exporter.log", "wb") as log:
            exporter = subprocess.Popen(
                [args.exporter, "serve", "--listen", f"127.0.0.1:{port}",
                 *traces_from, "--state-dir", str(work / "state"),
                 "--triton", triton.http_url, "--triton-metrics-url", triton.metrics_url,
                 "--ebpf", args.ebpf, "--ebpf-port", str(triton.http_port), "--ebpf-port", str(triton.grpc_port),
                 "--wire-join", args.wire_join, "--wire-http-port", str(triton.http_port),
                 "--wire-grpc-port", str(triton.grpc_port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(exporter, url, work / "exporter.log")
        joining = args.wire_join != "off" and args.ebpf != "off"
        if joining:  # its program compiles in the background (auto: or says why not): measure once it runs
            wait_logged(work / "exporter.log", ("socket join on", "socket join off"), 180.0)
        if not args.no_prometheus:
            prom, prom_url = start_prometheus(work, f"127.0.0.1:{port}")
            print(f"prometheus at {prom_url}")
        print(f"work dir {work}; exporter at {url}; traffic {args.rate:g} req/s for {args.duration:g} s "
              f"after {args.warmup:g} s warm-up", flush=True)

        driver = TrafficDriver(triton.http_address, triton.grpc_address, rate=args.rate,
                               models=(MODEL, ENSEMBLE), concurrency=args.concurrency).start()
        time.sleep(args.warmup)
        assert triton.pid is not None
        exp_use, tri_use = Usage(exporter.pid), Usage(triton.pid)
        sent0 = sum(driver.counts.succeeded.values())
        state0 = state_cost(url)
        wchar0 = file_bytes_written(exporter.pid)
        end = time.monotonic() + args.duration
        disk_max = 0.0  # bytes of trace files on disk: retention keeps them bounded
        sent_before, stalled = -1, 0
        while time.monotonic() < end:
            time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            exp_use.sample()
            tri_use.sample()
            c = driver.counts
            stalled = stalled + 1 if sum(c.succeeded.values()) == sent_before else 0
            sent_before = sum(c.succeeded.values())
            if stalled >= 2:  # Triton 2.51 sometimes dies in its tracing (heap corruption), hung or gone
                tail = triton.log_path.read_text(errors="replace").splitlines()[-3:]
                triton.stop(5.0)
                raise SystemExit("Triton stopped serving (no request succeeded for 20 s); its log ends: "
                                 + " | ".join(tail))
            disk = scrape_traces(url, "inference_profiler_trace_files_bytes")
            disk_max = max(disk_max, disk)
            print(f"  {time.monotonic() - exp_use.t0:6.0f} s: sent {sum(c.sent.values())}, "
                  f"failed {sum(c.failed.values())}, exporter RSS {exp_use.rss_max / 2**20:.1f} MB, "
                  f"trace files {disk / 2**20:.1f} MB", flush=True)
        exp, tri = exp_use.result(), tri_use.result()
        counts = driver.stop()
        driver = None
        sent = sum(counts.succeeded.values())
        achieved = (sent - sent0) / exp["seconds"]
        ensemble = sum(n for (_, m), n in counts.succeeded.items() if m == ENSEMBLE)
        expected = sent + ensemble

        # every trace must reach the exporter: flush Triton's pending traces until the count settles
        deadline, counted, settled = time.monotonic() + 120, 0.0, 0
        while time.monotonic() < deadline:
            if not args.otlp_triton:  # Triton's span processor exports on its own schedule
                triton.flush_traces()
            before, counted = counted, scrape_traces(url)
            if counted >= expected:
                break
            settled = settled + 1 if counted == before else 0
            if args.otlp_triton and settled >= 15:  # Triton dropped the rest (see dropped_spans)
                break
            time.sleep(1.0)
        failed = sum(counts.failed.values())
        state1 = state_cost(url)
        state_per_file = state_bytes_per_file(state0, state1)
        files = state1[1] - state0[1]
        wchar_per_file = (file_bytes_written(exporter.pid) - wchar0) / files if files else 0.0
        joins = {r: scrape_traces(url, "inference_profiler_socket_joins_total", r)
                 for r in ("joined", "ambiguous", "no_socket_event", "unsupported")}
        posts = scrape_traces(url, "inference_profiler_otlp_requests_total")
        refused = {r: n for r in ("malformed", "too_large", "throttled", "failed")
                   if (n := scrape_traces(url, "inference_profiler_otlp_requests_total", r))}
        # Triton's batch span processor logs one line per span it drops with its queue full
        dropped = triton.log_path.read_text(errors="replace").count("queue is full") if args.otlp_triton else 0
        spans = scrape_traces(url, "inference_profiler_otlp_spans_total", "accepted")
        result: dict[str, Any] = {
            "traces_from": "otlp" if args.otlp_triton else "file", "otlp_posts": posts, "otlp_spans": spans,
            "otlp_pace": args.otlp_pace, "otlp_requests_refused": refused,
            "triton_dropped_spans": dropped,
            "wire_join": args.wire_join, "socket_joins": joins,
            "duration_s": args.duration, "target_rate": args.rate, "achieved_rate": achieved,
            "requests_succeeded": sent, "requests_failed": failed, "ensemble_requests": ensemble,
            "traces_expected": expected, "traces_counted": counted, "exporter": exp, "triton": tri,
            "ratio_cpu_exporter_to_triton": exp["cpu_percent"] / tri["cpu_percent"],
            "ratio_rss_end_to_start_exporter": exp["rss_end_mb"] / exp["rss_start_mb"],
            "trace_files_bytes_max": disk_max,
            "state_bytes_per_ingested_file": state_per_file, "trace_files_ingested": files,
            "file_bytes_written_per_ingested_file": wchar_per_file,
        }
        write_result(args.out, result)
        print(f"\nmeasured {exp['seconds']:.0f} s at {achieved:.1f} req/s (target {args.rate:g}); "
              f"{sent} requests ok, {failed} failed")
        print(exporter_line(exp, cpu_digits=1))
        print(f"triton:   CPU {tri['cpu_percent']:.1f} % of a core ({tri['processes']:.0f} processes), RSS {tri['rss_start_mb']:.1f} -> "
              f"{tri['rss_end_mb']:.1f} MB")
        print(f"ratios:   exporter/Triton CPU {result['ratio_cpu_exporter_to_triton']:.3f}, "
              f"exporter RSS end/start {result['ratio_rss_end_to_start_exporter']:.3f}")
        ok = counted == expected
        print(f"traces:   counted {counted:.0f}, expected {expected} ({sent} requests + {ensemble} ensemble "
              f"children): {'EQUAL' if ok else 'DIFFERENT'}")
        if args.otlp_triton:
            print(f"otlp:     Triton posted {posts:.0f} times, {spans:.0f} spans accepted "
                  f"({spans / max(posts, 1):.1f} spans a POST); Triton dropped {dropped} spans (its queue full); "
                  f"POSTs refused by the exporter: {refused or 'none'}")
        print(f"disk:     trace files at most {disk_max / 2**20:.1f} MB on disk (sampled every 10 s)")
        print(f"state:    {state_per_file / 1024:.1f} KiB written per ingested trace file "
              f"({files:.0f} files; all file writes of the exporter, log included: "
              f"{wchar_per_file / 1024:.1f} KiB per file)")
        if joining:
            print("joins:    " + ", ".join(f"{r} {n:.0f}" for r, n in joins.items()))
        print(f"written {args.out}")
        return 0 if ok else 1
    finally:
        if driver is not None:
            driver.stop()
        for p in (prom, exporter):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        triton.stop()
        if os.environ.get("SOAK_KEEP") is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
