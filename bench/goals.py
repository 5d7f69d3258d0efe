#!/usr/bin/env python3
"""Summarises the outputs of bench/goals.sh into one table: each goal, what this run measured
(median and spread, per workload), the peers measured in the same run, and whether the goal
is met.

    bench/goals.py DIR STEADY_SECS

DIR holds run.md, failover.md, kills.md, steady.md (the benchmarks' stdout) and
ticker10s.json (`log inspect --json` of a 10 s ticker recording)."""

import json
import os
import re
import sys

NUM = re.compile(r"-?\d+(?:\.\d+)?")


def tables(path):
    """Every markdown table in the file, as (header cells, rows of cells)."""
    out, cur = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("|"):
                cur = None
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cur is None:
                cur = (cells, [])
                out.append(cur)
            elif not all(set(c) <= set("-: ") for c in cells):
                cur[1].append(cells)
    return out


def column(path, header_starts, col, row_label):
    """The cell of the table whose first header is `header_starts` and which has a column
    named `col`, in the row whose first cell starts with `row_label`."""
    for head, rows in tables(path):
        if not head[0].startswith(header_starts) or col not in head:
            continue
        i = head.index(col)
        for r in rows:
            if r[0].startswith(row_label) and i < len(r):
                return r[i]
    raise SystemExit(f"bench/goals.py: no '{col}' for '{row_label}' in {path}")


def median(cell):
    """'1.264 (1.178–1.349)' -> 1.264; '**652 (651–702)**' -> 652."""
    m = NUM.search(cell.replace(",", ""))
    if not m:
        raise SystemExit(f"bench/goals.py: no number in '{cell}'")
    return float(m.group())


def main():
    d, steady_secs = sys.argv[1], int(sys.argv[2])
    run, fo = os.path.join(d, "run.md"), os.path.join(d, "failover.md")
    kills, steady = os.path.join(d, "kills.md"), os.path.join(d, "steady.md")
    rows = []

    def add(figure, goal, cells, met, peers=""):
        rows.append((figure, goal, cells, peers, "yes" if met else "**no**"))

    first = column(kills, "", "first output", "p99")
    spread = ", ".join(f"{q} {column(kills, '', 'first output', q)}" for q in ("p50", "max"))
    add("SIGKILL → first released output, p99 (ms; `kills.py`)", "≤ 100",
        f"{first} ({spread})", median(first) <= 100,
        "VMware FT: a timeout of seconds; Remus: ~1 s (published)")

    def each(path, col, names, good):
        """One cell per workload, and whether every one meets the goal."""
        cells = [(w, column(path, "workload", col, w)) for w in names]
        return ("<br>".join(f"{w}: {c}" for w, c in cells),
                all(good(median(c)) for _, c in cells))

    def peers(col, names):
        return "<br>".join(f"{w}: {column(run, 'workload', col, w)}" for w in names)

    workloads = ["compute (CPL0)", "compute user (CPL3)", "ticker", "exits n=200000"]
    cells, ok = each(run, "replay / record", workloads, lambda v: v <= 1.0)
    add("replay ÷ recording (`run.sh`)", "≤ 1.00, every workload", cells, ok,
        "QEMU TCG rr replay ÷ record: " + peers("QEMU rr replay / record", workloads))

    cells, ok = each(fo, "progress ratio alone / with backup",
                     ["compute (CPL0)", "compute user (CPL3)"], lambda v: v >= 0.97)
    add("primary's progress with a backup ÷ alone (`failover.sh`)", "≥ 0.97, every workload",
        cells, ok, "VMware FT: 0.94–0.99 of native (published)")

    cells, ok = each(fo, "replay lag p99", ["compute (CPL0)", "compute user (CPL3)", "ticker"],
                     lambda v: v < 20)
    add("replay lag p99 (ms; `failover.sh`)", "< 20, every workload", cells, ok)

    cells, ok = each(run, "record / run", workloads, lambda v: v <= 1.03)
    add("recording ÷ plain run (`run.sh`)", "≤ 1.03, every workload", cells, ok,
        "QEMU TCG rr record ÷ TCG: " + peers("QEMU rr record / TCG", workloads))

    with open(os.path.join(d, "ticker10s.json"), encoding="utf-8") as f:
        t = json.load(f)
    mbit = t["bytes"] * 8 / (t["duration_ns"] / 1e9) / 1e6
    short = column(run, "workload", "bytes/s", "ticker")
    add("log rate, ticker at 100 Hz (Mbit/s)", "≤ 0.1",
        f"10 s run: {mbit:.3f} ({t['bytes']} bytes, {t['entries']} entries)<br>"
        f"`run.sh`'s 0.2 s run (header and end included): {median(short) * 8 / 1e6:.3f}",
        mbit <= 0.1,
        f"QEMU rr file of the short ticker: {column(run, 'workload', 'QEMU rr file (bytes)', 'ticker')} "
        f"bytes against our {column(run, 'workload', 'our log (bytes)', 'ticker')}")

    failures = int(median(column(steady, "view changes", "backup replay failures", "")))
    changes = int(median(column(steady, "view changes", "view changes", "")))
    rewound = int(median(column(steady, "view changes", "overshoots taken back by a checkpoint", "")))
    add(f"live backup at 1000 Hz: replay failures (a new state transfer each) in "
        f"{steady_secs // 60} min (`steady.py`)",
        "0 in 10 min (an overshoot recovers without a state transfer)",
        f"{failures} failures; {rewound} overshoots taken back by a checkpoint "
        f"(view changes: {changes})", failures == 0 and steady_secs >= 600)

    print("| figure | goal | understudy (median (min–max)) | peers (same run, or published) | met |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if steady_secs < 600:
        print()
        print(f"(--quick: the 1000 Hz run lasted {steady_secs} s, too short to meet its goal.)")


if __name__ == "__main__":
    main()
