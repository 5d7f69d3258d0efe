//! `understudy demo`: a viewserver and three nodes on this machine, the primary killed with
//! SIGKILL, and the checks that failover kept its promises. The children's stderr lines are
//! shown to the user; what the demo decides and checks it reads from their events files
//! (`--events`, docs/events.md).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

/// One line from a child, when it arrived.
#[derive(Debug)]
struct Event {
    who: String,
    line: String,
    at: Instant,
    /// From the child's stdout (released guest output) rather than its log.
    output: bool,
}

#[derive(Debug)]
struct Proc {
    child: Child,
    /// Released output (stdout), byte for byte.
    released: Arc<Mutex<Vec<u8>>>,
    transcript: PathBuf,
    events: PathBuf,
    addr: String,
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
    /// One of the final checks.
    Check { passed: bool, what: &'a str },
}

/// The complete JSON lines of an events file so far.
fn read_events(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The events called `name` in `path`.
fn events_named(path: &Path, name: &str) -> Vec<serde_json::Value> {
    read_events(path)
        .into_iter()
        .filter(|e| e["event"] == name)
        .collect()
}

fn spawn_reader(
    who: String,
    stream: impl Read + Send + 'static,
    output: bool,
    tx: Sender<Event>,
    keep: Option<Arc<Mutex<Vec<u8>>>>,
) {
    let _ = std::thread::Builder::new()
        .name(format!("demo-{who}"))
        .spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Some(k) = &keep {
                            k.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend_from_slice(&buf);
                        }
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        let _ = tx.send(Event {
                            who: who.clone(),
                            line,
                            at: Instant::now(),
                            output,
                        });
                    }
                }
            }
        });
}

struct Demo {
    exe: PathBuf,
    dir: PathBuf,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    verbose: bool,
    started: Instant,
    viewserver: Option<Child>,
    vs_addr: String,
    nodes: Vec<Proc>,
}

impl Demo {
    fn stamp(&self, at: Instant) -> String {
        format!("{:7.3}s", at.duration_since(self.started).as_secs_f64())
    }

    fn show(&self, e: &Event) {
        let interesting = e.output
            || e.line.contains("view ")
            || e.line.contains("installed")
            || e.line.contains("going live")
            || e.line.contains("stream")
            || e.line.contains("failed")
            || e.line.contains("error");
        if self.verbose || interesting {
            let tag = if e.output { "out" } else { "log" };
            println!("{} [{} {tag}] {}", self.stamp(e.at), e.who, e.line);
        }
    }

    /// Takes events until `pred` matches one (returned) or `timeout` passes.
    fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
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

    /// Waits until the events file at `path` has an event called `name`; returns it.
    fn wait_event(
        &mut self,
        path: &Path,
        name: &str,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        self.wait_event_where(path, name, timeout, |_| true)
    }

    /// Waits until the events file at `path` has an event called `name` that `pred` accepts.
    fn wait_event_where(
        &mut self,
        path: &Path,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = events_named(path, name).into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.wait_for(Duration::from_millis(20), |_| false);
        }
    }

    fn start_viewserver(&mut self, ping_ms: u64) -> Result<(), String> {
        let events = self.dir.join("viewserver.events");
        let mut child = Command::new(&self.exe)
            .args(["viewserver", "--listen", "127.0.0.1:0"])
            .args(["--ping-interval-ms", &ping_ms.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join("viewserver.data"))
            .arg("--events")
            .arg(&events)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the viewserver: {e}"))?;
        let out = child.stdout.take().ok_or("no viewserver stdout")?;
        let err = child.stderr.take().ok_or("no viewserver stderr")?;
        spawn_reader("vs".into(), out, false, self.tx.clone(), None);
        spawn_reader("vs".into(), err, false, self.tx.clone(), None);
        self.viewserver = Some(child);
        let listening = self
            .wait_event(&events, "listening", Duration::from_secs(10))
            .ok_or("the viewserver did not say where it listens")?;
        self.vs_addr = listening["addr"]
            .as_str()
            .ok_or("a listening event without an address")?
            .to_string();
        Ok(())
    }

    fn start_node(
        &mut self,
        name: &str,
        guest: &str,
        args: &[String],
        ping_ms: u64,
    ) -> Result<(), String> {
        let transcript = self.dir.join(format!("{name}.transcript"));
        let events = self.dir.join(format!("{name}.events"));
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "node",
            "--viewserver",
            &self.vs_addr,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--guest", guest])
        .args(["--ping-interval-ms", &ping_ms.to_string()])
        .arg("--transcript")
        .arg(&transcript)
        .arg("--events")
        .arg(&events);
        for a in args {
            cmd.args(["--guest-arg", a]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting node {name}: {e}"))?;
        let released = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().ok_or("no node stdout")?;
        let err = child.stderr.take().ok_or("no node stderr")?;
        spawn_reader(
            name.into(),
            out,
            true,
            self.tx.clone(),
            Some(Arc::clone(&released)),
        );
        spawn_reader(name.into(), err, false, self.tx.clone(), None);
        let started = self
            .wait_event(&events, "started", Duration::from_secs(10))
            .ok_or(format!("node {name} never started"))?;
        let addr = started["name"]
            .as_str()
            .ok_or("a started event without a name")?
            .to_string();
        self.nodes.push(Proc {
            child,
            released,
            transcript,
            events,
            addr,
        });
        Ok(())
    }

    fn node_by_addr(&self, addr: &str) -> Option<&Proc> {
        self.nodes.iter().find(|n| n.addr == addr)
    }

    fn view(&self) -> Option<viewserver::View> {
        viewserver::get_view(&self.vs_addr, Duration::from_secs(1))
            .ok()
            .map(|s| s.view)
    }

    /// Polls the view until `pred` holds.
    fn wait_view(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&viewserver::View) -> bool,
    ) -> Option<viewserver::View> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(v) = self.view()
                && pred(&v)
            {
                return Some(v);
            }
            self.wait_for(Duration::from_millis(50), |_| false);
        }
        None
    }

    fn stop_all(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        if let Some(vs) = self.viewserver.as_mut() {
            let _ = vs.kill();
            let _ = vs.wait();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
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
        exe,
        dir: dir.clone(),
        tx,
        rx,
        verbose: args.verbose,
        started: Instant::now(),
        viewserver: None,
        vs_addr: String::new(),
        nodes: Vec::new(),
    };
    crate::events::open(&dir.join("demo.events"), "demo")?;
    let result = scenario(&mut demo, args, &guest_args);
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
            let a = demo.nodes[0].addr.clone();
            demo.wait_view(Duration::from_secs(10), |v| v.primary == a)
                .ok_or("A never became primary")?;
        }
        if name == "B" {
            let b = demo.nodes[1].addr.clone();
            demo.wait_view(Duration::from_secs(10), |v| v.backup == b)
                .ok_or("B never became backup")?;
        }
    }
    let a = demo.nodes[0].addr.clone();
    let b = demo.nodes[1].addr.clone();
    let c = demo.nodes[2].addr.clone();
    println!("== roles: A={a} primary, B={b} backup, C={c} idle ==");
    let (a_events, b_events, c_events) = (
        demo.nodes[0].events.clone(),
        demo.nodes[1].events.clone(),
        demo.nodes[2].events.clone(),
    );
    demo.wait_event(&b_events, "state_installed", Duration::from_secs(30))
        .ok_or("B never installed the primary's state")?;
    demo.wait_for(Duration::from_secs_f64(args.kill_after_secs), |_| false);
    // A guest that already ended leaves nothing to fail over: say so, not "failover failed".
    if let Some(off) = events_named(&a_events, "guest_powered_off").first() {
        return Err(format!(
            "the guest finished (exit code {}) before the kill, so there was nothing to fail over: give it more work (--guest-arg) or kill sooner (--kill-after-secs)",
            off["code"]
        ));
    }

    println!(
        "== SIGKILL to the primary A (pid {}) ==",
        demo.nodes[0].child.id()
    );
    let killed_at = Instant::now();
    demo.nodes[0]
        .child
        .kill()
        .map_err(|e| format!("killing A: {e}"))?;
    emit(&DemoEvent::Killed {
        node: "A",
        pid: demo.nodes[0].child.id(),
    });
    let _ = demo.nodes[0].child.wait();
    // Everything A released is on its pipe: read it all before judging.
    demo.wait_for(Duration::from_millis(200), |_| false);
    let a_released = demo.nodes[0]
        .released
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();

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
    let first_output = demo.wait_for(Duration::from_secs(20), |e| {
        e.who == "B" && e.output && e.at > killed_at
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
        .wait_event(&c_events, "state_installed", Duration::from_secs(30))
        .is_some();
    demo.wait_for(Duration::from_secs_f64(args.run_after_secs), |_| false);
    // B samples its backup's lag once a second: however short `--run-after-secs`, or slow the
    // machine, wait (bounded) for one sample of C before judging it.
    demo.wait_event_where(&b_events, "lag", Duration::from_secs(10), |e| {
        e["backup"] == c.as_str()
    });
    // B's replication samples since C installed the state: lag of C's replay behind B.
    let lags: Vec<f64> = events_named(&b_events, "lag")
        .iter()
        .filter(|e| e["backup"] == c.as_str())
        .filter_map(|e| e["ms"].as_f64())
        .collect();
    demo.stop_all();
    demo.wait_for(Duration::from_millis(200), |_| false);

    let b_node = demo.node_by_addr(&b).ok_or("B vanished")?;
    let b_transcript = read(&b_node.transcript);
    let b_released = b_node
        .released
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let c_transcript = read(&demo.nodes[2].transcript);
    let from = events_named(&b_events, "going_live")
        .first()
        .and_then(|e| e["released_from"].as_u64())
        .map(|f| f as usize);
    let c_failed = !events_named(&c_events, "replay_failed").is_empty()
        || !events_named(&c_events, "state_refused").is_empty();

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
