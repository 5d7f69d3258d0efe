#!/usr/bin/env bash
# understudy replication benchmarks: guest progress with a backup vs alone, backup lag and output
# release delay, failover time (default and aggressive pings) and state transfer time by guest
# memory size, all in one run so that every number saw the same machine state.
#
#   bench/failover.sh [--quick]
#
# --quick: 3 repetitions (5 failover demos per ping interval, 3 state transfers per size) instead
# of 5 (7, 5); the full run takes about 3 minutes on a 2-core machine. Prints markdown tables
# for docs/benchmarks.md on stdout; progress goes to stderr. Work files go under a /tmp
# directory that is removed at the end, unless something failed or BENCH_KEEP=1. Every process
# runs under `timeout`, and every wait for a log line is bounded. A run that fails ends the
# script at once, except for failures that are results of the measurement rather than broken
# runs: a backup whose replay fails (even if it recovers), and a failover demo whose checks
# fail. Those runs are left out of the timings, their error lines are printed under the tables,
# and the script exits 1 after printing everything. If demos fail at AGGRESSIVE_PING, the demos
# are also repeated at FALLBACK_PING.
# Environment: BENCH_TIMEOUT (seconds per single process, default 120), BACKUP_GRACE (seconds
# a backup may take to finish after its primary exited, default 30), AGGRESSIVE_PING (ms,
# default 20), FALLBACK_PING (ms, default 30).
set -euo pipefail

REPS=5
DEMO_REPS=7
ST_REPS=5
case "${1:-}" in
    "") ;;
    --quick)
        REPS=3
        DEMO_REPS=5
        ST_REPS=3
        ;;
    -h | --help)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: bench/failover.sh [--quick]" >&2
        exit 2
        ;;
esac

TIMEOUT=${BENCH_TIMEOUT:-120}
AGGRESSIVE_PING=${AGGRESSIVE_PING:-20}
FALLBACK_PING=${FALLBACK_PING:-30}
BACKUP_GRACE=${BACKUP_GRACE:-30}
DEFAULT_PING=100
MEM_SIZES=(64 256 1024)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/understudy-failover.XXXXXX)
RAW="$WORK/raw.tsv"
: >"$RAW"
: >"$WORK/demo-failures.txt"
: >"$WORK/failures.txt"

say() { echo "failover-bench: $*" >&2; }

# Background processes this script started (PIDs of their `timeout` wrappers, which pass a
# TERM on to the process they run).
PIDS=()
OK=0
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if [ "$OK" = 1 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        echo "failover-bench: work files kept in $WORK" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
    echo "failover-bench: error: $*" >&2
    exit 1
}
# show FILE...: the last lines of each file, for error messages.
show() {
    local f
    for f in "$@"; do
        [ -e "$f" ] && { echo "--- $f (last 15 lines)"; tail -n 15 "$f"; } >&2
    done
    return 0
}
forget() { # PID: no longer ours to clean up (it was waited for)
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# stop PID: TERM to one of our processes and reap it (bounded: its timeout wrapper kills it
# after 5 more seconds at the latest).
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}
# put KEY REP VALUE
put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }

# wait_line FILE REGEX SECS PID: polls (10 ms) until FILE has a line matching REGEX; fails if
# PID exits first or SECS pass.
wait_line() {
    local file=$1 re=$2 secs=$3 pid=$4 deadline
    deadline=$(awk -v t="$EPOCHREALTIME" -v s="$secs" 'BEGIN { printf "%.3f", t + s }')
    while ! grep -qE -- "$re" "$file" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            grep -qE -- "$re" "$file" 2>/dev/null && return 0
            echo "failover-bench: process $pid exited before '$re' appeared in $file" >&2
            return 1
        fi
        if awk -v t="$EPOCHREALTIME" -v d="$deadline" 'BEGIN { exit !(t > d) }'; then
            echo "failover-bench: timed out after ${secs}s waiting for '$re' in $file" >&2
            return 1
        fi
        sleep 0.01
    done
}

# wait_exit PID SECS: true once PID has exited (it stays ours to reap), false after SECS.
wait_exit() {
    local i n
    n=$(($2 * 20))
    for ((i = 0; i < n; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    ! kill -0 "$1" 2>/dev/null
}

# --- Build -------------------------------------------------------------------------------
say "building the release binary"
(cd "$ROOT" && cargo build --release) >&2 || die "cargo build --release failed"
mkdir -p "$WORK/bin"
# A private copy: others may rebuild target/ while the benchmark runs.
cp "$ROOT/target/release/understudy" "$WORK/bin/understudy"
US="$WORK/bin/understudy"

# --- Host description --------------------------------------------------------------------
{
    printf 'cpu\t%s\n' "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    printf 'cores\t%s\n' "$(nproc)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'kvm_module\t%s\n' "$(for m in kvm_pvm kvm_intel kvm_amd; do [ -d /sys/module/$m ] && echo $m; done | paste -sd, -)"
    printf 'commit\t%s%s\n' "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    printf 'reps\t%s\n' "$REPS"
    printf 'demo_reps\t%s\n' "$DEMO_REPS"
    printf 'st_reps\t%s\n' "$ST_REPS"
    printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
    printf 'load_start\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$WORK/meta.tsv"

# --- Viewserver and nodes ----------------------------------------------------------------
VS_PID=
VS_ADDR=
# What the processes report is read from their events files (docs/events.md), never from the
# prose on their stderr (kept for people, and shown when something fails).
EV="$ROOT/bench/events.py"
# has_event FILE NAME: FILE has an event NAME (a complete line).
has_event() { [ "$(python3 "$EV" count "$1" "$2")" -gt 0 ]; }
# ev FILE NAME FIELD [--last]: a field of the first (last) event NAME; dies if there is none.
ev() { python3 "$EV" get "$@" || die "no $3 in a '$2' event of $1"; }
# start_vs DIR PING_MS: a viewserver on a free port; sets VS_PID and VS_ADDR (from its
# `listening` event).
start_vs() {
    local dir=$1 ping=$2
    timeout -k 5 "$TIMEOUT" "$US" viewserver --listen 127.0.0.1:0 --ping-interval-ms "$ping" \
        --data-dir "$dir/vs.data" --events "$dir/vs.events" >"$dir/vs.out" 2>"$dir/vs.err" &
    VS_PID=$!
    PIDS+=("$VS_PID")
    wait_line "$dir/vs.events" '"event":"listening"' 10 "$VS_PID" ||
        { show "$dir/vs.out" "$dir/vs.err"; die "the viewserver did not start"; }
    VS_ADDR=$(ev "$dir/vs.events" listening addr)
}
# start_node NAME DIR ARGS...: a node (stdout NAME.out, stderr NAME.err, events NAME.events);
# its PID in NODE_PID.
NODE_PID=
start_node() {
    local name=$1 dir=$2
    shift 2
    timeout -k 5 "$TIMEOUT" "$US" node --viewserver "$VS_ADDR" --listen 127.0.0.1:0 "$@" \
        --events "$dir/$name.events" >"$dir/$name.out" 2>"$dir/$name.err" &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
}
# reap PID WHAT FILES...: waits for one of our processes, which must exit 0.
reap() {
    local pid=$1 what=$2 rc=0
    shift 2
    wait "$pid" || rc=$?
    forget "$pid"
    if [ "$rc" != 0 ]; then
        show "$@"
        die "$what exited with $rc (124/137: timed out after ${TIMEOUT}s)"
    fi
}

# --- 1 + 2: progress with a backup vs alone; lag and release delay ---------------------
declare -A GUEST=(
    [compute]="--guest compute"
    [compute-user]="--guest compute --guest-arg user"
    [ticker]="--guest ticker --guest-arg hz=100 --guest-arg ticks=500"
)
T=0
# progress WORKLOAD VARIANT REP: one timed run; VARIANT is run, alone or backup.
progress() {
    local w=$1 v=$2 rep=$3 dir="$WORK/progress/$1.$2.$3" t0 t1 rc=0 a b line bfail=
    mkdir -p "$dir"
    # shellcheck disable=SC2206
    local g=(${GUEST[$w]})
    case $v in
        run)
            t0=$(now)
            timeout -k 5 "$TIMEOUT" "$US" run "${g[@]}" >"$dir/run.out" 2>"$dir/run.err" || rc=$?
            t1=$(now)
            [ "$rc" = 0 ] || { show "$dir/run.out" "$dir/run.err"; die "understudy run $w exited with $rc"; }
            ;;
        alone | backup)
            start_vs "$dir" "$DEFAULT_PING"
            t0=$(now)
            start_node A "$dir" "${g[@]}" --stats
            a=$NODE_PID
            if [ "$v" = backup ]; then
                wait_line "$dir/A.events" '"event":"booting"' 10 "$a" ||
                    { show "$dir/A.err"; die "$w: the first node never became primary"; }
                start_node B "$dir" "${g[@]}" --transcript "$dir/B.transcript"
                b=$NODE_PID
            fi
            reap "$a" "primary node ($w, $v)" "$dir/A.out" "$dir/A.err"
            t1=$(now)
            bfail=
            if [ "$v" = backup ]; then
                has_event "$dir/A.events" transfer_done ||
                    { show "$dir/A.err" "$dir/B.err"; die "$w: the backup never installed the state"; }
                # The backup replays at the primary's pace: it ends within moments of the primary.
                if ! wait_exit "$b" "$BACKUP_GRACE"; then
                    bfail="the backup was still running ${BACKUP_GRACE} s after the primary exited (stopped it)"
                    stop "$b"
                else
                    rc=0
                    wait "$b" || rc=$?
                    forget "$b"
                    [ "$rc" = 0 ] || bfail="the backup exited with $rc"
                fi
                if [ -z "$bfail" ] && ! cmp -s "$dir/A.out" "$dir/B.transcript"; then
                    bfail="the backup's replayed console differs from the primary's released output"
                fi
                # A replay failure the backup recovered from (by asking for a new state) still
                # counts: the run's lag and release numbers include the second transfer.
                if [ -z "$bfail" ] && has_event "$dir/B.events" replay_failed; then
                    bfail="the backup's replay failed; it recovered by a new state transfer and finished (exit 0, console identical)"
                fi
            elif has_event "$dir/A.events" transfer_done; then
                die "$w alone: a backup appeared"
            fi
            stop "$VS_PID"
            ;;
    esac
    grep -q 'done' "$dir/$([ "$v" = run ] && echo run || echo A).out" ||
        die "$w ($v): the guest never printed its done line"
    T=$(elapsed "$t0" "$t1")
    if [ -n "$bfail" ]; then
        # A correctness failure of the backup: reported (and the script exits 1 at the end), not
        # timed, since the primary ran part of this run without a working backup.
        {
            echo "$w with a backup, repetition $((rep + 1)): $bfail; primary exited 0 after $T s, $(grep -o 'output release delay.*' "$dir/A.err" || echo 'no release statistics')"
            echo "  backup transcript $(wc -c <"$dir/B.transcript") of $(wc -c <"$dir/A.out") bytes released by the primary"
            grep -hE 'installed|failed|overshot|diverged|error|mismatch' "$dir/B.err" "$dir/A.err" | sed 's/^/  /' || true
            grep -h '^viewserver: view' "$dir/vs.err" | sed 's/^/  /' || true
        } >>"$WORK/failures.txt"
        say "FAILED: $w with a backup: $bfail"
        show "$dir/A.err" "$dir/B.err" "$dir/vs.err"
        put "p.$w.backup_ok" "$rep" 0
        return 0
    fi
    [ "$v" = backup ] && put "p.$w.backup_ok" "$rep" 1
    put "p.$w.$v.s" "$rep" "$T"
    if [ "$v" = backup ]; then
        local sum="$dir/A.events"
        has_event "$sum" primary_summary || { show "$dir/A.err"; die "$w: no primary_summary event"; }
        for kind in replay receive; do
            for q in p50 p99 max; do
                put "p.$w.$kind.$q" "$rep" "$(ev "$sum" primary_summary "${kind}_lag.${q}_ms" --last)"
            done
            put "p.$w.$kind.n" "$rep" "$(ev "$sum" primary_summary "${kind}_lag.n" --last)"
        done
        put "p.$w.held.ms" "$rep" "$(ev "$sum" primary_summary throttled_ms --last)"
        for q in p50 p99 max; do
            put "p.$w.rel.$q" "$rep" "$(ev "$sum" primary_summary "release_delay.${q}_ms" --last)"
        done
        put "p.$w.rel.n" "$rep" "$(ev "$sum" primary_summary release_delay.n --last)"
        put "p.$w.st.total_ms" "$rep" "$(ev "$sum" transfer_done total_ms)"
        put "p.$w.st.pause_ms" "$rep" "$(ev "$sum" transfer_done pause_ms)"
    fi
}

for ((rep = 0; rep < REPS; rep++)); do
    for w in compute compute-user ticker; do
        if [ "$w" = ticker ]; then
            # The ticker is paced by its timer (5 s): only its lag and release delay are of interest.
            order=(backup)
        else
            # Rotate the order from one repetition to the next so slow drift spreads evenly.
            all=(run alone backup)
            order=("${all[@]:rep%3}" "${all[@]:0:rep%3}")
        fi
        for v in "${order[@]}"; do
            say "rep $((rep + 1))/$REPS: $w $v"
            progress "$w" "$v" "$rep"
            say "  $T s"
        done
    done
done

# --- 3: failover time --------------------------------------------------------------------
# demo PING REP: one `understudy demo`; returns 1 if it failed (output kept for the report).
demo() {
    local ping=$1 rep=$2 dir="$WORK/demo/$1.$2" rc=0
    mkdir -p "$dir"
    timeout -k 5 "$TIMEOUT" "$US" demo --ping-interval-ms "$ping" --kill-after-secs 1 \
        --run-after-secs 1 --workdir "$dir/nodes" >"$dir/out" 2>"$dir/err" || rc=$?
    if [ "$rc" != 0 ]; then
        {
            echo "ping ${ping} ms, run $((rep + 1)): exit $rc"
            grep -hE 'FAILED|error|failed|diverged|refused|failover time' "$dir/out" "$dir/err" | head -n 12 || true
        } >>"$WORK/demo-failures.txt"
        say "demo at ${ping} ms FAILED (exit $rc):"
        show "$dir/out" "$dir/err"
        put "f.$ping.ok" "$rep" 0
        return 1
    fi
    put "f.$ping.ok" "$rep" 1
    # Phases after the kill, each from the event of the process that did it (the demo's own
    # events for the kill, its view poll and the failover time; the viewserver's view change, B
    # going live, C installing the state).
    python3 "$EV" demo-phases "$dir/nodes" "$ping" "$rep" >>"$RAW" ||
        { show "$dir/out"; die "no failover events in the demo's workdir ($dir/nodes)"; }
    say "  failover $(python3 "$EV" get "$dir/nodes/demo.events" first_output after_ms) ms"
}

PINGS=("$DEFAULT_PING" "$AGGRESSIVE_PING")
for ((rep = 0; rep < DEMO_REPS; rep++)); do
    for p in "${PINGS[@]}"; do
        say "demo $((rep + 1))/$DEMO_REPS: ping ${p} ms"
        demo "$p" "$rep" || true
    done
done
if grep -qP "^f\.$AGGRESSIVE_PING\.ok\t\d+\t0$" "$RAW"; then
    say "demos at ${AGGRESSIVE_PING} ms failed; trying ${FALLBACK_PING} ms"
    for ((rep = 0; rep < DEMO_REPS; rep++)); do
        say "demo $((rep + 1))/$DEMO_REPS: ping ${FALLBACK_PING} ms"
        demo "$FALLBACK_PING" "$rep" || true
    done
    PINGS+=("$FALLBACK_PING")
fi
printf 'pings\t%s\n' "${PINGS[*]}" >>"$WORK/meta.tsv"

# --- 4: state transfer by guest memory size ----------------------------------------------
st() { # MEM REP
    local mem=$1 rep=$2 dir="$WORK/st/$1.$2" a b line g
    mkdir -p "$dir"
    g=(--guest ticker --guest-arg hz=50 --guest-arg ticks=100000 --mem-mib "$mem")
    start_vs "$dir" "$DEFAULT_PING"
    start_node A "$dir" "${g[@]}"
    a=$NODE_PID
    wait_line "$dir/A.events" '"event":"booting"' 20 "$a" || { show "$dir/A.err"; die "st $mem: no primary"; }
    start_node B "$dir" "${g[@]}"
    b=$NODE_PID
    wait_line "$dir/A.events" '"event":"transfer_done"' 60 "$a" ||
        { show "$dir/A.err" "$dir/B.err"; die "state transfer of $mem MiB never completed"; }
    wait_line "$dir/B.events" '"event":"state_installed"' 10 "$b" ||
        { show "$dir/B.err"; die "the backup never reported installing $mem MiB"; }
    kill -0 "$a" 2>/dev/null && kill -0 "$b" 2>/dev/null ||
        { show "$dir/A.err" "$dir/B.err"; die "a node exited during the $mem MiB state transfer"; }
    stop "$a"
    stop "$b"
    stop "$VS_PID"
    local total pause rounds sent
    total=$(ev "$dir/A.events" transfer_done total_ms)
    pause=$(ev "$dir/A.events" transfer_done pause_ms)
    rounds=$(ev "$dir/A.events" transfer_done rounds)
    sent=$(python3 -c 'import sys; print(f"{int(sys.argv[1]) / 2**20:.1f}")' "$(ev "$dir/A.events" transfer_done bytes)")
    put "s.$mem.total_ms" "$rep" "$total"; put "s.$mem.pause_ms" "$rep" "$pause"
    put "s.$mem.rounds" "$rep" "$rounds"; put "s.$mem.sent_mib" "$rep" "$sent"
    put "s.$mem.backup_ms" "$rep" "$(ev "$dir/B.events" state_installed ms)"
    say "  $total ms total, paused $pause ms, $rounds rounds, $sent MiB sent"
}
for ((rep = 0; rep < ST_REPS; rep++)); do
    for m in "${MEM_SIZES[@]}"; do
        say "state transfer $((rep + 1))/$ST_REPS: $m MiB"
        st "$m" "$rep"
    done
done
printf 'load_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/meta.tsv"

# --- Tables ------------------------------------------------------------------------------
python3 - "$WORK" <<'PY'
import collections, statistics, sys
work = sys.argv[1]
meta = dict(l.rstrip("\n").split("\t", 1) for l in open(f"{work}/meta.tsv"))
raw = collections.defaultdict(dict)
for l in open(f"{work}/raw.tsv"):
    k, rep, v = l.rstrip("\n").split("\t")
    raw[k][int(rep)] = float(v)

def vals(k):
    return [raw[k][r] for r in sorted(raw.get(k, {}))]

def cell(xs, fmt="{:.3f}"):
    if not xs:
        return "–"
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"

def c(k, fmt="{:.3f}"):
    return cell(vals(k), fmt)

def ratio(a, b):
    ra, rb = raw.get(a, {}), raw.get(b, {})
    return [ra[r] / rb[r] for r in sorted(ra) if r in rb and rb[r] > 0]

print(f"Host: {meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}, KVM module "
      f"`{meta['kvm_module']}`. understudy {meta['commit']}. {meta['date']}; load average "
      f"{meta['load_start']} at the start, {meta['load_end']} at the end. Cells: median (min–max).")
print()
print(f"#### Guest progress with a backup vs alone (wall seconds of the primary node, process start to exit; {meta['reps']} repetitions)")
print()
print("| workload | run (s) | node alone (s) | node with backup (s) | progress ratio alone / with backup | alone / run | backup replays OK |")
print("|---|---|---|---|---|---|---|")
def okcount(w):
    ok = vals(f"p.{w}.backup_ok")
    return f"{int(sum(ok))}/{len(ok)}"
for w, name in [("compute", "compute (CPL0)"), ("compute-user", "compute user (CPL3)")]:
    print(f"| {name} | {c(f'p.{w}.run.s')} | {c(f'p.{w}.alone.s')} | {c(f'p.{w}.backup.s')} "
          f"| {cell(ratio(f'p.{w}.alone.s', f'p.{w}.backup.s'))} "
          f"| {cell(ratio(f'p.{w}.alone.s', f'p.{w}.run.s'))} | {okcount(w)} |")
print()
print("#### Backup lag and output release delay (primary's `--stats`, runs with a backup; ms)")
print()
print("| workload | backup replays OK | replay lag p50 | replay lag p99 | replay lag max | receive lag p99 | lag samples | guest held back by the throttle | release delay p50 | release delay p99 | release delay max | chunks | guest pause for the state transfer |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for w, name in [("compute", "compute (CPL0)"), ("compute-user", "compute user (CPL3)"),
                ("ticker", "ticker hz=100 ticks=500")]:
    f2 = "{:.2f}"
    print(f"| {name} | {okcount(w)} | {c(f'p.{w}.replay.p50', f2)} | {c(f'p.{w}.replay.p99', f2)} | {c(f'p.{w}.replay.max', f2)} "
          f"| {c(f'p.{w}.receive.p99', f2)} | {c(f'p.{w}.replay.n', '{:.0f}')} | {c(f'p.{w}.held.ms', '{:.1f}')} "
          f"| {c(f'p.{w}.rel.p50', f2)} | {c(f'p.{w}.rel.p99', f2)} "
          f"| {c(f'p.{w}.rel.max', f2)} | {c(f'p.{w}.rel.n', '{:.0f}')} | {c(f'p.{w}.st.pause_ms', f2)} |")
print()
print(f"#### Failover time (`understudy demo --ping-interval-ms P --kill-after-secs 1 --run-after-secs 1`; ms after the SIGKILL)")
print()
print("| ping interval | demos passed | 5 × ping | viewserver's new view | B goes live | new backup C has the state | B's first released output (failover time) |")
print("|---|---|---|---|---|---|---|")
f0 = "{:.0f}"
for p in meta["pings"].split():
    ok = vals(f"f.{p}.ok")
    print(f"| {p} ms | {int(sum(ok))}/{len(ok)} | {5 * int(p)} | {c(f'f.{p}.view_ms', f0)} | {c(f'f.{p}.live_ms', f0)} "
          f"| {c(f'f.{p}.cinst_ms', f0)} | **{c(f'f.{p}.failover_ms', f0)}** |")
fails = open(f"{work}/failures.txt").read().strip()
if fails:
    print()
    print("Failed backups (not timed; the script exits 1):")
    print()
    print("```")
    print(fails)
    print("```")
fails = open(f"{work}/demo-failures.txt").read().strip()
if fails:
    print()
    print("Failed demos (left out of the table; the script exits 1): exit code and the demo's failure lines")
    print()
    print("```")
    print(fails)
    print("```")
print()
print(f"#### State transfer by guest memory size (ticker hz=50; primary's `installed the state:` line; {meta['st_reps']} repetitions)")
print()
print("| guest memory | total (ms) | guest paused (ms) | pre-copy rounds | MiB sent | backup's install (ms) | total per GiB (ms) |")
print("|---|---|---|---|---|---|---|")
for m in ["64", "256", "1024"]:
    per = [t * 1024 / int(m) for t in vals(f"s.{m}.total_ms")]
    print(f"| {m} MiB | {c(f's.{m}.total_ms', f0)} | {c(f's.{m}.pause_ms', '{:.2f}')} | {c(f's.{m}.rounds', f0)} "
          f"| {c(f's.{m}.sent_mib', '{:.1f}')} | {c(f's.{m}.backup_ms', f0)} | {cell(per, f0)} |")
PY
if [ -s "$WORK/failures.txt" ] || [ -s "$WORK/demo-failures.txt" ]; then
    say "failures (left out of the tables):"
    cat "$WORK/failures.txt" "$WORK/demo-failures.txt" >&2
    BENCH_KEEP=1
    OK=1
    exit 1
fi
OK=1
