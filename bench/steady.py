#!/usr/bin/env python3
"""False failovers under load: a viewserver, a primary and a backup (ticker guest) run for SECS
seconds with HOGS busy processes competing for the CPUs; nobody is killed. Counts every view
change after the pair formed, how many came on the backup's word (`primary_lost`), the backup's
replay failures (each costs a new state transfer) and overshoots its checkpoints took back
(`replay_rewound`), and checks that what the primary released is its guest's console (one
history). Prints a short markdown summary on stdout; progress on stderr.

    bench/steady.py                       # SECS=600, HOGS=2, ticker at 100 Hz, 100 ms pings
    SECS=60 HOGS=0 bench/steady.py

Environment: SECS (600), HOGS (2: one per core here), HZ (100), PING_MS (100), BIN, SVG (a
file to draw the backup's replay lag over time into, from the primary's `lag` events: one
sample a second). Every process is started here and killed by PID at the end.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kills import (  # noqa: E402
    PING_MS, events, log, need_binary, start_viewserver, ticker_node, wait_until)

SECS = int(os.environ.get("SECS", "600"))
HOGS = int(os.environ.get("HOGS", "2"))
HZ = int(os.environ.get("HZ", "100"))


def draw_lag(path, samples, title):
    """The replay lag (ms, recorded guest time) against seconds since the pair formed."""
    left, top, width, height = 60, 40, 700, 260
    t_end = max(t for t, _ in samples) or 1.0
    top_ms = max(10.0, max(ms for _, ms in samples) * 1.1)
    x = lambda t: left + width * t / t_end
    y = lambda ms: top + height - height * ms / top_ms
    pts = " ".join(f"{x(t):.1f},{y(ms):.1f}" for t, ms in samples)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
           f'height="{top + height + 50}" font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="20" font-size="14">{title}</text>',
           f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1"/>']
    for k in range(6):
        ms = top_ms * k / 5
        out.append(f'<line x1="{left}" y1="{y(ms):.1f}" x2="{left + width}" y2="{y(ms):.1f}" '
                   f'stroke="#ccc" stroke-width="0.5"/>')
        out.append(f'<text x="{left - 5}" y="{y(ms) + 4:.1f}" text-anchor="end">{ms:.0f}</text>')
        t = t_end * k / 5
        out.append(f'<text x="{x(t):.1f}" y="{top + height + 15}" text-anchor="middle">{t:.0f}</text>')
    out.append(f'<text x="{left + width / 2}" y="{top + height + 35}" text-anchor="middle">'
               f's since the pair formed; the backup\'s replay lag in ms, sampled each second</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    need_binary()
    work = tempfile.mkdtemp(prefix="understudy-steady-")
    procs = []
    hogs = []
    try:
        vs, addr = start_viewserver(work)
        procs.append(vs)
        nodes = []
        for i in range(2):
            n = ticker_node(addr, f"n{i}", work, HZ,
                            ["--transcript", os.path.join(work, f"n{i}.transcript")])
            procs.append(n)
            nodes.append(n)
            time.sleep(0.5)
        # The pair formed: an acknowledged view with a ready backup.
        wait_until("the pair", lambda: any(e.get("event") == "state_installed"
                                           for n in nodes for e in events(n.events)))
        formed = max(e["view"]["viewnum"] for e in vs.named("view_changed"))
        for _ in range(HOGS):
            hogs.append(subprocess.Popen(["sh", "-c", "while :; do :; done"]))
        log(f"pair formed in view {formed}; {HOGS} CPU hogs for {SECS} s")
        time.sleep(SECS)
        changes = [e for e in vs.named("view_changed") if e["view"]["viewnum"] > formed]
        asked = sum(len(n.named("primary_lost")) for n in nodes)
        failed = sum(len(n.named("replay_failed")) for n in nodes)
        rewound = sum(len(n.named("replay_rewound")) for n in nodes)
        stepped = sum(len(n.named("stepped_down")) for n in nodes)
        lags = [e for n in nodes for e in n.named("lag") if e["view"] == formed]
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        for p in procs:
            p.kill()
    # One history: each node's released stdout is a stretch of the first primary's console
    # (the only primary, when nothing failed over).
    first = nodes[0]
    released = b"".join(first.out)
    with open(os.path.join(work, "n0.transcript"), "rb") as f:
        transcript = f.read()
    one_history = transcript.startswith(released)
    if os.environ.get("BENCH_KEEP") == "1":
        log(f"work files kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if lags:
        t0 = lags[0]["t_unix_ms"]
        ms = sorted(e["ms"] for e in lags)
        pct = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
        lag_line = (f"Replay lag, {len(ms)} samples (one a second): p50 {pct(0.5):.1f} ms, "
                    f"p99 {pct(0.99):.1f} ms, max {ms[-1]:.1f} ms")
        if os.environ.get("SVG"):
            draw_lag(os.environ["SVG"], [((e["t_unix_ms"] - t0) / 1e3, e["ms"]) for e in lags],
                     f"Replay lag: ticker at {HZ} Hz, {HOGS} CPU hogs, {SECS} s")
            log(f"lag drawn in {os.environ['SVG']}")
    else:
        lag_line = "Replay lag: no samples"
    print(f"{SECS} s, primary + backup, ticker at {HZ} Hz, {PING_MS} ms pings, {HOGS} CPU hogs")
    print()
    print("| view changes | on the backup's word | primaries stepped down | backup replay failures "
          "| overshoots taken back by a checkpoint | released bytes "
          "| first primary's output is its console |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {len(changes)} | {asked} | {stepped} | {failed} | {rewound} | {len(released)} | "
          f"{'yes' if one_history else 'NO'} |")
    print()
    print(lag_line)
    for e in changes:
        print(f"- view {e['view']['viewnum']}: primary {e['view']['primary']}, "
              f"backup {e['view']['backup'] or '(none)'}")


if __name__ == "__main__":
    main()
