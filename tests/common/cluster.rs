//! A viewserver and `understudy node` processes on loopback, for failover tests. Every node's
//! stdout (released output) and stderr (its log) are collected as they arrive.
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
    pub killed: bool,
}

impl Proc {
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
    }
    pub fn send(pid: u32, sig: Signal) {
        let name = match sig {
            Signal::Stop => "-STOP",
            Signal::Cont => "-CONT",
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

/// Starts `understudy viewserver` (`cmd`: the binary, possibly inside a namespace) on
/// `listen` with its data in `dir/viewserver.data`; returns it and the address it listens on.
pub fn spawn_viewserver(
    mut cmd: Command,
    dir: &std::path::Path,
    listen: &str,
    ping_ms: u64,
) -> (Child, String) {
    let mut vs = cmd
        .args(["viewserver", "--listen", listen])
        .args(["--ping-interval-ms", &ping_ms.to_string()])
        .arg("--data-dir")
        .arg(dir.join("viewserver.data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says where it listens on stderr first.
    let mut err = BufReader::new(vs.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = err.read_to_end(&mut sink);
    });
    let addr = line
        .trim()
        .strip_prefix("viewserver: listening on ")
        .unwrap_or_else(|| panic!("viewserver said {line:?}"))
        .to_string();
    (vs, addr)
}

pub struct Cluster {
    /// Hosts in network namespaces (viewserver on host "vs", the test's own queries from host
    /// "ctl"), or everything on loopback.
    pub net: Option<std::sync::Arc<Net>>,
    pub dir: tempfile::TempDir,
    pub vs: Child,
    pub vs_addr: String,
    pub nodes: Vec<Proc>,
    pub guest: String,
    pub guest_args: Vec<String>,
    pub ping_ms: u64,
    /// `--mem-mib` for nodes started from now on (the node's default if `None`).
    pub mem_mib: Option<u32>,
}

impl Cluster {
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
        let (vs, vs_addr) =
            spawn_viewserver(program(net.as_deref(), "vs"), dir.path(), &listen, ping_ms);
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

    /// SIGKILLs the viewserver and starts it again on the same address and data directory.
    pub fn restart_viewserver(&mut self) {
        let _ = self.vs.kill();
        let _ = self.vs.wait();
        let (vs, addr) = spawn_viewserver(
            program(self.net.as_deref(), "vs"),
            self.dir.path(),
            &self.vs_addr,
            self.ping_ms,
        );
        assert_eq!(addr, self.vs_addr);
        self.vs = vs;
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
        cmd.args(["node", "--viewserver", viewserver, "--listen", listen])
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
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            let l = log.lock().unwrap().clone();
            if let Some(first) = l.lines().next()
                && let Some(rest) = first.strip_prefix("node ")
            {
                break rest.split(':').take(2).collect::<Vec<_>>().join(":");
            }
            assert!(Instant::now() < deadline, "node {i} never started: {l}");
            std::thread::sleep(Duration::from_millis(10));
        };
        self.nodes.push(Proc {
            child,
            addr,
            out,
            log,
            transcript,
            killed: false,
        });
        i
    }

    pub fn view(&self) -> Option<viewserver::View> {
        self.status().map(|s| s.view)
    }

    pub fn status(&self) -> Option<viewserver::Status> {
        let addr = self.vs_addr.clone();
        let get = move || viewserver::get_view(&addr, Duration::from_secs(1)).ok();
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
            .flat_map(|(i, n)| super::history::segments(i, &n.log(), &n.out()))
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
            .map(|n| n.log().matches("booting the guest").count())
            .sum()
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {i} ({}) ---\n{}", n.addr, n.log()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if !n.killed {
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
        let _ = self.vs.kill();
        let _ = self.vs.wait();
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
