#!/usr/bin/env python3
"""Failover time over many kills, in one cluster: a viewserver and three `understudy node`s
running the ticker guest; KILLS times, once the view has an acknowledged primary and a ready
backup, SIGKILL the primary and time, from the kill (ms): the backup asking to be promoted
(`primary_lost`), the view service naming it primary (`view_changed`), it going live
(`going_live`), and its first line on stdout (the first released output). A fresh node takes
the killed one's place each round. Prints a markdown table of percentiles on stdout and how
many promotions did not come on the backup's word; progress on stderr.

    bench/kills.py                 # KILLS=100, ticker at 100 Hz, 100 ms pings
    KILLS=20 HZ=1000 bench/kills.py

Environment: KILLS (100), HZ (guest ticker rate, 100), PING_MS (100), BIN (the understudy
binary, default target/release/understudy; build it first with `cargo build --release`),
SVG (a file to draw every failover's timeline into: one bar per kill, sorted by its time to
the first output, split at the backup's request, the view change and going live).
Every process is started by this script and killed by PID at the end; work files go to a
temporary directory that is removed unless BENCH_KEEP=1.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

KILLS = int(os.environ.get("KILLS", "100"))
HZ = int(os.environ.get("HZ", "100"))
PING_MS = int(os.environ.get("PING_MS", "100"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release", "understudy"))
WAIT = 60.0


def log(msg):
    print(f"bench/{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr, flush=True)


def unix_ms():
    return time.time() * 1e3


def events(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def wait_until(what, pred, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise SystemExit(f"bench/kills.py: timed out waiting for {what}")


class Proc:
    """A child process whose stdout lines are stamped (time.time, ms) as they arrive."""

    def __init__(self, args, name, work):
        self.name = name
        self.events = os.path.join(work, f"{name}.events")
        self.lines = []
        self.out = []
        self.p = subprocess.Popen(
            args + ["--events", self.events],
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(work, f"{name}.log"), "w"),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(unix_ms())
            self.out.append(line)

    def first_line_after(self, t):
        return next((at for at in list(self.lines) if at > t), None)

    def named(self, name):
        return [e for e in events(self.events) if e.get("event") == name]

    def kill(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()


def need_binary():
    """Exits with a clear message if the understudy binary is not built."""
    if not os.access(BIN, os.X_OK):
        raise SystemExit(f"bench/{os.path.basename(sys.argv[0])}: {BIN} is missing: "
                         "run `cargo build --release` first")


def ticker_node(addr, name, work, hz, more=()):
    """An `understudy node` running the ticker at `hz` (for ever, in practice)."""
    return Proc([BIN, "node", "--viewserver", addr, "--listen", "127.0.0.1:0",
                 "--ping-interval-ms", str(PING_MS), "--guest", "ticker",
                 "--guest-arg", f"hz={hz}", "--guest-arg", "ticks=4000000000", *more],
                name, work)


def start_viewserver(work):
    """A viewserver keeping its state under `work`; (its process, its address)."""
    vs = Proc([BIN, "viewserver", "--listen", "127.0.0.1:0", "--data-dir",
               os.path.join(work, "vs.data"), "--ping-interval-ms", str(PING_MS)], "vs", work)
    addr = wait_until("the viewserver's address",
                      lambda: next((e["addr"] for e in events(vs.events)
                                    if e.get("event") == "listening"), None))
    return vs, addr


PHASES = (("kill → backup asks", "#d62728"), ("→ view changes", "#ff7f0e"),
          ("→ new primary live", "#2ca02c"), ("→ first output", "#1f77b4"))


def draw(path, rows, title):
    """Every kill's timeline as one horizontal bar, in ms after the kill."""
    rows = sorted(rows, key=lambda r: r[3])
    left, top, width, bar = 60, 50, 700, 4
    span = max(r[3] for r in rows) * 1.1
    x = lambda ms: left + width * max(0.0, ms) / span
    height = top + bar * len(rows) + 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
           f'height="{height}" font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="20" font-size="14">{title}</text>']
    for i, r in enumerate(rows):
        y = top + i * bar
        start = 0.0
        for (_, color), end in zip(PHASES, r):
            if end is None:
                continue
            out.append(f'<rect x="{x(start):.1f}" y="{y}" width="{max(0.5, x(end) - x(start)):.1f}" '
                       f'height="{bar - 1}" fill="{color}"/>')
            start = max(start, end)
    base = top + bar * len(rows)
    step = 5 if span <= 60 else 10 if span <= 150 else 50
    for t in range(0, int(span) + 1, step):
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{base}" '
                   f'stroke="#ccc" stroke-width="0.5"/>')
        out.append(f'<text x="{x(t):.1f}" y="{base + 15}" text-anchor="middle">{t}</text>')
    out.append(f'<text x="{left + width / 2}" y="{base + 32}" text-anchor="middle">'
               f'ms after the SIGKILL (one bar per kill, sorted)</text>')
    for k, (label, color) in enumerate(PHASES):
        lx = left + k * 175
        out.append(f'<rect x="{lx}" y="{base + 45}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 14}" y="{base + 54}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    need_binary()
    work = tempfile.mkdtemp(prefix="understudy-kills-")
    procs = []
    try:
        vs, addr = start_viewserver(work)
        procs.append(vs)
        nodes = {}
        serial = [0]

        def start_node():
            serial[0] += 1
            n = ticker_node(addr, f"n{serial[0]}", work, HZ)
            procs.append(n)
            name = wait_until(f"node n{serial[0]} to start",
                              lambda: next((e["name"] for e in events(n.events)
                                            if e.get("event") == "started"), None))
            nodes[name] = n

        for _ in range(3):
            start_node()
        rows = []
        by_ping = 0
        for k in range(KILLS):
            def ready():
                try:
                    out = subprocess.run([BIN, "view", "--viewserver", addr, "--json"],
                                         capture_output=True, text=True, timeout=5)
                    s = json.loads(out.stdout)
                except (ValueError, subprocess.TimeoutExpired):
                    return None
                ok = (s.get("acked") and s.get("backup_ready") and s.get("primary") in nodes
                      and s.get("backup") in nodes)
                return s if ok else None
            s = wait_until("an acknowledged view with a ready backup", ready)
            # Let the new backup's stream run a little, as a backup usually has.
            time.sleep(0.3)
            p, b = nodes[s["primary"]], nodes[s["backup"]]
            viewnum = s["viewnum"]
            t0 = unix_ms()
            p.kill()
            del nodes[s["primary"]]
            live = wait_until("the backup to go live",
                              lambda: next((e for e in b.named("going_live")
                                            if e["view"] > viewnum), None))
            first = wait_until("the new primary's first output",
                               lambda: b.first_line_after(t0))
            asked = next((e["t_unix_ms"] for e in b.named("primary_lost")
                          if e["view"] == viewnum), None)
            changed = next((e["t_unix_ms"] for e in vs.named("view_changed")
                            if e["view"]["viewnum"] == viewnum + 1), None)
            if asked is None:
                by_ping += 1
            rows.append((None if asked is None else asked - t0,
                         None if changed is None else changed - t0,
                         live["t_unix_ms"] - t0, first - t0))
            shown = ", ".join("-" if v is None else f"{v:.1f}" for v in rows[-1])
            log(f"kill {k + 1}/{KILLS}: asked, view, live, first output: {shown} ms")
            start_node()
    finally:
        for p in procs:
            p.kill()
        if os.environ.get("BENCH_KEEP") == "1":
            log(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def pct(i, q):
        vals = sorted(r[i] for r in rows if r[i] is not None)
        if not vals:
            return "-"
        return f"{max(0.0, vals[min(len(vals) - 1, int(q * len(vals)))]):.0f}"

    print(f"{len(rows)} SIGKILLs of the primary, ticker at {HZ} Hz, {PING_MS} ms pings; "
          f"ms after the kill")
    print()
    print("| | backup asks | view changes | new primary live | first output |")
    print("|---|---:|---:|---:|---:|")
    for label, q in (("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        print(f"| {label} | " + " | ".join(pct(i, q) for i in range(4)) + " |")
    print()
    print(f"Promotions without the backup's word (after missed pings): {by_ping} of {len(rows)}")
    if rows:
        print(f"Mean first output: {statistics.mean(r[3] for r in rows):.1f} ms "
              f"(the ticker prints every {1000 / HZ:.0f} ms)")
    if rows and os.environ.get("SVG"):
        draw(os.environ["SVG"], rows,
             f"{len(rows)} SIGKILLs of the primary: ticker at {HZ} Hz, {PING_MS} ms pings")
        log(f"timeline drawn in {os.environ['SVG']}")


if __name__ == "__main__":
    main()
