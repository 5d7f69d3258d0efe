#!/usr/bin/env bash
# The nemesis, long: a replicated guest under random faults (kills, stops, viewserver kills and
# restarts, isolation, cuts and one-way drops between hosts, packet loss, junk connections; etcd
# member faults with the etcd coordinator), checked against one history. Prints each run's table
# (markdown, for docs/faults.md) on stdout.
#
#   bench/nemesis.sh [SECONDS] [file|etcd|both]     (default: 600 both)
#
# Each run picks a fresh seed and prints it (NEMESIS_SEED=...); give NEMESIS_SEED to reuse one
# (it fixes the random choices; the processes' timing still varies from run to run). Needs root
# (network namespaces, iptables) and installs iptables and etcd-server if missing. Logs of a
# wedge or a violation go to a directory that is kept; otherwise it is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-600}"
MODES="${2:-both}"
case "$MODES" in
    file | etcd) ;;
    both) MODES="file etcd" ;;
    *)
        echo "usage: bench/nemesis.sh [SECONDS] [file|etcd|both]" >&2
        exit 2
        ;;
esac

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if ((${#missing[@]})); then
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

cargo build --release --tests >&2
dumps=$(mktemp -d /tmp/nemesis.XXXXXX)
status=0
for mode in $MODES; do
    echo "== nemesis, $mode coordinator, $SECS s (machine: $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD))" >&2
    report="$dumps/report-$mode.md"
    seed="${NEMESIS_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
    if NEMESIS_SEED="$seed" NEMESIS_SECS="$SECS" NEMESIS_COORDINATOR="$mode" NEMESIS_REPORT="$report" NEMESIS_DUMPS="$dumps" \
        cargo test --release --test nemesis -- --nocapture --test-threads 1 >"$dumps/$mode.log" 2>&1; then
        :
    else
        status=1
        echo "nemesis ($mode) FAILED; its output and logs are in $dumps" >&2
    fi
    grep -m1 '^NEMESIS_SEED' "$dumps/$mode.log" >&2 || true
    echo
    echo "### $mode coordinator, $SECS s"
    echo
    cat "$report" 2>/dev/null || tail -20 "$dumps/$mode.log"
done
if ((status == 0)); then
    rm -rf "$dumps"
fi
exit $status
