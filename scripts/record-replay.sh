#!/usr/bin/env bash
# Record/replay walk-through: boot the built-in guest, record it, replay the recording and
# verify it, then show what the log holds. Usage: scripts/record-replay.sh [compute|ticker] [GUEST-ARG...]
set -euo pipefail
cd "$(dirname "$0")/.."
workload=${1:-compute}
shift || true
guest_args=()
for a in "$@"; do guest_args+=(--guest-arg "$a"); done

cargo build --release --quiet
bin=target/release/understudy
log=$(mktemp -t "understudy-$workload-XXXXXX.ulog")
out=$(mktemp -t understudy-out-XXXXXX)
trap 'rm -f "$out"' EXIT

echo "== recording: understudy run --guest $workload ${guest_args[*]:-} --record $log" >&2
"$bin" run --guest "$workload" "${guest_args[@]}" --record "$log" --stats | tee "$out"
echo >&2
echo "== replaying: understudy replay $log" >&2
"$bin" replay "$log" --stats | cmp - "$out" && echo "== replayed console output is byte-identical to the recording" >&2
echo >&2
echo "== understudy log inspect $log" >&2
"$bin" log inspect "$log"
echo >&2
echo "== first interrupts: understudy log dump $log --kind inject --limit 5" >&2
"$bin" log dump "$log" --kind inject --limit 5
echo >&2
echo "(the log stays at $log)" >&2
