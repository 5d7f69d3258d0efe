#!/usr/bin/env bash
# The client-visible stall of a failover, and where it goes: runs `understudy demo --net` (three
# kv nodes on TAPs in network namespaces it builds, one client connection counting with INCR, a
# SIGKILL of the primary) REPS times and reads each run's events for the timeline, in ms after
# the kill: the backup asking to be promoted (its connection from the primary closed), the view
# naming it primary, it going live (replies flow from then on, until the state for its new
# backup is taken; then they wait for that backup), its new backup holding the state, and the
# first reply on the client's
# connection, with how many segments the client's TCP retransmitted meanwhile and its
# retransmission timer before the kill.
#
#   bench/net_failover.sh              # REPS=5, default ping interval (100 ms)
#   PING_MS=20 bench/net_failover.sh
#
# Needs root and iproute2. Prints a markdown table on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}
PING_MS=${PING_MS:-100}
cargo build --release -q
BIN=$PWD/target/release/understudy
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for rep in $(seq "$REPS"); do
    echo "bench/net_failover.sh: run $rep of $REPS" >&2
    if ! "$BIN" demo --net --workdir "$WORK/$rep" --kill-after-secs 1 --run-after-secs 1 \
        --ping-interval-ms "$PING_MS" >"$WORK/$rep.out" 2>&1; then
        echo "bench/net_failover.sh: run $rep failed:" >&2
        tail -n 20 "$WORK/$rep.out" >&2
        exit 1
    fi
done

python3 - "$WORK" "$REPS" "$PING_MS" <<'PY'
import json, os, statistics, sys
work, reps, ping = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def events(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]
rows = []
for rep in range(1, reps + 1):
    d = os.path.join(work, str(rep))
    demo = events(os.path.join(d, "demo.events"))
    killed = next(e for e in demo if e["event"] == "killed")
    t0 = killed["t_unix_ms"]
    # When the service changed the view (its own event), not when the demo's poll saw it.
    vs = events(os.path.join(d, "viewserver.events"))
    view = next(e for e in vs if e["event"] == "view_changed" and e["t_unix_ms"] >= t0)
    answered = next(e for e in demo if e["event"] == "answered_again")
    live = transfer = asked = None
    for name in sorted(os.listdir(d)):
        if not name.endswith(".events") or name in ("demo.events", "viewserver.events"):
            continue
        evs = events(os.path.join(d, name))
        lost = [e for e in evs if e["event"] == "primary_lost" and e["t_unix_ms"] >= t0]
        if lost and (asked is None or lost[0]["t_unix_ms"] - t0 < asked):
            asked = lost[0]["t_unix_ms"] - t0
        gl = [e for e in evs if e["event"] == "going_live"]
        if gl:
            live = gl[0]["t_unix_ms"] - t0
            td = [e for e in evs if e["event"] == "transfer_done" and e["t_unix_ms"] >= gl[0]["t_unix_ms"]]
            if td:
                transfer = td[0]["t_unix_ms"] - t0
    rows.append((asked, view["t_unix_ms"] - t0, live, transfer, answered["after_ms"],
                 answered.get("client_retransmits"), answered.get("client_rto_ms")))
def med(i):
    vals = [r[i] for r in rows if r[i] is not None]
    return f"{statistics.median(vals):.0f}" if vals else "-"
def spread(i):
    vals = [r[i] for r in rows if r[i] is not None]
    return f"{min(vals):.0f}–{max(vals):.0f}" if vals else "-"
print(f"`understudy demo --net --ping-interval-ms {ping}`, {reps} runs; ms after the SIGKILL of the primary")
print()
print("| run | backup asks to be promoted | view names it primary | it is live | its new backup holds the state | client answered again | client TCP retransmissions | client RTO before (ms) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
fmt = lambda v: "-" if v is None else (f"{v:.0f}" if isinstance(v, (int, float)) else str(v))
for i, r in enumerate(rows, 1):
    print("| " + " | ".join([str(i)] + [fmt(v) for v in r]) + " |")
print("| median | " + " | ".join(med(i) for i in range(7)) + " |")
print("| range | " + " | ".join(spread(i) for i in range(7)) + " |")
PY
