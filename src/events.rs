//! Machine-readable events. With `--events FILE`, a node or viewserver appends every event to
//! FILE as one JSON object per line: `{"t_unix_ms": .., "who": .., "event": "<name>", ...}`.
//! Each line is one `write` to a file opened for appending, so a process killed with SIGKILL
//! has lost nothing it emitted. The human-readable lines on stderr stay, for people; tests,
//! benchmarks and the demo read the events. The schema is in docs/events.md.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

struct EventFile {
    file: File,
    who: String,
}

static EVENTS: OnceLock<Mutex<EventFile>> = OnceLock::new();

/// Sends this process's events to `path` (created, or appended to), naming the process `who`.
pub fn open(path: &Path, who: &str) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let _ = EVENTS.set(Mutex::new(EventFile {
        file,
        who: who.to_string(),
    }));
    Ok(())
}

/// Renames the process in later events (a node learns its address after it opened the file).
pub fn set_who(who: &str) {
    if let Some(m) = EVENTS.get()
        && let Ok(mut f) = m.lock()
    {
        f.who = who.to_string();
    }
}

/// Milliseconds since 1970, as events' `t_unix_ms` says when they happened.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends `event` (any serde-tagged enum: `{"event": .., ...}`) if an events file is open.
/// An event that cannot be written is dropped with a note on stderr: events never stop the VMM.
pub fn emit(event: &impl Serialize) {
    let Some(m) = EVENTS.get() else { return };
    let Ok(mut f) = m.lock() else { return };
    let mut value = match serde_json::to_value(event) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return,
    };
    value.insert("t_unix_ms".into(), unix_ms().into());
    value.insert("who".into(), f.who.clone().into());
    let mut line = serde_json::Value::Object(value).to_string();
    line.push('\n');
    if let Err(e) = f.file.write_all(line.as_bytes()) {
        eprintln!("events: writing an event failed: {e}");
    }
}
