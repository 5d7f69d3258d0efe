//! A viewserver and `understudy node` processes on loopback (or on the hosts of a network), for
//! failover tests: the `cluster` crate's processes with the panicking conveniences tests want.
//! Every node's stdout (released output) and stderr (its log, for failure messages) are kept as
//! they arrive; what the tests check about roles, transfers and going live they read from the
//! node's machine-readable events (`--events`, docs/events.md).
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use ::cluster::Signal;
use ::cluster::events::is;
use ::cluster::netns::Net;
use ::cluster::wait::{self, POLL};
use ::cluster::{NodeSpec, Place, Store, Understudy, ViewserverSpec};

use super::bin;

fn understudy() -> Understudy {
    Understudy::new(bin())
}

/// `host` of `net` if there is a network, else here.
fn place(net: Option<&Arc<Net>>, host: &str) -> Place {
    net.map_or(Place::Local, |n| Place::Host {
        net: Arc::clone(n),
        host: host.to_string(),
    })
}

/// A node (`cluster::Node`: `addr()`, `out()`, `log()`, `wait_log()`, `reaped()`, ...) whose
/// events, transcript and signals panic on errors.
pub struct Proc(::cluster::Node);

impl Deref for Proc {
    type Target = ::cluster::Node;
    fn deref(&self) -> &::cluster::Node {
        &self.0
    }
}

impl DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut ::cluster::Node {
        &mut self.0
    }
}

impl Proc {
    /// Waits up to `timeout` for the node to release its first output; whether it did.
    pub fn wait_output(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.out().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.out().is_empty()
    }

    /// The node's events so far, in order (complete lines only: one may be being written).
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events_file().read().unwrap_or_else(|e| panic!("{e}"))
    }
    /// How many events the node has emitted: a mark for [`Proc::wait_event`].
    pub fn event_count(&self) -> usize {
        self.events().len()
    }
    /// The events called `name`, in order.
    pub fn events_named(&self, name: &str) -> Vec<serde_json::Value> {
        self.events().into_iter().filter(|e| is(e, name)).collect()
    }
    /// Waits for an event called `name` after the first `from` events; returns it.
    pub fn wait_event(
        &self,
        name: &str,
        from: usize,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        self.wait_for(from, timeout, |e| is(e, name))
    }
    /// Waits for an event that satisfies `pred` after the first `from` events; returns it.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.events_file()
            .wait_for(from, timeout, pred)
            .unwrap_or_else(|e| panic!("{e}"))
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
    pub fn transcript(&self) -> Vec<u8> {
        self.read_transcript()
            .unwrap_or_else(|e| panic!("transcript of {}: {e}", self.addr()))
    }
    /// SIGKILL, once its pipes delivered what it wrote before it died.
    pub fn sigkill(&mut self) {
        self.0.kill().unwrap_or_else(|e| panic!("{e}"));
    }
    pub fn signal(&self, sig: Signal) {
        self.0.signal(sig).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A viewserver (`cluster::Viewserver`: `addr()`, `log()`, `wait_log()`, `reaped()`, ...) with
/// the view it serves and signals that panic on errors.
pub struct Viewserver(::cluster::Viewserver);

impl Deref for Viewserver {
    type Target = ::cluster::Viewserver;
    fn deref(&self) -> &::cluster::Viewserver {
        &self.0
    }
}

impl DerefMut for Viewserver {
    fn deref_mut(&mut self) -> &mut ::cluster::Viewserver {
        &mut self.0
    }
}

impl Viewserver {
    fn start(spec: ViewserverSpec) -> Self {
        Self(
            understudy()
                .viewserver(spec)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }
    /// `GET /view` of this viewserver alone (a follower answers 503).
    pub fn status(&self) -> Result<viewserver::Status, viewserver::ClientError> {
        viewserver::get_view(self.addr(), Duration::from_secs(1))
    }
    pub fn sigkill(&mut self) {
        let _ = self.0.kill();
    }
    pub fn signal(&self, sig: Signal) {
        self.0.signal(sig).unwrap_or_else(|e| panic!("{e}"));
    }
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
    pub net: Option<Arc<Net>>,
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
    /// More arguments for nodes started from now on.
    pub node_args: Vec<String>,
}

impl Cluster {
    fn with_viewservers(
        net: Option<Arc<Net>>,
        dir: tempfile::TempDir,
        vs: Vec<Viewserver>,
        guest: &str,
        guest_args: &[&str],
        ping_ms: u64,
    ) -> Self {
        let vs_addr = vs.iter().map(|v| v.addr()).collect::<Vec<_>>().join(",");
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
            node_args: Vec::new(),
        }
    }

    pub fn start(guest: &str, guest_args: &[&str], ping_ms: u64) -> Self {
        Self::start_on(None, guest, guest_args, ping_ms)
    }

    /// [`Self::start`] with more arguments for the viewserver (e.g. `--dead-pings`).
    pub fn start_with_viewserver_args(
        guest: &str,
        guest_args: &[&str],
        ping_ms: u64,
        vs_args: &[&str],
    ) -> Self {
        Self::start_on_with(None, guest, guest_args, ping_ms, vs_args)
    }

    /// [`Self::start`] on the hosts of `net` (which must have hosts "vs" and "ctl"), or on
    /// loopback.
    pub fn start_on(net: Option<Arc<Net>>, guest: &str, guest_args: &[&str], ping_ms: u64) -> Self {
        Self::start_on_with(net, guest, guest_args, ping_ms, &[])
    }

    /// [`Self::start_on`], with `vs_args` added to the viewserver's arguments.
    fn start_on_with(
        net: Option<Arc<Net>>,
        guest: &str,
        guest_args: &[&str],
        ping_ms: u64,
        vs_args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listen = net.as_ref().map_or_else(
            || "127.0.0.1:0".to_string(),
            |n| format!("{}:7100", n.ip("vs").unwrap()),
        );
        let store = Store::DataDir(dir.path().join("viewserver.data"));
        let vs = Viewserver::start(ViewserverSpec {
            place: place(net.as_ref(), "vs"),
            args: vs_args.iter().map(Into::into).collect(),
            ..ViewserverSpec::new(listen, ping_ms, store)
        });
        Self::with_viewservers(net, dir, vec![vs], guest, guest_args, ping_ms)
    }

    /// The etcd store of a new cluster's viewservers: its own prefix, named after `dir`.
    fn etcd_store(dir: &tempfile::TempDir, etcd_urls: &str) -> Store {
        let prefix = format!(
            "/understudy-test/{}",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        Store::Etcd {
            urls: etcd_urls.to_string(),
            prefix,
        }
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
        let store = Self::etcd_store(&dir, etcd_urls);
        let vs = (0..viewservers)
            .map(|_| Viewserver::start(ViewserverSpec::new("127.0.0.1:0", ping_ms, store.clone())))
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
        let addr = self.vs[i].addr().to_string();
        self.vs[i].restart().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(self.vs[i].addr(), addr);
    }

    /// Viewservers on hosts `vs_hosts` of `net` (port 7100), sharing the view in etcd.
    pub fn start_on_etcd_net(
        net: Arc<Net>,
        guest: &str,
        guest_args: &[&str],
        ping_ms: u64,
        etcd_urls: &str,
        vs_hosts: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Self::etcd_store(&dir, etcd_urls);
        let vs = vs_hosts
            .iter()
            .map(|h| {
                let listen = format!("{}:7100", net.ip(h).unwrap());
                Viewserver::start(ViewserverSpec {
                    place: place(Some(&net), h),
                    ..ViewserverSpec::new(listen, ping_ms, store.clone())
                })
            })
            .collect();
        Self::with_viewservers(Some(net), dir, vs, guest, guest_args, ping_ms)
    }

    /// The viewserver that answers `GET /view` (leads), if one does now.
    pub fn leading_viewserver(&self) -> Option<usize> {
        self.vs
            .iter()
            .position(|v| !v.reaped() && v.status().is_ok())
    }

    /// Waits until some viewserver leads; returns it.
    pub fn wait_leading_viewserver(&self, timeout: Duration) -> usize {
        wait::poll(timeout, POLL, || self.leading_viewserver())
            .unwrap_or_else(|| panic!("no viewserver leads\n{}", self.logs()))
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
        let listen = format!("{}:7000", net.ip(host).unwrap());
        self.spawn_node(place(Some(&net), host), &listen, None, &vs, None)
    }

    /// [`Self::add_node`] with the viewserver reached at `viewserver` (e.g. through a proxy).
    pub fn add_node_via(&mut self, listen: &str, name: Option<&str>, viewserver: &str) -> usize {
        self.spawn_node(Place::Local, listen, name, viewserver, None)
    }

    /// [`Self::add_node_on`] with the guest's network card on TAP `tap` of that host (made
    /// with `Net::add_tap`).
    pub fn add_node_on_tap(&mut self, host: &str, tap: &str) -> usize {
        let net = self.net.clone().expect("a cluster on a network");
        let vs = self.vs_addr.clone();
        let listen = format!("{}:7000", net.ip(host).unwrap());
        self.spawn_node(place(Some(&net), host), &listen, None, &vs, Some(tap))
    }

    fn spawn_node(
        &mut self,
        place: Place,
        listen: &str,
        name: Option<&str>,
        viewserver: &str,
        tap: Option<&str>,
    ) -> usize {
        let i = self.nodes.len();
        let spec = NodeSpec {
            place,
            listen: listen.to_string(),
            name: name.map(str::to_string),
            guest_args: self.guest_args.clone(),
            mem_mib: self.mem_mib,
            tap: tap.map(str::to_string),
            clear_log_filter: true,
            extra_args: self.node_args.clone(),
            ..NodeSpec::new(
                format!("node{i}"),
                self.dir.path(),
                viewserver,
                &self.guest,
                self.ping_ms,
            )
        };
        let node = understudy()
            .node(spec)
            .unwrap_or_else(|e| panic!("node {i} never started: {e}"));
        self.nodes.push(Proc(node));
        i
    }

    pub fn view(&self) -> Option<viewserver::View> {
        self.status().map(|s| s.view)
    }

    /// The status from whichever viewserver leads.
    pub fn status(&self) -> Option<viewserver::Status> {
        let addrs: Vec<String> = self.vs.iter().map(|v| v.addr().to_string()).collect();
        let get = move || {
            viewserver::client::Client::new(addrs, Duration::from_secs(1))
                .status()
                .ok()
        };
        match &self.net {
            Some(net) => net.within("ctl", get).unwrap_or_else(|e| panic!("{e}")),
            None => get(),
        }
    }

    pub fn wait_view(
        &self,
        timeout: Duration,
        pred: impl Fn(&viewserver::View) -> bool,
    ) -> viewserver::View {
        wait::poll(timeout, POLL, || self.view().filter(|v| pred(v))).unwrap_or_else(|| {
            panic!(
                "view never got there; it is {:?}\n{}",
                self.view(),
                self.logs()
            )
        })
    }

    /// Waits until the status satisfies `pred`; returns it.
    pub fn wait_status(
        &self,
        timeout: Duration,
        pred: impl Fn(&viewserver::Status) -> bool,
    ) -> viewserver::Status {
        let every = Duration::from_millis(10);
        wait::poll(timeout, every, || self.status().filter(|s| pred(s))).unwrap_or_else(|| {
            panic!(
                "the view service never got there; it is {:?}\n{}",
                self.status(),
                self.logs()
            )
        })
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
        let mut unready_since: Option<Instant> = None;
        let outcome = wait::poll(timeout, POLL, || {
            let s = self.status()?;
            if s.view.primary != old.primary {
                return Some(Failover::Promoted(s.view));
            }
            let overshoot = self.nodes[backup]
                .events_file()
                .find(backup_events_before, |e| {
                    is(e, "replay_failed") && e["overshoot"] == true
                })
                .unwrap_or_else(|e| panic!("{e}"));
            match (s.backup_ready, overshoot) {
                (false, Some(e)) => {
                    let t = *unready_since.get_or_insert_with(Instant::now);
                    if t.elapsed() > Duration::from_secs(3) {
                        return Some(Failover::Lost(e["error"].to_string()));
                    }
                }
                _ => unready_since = None,
            }
            None
        });
        outcome.unwrap_or_else(|| {
            panic!(
                "no failover from {old:?}; status {:?}\n{}",
                self.status(),
                self.logs()
            )
        })
    }

    /// The node at `addr`: the newest one started there. A node started later on the same
    /// address (the kernel hands out a port again once its listener is gone) means the earlier
    /// one is dead; in a chain of twenty kills one did, and the test waited on the dead node.
    pub fn index_of(&self, addr: &str) -> usize {
        self.nodes
            .iter()
            .rposition(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("no node {addr}"))
    }

    /// Waits up to `timeout` for node `i` to exit; its exit code (a node that still runs, or
    /// died of a signal, fails the test).
    pub fn exit_code(&mut self, i: usize, timeout: Duration) -> i32 {
        let status = self.nodes[i]
            .wait_timeout(timeout)
            .unwrap_or_else(|e| panic!("{e}"));
        match status {
            Some(s) => s
                .code()
                .unwrap_or_else(|| panic!("node {i} died of a signal: {s}\n{}", self.logs())),
            None => panic!("node {i} still runs after {timeout:?}\n{}", self.logs()),
        }
    }

    /// The guest's end as the view service recorded it, waiting up to `timeout` for it.
    pub fn recorded_end(&self, timeout: Duration) -> viewserver::Finished {
        let status = self.wait_status(timeout, |s| s.finished.is_some());
        status
            .finished
            .unwrap_or_else(|| unreachable!("waited for it"))
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
            .map(|(i, n)| format!("--- node {i} ({}) ---\n{}", n.addr(), n.log()))
            .collect();
        let vs: String = self
            .vs
            .iter()
            .enumerate()
            .map(|(i, v)| format!("--- viewserver {i} ({}) ---\n{}", v.addr(), v.log()))
            .collect();
        nodes + &vs
    }

    /// Starts a primary and a backup whose logging channel goes through a [`Proxy`] (the
    /// backup is known by the proxy's address, while its pings go straight to the viewserver),
    /// so a test can cut or slow that link alone; returns (primary, backup, proxy) once the
    /// backup has the state.
    pub fn primary_and_backup_behind_proxy(&mut self, timeout: Duration) -> (usize, usize, Proxy) {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend_addr = backend.local_addr().unwrap().to_string();
        drop(backend);
        let proxy = Proxy::start(backend_addr.clone());
        let vs = self.vs_addr.clone();
        let (a, b) = self.pair(&vs, &backend_addr, Some(&proxy.addr), timeout);
        (a, b, proxy)
    }

    /// Starts a primary (reaching the viewservers at `a_viewserver` if given, e.g. a proxy)
    /// and a backup; returns (primary index, backup index) once the backup has the state.
    pub fn primary_and_backup(
        &mut self,
        a_viewserver: Option<&str>,
        timeout: Duration,
    ) -> (usize, usize) {
        let vs = a_viewserver.map_or_else(|| self.vs_addr.clone(), str::to_string);
        self.pair(&vs, "127.0.0.1:0", None, timeout)
    }

    /// A primary reaching the viewservers at `a_viewserver`, then a backup listening on
    /// `b_listen` under `b_name`; once the backup has the state.
    fn pair(
        &mut self,
        a_viewserver: &str,
        b_listen: &str,
        b_name: Option<&str>,
        timeout: Duration,
    ) -> (usize, usize) {
        let a = self.add_node_via("127.0.0.1:0", None, a_viewserver);
        let a_addr = self.nodes[a].addr().to_string();
        self.wait_view(timeout, |v| v.primary == a_addr);
        let b = self.add_node(b_listen, b_name);
        let b_addr = self.nodes[b].addr().to_string();
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

/// The `kv` guest's address on the LAN [`kv_network`] makes.
pub const KV_GUEST_IP: &str = "10.77.0.100";

/// The viewserver's ping interval on that LAN.
const KV_PING_MS: u64 = 100;

/// A LAN with a viewserver host "vs", a client host "ctl" and `node_hosts`, each with a TAP
/// `us0` on its bridge, and a cluster for the `kv` guest on it (no nodes yet); `None` (and a
/// "skipped" line) where that cannot run.
pub fn kv_network(node_hosts: &[&str]) -> Option<(Arc<Net>, Cluster)> {
    if !vmm::guest_image::BUILTIN_WORKLOADS.contains(&"kv") {
        eprintln!("skipped: this build's guest has no kv workload");
        return None;
    }
    if let Some(why) = ::cluster::netns::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let mut hosts = vec!["vs", "ctl"];
    hosts.extend_from_slice(node_hosts);
    let net = Arc::new(Net::new(&hosts).expect("a network"));
    for h in node_hosts {
        net.add_tap(h, "us0").expect("a TAP on the host's bridge");
    }
    let ip_arg = format!("ip={KV_GUEST_IP}/24");
    let c = Cluster::start_on(Some(Arc::clone(&net)), "kv", &[&ip_arg], KV_PING_MS);
    Some((net, c))
}

/// Hosts of a [`kv_network`] not running a node yet.
pub struct KvHosts {
    hosts: Vec<String>,
    next: usize,
}

impl KvHosts {
    /// Starts a node on the next unused host, on its TAP; returns the node's index.
    pub fn add(&mut self, c: &mut Cluster) -> usize {
        let host = self
            .hosts
            .get(self.next)
            .unwrap_or_else(|| panic!("all {} node hosts are taken", self.hosts.len()));
        self.next += 1;
        c.add_node_on_tap(host, "us0")
    }
}

/// The `kv` guest replicated on a [`kv_network`] of `node_hosts`: a node on the first host
/// primary, one on the second its backup holding the state; the rest are for nodes added
/// later. `None` (and a "skipped" line) where that cannot run.
pub fn kv_pair(node_hosts: &[&str]) -> Option<(Arc<Net>, Cluster, KvHosts)> {
    let (net, mut c) = kv_network(node_hosts)?;
    let mut hosts = KvHosts {
        hosts: node_hosts.iter().map(|h| h.to_string()).collect(),
        next: 0,
    };
    let a = hosts.add(&mut c);
    let a_addr = c.nodes[a].addr().to_string();
    c.wait_view(Duration::from_secs(60), |v| v.primary == a_addr);
    hosts.add(&mut c);
    c.wait_ready(Duration::from_secs(60));
    Some((net, c, hosts))
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
        // Nodes first, then viewservers, before the directory and the network go.
        self.nodes.clear();
        self.vs.clear();
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
    /// Bytes still passed on from the side that connects to the proxy (a primary dialling its
    /// backup's advertised address) before the rest is held, as `cut` holds it; `u64::MAX`
    /// (the start) passes everything. Shared by all connections; the test may raise it.
    pub pass_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Both ends of every connection made so far, for [`Self::close_all`].
    conns: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(to: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let jitter_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let pass_bytes = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, d, j, k, pass) = (
            Arc::clone(&cut),
            Arc::clone(&delay_ms),
            Arc::clone(&jitter_ms),
            Arc::clone(&conns),
            Arc::clone(&pass_bytes),
        );
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(a) = s else { return };
                let Ok(b) = TcpStream::connect(&to) else {
                    continue;
                };
                let mut live = k.lock().unwrap();
                live.push(a.try_clone().unwrap());
                live.push(b.try_clone().unwrap());
                drop(live);
                let link = Link {
                    cut: Arc::clone(&c),
                    delay_ms: Arc::clone(&d),
                    jitter_ms: Arc::clone(&j),
                    pass_bytes: None,
                };
                let onward = Link {
                    pass_bytes: Some(Arc::clone(&pass)),
                    ..link.clone()
                };
                forward(a.try_clone().unwrap(), b.try_clone().unwrap(), onward);
                forward(b, a, link);
            }
        });
        Self {
            addr,
            cut,
            delay_ms,
            jitter_ms,
            pass_bytes,
            conns,
        }
    }

    /// Closes every connection made so far at both ends, as a router that drops a flow and
    /// answers with resets would: each side reads the end of its connection at once. New
    /// connections are proxied as before.
    pub fn close_all(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// What one direction of a proxied connection obeys (see [`Proxy`]'s fields).
#[derive(Clone)]
struct Link {
    cut: Arc<AtomicBool>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    jitter_ms: Arc<std::sync::atomic::AtomicU64>,
    pass_bytes: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// Writes `bytes` to `to` as far as `pass` allows, waiting (for good, unless the test raises
/// it) where it runs out. False when `to` failed.
fn write_within(
    to: &mut TcpStream,
    mut bytes: &[u8],
    pass: Option<&std::sync::atomic::AtomicU64>,
) -> bool {
    use std::io::Write;
    let Some(pass) = pass else {
        return to.write_all(bytes).is_ok();
    };
    while !bytes.is_empty() {
        let want = bytes.len() as u64;
        // Take up to `want` of the allowance in one step: connections share it.
        let Ok(allowed) = pass.fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| match a {
            0 => None,
            u64::MAX => Some(a),
            a => Some(a - a.min(want)),
        }) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let n = bytes
            .len()
            .min(usize::try_from(allowed).unwrap_or(usize::MAX));
        if to.write_all(&bytes[..n]).is_err() {
            return false;
        }
        bytes = &bytes[n..];
    }
    true
}

/// One direction of a proxied connection: a reader that stamps each chunk with when it may
/// leave, and a writer that sends it then (held while `cut` is set, and past `pass_bytes`).
fn forward(mut from: TcpStream, mut to: TcpStream, link: Link) {
    let Link {
        cut,
        delay_ms,
        jitter_ms,
        pass_bytes,
    } = link;
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
        for (due, bytes) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if !write_within(&mut to, &bytes, pass_bytes.as_deref()) {
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// An HTTP forwarder to a viewserver that plays a view service of an older build: any request
/// whose body holds the JSON field `field` is answered `400` naming it as unknown, as a server
/// that refuses unknown fields does; every other request goes through unchanged.
pub struct FieldRefusingProxy {
    pub addr: String,
    /// Requests refused so far.
    pub refused: Arc<std::sync::atomic::AtomicU64>,
}

impl FieldRefusingProxy {
    pub fn start(to: String, field: &'static str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r = Arc::clone(&refused);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(client) = s else { return };
                let (to, r) = (to.clone(), Arc::clone(&r));
                std::thread::spawn(move || refuse_or_forward(client, &to, field, &r));
            }
        });
        Self { addr, refused }
    }
}

/// One HTTP/1.1 message from `r`: its head (up to the blank line) and its body
/// (`Content-Length` bytes); `None` at the end of the connection.
fn read_http(r: &mut impl std::io::BufRead) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.extend_from_slice(line.as_bytes());
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn refuse_or_forward(
    client: TcpStream,
    to: &str,
    field: &str,
    refused: &std::sync::atomic::AtomicU64,
) {
    use std::io::Write as _;
    let mut from_client = std::io::BufReader::new(client.try_clone().unwrap());
    let mut to_client = client;
    let mut upstream: Option<(TcpStream, std::io::BufReader<TcpStream>)> = None;
    let needle = format!("\"{field}\"");
    while let Some((head, body)) = read_http(&mut from_client) {
        let reply = if String::from_utf8_lossy(&body).contains(&needle) {
            refused.fetch_add(1, Ordering::AcqRel);
            let msg = format!(r#"{{"error":"unknown field `{field}` in the request body"}}"#);
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{msg}",
                msg.len()
            )
            .into_bytes()
        } else {
            if upstream.is_none() {
                let Ok(s) = TcpStream::connect(to) else {
                    return;
                };
                let reader = std::io::BufReader::new(s.try_clone().unwrap());
                upstream = Some((s, reader));
            }
            let Some((up, up_reader)) = upstream.as_mut() else {
                return;
            };
            if up
                .write_all(&head)
                .and_then(|()| up.write_all(&body))
                .is_err()
            {
                return;
            }
            let Some((h, b)) = read_http(up_reader) else {
                return;
            };
            if String::from_utf8_lossy(&h)
                .to_ascii_lowercase()
                .contains("connection: close")
            {
                upstream = None;
            }
            [h, b].concat()
        };
        if to_client.write_all(&reply).is_err() {
            return;
        }
    }
}
