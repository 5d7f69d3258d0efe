#!/usr/bin/env bash
# Every figure of understudy's speed and failover goals, measured in one run, side by side with
# the peers that run on this host (QEMU TCG record/replay on the same guest image), with a
# picture of failovers and of the replay lag. Runs the other benchmarks and summarises them:
#
#   bench/goals.sh            # full: bench/run.sh, bench/failover.sh, 100 kills, 10 min at 1000 Hz
#   bench/goals.sh --quick    # run.sh/failover.sh --quick, 30 kills, 2 min at 1000 Hz
#
# Prints the goal table (markdown) on stdout, then each benchmark's own tables; progress on
# stderr. Pictures go to $OUT (default: a temporary directory, named at the end):
# failover-timeline.svg (every kill's phases) and lag-over-time.svg (the 1000 Hz run). The
# full run takes about 25 minutes on a 2-core machine, --quick about 15. Exits 1 if a
# benchmark failed (its output is kept); a goal that is not met is a result, not a failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
quick=0
case "${1:-}" in
    --quick) quick=1 ;;
    "") ;;
    -h | --help)
        sed -n '2,13p' "$0"
        exit 0
        ;;
    *)
        echo "usage: bench/goals.sh [--quick]" >&2
        exit 2
        ;;
esac

out=${OUT:-$(mktemp -d /tmp/understudy-goals.XXXXXX)}
mkdir -p "$out"
say() { echo "bench/goals.sh: $*" >&2; }

cd "$root"
say "building the release binary"
cargo build --release >&2

flag=()
kills=100
steady_secs=600
if [ "$quick" = 1 ]; then
    flag=(--quick)
    kills=30
    steady_secs=120
fi

say "record, replay and log rate next to QEMU (bench/run.sh ${flag[*]:-})"
bench/run.sh "${flag[@]}" > "$out/run.md"
say "progress with a backup and replay lag (bench/failover.sh ${flag[*]:-})"
bench/failover.sh "${flag[@]}" > "$out/failover.md"
say "$kills SIGKILLs (bench/kills.py)"
KILLS=$kills SVG="$out/failover-timeline.svg" bench/kills.py > "$out/kills.md"
say "a live backup at 1000 Hz for $steady_secs s (bench/steady.py)"
HZ=1000 HOGS=0 SECS=$steady_secs SVG="$out/lag-over-time.svg" bench/steady.py > "$out/steady.md"
say "log rate of a 10 s ticker at 100 Hz"
log=$(mktemp /tmp/understudy-goals-ticker.XXXXXX)
target/release/understudy run --guest ticker --guest-arg hz=100 --guest-arg ticks=1000 \
    --record "$log" > /dev/null
target/release/understudy log inspect --json "$log" > "$out/ticker10s.json"
rm -f "$log"

python3 "$here/goals.py" "$out" "$steady_secs"
echo
for f in run failover kills steady; do
    echo "## $f"
    echo
    cat "$out/$f.md"
    echo
done
say "pictures and raw outputs in $out"
