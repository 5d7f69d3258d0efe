//! `understudy demo`: a viewserver and three nodes on this machine, the primary killed with
//! SIGKILL, and the checks that failover kept its promises. The children's stderr lines are
//! shown to the user; what the demo decides and checks it reads from their events files
//! (`--events`, docs/events.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use cluster::events::is;
use cluster::{
    EventsFile, Line, Node, NodeSpec, Signal, Store, Stream, Understudy, Viewserver,
    ViewserverSpec, wait,
};

use clap::Args;

use super::CmdResult;
use crate::events::emit;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Built-in workload to replicate.
    #[arg(long, default_value = "ticker")]
    pub guest: String,
    /// Guest arguments (default for the ticker: 20 lines a second for 30 seconds).
    #[arg(long = "guest-arg", value_name = "ARG")]
    pub guest_args: Vec<String>,
    /// Seconds after the backup has the state before the primary is killed.
    #[arg(long, default_value_t = 3.0)]
    pub kill_after_secs: f64,
    /// Seconds to keep running after the failover before checking and stopping.
    #[arg(long, default_value_t = 3.0)]
    pub run_after_secs: f64,
    /// Ping interval of the viewserver and nodes (the viewserver declares a node dead after
    /// 5 missed pings).
    #[arg(long, default_value_t = 100)]
    pub ping_interval_ms: u64,
    /// Keep the nodes' transcripts and outputs in this directory (default: a temporary one,
    /// removed at the end).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Print every line the nodes log, not just role changes.
    #[arg(long)]
    pub verbose: bool,
    /// The network service instead: three `kv` nodes on TAP devices in network namespaces it
    /// builds (root), a client holding one TCP connection that counts with INCR through the
    /// kill. Everything it made is removed at the end, also after Ctrl-C. Its guest is always
    /// `kv`.
    #[arg(long, conflicts_with_all = ["guest", "guest_args"])]
    pub net: bool,
}

/// What the demo itself did and found, in `WORKDIR/demo.events` (docs/events.md).
#[derive(Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum DemoEvent<'a> {
    /// The primary was sent SIGKILL.
    Killed { node: &'a str, pid: u32 },
    /// The demo saw the view name another primary, `after_ms` after the kill.
    ViewSeen {
        view: u64,
        primary: &'a str,
        after_ms: f64,
    },
    /// The new primary's first released output reached the demo `after_ms` after the kill.
    FirstOutput { node: &'a str, after_ms: f64 },
    /// `demo --net`: the client's connection answered again `after_ms` after the kill; its TCP
    /// retransmitted `client_retransmits` segments meanwhile, with a retransmission timer of
    /// `client_rto_ms` before the kill (null: not readable).
    AnsweredAgain {
        after_ms: f64,
        client_retransmits: Option<u32>,
        client_rto_ms: Option<u32>,
    },
    /// One of the final checks.
    Check { passed: bool, what: &'a str },
}

/// The events called `name` so far (a demo error if the file cannot be read).
fn events_named(events: &EventsFile, name: &str) -> Result<Vec<serde_json::Value>, String> {
    events.named(name).map_err(|e| e.to_string())
}

/// The children's lines, shown as they arrive (the ones worth a person's attention, or all).
pub(super) struct Console {
    rx: Receiver<Line>,
    verbose: bool,
    started: Instant,
}

impl Console {
    pub(super) fn new(rx: Receiver<Line>, verbose: bool) -> Self {
        Self {
            rx,
            verbose,
            started: Instant::now(),
        }
    }

    pub(super) fn stamp(&self, at: Instant) -> String {
        format!("{:7.3}s", at.duration_since(self.started).as_secs_f64())
    }

    fn show(&self, e: &Line) {
        let output = e.stream == Stream::Stdout;
        let interesting = output
            || e.text.contains("view ")
            || e.text.contains("installed")
            || e.text.contains("going live")
            || e.text.contains("stream")
            || e.text.contains("failed")
            || e.text.contains("error");
        if self.verbose || interesting {
            let tag = if output { "out" } else { "log" };
            println!("{} [{} {tag}] {}", self.stamp(e.at), e.who, e.text);
        }
    }

    /// Shows lines until `pred` matches one (when it arrived is returned) or `timeout` passes.
    fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Line) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(e) => {
                    self.show(&e);
                    if pred(&e) {
                        return Some(e.at);
                    }
                }
                Err(_) => continue,
            }
        }
    }

    /// Shows lines for `d`.
    pub(super) fn pause(&mut self, d: Duration) {
        self.wait_for(d, |_| false);
    }

    /// Shows the lines that arrived so far (while a child was being started).
    pub(super) fn catch_up(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.show(&e);
        }
    }
}

struct Demo {
    understudy: Understudy,
    dir: PathBuf,
    console: Console,
    viewserver: Option<Viewserver>,
    vs_addr: String,
    nodes: Vec<Node>,
}

impl Demo {
    /// Waits until `events` has an event called `name`; returns it.
    fn wait_event(
        &mut self,
        events: &EventsFile,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<serde_json::Value>, String> {
        self.wait_event_where(events, name, timeout, |_| true)
    }

    /// Waits until `events` has an event called `name` that `pred` accepts, showing the
    /// children's lines meanwhile.
    fn wait_event_where(
        &mut self,
        events: &EventsFile,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<Option<serde_json::Value>, String> {
        let console = &mut self.console;
        events
            .wait_for_with(0, timeout, |d| console.pause(d), |e| is(e, name) && pred(e))
            .map_err(|e| e.to_string())
    }

    fn start_viewserver(&mut self, ping_ms: u64) -> Result<(), String> {
        let store = Store::DataDir(self.dir.join("viewserver.data"));
        let spec = ViewserverSpec {
            events: Some(self.dir.join("viewserver.events")),
            start_timeout: Duration::from_secs(10),
            ..ViewserverSpec::new("127.0.0.1:0", ping_ms, store)
        };
        let vs = self.understudy.viewserver(spec);
        self.console.catch_up();
        let vs = vs.map_err(|e| format!("starting the viewserver: {e}"))?;
        self.vs_addr = vs.addr().to_string();
        self.viewserver = Some(vs);
        Ok(())
    }

    fn start_node(
        &mut self,
        name: &str,
        guest: &str,
        args: &[String],
        ping_ms: u64,
    ) -> Result<(), String> {
        let spec = NodeSpec {
            guest_args: args.to_vec(),
            ..NodeSpec::new(name, &self.dir, &self.vs_addr, guest, ping_ms)
        };
        let node = self.understudy.node(spec);
        self.console.catch_up();
        let node = node.map_err(|e| format!("starting node {name}: {e}"))?;
        self.nodes.push(node);
        Ok(())
    }

    fn node_by_addr(&self, addr: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.addr() == addr)
    }

    /// Polls the view until `pred` holds, showing the children's lines meanwhile.
    fn wait_view(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&viewserver::View) -> bool,
    ) -> Option<viewserver::View> {
        let (vs_addr, console) = (&self.vs_addr, &mut self.console);
        wait::poll_with(
            timeout,
            Duration::from_millis(50),
            |d| console.pause(d),
            || view(vs_addr).filter(|v| pred(v)),
        )
    }

    fn stop_all(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
        }
        if let Some(vs) = self.viewserver.as_mut() {
            let _ = vs.kill();
        }
    }
}

fn view(vs_addr: &str) -> Option<viewserver::View> {
    viewserver::get_view(vs_addr, Duration::from_secs(1))
        .ok()
        .map(|s| s.view)
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop_all();
    }
}

pub fn run(args: &DemoArgs) -> CmdResult {
    let exe = std::env::current_exe()?;
    let (dir, temp) = match &args.workdir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), false)
        }
        None => {
            let d = std::env::temp_dir().join(format!("understudy-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            (d, true)
        }
    };
    let guest_args = if args.guest_args.is_empty() && args.guest == "ticker" {
        vec!["hz=20".to_string(), "ticks=600".to_string()]
    } else {
        args.guest_args.clone()
    };
    let (tx, rx) = channel();
    let mut demo = Demo {
        understudy: Understudy::new(exe).with_lines(tx),
        dir: dir.clone(),
        console: Console::new(rx, args.verbose),
        viewserver: None,
        vs_addr: String::new(),
        nodes: Vec::new(),
    };
    crate::events::open(&dir.join("demo.events"), "demo")?;
    let result = if args.net {
        // Ctrl-C must not leave namespaces and processes behind: the signal only asks the
        // scenario to stop, and everything it made is dropped (killed, removed) on the way out.
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        crate::signals::ExitSignals::block()?.watch(move |_| {
            println!("demo: stopping (Ctrl-C): removing what it made");
            s.store(true, Ordering::Release);
        })?;
        super::demo_net::run(args, &dir, &stop)
    } else {
        scenario(&mut demo, args, &guest_args)
    };
    demo.stop_all();
    let ok = match result {
        Ok(checks) => {
            println!("\n== summary ==");
            let mut all = true;
            for (passed, what) in &checks {
                println!("  [{}] {what}", if *passed { "ok" } else { "FAILED" });
                emit(&DemoEvent::Check {
                    passed: *passed,
                    what,
                });
                all &= passed;
            }
            all
        }
        Err(e) => {
            println!("\ndemo: FAILED: {e}");
            false
        }
    };
    if temp && ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("transcripts and outputs kept in {}", dir.display());
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn scenario(
    demo: &mut Demo,
    args: &DemoArgs,
    guest_args: &[String],
) -> Result<Vec<(bool, String)>, String> {
    let ping = args.ping_interval_ms;
    let ping_d = Duration::from_millis(ping);
    println!(
        "== starting a viewserver and three nodes ({} {}) ==",
        args.guest,
        guest_args.join(" ")
    );
    demo.start_viewserver(ping)?;
    for name in ["A", "B", "C"] {
        demo.start_node(name, &args.guest, guest_args, ping)?;
        if name == "A" {
            let a = demo.nodes[0].addr().to_string();
            demo.wait_view(Duration::from_secs(10), |v| v.primary == a)
                .ok_or("A never became primary")?;
        }
        if name == "B" {
            let b = demo.nodes[1].addr().to_string();
            demo.wait_view(Duration::from_secs(10), |v| v.backup == b)
                .ok_or("B never became backup")?;
        }
    }
    let a = demo.nodes[0].addr().to_string();
    let b = demo.nodes[1].addr().to_string();
    let c = demo.nodes[2].addr().to_string();
    println!("== roles: A={a} primary, B={b} backup, C={c} idle ==");
    let (a_events, b_events, c_events) = (
        demo.nodes[0].events_file().clone(),
        demo.nodes[1].events_file().clone(),
        demo.nodes[2].events_file().clone(),
    );
    demo.wait_event(&b_events, "state_installed", Duration::from_secs(30))?
        .ok_or("B never installed the primary's state")?;
    demo.console
        .pause(Duration::from_secs_f64(args.kill_after_secs));
    // A guest that already ended leaves nothing to fail over: say so, not "failover failed".
    if let Some(off) = events_named(&a_events, "guest_powered_off")?.first() {
        return Err(format!(
            "the guest finished (exit code {}) before the kill, so there was nothing to fail over: give it more work (--guest-arg) or kill sooner (--kill-after-secs)",
            off["code"]
        ));
    }

    let a_pid = demo.nodes[0].pid();
    println!("== SIGKILL to the primary A (pid {a_pid}) ==");
    let killed_at = Instant::now();
    demo.nodes[0]
        .signal(Signal::Kill)
        .map_err(|e| format!("killing A: {e}"))?;
    emit(&DemoEvent::Killed {
        node: "A",
        pid: a_pid,
    });
    // Reaped, and everything A released read from its pipe, before judging.
    let _ = demo.nodes[0].kill();
    demo.console.pause(Duration::from_millis(200));
    let a_released = demo.nodes[0].out();

    let v = demo
        .wait_view(ping_d * 60 + Duration::from_secs(10), |v| v.primary != a)
        .ok_or("the viewserver never changed the primary")?;
    let view_changed = killed_at.elapsed();
    emit(&DemoEvent::ViewSeen {
        view: v.viewnum,
        primary: &v.primary,
        after_ms: view_changed.as_secs_f64() * 1e3,
    });
    println!(
        "== view {}: primary {}, backup {:?} ({:.0} ms after the kill) ==",
        v.viewnum,
        v.primary,
        v.backup,
        view_changed.as_secs_f64() * 1e3
    );
    let first_output = demo.console.wait_for(Duration::from_secs(20), |e| {
        e.who == "B" && e.stream == Stream::Stdout && e.at > killed_at
    });
    let failover = first_output.map(|t| t.duration_since(killed_at));
    if let Some(f) = failover {
        emit(&DemoEvent::FirstOutput {
            node: "B",
            after_ms: f.as_secs_f64() * 1e3,
        });
        println!(
            "== B released its first output {:.0} ms after the kill ==",
            f.as_secs_f64() * 1e3
        );
    }
    let c_backup = demo
        .wait_view(Duration::from_secs(20), |v| v.primary == b && v.backup == c)
        .is_some();
    let c_installed = demo
        .wait_event(&c_events, "state_installed", Duration::from_secs(30))?
        .is_some();
    demo.console
        .pause(Duration::from_secs_f64(args.run_after_secs));
    // B samples its backup's lag once a second: however short `--run-after-secs`, or slow the
    // machine, wait (bounded) for one sample of C before judging it.
    demo.wait_event_where(&b_events, "lag", Duration::from_secs(10), |e| {
        e["backup"] == c.as_str()
    })?;
    // B's replication samples since C installed the state: lag of C's replay behind B.
    let lags: Vec<f64> = events_named(&b_events, "lag")?
        .iter()
        .filter(|e| e["backup"] == c.as_str())
        .filter_map(|e| e["ms"].as_f64())
        .collect();
    demo.stop_all();
    demo.console.pause(Duration::from_millis(200));

    let transcript = |n: &Node| {
        n.read_transcript()
            .map_err(|e| format!("reading {}: {e}", n.transcript_path().display()))
    };
    let b_node = demo.node_by_addr(&b).ok_or("B vanished")?;
    let b_transcript = transcript(b_node)?;
    let b_released = b_node.out();
    let c_transcript = transcript(&demo.nodes[2])?;
    let from = events_named(&b_events, "going_live")?
        .first()
        .and_then(|e| e["released_from"].as_u64())
        .map(|f| f as usize);
    let c_failed = !events_named(&c_events, "replay_failed")?.is_empty()
        || !events_named(&c_events, "state_refused")?.is_empty();

    let mut checks = Vec::new();
    checks.push((
        v.primary == b,
        format!("failover: view {} made the backup B primary", v.viewnum),
    ));
    checks.push((
        b_transcript.starts_with(&a_released),
        format!(
            "everything A released ({} bytes) is a prefix of B's transcript ({} bytes)",
            a_released.len(),
            b_transcript.len()
        ),
    ));
    let continued = match from {
        Some(f) => {
            f <= a_released.len()
                && b_transcript.get(f..f + b_released.len()) == Some(&b_released[..])
        }
        None => false,
    };
    checks.push((
        continued,
        format!(
            "B released its transcript from byte {} on ({} bytes), with no gap after A's {} bytes ({} bytes repeated)",
            from.map_or("?".into(), |f| f.to_string()),
            b_released.len(),
            a_released.len(),
            from.map_or(0, |f| a_released.len().saturating_sub(f))
        ),
    ));
    // Generous bounds, so that a slow or busy machine passes and a broken failover does not:
    // detection alone is 5 missed pings.
    let failover_limit = ping_d * 5 + Duration::from_secs(5);
    checks.push((
        failover.is_some_and(|f| f <= failover_limit),
        format!(
            "failover time (SIGKILL to the new primary's first released output): {} (limit {:.0} ms)",
            failover.map_or("none".into(), |f| format!(
                "{:.0} ms",
                f.as_secs_f64() * 1e3
            )),
            failover_limit.as_secs_f64() * 1e3
        ),
    ));
    // C's transcript is the guest's console from byte 0 (the history it received, then what
    // it replayed): byte for byte B's at the same positions, and past where B went live.
    let c_in_sync = c_backup
        && c_installed
        && !c_failed
        && b_transcript.starts_with(&c_transcript)
        && from.is_some_and(|f| c_transcript.len() > f);
    checks.push((
        c_in_sync,
        format!(
            "the idle node C became B's backup by state transfer and replays in sync: its {} console bytes are B's bytes 0..{} ({})",
            c_transcript.len(),
            c_transcript.len(),
            if c_failed { "but its replay failed" } else { "no replay failure" }
        ),
    ));
    const LAG_LIMIT_MS: f64 = 2000.0;
    let last_lag = lags.last().copied();
    checks.push((
        last_lag.is_some_and(|l| l <= LAG_LIMIT_MS),
        format!(
            "C's replay lag behind B at the end: {} (limit {LAG_LIMIT_MS:.0} ms; max over {} samples {})",
            last_lag.map_or("no sample".into(), |l| format!("{l:.1} ms")),
            lags.len(),
            lags.iter()
                .copied()
                .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.max(l))))
                .map_or("-".into(), |m| format!("{m:.1} ms"))
        ),
    ));
    Ok(checks)
}
