#!/usr/bin/env python3
"""Reads understudy's machine-readable events (JSON lines, docs/events.md) for the bench scripts.

  events.py get FILE EVENT FIELD[.SUB] [--last]   value of a field of the first (last) EVENT
  events.py count FILE EVENT                      how many EVENTs FILE has
  events.py demo-phases DIR PING REP              one demo's failover phases, as raw.tsv lines

`get` exits 1 when there is no such event or field (null counts as none); numbers print as
they are, strings bare. A line being written (no newline yet) is ignored.
"""
import json
import sys


def events(path):
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def named(path, name):
    return [e for e in events(path) if e.get("event") == name]


def field(event, dotted):
    value = event
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return value


def get(path, name, dotted, last=False):
    found = named(path, name)
    if not found:
        return None
    return field(found[-1] if last else found[0], dotted)


def demo_phases(work, ping, rep):
    """Times after the kill (ms) at which each part of a failover happened, each from the event
    of the process that did it: the viewserver's view change, the backup going live, the idle
    node installing the state; the demo's own failover time and view poll."""
    demo = f"{work}/demo.events"
    killed = get(demo, "killed", "t_unix_ms")
    failover = get(demo, "first_output", "after_ms")
    if killed is None or failover is None:
        return None
    out = [f"f.{ping}.failover_ms\t{rep}\t{failover:.0f}"]
    seen = get(demo, "view_seen", "after_ms")
    if seen is not None:
        out.append(f"f.{ping}.demo_view_ms\t{rep}\t{seen:.0f}")
    for key, path, name in [
        ("view_ms", f"{work}/viewserver.events", "view_changed"),
        ("live_ms", f"{work}/B.events", "going_live"),
        ("cinst_ms", f"{work}/C.events", "state_installed"),
    ]:
        after = [e["t_unix_ms"] - killed for e in named(path, name) if e["t_unix_ms"] >= killed]
        if after:
            out.append(f"f.{ping}.{key}\t{rep}\t{after[0]:.0f}")
    return out


def main(argv):
    if len(argv) >= 5 and argv[1] == "get":
        value = get(argv[2], argv[3], argv[4], last="--last" in argv[5:])
        if value is None:
            return 1
        print(value)
        return 0
    if len(argv) == 4 and argv[1] == "count":
        print(len(named(argv[2], argv[3])))
        return 0
    if len(argv) == 5 and argv[1] == "demo-phases":
        lines = demo_phases(argv[2], argv[3], argv[4])
        if lines is None:
            return 1
        print("\n".join(lines))
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
