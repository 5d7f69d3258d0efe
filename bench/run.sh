#!/usr/bin/env bash
# understudy benchmarks: record overhead, log rate, replay speed, cost per VM exit, and a
# side-by-side comparison with QEMU (KVM, and TCG with its own record/replay), all in one run
# so that every number in the tables saw the same machine state.
#
#   bench/run.sh [--quick]
#
# --quick: 2 repetitions instead of 5. Prints markdown tables for docs/benchmarks.md on stdout;
# progress, raw numbers and every run's console output go under a /tmp directory (named at the
# end). Any run that exits with an unexpected code fails the script instead of being timed.
# Environment: EXITS_N (port writes in the exits workload, default 200000), BENCH_TIMEOUT
# (seconds allowed per single run, default 300).
set -euo pipefail

REPS=5
case "${1:-}" in
    "") ;;
    --quick) REPS=2 ;;
    -h | --help)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: bench/run.sh [--quick]" >&2
        exit 2
        ;;
esac

EXITS_N=${EXITS_N:-200000}
TIMEOUT=${BENCH_TIMEOUT:-300}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/bench"
WORK=$(mktemp -d /tmp/understudy-bench.XXXXXX)
RAW="$WORK/raw.tsv"
OUT="$WORK/out"
mkdir -p "$WORK/bin" "$OUT" "$WORK/logs"
: >"$RAW"

say() { echo "bench: $*" >&2; }
die() {
    echo "bench: error: $*" >&2
    exit 1
}

# --- Build -------------------------------------------------------------------------------
say "building release (VMM + guest) and the bare exit-cost bench"
(cd "$ROOT" && cargo build --release) >&2 || die "cargo build --release failed"
bench_exe=$(cd "$ROOT" && cargo bench -p vmm --bench exit_cost --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "exit_cost" and m.get("executable"):
        print(m["executable"])') || die "building vmm/benches/exit_cost.rs failed"
[ -x "$bench_exe" ] || die "exit_cost bench executable not found"
# Private copies: others may rebuild target/ while the benchmark runs.
cp "$ROOT/target/release/understudy" "$WORK/bin/understudy"
# The image embedded in the binary, not guest/target/...: that file can be newer or older than
# what the binary boots, and the comparison needs the identical image.
"$WORK/bin/understudy" export-guest "$WORK/bin/guest.elf"
cp "$bench_exe" "$WORK/bin/exit_cost"
US="$WORK/bin/understudy"
ELF="$WORK/bin/guest.elf"

# --- QEMU --------------------------------------------------------------------------------
if ! command -v qemu-system-x86_64 >/dev/null; then
    say "installing QEMU (qemu-system-x86 only; Debian's qemu-utils conflicts with the installed one)"
    apt-get install -y --no-install-recommends qemu-system-x86 >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends qemu-system-x86 >&2; } ||
        die "cannot install qemu-system-x86"
fi
# -net none: no iPXE option ROM (it only adds boot time). The rest is what the guest needs:
# COM1 on stdout, isa-debug-exit at 0xf4 (exit status (code << 1) | 1).
QEMU_COMMON=(qemu-system-x86_64 -m 64 -nographic -no-reboot -serial stdio -monitor none
    -display none -net none -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$ELF")

# --- Host description --------------------------------------------------------------------
{
    printf 'cpu\t%s\n' "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    printf 'cores\t%s\n' "$(nproc)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'kvm_module\t%s\n' "$(for m in kvm_pvm kvm_intel kvm_amd; do [ -d /sys/module/$m ] && echo $m; done | paste -sd, -)"
    printf 'qemu\t%s\n' "$(qemu-system-x86_64 --version | head -1)"
    printf 'commit\t%s%s\n' "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    printf 'reps\t%s\n' "$REPS"
    printf 'exits_n\t%s\n' "$EXITS_N"
    printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
} >"$WORK/meta.tsv"

# --- Helpers -----------------------------------------------------------------------------
T=0
# timed EXPECTED_RC OUTFILE CMD...: runs CMD under `timeout`, stdout to OUTFILE, stderr to
# OUTFILE.err; sets T to the wall time in seconds. A different exit code (including 124 for a
# timeout) ends the whole benchmark.
timed() {
    local expect=$1 outfile=$2 t0 t1 rc=0
    shift 2
    t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$@" >"$outfile" 2>"$outfile.err" || rc=$?
    t1=$(date +%s.%N)
    if [ "$rc" != "$expect" ]; then
        echo "bench: run failed (exit $rc, expected $expect): $*" >&2
        tail -n 5 "$outfile" "$outfile.err" >&2 || true
        exit 1
    fi
    T=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
}
# put KEY REP VALUE
put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"; }

inspect_log() { # WORKLOAD REP LOGFILE
    local j
    j=$(timeout 60 "$US" log inspect "$3" --json) || die "log inspect $3 failed"
    python3 - "$1" "$2" "$j" >>"$RAW" <<'PY'
import json, sys
w, rep, d = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if not d["complete"]:
    sys.exit(f"bench: log for {w} is not complete")
for key, val in [("bytes", d["bytes"]), ("entries", d["entries"]),
                 ("duration_ns", d["duration_ns"]), ("precise", d["interrupts"]["precise"]),
                 ("at_exit", d["interrupts"]["at_exit"]), ("guest_exits", d.get("guest_exits", 0)),
                 ("image", "".join(f"{b:02x}" for b in d["header"]["guest_image_sha256"]))]:
    print(f"{w}.log.{key}\t{rep}\t{val}")
PY
}

# Our command lines and QEMU's -append strings for each workload; word splitting of these
# strings is intended (no argument contains spaces).
declare -A OURS=(
    [compute]="--guest compute"
    [compute-user]="--guest compute --guest-arg user"
    [ticker]="--guest ticker"
    [exits0]="--guest $ELF --guest-arg exits --guest-arg n=0"
    [exitsN]="--guest $ELF --guest-arg exits --guest-arg n=$EXITS_N"
)
declare -A APPEND=(
    [compute]="compute"
    [compute-user]="compute user"
    [ticker]="ticker"
    [exits0]="exits n=0"
    [exitsN]="exits n=$EXITS_N"
)
WORKLOADS=(compute compute-user ticker exits0 exitsN)

# --- Measurements ------------------------------------------------------------------------
for ((rep = 0; rep < REPS; rep++)); do
    for w in "${WORKLOADS[@]}"; do
        say "rep $((rep + 1))/$REPS: $w"
        o="$OUT/$w.$rep"
        lg="$WORK/logs/$w.$rep.log"
        # Plain and recorded runs alternate their order (ABBA...) so slow drift cancels out.
        if ((rep % 2 == 0)); then order="run record"; else order="record run"; fi
        for v in $order; do
            if [ "$v" = run ]; then
                # shellcheck disable=SC2086
                timed 0 "$o.run.txt" "$US" run ${OURS[$w]}
            else
                # shellcheck disable=SC2086
                timed 0 "$o.record.txt" "$US" run ${OURS[$w]} --record "$lg"
            fi
            put "$w.$v.s" "$rep" "$T"
        done
        timed 0 "$o.replay.txt" "$US" replay "$lg"
        put "$w.replay.s" "$rep" "$T"
        cmp -s "$o.record.txt" "$o.replay.txt" && same=1 || same=0
        put "$w.replay.console_same" "$rep" "$same"
        inspect_log "$w" "$rep" "$lg"

        timed 1 "$o.qkvm.txt" "${QEMU_COMMON[@]}" -M pc -accel kvm -append "${APPEND[$w]}"
        put "$w.qkvm.s" "$rep" "$T"
        case $w in exits*)
            # microvm boots in ~0.1 s instead of -M pc's seconds of emulated BIOS; it delivers
            # no PIT interrupts to this guest, which the exits loop does not need.
            timed 1 "$o.qmicrovm.txt" "${QEMU_COMMON[@]}" -M microvm -accel kvm -append "${APPEND[$w]}"
            put "$w.qmicrovm.s" "$rep" "$T"
            ;;
        esac
        timed 1 "$o.qtcg.txt" "${QEMU_COMMON[@]}" -M pc -accel tcg -append "${APPEND[$w]}"
        put "$w.qtcg.s" "$rep" "$T"
        rr="$WORK/logs/$w.$rep.qemu-rr"
        timed 1 "$o.qrr_record.txt" "${QEMU_COMMON[@]}" -M pc -accel tcg \
            -icount "shift=auto,rr=record,rrfile=$rr" -append "${APPEND[$w]}"
        put "$w.qrr_record.s" "$rep" "$T"
        put "$w.qrr.bytes" "$rep" "$(stat -c %s "$rr")"
        timed 1 "$o.qrr_replay.txt" "${QEMU_COMMON[@]}" -M pc -accel tcg \
            -icount "shift=auto,rr=replay,rrfile=$rr" -append "${APPEND[$w]}"
        put "$w.qrr_replay.s" "$rep" "$T"
        cmp -s "$o.qrr_record.txt" "$o.qrr_replay.txt" && same=1 || same=0
        put "$w.qrr_replay.console_same" "$rep" "$same"
    done
    say "rep $((rep + 1))/$REPS: bare KVM exit loop"
    timed 0 "$OUT/bare.$rep.txt" "$WORK/bin/exit_cost" "$EXITS_N"
    put bare.plain.us "$rep" "$(sed -n 's/^exit_cost: plain .*us_per_exit=//p' "$OUT/bare.$rep.txt")"
    put bare.sync.us "$rep" "$(sed -n 's/^exit_cost: sync_regs .*us_per_exit=//p' "$OUT/bare.$rep.txt")"
done

say "raw numbers: $RAW; console outputs: $OUT"
python3 "$HERE/summarize.py" "$WORK" "$ELF" | tee "$WORK/summary.md"
say "markdown also in $WORK/summary.md"
