#!/usr/bin/env python3
"""Turns bench/run.sh's raw numbers into the markdown tables of docs/benchmarks.md.

usage: summarize.py WORKDIR GUEST_ELF

WORKDIR holds meta.tsv (key, value), raw.tsv (key, repetition, value) and out/ (every run's
console output). Cells are "median (min–max)" over the repetitions; ratios are formed per
repetition (the two runs of a pair ran back to back) and then summarized.
"""
import hashlib
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

work, elf = Path(sys.argv[1]), Path(sys.argv[2])
meta = dict(l.split("\t", 1) for l in (work / "meta.tsv").read_text().splitlines() if l)
raw = defaultdict(dict)  # key -> {rep: value}
for line in (work / "raw.tsv").read_text().splitlines():
    key, rep, val = line.split("\t")
    raw[key][int(rep)] = val
reps = int(meta["reps"])
N = int(meta["exits_n"])

WORKLOADS = ["compute", "compute-user", "ticker", "exits0", "exitsN"]
LABEL = {
    "compute": "compute (CPL0)",
    "compute-user": "compute user (CPL3)",
    "ticker": "ticker",
    "exits0": "exits n=0 (boot only)",
    "exitsN": f"exits n={N}",
}


def nums(key):
    return [float(v) for _, v in sorted(raw[key].items())]


def paired(a, b, f):
    """f(a_rep, b_rep) for every repetition that has both."""
    return [f(float(raw[a][r]), float(raw[b][r])) for r in sorted(raw[a]) if r in raw[b]]


def med(xs):
    return statistics.median(xs)


def cell(xs, fmt="{:.3f}"):
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def si(x):
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k" if x >= 1e3 else f"{x:.0f}"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# The built-in guest embedded in the binary must be the ELF QEMU boots, or the comparison is off.
elf_sha = hashlib.sha256(elf.read_bytes()).hexdigest()
images = {v for w in WORKLOADS for v in raw[f"{w}.log.image"].values()}
if images != {elf_sha}:
    sys.exit(f"summarize: guest images differ: logs {images}, ELF {elf_sha}")

p = []
p.append(f"Host: {meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}, "
         f"KVM module `{meta['kvm_module']}`; {meta['qemu']}. understudy {meta['commit']}. "
         f"{reps} repetitions, {meta['date']}. Cells: median (min–max).")
p.append("")

# (a) + (c): record overhead, replay speed.
p.append("#### Record overhead and replay speed (wall seconds, whole process)")
p.append("")
rows = []
for w in ["compute", "compute-user", "ticker", "exitsN"]:
    rows.append([
        LABEL[w],
        cell(nums(f"{w}.run.s")),
        cell(nums(f"{w}.record.s")),
        cell(paired(f"{w}.record.s", f"{w}.run.s", lambda a, b: a / b)),
        cell(nums(f"{w}.replay.s")),
        cell(paired(f"{w}.replay.s", f"{w}.record.s", lambda a, b: a / b)),
    ])
p.append(table(["workload", "run (s)", "run --record (s)", "record / run",
                "replay (s)", "replay / record"], rows))
p.append("")

# (b): log rate.
p.append("#### Log size and rate (from `log inspect --json`; rate = bytes / recorded duration)")
p.append("")
rows = []
for w in ["compute", "compute-user", "ticker", "exitsN"]:
    dur = [d / 1e9 for d in nums(f"{w}.log.duration_ns")]
    rows.append([
        LABEL[w],
        cell(dur),
        f"{med(nums(f'{w}.log.bytes')):.0f}",
        cell(paired(f"{w}.log.bytes", f"{w}.log.duration_ns", lambda b, d: b / (d / 1e9)), "{:.0f}"),
        f"{med(nums(f'{w}.log.entries')):.0f}",
        cell(paired(f"{w}.log.entries", f"{w}.log.duration_ns", lambda e, d: e / (d / 1e9)), "{:.0f}"),
        cell(nums(f"{w}.log.precise"), "{:.0f}"),
        cell(nums(f"{w}.log.at_exit"), "{:.0f}"),
    ])
p.append(table(["workload", "duration (s)", "log bytes (median)", "bytes/s", "entries (median)",
                "entries/s", "interrupts precise", "interrupts at exit"], rows))
p.append("")

# (d): cost per exit.
p.append(f"#### Cost per port-I/O exit (µs; `exits n={N}` minus `exits n=0`, divided by {N})")
p.append("")


def per_exit(variant):
    return paired(f"exitsN.{variant}.s", f"exits0.{variant}.s", lambda a, b: (a - b) * 1e6 / N)


bare = nums("bare.sync.us")
rows = [
    ["bare KVM loop (vmm/benches/exit_cost.rs), no register sync", cell(nums("bare.plain.us"), "{:.2f}"), "–"],
    ["bare KVM loop, sync regs REGS+SREGS+EVENTS (as understudy)", cell(bare, "{:.2f}"), "1.00"],
]
for variant, label in [("run", "understudy run"), ("record", "understudy run --record"),
                       ("replay", "understudy replay"), ("qkvm", "QEMU KVM, -M pc"),
                       ("qmicrovm", "QEMU KVM, -M microvm")]:
    # (QEMU TCG handles port I/O inside its own process: well under a microsecond per `out`,
    # lost in the noise of its boot time, so it has no row here.)
    xs = per_exit(variant)
    rows.append([label, cell(xs, "{:.2f}"), f"{med(xs) / med(bare):.2f}" if xs else "–"])
p.append(table(["path", "µs per exit", "÷ bare (sync regs)"], rows))
p.append("")

# (e): peers.
p.append("#### Side by side with QEMU, same guest image (wall seconds, whole process)")
p.append("")
boot = nums("exits0.qkvm.s")
rows = []
for w in WORKLOADS:
    rows.append([
        LABEL[w],
        cell(nums(f"{w}.run.s")),
        cell(nums(f"{w}.qkvm.s")),
        f"{med(nums(f'{w}.qkvm.s')) - med(boot):.3f}",
        cell(nums(f"{w}.record.s")),
        cell(nums(f"{w}.replay.s")),
        cell(nums(f"{w}.qtcg.s")),
        cell(nums(f"{w}.qrr_record.s")),
        cell(nums(f"{w}.qrr_replay.s")),
        f"{med(nums(f'{w}.log.bytes')):.0f}",
        f"{med(nums(f'{w}.qrr.bytes')):.0f}",
    ])
p.append(table(["workload", "understudy run", "QEMU KVM", "QEMU KVM − its n=0 run",
                "understudy record", "understudy replay", "QEMU TCG", "QEMU rr record",
                "QEMU rr replay", "our log (bytes)", "QEMU rr file (bytes)"], rows))
p.append("")
rows = []
for w in WORKLOADS:
    rows.append([
        LABEL[w],
        cell(paired(f"{w}.qrr_record.s", f"{w}.qtcg.s", lambda a, b: a / b), "{:.2f}"),
        cell(paired(f"{w}.qrr_replay.s", f"{w}.qrr_record.s", lambda a, b: a / b), "{:.2f}"),
        cell(paired(f"{w}.record.s", f"{w}.run.s", lambda a, b: a / b), "{:.2f}"),
        cell(paired(f"{w}.replay.s", f"{w}.record.s", lambda a, b: a / b), "{:.2f}"),
    ])
p.append(table(["workload", "QEMU rr record / TCG", "QEMU rr replay / record",
                "understudy record / run", "understudy replay / record"], rows))
p.append("")

# Console output: ours vs QEMU's (first repetition).
DONE = re.compile(r"^\S+: done")


def console(path):
    text = path.read_text(errors="replace").replace("\r", "")
    i = text.find("understudy guest:")  # QEMU prints SeaBIOS's banner first
    lines = text[i:].splitlines() if i >= 0 else text.splitlines()
    done = next((l for l in reversed(lines) if DONE.match(l)), "(none)")
    return lines, done


def shape(line):
    return re.sub(r"0x[0-9a-f]+|\d+", "N", line)


p.append("#### Guest console, understudy vs QEMU (first repetition)")
p.append("")
rows = []
for w in WORKLOADS:
    ours, od = console(work / "out" / f"{w}.0.run.txt")
    qk, qd = console(work / "out" / f"{w}.0.qkvm.txt")
    qt, _ = console(work / "out" / f"{w}.0.qrr_record.txt")
    same_replay = all(v == "1" for v in raw[f"{w}.replay.console_same"].values())
    same_qrr = all(v == "1" for v in raw[f"{w}.qrr_replay.console_same"].values())
    rows.append([
        LABEL[w], len(ours), len(qk), len(qt), f"`{od}`", f"`{qd}`",
        "yes" if shape(od) == shape(qd) else "no",
        f"{'yes' if same_replay else 'NO'} / {'yes' if same_qrr else 'NO'}",
    ])
p.append(table(["workload", "lines (ours)", "lines (QEMU KVM)", "lines (QEMU TCG rr)",
                "done line (ours)", "done line (QEMU KVM)", "same format",
                "replay console = recorded (ours / QEMU rr)"], rows))
print("\n".join(p))
