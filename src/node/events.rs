//! A node's events (see `crate::events` and docs/events.md for the file format).

use serde::Serialize;

/// Something a node did or saw, serialised as `{"event": "<snake_case name>", ...}`.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent<'a> {
    /// The node runs: its address (its name for the view service unless `--name`), incarnation
    /// and logging-channel listening address.
    Started {
        name: &'a str,
        incarnation: u64,
        listen: &'a str,
        viewserver: &'a str,
    },
    /// First primary of the guest: boots it from its image. Output from console byte 0 goes
    /// to this process's stdout from `stdout_byte` on.
    Booting { view: u64, stdout_byte: u64 },
    /// A backup promoted to primary: its replayed guest runs live from guest exit `exits`. It
    /// releases the console from byte `released_from`, to stdout from `stdout_byte` on;
    /// `unconfirmed` bytes of that may already have been released by the old primary.
    GoingLive {
        view: u64,
        exits: u64,
        log_seq: u64,
        console_bytes: u64,
        released_from: u64,
        stdout_byte: u64,
        unconfirmed: u64,
        /// The replica had replayed the guest's end: it only releases what is left and
        /// reports the end.
        ended: bool,
    },
    /// Backup of `primary` in `view`, keeping the state it holds or waiting for one.
    Backup {
        view: u64,
        primary: &'a str,
        holding: bool,
    },
    /// Named primary without holding that view's history: it will not serve, and waits.
    Stranded { view: u64 },
    /// Neither primary nor backup.
    Idle { view: u64 },
    /// A primary without a backup: output flows as soon as it is written.
    NoBackup { view: u64 },
    /// The primary's stream to its backup broke; the state is sent again.
    StreamLost { backup: &'a str, reason: &'a str },
    /// A deposed or cut-off primary stops its guest and releases nothing more.
    SteppedDown { reason: &'a str },
    /// A periodic sample of a primary's replication: the backup's replay lag and what it
    /// released.
    Lag {
        view: u64,
        backup: &'a str,
        entries: u64,
        ms: f64,
        released_bytes: u64,
    },
    /// A step of a state transfer to a new backup (human text).
    TransferProgress { backup: &'a str, message: &'a str },
    /// The new backup installed the state.
    TransferDone {
        view: u64,
        backup: &'a str,
        total_ms: f64,
        pause_ms: f64,
        rounds: u32,
        bytes: u64,
        next_seq: u64,
    },
    /// A state transfer to a backup failed.
    TransferFailed { backup: &'a str, error: &'a str },
    /// A backup installed the state from `primary`; replay continues from `next_seq`.
    StateInstalled {
        primary: &'a str,
        ms: f64,
        mem_mib: u32,
        next_seq: u64,
        /// The state is of a guest that had already ended: nothing follows it.
        ended: bool,
    },
    /// A backup refused an offered transfer, or receiving one failed.
    StateRefused { error: &'a str },
    /// A backup's replay of the stream failed; it drops the state and asks for a new one.
    /// `overshoot`: a kick landed too late (the replay lost its way, not its history);
    /// `diverged`: the replayed guest did something other than the recorded one (a bug).
    ReplayFailed {
        primary: &'a str,
        error: &'a str,
        overshoot: bool,
        diverged: bool,
    },
    /// A backup's replay overshot entry `overshot_seq` (a kick landed late) and went back to
    /// its checkpoint before entry `from_seq` instead of asking for a new state;
    /// `in_a_row`: overshoots since the last checkpoint, this one included.
    ReplayRewound {
        overshot_seq: u64,
        from_seq: u64,
        in_a_row: u32,
    },
    /// A backup's replay of one stream ended (the stream ended, or the guest did): what it did
    /// and cost.
    ReplaySummary {
        wall_ms: f64,
        exits: u64,
        interrupts_precise: u64,
        approach_ms: f64,
        kicks: u64,
        breakpoint_runs: u64,
        single_steps: u64,
        kick_floor_us: f64,
        checkpoints: u64,
        checkpoint_ms: f64,
        rewinds: u64,
        digests: u64,
    },
    /// The primary's stream ended; the backup holds its replayed guest at `last_seq`.
    StreamEnded {
        reason: &'a str,
        last_seq: Option<u64>,
    },
    /// The backup lost its stream from the primary of view `view`, still its backup there, and
    /// asks the view service to promote it now.
    PrimaryLost { view: u64, primary: &'a str },
    /// The guest powered off (on the primary, or replayed on the backup); the node exits with
    /// the guest's code.
    GuestPoweredOff { code: u32, replayed: bool },
    /// The guest triple-faulted (on the primary, or replayed on the backup): it ended.
    GuestTripleFaulted { replayed: bool },
    /// The guest asked for a reset by writing `value` to `port` (on the primary, or replayed on
    /// the backup); understudy does not reboot guests, so it ended.
    GuestResetRequested {
        port: u16,
        value: u8,
        replayed: bool,
    },
    /// The primary released everything its ended guest said and told the view service the
    /// guest finished (`reason`, `code`: how), as primary of `view`.
    EndReported {
        view: u64,
        reason: &'a str,
        code: u32,
    },
    /// The view service recorded that the guest finished (in `view`, by `reason`, with exit
    /// code `code`); this node exits with `exit_code`: the guest's if it held the guest or a
    /// replica of it, 0 if it held nothing.
    GuestFinished {
        view: u64,
        reason: &'a str,
        code: u32,
        held: bool,
        exit_code: u32,
    },
    /// The view service refused this node (it exits).
    Refused { message: &'a str },
    /// The view service did not answer (said once until it answers again).
    ViewServiceUnreachable { error: &'a str },
    /// A primary's totals when its role ends: time the guest was held back for the backup's
    /// replay, time covered output waited for a lease, each state transfer's pause; the
    /// backup's lag (sampled every 10 ms while streaming: replayed, and received) and each
    /// output chunk's delay from write to release, and each network frame's from transmit to
    /// the TAP; the logging channel's round trip, from a write of entries to the ack covering
    /// them (null: no samples).
    PrimarySummary {
        throttled_ms: f64,
        lease_wait_ms: f64,
        pauses_ms: Vec<f64>,
        replay_lag: Option<Spread>,
        receive_lag: Option<Spread>,
        release_delay: Option<Spread>,
        frame_release_delay: Option<Spread>,
        ack_round_trip: Option<Spread>,
    },
}

/// Median, 99th percentile and maximum of `n` samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub n: usize,
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
            self.p50_ms, self.p99_ms, self.max_ms, self.n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every event, to check the documentation against.
    fn every_event() -> Vec<serde_json::Value> {
        let s = "x";
        let view = viewserver::View::default();
        let node = [
            NodeEvent::Started {
                name: s,
                incarnation: 1,
                listen: s,
                viewserver: s,
            },
            NodeEvent::Booting {
                view: 1,
                stdout_byte: 0,
            },
            NodeEvent::GoingLive {
                view: 1,
                exits: 1,
                log_seq: 1,
                console_bytes: 1,
                released_from: 1,
                stdout_byte: 1,
                unconfirmed: 0,
                ended: false,
            },
            NodeEvent::Backup {
                view: 1,
                primary: s,
                holding: true,
            },
            NodeEvent::Stranded { view: 1 },
            NodeEvent::Idle { view: 1 },
            NodeEvent::NoBackup { view: 1 },
            NodeEvent::StreamLost {
                backup: s,
                reason: s,
            },
            NodeEvent::SteppedDown { reason: s },
            NodeEvent::Lag {
                view: 1,
                backup: s,
                entries: 1,
                ms: 1.0,
                released_bytes: 1,
            },
            NodeEvent::TransferProgress {
                backup: s,
                message: s,
            },
            NodeEvent::TransferDone {
                view: 1,
                backup: s,
                total_ms: 1.0,
                pause_ms: 1.0,
                rounds: 1,
                bytes: 1,
                next_seq: 1,
            },
            NodeEvent::TransferFailed {
                backup: s,
                error: s,
            },
            NodeEvent::StateInstalled {
                primary: s,
                ms: 1.0,
                mem_mib: 1,
                next_seq: 1,
                ended: false,
            },
            NodeEvent::StateRefused { error: s },
            NodeEvent::ReplayFailed {
                primary: s,
                error: s,
                overshoot: false,
                diverged: false,
            },
            NodeEvent::ReplayRewound {
                overshot_seq: 2,
                from_seq: 1,
                in_a_row: 1,
            },
            NodeEvent::ReplaySummary {
                wall_ms: 1.0,
                exits: 1,
                interrupts_precise: 1,
                approach_ms: 1.0,
                kicks: 1,
                breakpoint_runs: 1,
                single_steps: 1,
                kick_floor_us: 0.0,
                checkpoints: 1,
                checkpoint_ms: 1.0,
                rewinds: 0,
                digests: 1,
            },
            NodeEvent::StreamEnded {
                reason: s,
                last_seq: None,
            },
            NodeEvent::PrimaryLost {
                view: 1,
                primary: s,
            },
            NodeEvent::GuestPoweredOff {
                code: 0,
                replayed: false,
            },
            NodeEvent::GuestTripleFaulted { replayed: true },
            NodeEvent::GuestResetRequested {
                port: 0xcf9,
                value: 6,
                replayed: false,
            },
            NodeEvent::EndReported {
                view: 1,
                reason: s,
                code: 0,
            },
            NodeEvent::GuestFinished {
                view: 1,
                reason: s,
                code: 0,
                held: true,
                exit_code: 0,
            },
            NodeEvent::Refused { message: s },
            NodeEvent::ViewServiceUnreachable { error: s },
            NodeEvent::PrimarySummary {
                throttled_ms: 0.0,
                lease_wait_ms: 0.0,
                pauses_ms: Vec::new(),
                replay_lag: None,
                receive_lag: None,
                release_delay: None,
                frame_release_delay: None,
                ack_round_trip: None,
            },
        ];
        // Exhaustive on purpose: a new variant fails to compile here until it is listed above.
        for e in &node {
            match e {
                NodeEvent::Started { .. }
                | NodeEvent::Booting { .. }
                | NodeEvent::GoingLive { .. }
                | NodeEvent::Backup { .. }
                | NodeEvent::Stranded { .. }
                | NodeEvent::Idle { .. }
                | NodeEvent::NoBackup { .. }
                | NodeEvent::StreamLost { .. }
                | NodeEvent::SteppedDown { .. }
                | NodeEvent::Lag { .. }
                | NodeEvent::TransferProgress { .. }
                | NodeEvent::TransferDone { .. }
                | NodeEvent::TransferFailed { .. }
                | NodeEvent::StateInstalled { .. }
                | NodeEvent::StateRefused { .. }
                | NodeEvent::ReplayFailed { .. }
                | NodeEvent::ReplayRewound { .. }
                | NodeEvent::ReplaySummary { .. }
                | NodeEvent::StreamEnded { .. }
                | NodeEvent::PrimaryLost { .. }
                | NodeEvent::GuestPoweredOff { .. }
                | NodeEvent::GuestTripleFaulted { .. }
                | NodeEvent::GuestResetRequested { .. }
                | NodeEvent::EndReported { .. }
                | NodeEvent::GuestFinished { .. }
                | NodeEvent::Refused { .. }
                | NodeEvent::ViewServiceUnreachable { .. }
                | NodeEvent::PrimarySummary { .. } => {}
            }
        }
        use viewserver::ServiceEvent as S;
        let service = [
            S::Leading {
                term: 1,
                service: s.into(),
                view: view.clone(),
            },
            S::Following { leader: s.into() },
            S::NoLongerLeading,
            S::ViewChanged { view },
            S::EndRecorded {
                finished: viewserver::Finished {
                    view: 1,
                    end: viewserver::GuestEnd {
                        reason: viewserver::EndReason::PowerOff,
                        code: 0,
                    },
                },
            },
            S::EtcdFailing { error: s.into() },
            S::EtcdAnswersAgain,
        ];
        for e in &service {
            match e {
                S::Leading { .. }
                | S::Following { .. }
                | S::NoLongerLeading
                | S::ViewChanged { .. }
                | S::EndRecorded { .. }
                | S::EtcdFailing { .. }
                | S::EtcdAnswersAgain => {}
            }
        }
        let mut all: Vec<_> = node
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        all.extend(service.iter().map(|e| serde_json::to_value(e).unwrap()));
        all.push(serde_json::json!({"event": "listening", "addr": s}));
        use crate::commands::demo::DemoEvent as D;
        let demo = [
            D::Killed { node: s, pid: 1 },
            D::ViewSeen {
                view: 1,
                primary: s,
                after_ms: 1.0,
            },
            D::FirstOutput {
                node: s,
                after_ms: 1.0,
            },
            D::AnsweredAgain {
                after_ms: 1.0,
                client_retransmits: Some(1),
                client_rto_ms: Some(200),
            },
            D::Check {
                passed: true,
                what: s,
            },
        ];
        for e in &demo {
            match e {
                D::Killed { .. }
                | D::ViewSeen { .. }
                | D::FirstOutput { .. }
                | D::AnsweredAgain { .. }
                | D::Check { .. } => {}
            }
        }
        all.extend(demo.iter().map(|e| serde_json::to_value(e).unwrap()));
        all
    }

    /// docs/events.md has a row for every event, naming exactly its fields, and no row for an
    /// event that does not exist.
    #[test]
    fn docs_events_md_names_every_event_and_its_fields() {
        let doc = include_str!("../../docs/events.md");
        let rows: Vec<(&str, &str)> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once("` |"))
            .filter(|(name, _)| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(|(name, rest)| (name, rest.split('|').next().unwrap_or("")))
            .collect();
        let events = every_event();
        let mut wrong = Vec::new();
        for e in &events {
            let name = e["event"].as_str().unwrap();
            let Some((_, fields)) = rows.iter().find(|(n, _)| *n == name) else {
                wrong.push(format!("no row for `{name}`"));
                continue;
            };
            let documented: Vec<&str> = fields.split('`').skip(1).step_by(2).collect();
            let actual: Vec<&str> = e
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "event")
                .collect();
            let mut sorted = documented.clone();
            sorted.sort_unstable();
            if sorted != actual {
                wrong.push(format!(
                    "`{name}`: documented {documented:?}, emitted {actual:?}"
                ));
            }
        }
        for (name, _) in &rows {
            if !["event", "t_unix_ms", "who"].contains(name)
                && !events.iter().any(|e| e["event"] == *name)
            {
                wrong.push(format!("a row for `{name}`, which no code emits"));
            }
        }
        assert!(
            wrong.is_empty(),
            "docs/events.md disagrees:\n{}",
            wrong.join("\n")
        );
    }
}
