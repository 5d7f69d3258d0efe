//! A viewserver and `understudy node` processes on loopback, for failover tests. Every node's
//! stdout (released output) and stderr (its log, for failure messages) are collected as they
//! arrive; what the tests check about roles, transfers and going live they read from the node's
//! machine-readable events (`--events`, docs/events.md).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bin;
use super::netns::Net;

/// The `understudy` binary, run inside `host`'s namespace when there is a network.
fn program(net: Option<&Net>, host: &str) -> Command {
    match net {
        Some(n) => n.command(host, bin()),
        None => Command::new(bin()),
    }
}

pub struct Proc {
    pub child: Child,
    pub addr: String,
    pub out: Arc<Mutex<Vec<u8>>>,
    pub log: Arc<Mutex<String>>,
    pub transcript: PathBuf,
    pub events: PathBuf,
    pub killed: bool,
}

impl Proc {
    /// The node's events so far, in order (complete lines only: one may be being written).
    pub fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event {l:?}: {e}")))
            .collect()
    }
    /// How many events the node has emitted: a mark for [`Proc::wait_event`].
    pub fn event_count(&self) -> usize {
        self.events().len()
    }
    /// The events called `name`, in order.
    pub fn events_named(&self, name: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }
    /// Waits for an event called `name` after the first `from` events; returns it.
    pub fn wait_event(
        &self,
        name: &str,
        from: usize,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        self.wait_for(from, timeout, |e| e["event"] == name)
    }
    /// Waits for an event that satisfies `pred` after the first `from` events; returns it.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.events().into_iter().skip(from).find(|e| pred(e));
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// Where each of the node's primary roles began: (console byte it released from, byte of
    /// its stdout where that output starts), from its `booting` and `going_live` events.
    pub fn role_starts(&self) -> Vec<(usize, usize)> {
        let n = |e: &serde_json::Value, k: &str| {
            e[k].as_u64()
                .unwrap_or_else(|| panic!("event without {k}: {e}")) as usize
        };
        self.events()
            .iter()
            .filter_map(|e| match e["event"].as_str() {
                Some("booting") => Some((0, n(e, "stdout_byte"))),
                Some("going_live") => Some((n(e, "released_from"), n(e, "stdout_byte"))),
                _ => None,
            })
            .collect()
    }
    pub fn out(&self) -> Vec<u8> {
        self.out.lock().unwrap().clone()
    }
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
    pub fn transcript(&self) -> Vec<u8> {
        std::fs::read(&self.transcript).unwrap_or_default()
    }
    /// Waits until the node's log contains `needle` (counting from byte `from` of the log).
    pub fn wait_log(&self, needle: &str, from: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().get(from..).is_some_and(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
    /// Bytes of released output so far.
    pub fn out_len(&self) -> usize {
        self.out.lock().unwrap().len()
    }
    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.killed = true;
        // Let the pipe readers take what the process wrote before it died.
        std::thread::sleep(Duration::from_millis(100));
    }
    pub fn signal(&self, sig: libc_signal::Signal) {
        libc_signal::send(self.child.id(), sig);
    }
}

/// Signals by PID, for SIGSTOP/SIGCONT (std only offers SIGKILL).
pub mod libc_signal {
    #[derive(Clone, Copy)]
    pub enum Signal {
        Stop,
        Cont,
        Term,
    }
    pub fn send(pid: u32, sig: Signal) {
        // `kill -STOP 0` would stop our own process group, the test included.
        assert_ne!(pid, 0, "no process to signal");
        let name = match sig {
            Signal::Stop => "-STOP",
            Signal::Cont => "-CONT",
            Signal::Term => "-TERM",
        };
        let ok = std::process::Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {name} {pid}");
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut buf) {
            if n == 0 {
                return;
            }
            into.lock().unwrap().extend_from_slice(&buf);
            buf.clear();
        }
    });
}

fn collect_text(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut line = String::new();
        while let Ok(n) = r.read_line(&mut line) {
            if n == 0 {
                return;
            }
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

/// A viewserver process: where it listens and what it said on stderr after its first line.
pub struct Viewserver {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
    pub killed: bool,
    /// How it was started, to start it again: the arguments after the ping interval.
    pub args: Vec<std::ffi::OsString>,
}

impl Viewserver {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
    /// `GET /view` of this viewserver alone (a follower answers 503).
    pub fn status(&self) -> Result<viewserver::Status, viewserver::ClientError> {
        viewserver::get_view(&self.addr, Duration::from_secs(1))
    }
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.killed = true;
    }
}

/// Starts `understudy viewserver --listen LISTEN --ping-interval-ms PING_MS ARGS...` (`cmd`:
/// the binary, possibly inside a namespace); returns once it said where it listens.
pub fn spawn_viewserver_with(
    mut cmd: Command,
    listen: &str,
    ping_ms: u64,
    args: &[&std::ffi::OsStr],
) -> Viewserver {
    let mut vs = cmd
        .args(["viewserver", "--listen", listen])
        .args(["--ping-interval-ms", &ping_ms.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says where it listens on stderr first.
    let mut err = BufReader::new(vs.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("viewserver: listening on ")
        .unwrap_or_else(|| {
            let _ = vs.kill();
            let _ = vs.wait();
            panic!("viewserver said {line:?}")
        })
        .to_string();
    let log = Arc::new(Mutex::new(String::new()));
    collect_text(err, Arc::clone(&log));
    Viewserver {
        child: vs,
        addr,
        log,
        killed: false,
        args: args.iter().map(|a| a.to_os_string()).collect(),
    }
}

/// Starts `understudy viewserver` (`cmd`) on `listen` with its data in `dir/viewserver.data`.
pub fn spawn_viewserver(
    cmd: Command,
    dir: &std::path::Path,
    listen: &str,
    ping_ms: u64,
) -> Viewserver {
    let data = dir.join("viewserver.data");
    spawn_viewserver_with(
        cmd,
        listen,
        ping_ms,
        &["--data-dir".as_ref(), data.as_os_str()],
    )
}

/// Starts `understudy viewserver` with its state in etcd at `urls` under `prefix`.
pub fn spawn_viewserver_on_etcd(
    listen: &str,
    ping_ms: u64,
    urls: &str,
    prefix: &str,
) -> Viewserver {
    spawn_viewserver_with(
        Command::new(bin()),
        listen,
        ping_ms,
        &[
            "--etcd".as_ref(),
            urls.as_ref(),
            "--etcd-prefix".as_ref(),
            prefix.as_ref(),
        ],
    )
}

/// How a primary's death ended.
#[derive(Debug)]
pub enum Failover {
    /// The view made another node primary.
    Promoted(viewserver::View),
    /// Nobody holds the guest: the backup had just lost its replica (the line saying so).
    Lost(String),
}

pub struct Cluster {
    /// Hosts in network namespaces (viewserver on host "vs", the test's own queries from host
    /// "ctl"), or everything on loopback.
    pub net: Option<std::sync::Arc<Net>>,
    pub dir: tempfile::TempDir,
    /// One viewserver on a data directory, or several on one etcd.
    pub vs: Vec<Viewserver>,
    /// Every viewserver's address, comma-separated: what nodes are given.
    pub vs_addr: String,
    pub nodes: Vec<Proc>,
    pub guest: String,
    pub guest_args: Vec<String>,
    pub ping_ms: u64,
    /// `--mem-mib` for nodes started from now on (the node's default if `None`).
    pub mem_mib: Option<u32>,
}

impl Cluster {
    fn with_viewservers(
        net: Option<std::sync::Arc<Net>>,
        dir: tempfile::TempDir,
        vs: Vec<Viewserver>,
        guest: &str,
        guest_args: &[&str],
        ping_ms: u64,
    ) -> Self {
        let vs_addr = vs
            .iter()
            .map(|v| v.addr.as_str())
            .collect::<Vec<_>>()
            .join(",");
        Self {
            net,
            dir,
            vs,
            vs_addr,
            nodes: Vec::new(),
            guest: guest.into(),
            guest_args: guest_args.iter().map(|s| s.to_string()).collect(),
            ping_ms,
            mem_mib: None,
        }
    }

    pub fn start(guest: &str, guest_args: &[&str], ping_ms: u64) -> Self {
        Self::start_on(None, guest, guest_args, ping_ms)
    }

    /// [`Self::start`] on the hosts of `net` (which must have hosts "vs" and "ctl"), or on
    /// loopback.
    pub fn start_on(
        net: Option<std::sync::Arc<Net>>,
        guest: &str,
        guest_args: &[&str],
        ping_ms: u64,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listen = net.as_ref().map_or_else(
            || "127.0.0.1:0".to_string(),
            |n| format!("{}:7100", n.ip("vs")),
        );
        let vs = spawn_viewserver(program(net.as_deref(), "vs"), dir.path(), &listen, ping_ms);
        Self::with_viewservers(net, dir, vec![vs], guest, guest_args, ping_ms)
    }

    /// `viewservers` viewservers sharing the view in etcd (`etcd_urls`, comma-separated)
    /// under a prefix of their own.
    pub fn start_on_etcd(
        guest: &str,
        guest_args: &[&str],
        ping_ms: u64,
        etcd_urls: &str,
        viewservers: usize,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!(
            "/understudy-test/{}",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let vs = (0..viewservers)
            .map(|_| spawn_viewserver_on_etcd("127.0.0.1:0", ping_ms, etcd_urls, &prefix))
            .collect();
        Self::with_viewservers(None, dir, vs, guest, guest_args, ping_ms)
    }

    /// SIGKILLs the (single, file-backed) viewserver and starts it again on the same address
    /// and data directory.
    pub fn restart_viewserver(&mut self) {
        self.restart_viewserver_at(0);
    }

    /// SIGKILLs viewserver `i` (if it still runs) and starts it again as it was started: same
    /// address, same data directory or etcd, same host.
    pub fn restart_viewserver_at(&mut self, i: usize) {
        let addr = self.vs[i].addr.clone();
        self.vs[i].sigkill();
        let host = self.net.as_ref().map(|n| {
            n.host_of(&addr)
                .unwrap_or_else(|| panic!("no host has {addr}"))
        });
        let cmd = program(self.net.as_deref(), host.as_deref().unwrap_or("vs"));
        let args: Vec<std::ffi::OsString> = self.vs[i].args.clone();
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.vs[i] = spawn_viewserver_with(cmd, &addr, self.ping_ms, &args);
        assert_eq!(self.vs[i].addr, addr);
    }

    /// Viewservers on hosts `vs_hosts` of `net` (port 7100), sharing the view in etcd.
    pub fn start_on_etcd_net(
        net: std::sync::Arc<Net>,
        guest: &str,
        guest_args: &[&str],
        ping_ms: u64,
        etcd_urls: &str,
        vs_hosts: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!(
            "/understudy-test/{}",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let vs = vs_hosts
            .iter()
            .map(|h| {
                spawn_viewserver_with(
                    net.command(h, bin()),
                    &format!("{}:7100", net.ip(h)),
                    ping_ms,
                    &[
                        "--etcd".as_ref(),
                        etcd_urls.as_ref(),
                        "--etcd-prefix".as_ref(),
                        prefix.as_ref(),
                    ],
                )
            })
            .collect();
        Self::with_viewservers(Some(net), dir, vs, guest, guest_args, ping_ms)
    }

    /// The viewserver that answers `GET /view` (leads), if one does now.
    pub fn leading_viewserver(&self) -> Option<usize> {
        self.vs.iter().position(|v| !v.killed && v.status().is_ok())
    }

    /// Waits until some viewserver leads; returns it.
    pub fn wait_leading_viewserver(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leading_viewserver() {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no viewserver leads\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a node; `name` overrides the name it gives the viewserver (a proxy's address).
    /// Returns its index.
    pub fn add_node(&mut self, listen: &str, name: Option<&str>) -> usize {
        let vs = self.vs_addr.clone();
        self.add_node_via(listen, name, &vs)
    }

    /// Starts a node on host `host` of the cluster's network (port 7000 of its address).
    pub fn add_node_on(&mut self, host: &str) -> usize {
        let net = self.net.clone().expect("a cluster on a network");
        let vs = self.vs_addr.clone();
        let listen = format!("{}:7000", net.ip(host));
        self.spawn_node(program(Some(&net), host), &listen, None, &vs)
    }

    /// [`Self::add_node`] with the viewserver reached at `viewserver` (e.g. through a proxy).
    pub fn add_node_via(&mut self, listen: &str, name: Option<&str>, viewserver: &str) -> usize {
        self.spawn_node(Command::new(bin()), listen, name, viewserver)
    }

    fn spawn_node(
        &mut self,
        mut cmd: Command,
        listen: &str,
        name: Option<&str>,
        viewserver: &str,
    ) -> usize {
        let i = self.nodes.len();
        let transcript = self.dir.path().join(format!("node{i}.transcript"));
        let events = self.dir.path().join(format!("node{i}.events"));
        cmd.args(["node", "--viewserver", viewserver, "--listen", listen])
            .arg("--events")
            .arg(&events)
            .args(["--guest", &self.guest])
            .args(["--ping-interval-ms", &self.ping_ms.to_string()])
            .arg("--transcript")
            .arg(&transcript)
            .env_remove("UNDERSTUDY_LOG");
        if let Some(n) = name {
            cmd.args(["--name", n]);
        }
        if let Some(m) = self.mem_mib {
            cmd.args(["--mem-mib", &m.to_string()]);
        }
        for a in &self.guest_args {
            cmd.args(["--guest-arg", a]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), Arc::clone(&out));
        collect_text(child.stderr.take().unwrap(), Arc::clone(&log));
        let mut node = Proc {
            child,
            addr: String::new(),
            out,
            log,
            transcript,
            events,
            killed: false,
        };
        let started = node
            .wait_event("started", 0, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("node {i} never started: {}", node.log()));
        node.addr = started["name"].as_str().expect("name").to_string();
        self.nodes.push(node);
        i
    }

    pub fn view(&self) -> Option<viewserver::View> {
        self.status().map(|s| s.view)
    }

    /// The status from whichever viewserver leads.
    pub fn status(&self) -> Option<viewserver::Status> {
        let addrs: Vec<String> = self.vs.iter().map(|v| v.addr.clone()).collect();
        let get = move || {
            viewserver::client::Client::new(addrs, Duration::from_secs(1))
                .status()
                .ok()
        };
        match &self.net {
            Some(net) => net.within("ctl", get),
            None => get(),
        }
    }

    pub fn wait_view(
        &self,
        timeout: Duration,
        pred: impl Fn(&viewserver::View) -> bool,
    ) -> viewserver::View {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.view()
                && pred(&v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "view never got there; it is {:?}\n{}",
                self.view(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the status satisfies `pred`; returns it.
    pub fn wait_status(
        &self,
        timeout: Duration,
        pred: impl Fn(&viewserver::Status) -> bool,
    ) -> viewserver::Status {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status()
                && pred(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the view service never got there; it is {:?}\n{}",
                self.status(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the view is acknowledged and has a backup that holds the state (a pair
    /// whose primary may be killed without losing the guest); returns it.
    pub fn wait_ready(&self, timeout: Duration) -> viewserver::Status {
        self.wait_status(timeout, |s| {
            s.acked && s.backup_ready && !s.view.backup.is_empty()
        })
    }

    /// After the primary of `old` was killed: waits until another node is primary, or until it
    /// is plain that the guest is lost because its backup (`backup`, whose log had
    /// `backup_log_before` bytes when it was last known to hold the state) dropped its replica
    /// just then: a replay overshoot, a known limit of the live backup on this host
    /// (docs/faults.md). Any other outcome fails the test.
    pub fn await_failover(
        &self,
        old: &viewserver::View,
        backup: usize,
        backup_events_before: usize,
        timeout: Duration,
    ) -> Failover {
        let deadline = Instant::now() + timeout;
        let mut unready_since: Option<Instant> = None;
        loop {
            if let Some(s) = self.status() {
                if s.view.primary != old.primary {
                    return Failover::Promoted(s.view);
                }
                let overshoot = self.nodes[backup]
                    .events()
                    .into_iter()
                    .skip(backup_events_before)
                    .find(|e| e["event"] == "replay_failed" && e["overshoot"] == true);
                match (s.backup_ready, overshoot) {
                    (false, Some(e)) => {
                        let t = *unready_since.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_secs(3) {
                            return Failover::Lost(e["error"].to_string());
                        }
                    }
                    _ => unready_since = None,
                }
            }
            assert!(
                Instant::now() < deadline,
                "no failover from {old:?}; status {:?}\n{}",
                self.status(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn index_of(&self, addr: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr == addr)
            .unwrap_or_else(|| panic!("no node {addr}"))
    }

    /// Every node's released output, cut into the segments of its primary roles.
    pub fn segments(&self) -> Vec<super::history::Segment> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| super::history::segments(i, &n.role_starts(), &n.out()))
            .collect()
    }

    /// The history invariant against node `holder`'s console (the node that runs the guest
    /// now): every released byte is that history at the place it was released from, and no
    /// byte before the last one released was skipped.
    pub fn check_history(&self, holder: usize) -> super::history::Report {
        let segs = self.segments();
        let history = self.nodes[holder].transcript();
        super::history::check(&history, &segs).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The history invariant when nobody may hold the guest any more (the service is stuck):
    /// some node's console explains every byte released.
    pub fn check_one_history(&self) -> super::history::Report {
        let segs = self.segments();
        let mut why = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match super::history::check(&n.transcript(), &segs) {
                Ok(r) => return r,
                Err(e) => why.push(format!("against node {i}'s console: {e}")),
            }
        }
        panic!(
            "no single history explains what was released:\n{}\n{}",
            why.join("\n"),
            self.logs()
        );
    }

    /// How many times any node booted the guest from its image.
    pub fn boots(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.events_named("booting").len())
            .sum()
    }

    /// Every node's and viewserver's log, for failure messages.
    pub fn logs(&self) -> String {
        let nodes: String = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {i} ({}) ---\n{}", n.addr, n.log()))
            .collect();
        let vs: String = self
            .vs
            .iter()
            .enumerate()
            .map(|(i, v)| format!("--- viewserver {i} ({}) ---\n{}", v.addr, v.log()))
            .collect();
        nodes + &vs
    }

    /// Starts a primary (reaching the viewservers at `a_viewserver` if given, e.g. a proxy)
    /// and a backup; returns (primary index, backup index) once the backup has the state.
    pub fn primary_and_backup(
        &mut self,
        a_viewserver: Option<&str>,
        timeout: Duration,
    ) -> (usize, usize) {
        let vs = a_viewserver.map_or_else(|| self.vs_addr.clone(), str::to_string);
        let a = self.add_node_via("127.0.0.1:0", None, &vs);
        let a_addr = self.nodes[a].addr.clone();
        self.wait_view(timeout, |v| v.primary == a_addr);
        let b = self.add_node("127.0.0.1:0", None);
        let b_addr = self.nodes[b].addr.clone();
        self.wait_view(timeout, |v| v.backup == b_addr && v.primary == a_addr);
        assert!(
            self.nodes[a]
                .wait_event("transfer_done", 0, timeout)
                .is_some(),
            "{}",
            self.logs()
        );
        (a, b)
    }
}

/// The console byte a node that went live released from (its last `going_live` event).
pub fn released_from(node: &Proc) -> Option<usize> {
    node.events_named("going_live")
        .last()
        .and_then(|e| e["released_from"].as_u64())
        .map(|b| b as usize)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if !n.killed {
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
        for v in &mut self.vs {
            if !v.killed {
                v.sigkill();
            }
        }
    }
}

/// A TCP forwarder whose traffic can be held (not dropped) while `cut` is set: the
/// connections stay open, bytes just stop moving, as on a partitioned link.
pub struct Proxy {
    pub addr: String,
    pub cut: Arc<AtomicBool>,
    /// Latency added to every chunk in both directions, and up to this much more at random
    /// (order is kept): a slow link.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    pub jitter_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub fn start(to: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let jitter_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, d, j) = (
            Arc::clone(&cut),
            Arc::clone(&delay_ms),
            Arc::clone(&jitter_ms),
        );
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(a) = s else { return };
                let Ok(b) = TcpStream::connect(&to) else {
                    continue;
                };
                for (from, to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                    forward(from, to, Arc::clone(&c), Arc::clone(&d), Arc::clone(&j));
                }
            }
        });
        Self {
            addr,
            cut,
            delay_ms,
            jitter_ms,
        }
    }
}

/// One direction of a proxied connection: a reader that stamps each chunk with when it may
/// leave, and a writer that sends it then (held while `cut` is set).
fn forward(
    mut from: TcpStream,
    mut to: TcpStream,
    cut: Arc<AtomicBool>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    jitter_ms: Arc<std::sync::atomic::AtomicU64>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut seed = u64::from(std::process::id()) | 1;
        let mut last_due = Instant::now();
        loop {
            while cut.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let jitter = jitter_ms.load(Ordering::Relaxed);
                    let ms = delay_ms.load(Ordering::Relaxed)
                        + if jitter > 0 { seed % jitter } else { 0 };
                    let due = (Instant::now() + Duration::from_millis(ms)).max(last_due);
                    last_due = due;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        use std::io::Write;
        for (due, bytes) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
