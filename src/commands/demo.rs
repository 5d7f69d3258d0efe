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
    /// Guest arguments. Unless they bound the run themselves (`ticker`: `ticks=`; `compute`:
    /// `iters=` or `secs=`), the demo adds a duration that outlives the kill and the checks:
    /// `ticks=` (and `hz=20` if not given) for the ticker, `secs=` for compute.
    #[arg(long = "guest-arg", value_name = "ARG")]
    pub guest_args: Vec<String>,
    /// Seconds after the backup has the state before the primary is killed.
    #[arg(long, default_value_t = 3.0, value_parser = parse_secs)]
    pub kill_after_secs: f64,
    /// Seconds to keep running after the failover before checking and stopping.
    #[arg(long, default_value_t = 3.0, value_parser = parse_secs)]
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

/// Longest `--kill-after-secs` / `--run-after-secs`: a day is more than any demo needs, and
/// keeps the sized guest's tick count and every `Duration` far from overflowing.
const MAX_SECS: f64 = 86_400.0;

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..=MAX_SECS).contains(&v) {
        Ok(v)
    } else {
        Err(format!("seconds from 0 to {MAX_SECS}"))
    }
}

/// What a sized guest must outlive beyond `--kill-after-secs` + `--run-after-secs`: starting
/// the nodes and the first state transfer, the failover, the idle node's state transfer, the
/// wait for its lag sample, and a machine several times slower than ours doing all of it.
const OUTLIVE_SPARE_SECS: u64 = 60;

/// The ticker's rate when the user gives none: enough lines to watch the failover in.
const DEMO_TICKER_HZ: u64 = 20;

/// The guest arguments the demo runs with, and what it added to the user's (`None`: nothing).
/// Built-in guests get a duration in guest time (timer ticks, which the guest counts and the
/// log replays), so how fast this machine computes does not decide whether the guest is still
/// running at the kill.
fn sized_guest_args(
    guest: &str,
    given: &[String],
    kill_after_secs: f64,
    run_after_secs: f64,
) -> (Vec<String>, Option<String>) {
    let has = |key: &str| given.iter().any(|a| a.starts_with(&format!("{key}=")));
    // Both are at most MAX_SECS (parse_secs), so this stays small.
    let secs = (kill_after_secs + run_after_secs).ceil() as u64 + OUTLIVE_SPARE_SECS;
    let mut args = given.to_vec();
    let added = match guest {
        "compute" if !has("iters") && !has("secs") => vec![format!("secs={secs}")],
        "ticker" if !has("ticks") => {
            let given_hz = given
                .iter()
                .find_map(|a| a.strip_prefix("hz="))
                // As the guest reads it: decimal, or hexadecimal with 0x.
                .map(|hz| match hz.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => hz.parse::<u64>().ok(),
                });
            match given_hz {
                None => vec![
                    format!("hz={DEMO_TICKER_HZ}"),
                    format!("ticks={}", DEMO_TICKER_HZ * secs),
                ],
                Some(Some(hz)) => vec![format!("ticks={}", hz.saturating_mul(secs))],
                // The guest refuses (or reads) it itself; no rate, no sizing.
                Some(None) => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    if added.is_empty() {
        return (args, None);
    }
    let note = format!(
        "{} (about {secs} s of guest time: the kill after {kill_after_secs} s, {run_after_secs} s after it, {OUTLIVE_SPARE_SECS} s to spare)",
        added.join(" ")
    );
    args.extend(added);
    (args, Some(note))
}

/// What to change so that the guest is still running at the kill and through the checks.
fn more_work_hint(guest: &str, kill_after_secs: f64, run_after_secs: f64) -> String {
    let total = kill_after_secs + run_after_secs;
    match guest {
        "compute" => format!(
            "leave out --guest-arg and the demo sizes the run, or give --guest-arg secs=N (and no iters=) with N well above {total} (--kill-after-secs + --run-after-secs)"
        ),
        "ticker" => format!(
            "leave out ticks= and the demo sizes the run, or give --guest-arg ticks=N with N/hz well above {total} s (--kill-after-secs + --run-after-secs)"
        ),
        _ => format!(
            "give the guest work for well over {total} s (--kill-after-secs + --run-after-secs) through --guest-arg"
        ),
    }
}

/// A node's report that the guest powered off.
#[derive(Debug, Clone)]
struct GuestEnded {
    node: &'static str,
    /// How it ended, for people: "powered off (exit code 3)", "triple-faulted", ...
    how: String,
    /// On a backup, replaying the end its primary's guest came to.
    replayed: bool,
    t_unix_ms: f64,
}

impl GuestEnded {
    /// A's guest, or B's replay of it, ended before A was killed (A's log cannot hold anything
    /// A did after its death); otherwise the new primary's guest ended after the failover.
    fn before_the_kill(&self) -> bool {
        self.node == "A" || (self.node == "B" && self.replayed)
    }
}

/// The earliest report, from any node, that the guest ended: powered off, triple-faulted, or
/// asked for a reset.
fn guest_ended(nodes: &[(&'static str, EventsFile)]) -> Result<Option<GuestEnded>, String> {
    let mut first: Option<GuestEnded> = None;
    let ends = [
        "guest_powered_off",
        "guest_triple_faulted",
        "guest_reset_requested",
    ];
    for (node, events) in nodes {
        let all = events.read().map_err(|e| e.to_string())?;
        for e in all.iter().filter(|e| ends.iter().any(|n| is(e, n))) {
            let how = if is(e, "guest_powered_off") {
                format!("powered off (exit code {})", e["code"])
            } else if is(e, "guest_triple_faulted") {
                "triple-faulted".to_string()
            } else {
                "asked for a reset (understudy does not reboot guests)".to_string()
            };
            let off = GuestEnded {
                node,
                how,
                replayed: e["replayed"].as_bool().unwrap_or(false),
                t_unix_ms: e["t_unix_ms"].as_f64().unwrap_or(f64::MAX),
            };
            if first.as_ref().is_none_or(|f| off.t_unix_ms < f.t_unix_ms) {
                first = Some(off);
            }
        }
    }
    Ok(first)
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
    /// The first output of one child after an instant, as it goes by (whatever wait is
    /// showing lines then): (child, after, when).
    first_output: Option<(&'static str, Instant, Option<Instant>)>,
}

impl Console {
    pub(super) fn new(rx: Receiver<Line>, verbose: bool) -> Self {
        Self {
            rx,
            verbose,
            started: Instant::now(),
            first_output: None,
        }
    }

    /// From now on, notes when `who`'s first output line after `after` arrives.
    pub(super) fn watch_first_output(&mut self, who: &'static str, after: Instant) {
        self.first_output = Some((who, after, None));
    }

    /// Shows lines until the watched child's first output after the instant has arrived (also
    /// if an earlier wait showed it: `show` notes it) or `timeout` passes; when it arrived.
    pub(super) fn wait_first_output(&mut self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, _, Some(at))) = self.first_output {
                return Some(at);
            }
            self.next_shown(deadline)?;
        }
    }

    pub(super) fn stamp(&self, at: Instant) -> String {
        format!("{:7.3}s", at.duration_since(self.started).as_secs_f64())
    }

    fn show(&mut self, e: &Line) {
        let output = e.stream == Stream::Stdout;
        if let Some((who, after, at @ None)) = self.first_output.as_mut()
            && output
            && e.who == *who
            && e.at > *after
        {
            *at = Some(e.at);
        }
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
        while let Some(e) = self.next_shown(deadline) {
            if pred(&e) {
                return Some(e.at);
            }
        }
        None
    }

    /// The next line, once shown; `None` once `deadline` passed without one.
    fn next_shown(&mut self, deadline: Instant) -> Option<Line> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Ok(e) = self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                self.show(&e);
                return Some(e);
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
    /// Every node's events, by name: where a guest that powered off is seen.
    watch: Vec<(&'static str, EventsFile)>,
    /// When the backup installed the first state (ms since 1970).
    installed_unix_ms: Option<f64>,
}

/// How a wait that also watches for the guest's end ended.
enum Waited<T> {
    Got(T),
    GuestEnded(GuestEnded),
    TimedOut,
}

impl Demo {
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
        name: &'static str,
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
        self.watch.push((name, node.events_file().clone()));
        self.nodes.push(node);
        Ok(())
    }

    fn node_by_addr(&self, addr: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.addr() == addr)
    }

    /// Polls `check` (given the viewserver's address) until it finds something, `timeout`
    /// passes, or a node reports that the guest powered off: nothing the demo waits for can
    /// happen after that, and the user should hear why at once, not after a timeout.
    fn wait_or_off<T>(
        &mut self,
        timeout: Duration,
        mut check: impl FnMut(&str) -> Result<Option<T>, String>,
    ) -> Result<Waited<T>, String> {
        let (vs_addr, console, watch) = (&self.vs_addr, &mut self.console, &self.watch);
        let found = wait::try_poll_with(
            timeout,
            Duration::from_millis(50),
            |d| console.pause(d),
            || {
                if let Some(off) = guest_ended(watch)? {
                    return Ok::<_, String>(Some(Waited::GuestEnded(off)));
                }
                Ok(check(vs_addr)?.map(Waited::Got))
            },
        )?;
        Ok(found.unwrap_or(Waited::TimedOut))
    }

    /// [`Self::wait_or_off`]: a guest that ended before the kill is the demo's error (there
    /// was nothing to fail over); one that ended after it only ends the wait (`None`), and the
    /// checks say what it cost.
    fn wait_running<T>(
        &mut self,
        args: &DemoArgs,
        timeout: Duration,
        check: impl FnMut(&str) -> Result<Option<T>, String>,
    ) -> Result<Option<T>, String> {
        match self.wait_or_off(timeout, check)? {
            Waited::Got(t) => Ok(Some(t)),
            Waited::GuestEnded(off) if off.before_the_kill() => {
                Err(self.finished_before_the_kill(&off, args))
            }
            Waited::GuestEnded(_) | Waited::TimedOut => Ok(None),
        }
    }

    fn finished_before_the_kill(&self, off: &GuestEnded, args: &DemoArgs) -> String {
        let after_state = self
            .installed_unix_ms
            .map(|t| (off.t_unix_ms - t) / 1e3)
            .filter(|s| *s >= 0.0);
        let (when, sooner) = match after_state {
            Some(s) => (
                format!(
                    "about {s:.1} s after the backup had its state (--kill-after-secs was {})",
                    args.kill_after_secs
                ),
                // Below half a second, killing sooner would race the transfer itself.
                if s >= 0.5 {
                    format!(", or kill sooner (--kill-after-secs below {s:.1})")
                } else {
                    String::new()
                },
            ),
            None => ("before the backup had its state".to_string(), String::new()),
        };
        let seen = if off.node == "A" {
            "the primary A reported it"
        } else {
            "the backup B replayed it from A's log"
        };
        format!(
            "the guest finished before the kill: it {} {when}; {seen}. There was no running guest to fail over, so this is not a failover failure. To see a failover, {}{sooner}.",
            off.how,
            more_work_hint(&args.guest, args.kill_after_secs, args.run_after_secs)
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

/// What a demo run leaves in its directory (the plain and the `--net` demo alike).
const RUN_FILES: [&str; 9] = [
    "viewserver.events",
    "demo.events",
    "A.events",
    "A.transcript",
    "B.events",
    "B.transcript",
    "C.events",
    "C.transcript",
    "viewserver.data",
];

/// Removes what an earlier demo run left in `dir` (only those names); how many were there.
fn clear_previous_run(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for name in RUN_FILES {
        let path = dir.join(name);
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("removing the previous demo run's {}: {e}", path.display()),
                ));
            }
        }
    }
    Ok(removed)
}

pub fn run(args: &DemoArgs) -> CmdResult {
    let exe = std::env::current_exe()?;
    let (dir, temp) = match &args.workdir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            // A reused directory holds the last run's view service, whose view names nodes
            // that are gone (or whose guest finished): every run starts a new one.
            let removed = clear_previous_run(d)?;
            if removed > 0 {
                println!(
                    "demo: removed the previous demo run's {removed} files from {}",
                    d.display()
                );
            }
            (d.clone(), false)
        }
        None => {
            let d = std::env::temp_dir().join(format!("understudy-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            (d, true)
        }
    };
    let (guest_args, sized) = sized_guest_args(
        &args.guest,
        &args.guest_args,
        args.kill_after_secs,
        args.run_after_secs,
    );
    let (tx, rx) = channel();
    let mut demo = Demo {
        understudy: Understudy::new(exe).with_lines(tx),
        dir: dir.clone(),
        console: Console::new(rx, args.verbose),
        viewserver: None,
        vs_addr: String::new(),
        nodes: Vec::new(),
        watch: Vec::new(),
        installed_unix_ms: None,
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
        if let Some(sized) = &sized {
            println!("== {} sized by the demo: {sized} ==", args.guest);
        }
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
            demo.wait_running(args, Duration::from_secs(10), |vs| {
                Ok(view(vs).filter(|v| v.primary == a))
            })?
            .ok_or("A never became primary")?;
        }
        if name == "B" {
            let b = demo.nodes[1].addr().to_string();
            demo.wait_running(args, Duration::from_secs(10), |vs| {
                Ok(view(vs).filter(|v| v.backup == b))
            })?
            .ok_or("B never became backup")?;
        }
    }
    let a = demo.nodes[0].addr().to_string();
    let b = demo.nodes[1].addr().to_string();
    let c = demo.nodes[2].addr().to_string();
    println!("== roles: A={a} primary, B={b} backup, C={c} idle ==");
    let (b_events, c_events) = (
        demo.nodes[1].events_file().clone(),
        demo.nodes[2].events_file().clone(),
    );
    let installed = demo
        .wait_running(args, Duration::from_secs(30), |_| {
            b_events
                .find(0, |e| is(e, "state_installed"))
                .map_err(|e| e.to_string())
        })?
        .ok_or("B never installed the primary's state")?;
    demo.installed_unix_ms = installed["t_unix_ms"].as_f64();
    // A guest that ends before the kill leaves nothing to fail over: the wait says so (also
    // when it ends just before the kill and only B's replay of A's log shows it, below).
    demo.wait_running(args, Duration::from_secs_f64(args.kill_after_secs), |_| {
        Ok(None::<()>)
    })?;

    let a_pid = demo.nodes[0].pid();
    println!("== SIGKILL to the primary A (pid {a_pid}) ==");
    let killed_at = Instant::now();
    let killed_unix_ms = crate::events::unix_ms() as f64;
    demo.console.watch_first_output("B", killed_at);
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
        .wait_running(args, ping_d * 60 + Duration::from_secs(10), |vs| {
            Ok(view(vs).filter(|v| v.primary != a))
        })?
        .ok_or("the viewserver never changed the primary")?;
    // When the service changed it (its own event), not when the demo's poll saw it.
    let vs_events = cluster::EventsFile::new(demo.dir.join("viewserver.events"));
    let view_changed = events_named(&vs_events, "view_changed")?
        .iter()
        .filter(|e| e["view"]["viewnum"].as_u64() == Some(v.viewnum))
        .find_map(|e| e["t_unix_ms"].as_f64())
        .map_or_else(
            || killed_at.elapsed(),
            |t| Duration::from_secs_f64((t - killed_unix_ms).max(0.0) / 1e3),
        );
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
    // B may yet replay the end of A's guest (then it never goes live): look between lines.
    let first_output = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = demo.console.wait_first_output(Duration::from_millis(100));
            if line.is_some() {
                break line;
            }
            match guest_ended(&demo.watch)? {
                Some(off) if off.before_the_kill() => {
                    return Err(demo.finished_before_the_kill(&off, args));
                }
                Some(_) => break None,
                None if Instant::now() >= deadline => break None,
                None => {}
            }
        }
    };
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
        .wait_running(args, Duration::from_secs(20), |vs| {
            Ok(view(vs).filter(|v| v.primary == b && v.backup == c))
        })?
        .is_some();
    let c_installed = demo
        .wait_running(args, Duration::from_secs(30), |_| {
            c_events
                .find(0, |e| is(e, "state_installed"))
                .map_err(|e| e.to_string())
        })?
        .is_some();
    demo.wait_running(args, Duration::from_secs_f64(args.run_after_secs), |_| {
        Ok(None::<()>)
    })?;
    // B samples its backup's lag once a second: however short `--run-after-secs`, or slow the
    // machine, wait (bounded) for one sample of C before judging it.
    demo.wait_running(args, Duration::from_secs(10), |_| {
        b_events
            .find(0, |e| is(e, "lag") && e["backup"] == c.as_str())
            .map_err(|e| e.to_string())
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
    // A guest that ended after the failover but before the checks leaves them short of
    // material (no lag samples, a short transcript): say that, not only which check failed.
    if checks.iter().any(|(passed, _)| !passed)
        && let Some(off) = guest_ended(&demo.watch)?
    {
        if off.before_the_kill() {
            return Err(demo.finished_before_the_kill(&off, args));
        }
        checks.push((
            false,
            format!(
                "the guest kept running through the checks: it finished after the failover (it {} on {} {:.1} s after the kill). For the checks to see it running, {}, or a shorter --run-after-secs",
                off.how,
                off.node,
                (off.t_unix_ms - killed_unix_ms) / 1e3,
                more_work_hint(&args.guest, args.kill_after_secs, args.run_after_secs)
            ),
        ));
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The guest time a sized run gets, from its arguments.
    fn guest_secs(args: &[String]) -> f64 {
        let num = |key: &str| {
            let v = args.iter().find_map(|a| a.strip_prefix(key))?;
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok().map(|n| n as f64),
                None => v.parse::<f64>().ok(),
            }
        };
        match (num("secs="), num("ticks="), num("hz=")) {
            (Some(s), _, _) => s,
            (None, Some(t), Some(hz)) => t / hz,
            other => panic!("no duration in {args:?}: {other:?}"),
        }
    }

    #[test]
    fn built_in_guests_outlive_the_kill_and_the_checks_however_long_they_are() {
        for (kill, run) in [(3.0, 3.0), (0.0, 0.5), (600.0, 30.0), (MAX_SECS, MAX_SECS)] {
            for (guest, given) in [
                ("compute", &[][..]),
                ("compute", &["tasks=4", "user"][..]),
                ("ticker", &[][..]),
                ("ticker", &["hz=50"][..]),
                ("ticker", &["hz=0x40"][..]),
            ] {
                let (args, note) = sized_guest_args(guest, &strings(given), kill, run);
                assert!(note.is_some(), "{guest} {given:?} not sized");
                assert!(
                    args.starts_with(&strings(given)),
                    "the user's arguments were changed: {args:?}"
                );
                assert!(
                    guest_secs(&args) >= kill + run + 30.0,
                    "{guest} {args:?} ends too soon for a kill after {kill} s and {run} s after"
                );
            }
        }
    }

    #[test]
    fn a_run_the_user_bounded_or_an_unknown_guest_is_left_as_given() {
        for (guest, given) in [
            ("compute", &["iters=100"][..]),
            ("compute", &["secs=2"][..]),
            ("ticker", &["ticks=5"][..]),
            ("ticker", &["hz=fast"][..]),
            ("/some/kernel.elf", &[][..]),
        ] {
            let (args, note) = sized_guest_args(guest, &strings(given), 3.0, 3.0);
            assert_eq!(args, strings(given), "{guest}");
            assert!(note.is_none(), "{guest} {given:?}");
        }
    }

    #[test]
    fn seconds_must_be_a_finite_non_negative_number_up_to_a_day() {
        assert_eq!(parse_secs("2.5"), Ok(2.5));
        assert_eq!(parse_secs("0"), Ok(0.0));
        for bad in ["-1", "NaN", "inf", "86401", "x"] {
            assert!(parse_secs(bad).is_err(), "{bad} accepted");
        }
    }
}
