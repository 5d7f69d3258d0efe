//! Separate hosts on one machine, for partitions: one network namespace per host, each with an
//! `eth0` on a shared LAN bridge (itself in a namespace of its own), addresses 10.77.0.0/24.
//! Every namespace is created by the test and removed when the [`Net`] is dropped; nothing is
//! added to the machine's own namespace, and test traffic never leaves these namespaces.
//!
//! Faults: [`Net::cut`] (both ways or one way between two hosts, with iptables DROP, so TCP
//! connections hang as on a real partition rather than being reset), [`Net::isolate`],
//! [`Net::lose`] (random packet loss), [`Net::heal`]. This kernel has no `netem` qdisc
//! (CONFIG_NET_SCH_NETEM is not set), so loss is iptables' `statistic` match and latency is a
//! delaying proxy (`cluster::Proxy::delay`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Mutex;

/// Runs `cmd args...`, panicking with its output if it fails.
fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether this machine can build the topology (root, iproute2, iptables); if not, the
/// reason, for a test to report itself skipped.
pub fn unavailable() -> Option<String> {
    for tool in ["ip", "iptables"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let probe = format!("ustprobe{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Some("cannot create network namespaces (not root?)".to_string());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

/// One host's rules, kept so that healing one fault does not heal another.
#[derive(Debug, Default, Clone)]
struct Rules {
    /// (peer address, direction) pairs dropped: "in" drops what comes from the peer, "out"
    /// what goes to it.
    drops: Vec<(String, &'static str)>,
    isolated: bool,
    loss_pct: u32,
}

/// The hosts and the LAN.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    hosts: BTreeMap<String, u8>,
    rules: Mutex<BTreeMap<String, Rules>>,
}

impl Net {
    /// Creates the LAN and one host per name (addresses 10.77.0.10, .11, ... in order).
    pub fn new(hosts: &[&str]) -> Self {
        // Namespace names are global: the pid keeps two test runs apart.
        let prefix = format!("us{}-", std::process::id() % 100_000);
        let net = Net {
            prefix,
            hosts: BTreeMap::new(),
            rules: Mutex::new(BTreeMap::new()),
        };
        let lan = net.ns("lan");
        run("ip", &["netns", "add", &lan]);
        run("ip", &["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &lan, "link", "set", "br0", "up"]);
        let mut net = net;
        for (i, h) in hosts.iter().enumerate() {
            net.add_host(h, 10 + u8::try_from(i).unwrap());
        }
        net
    }

    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn add_host(&mut self, host: &str, last_octet: u8) {
        let ns = self.ns(host);
        let lan = self.ns("lan");
        let port = format!("v{last_octet}");
        run("ip", &["netns", "add", &ns]);
        run(
            "ip",
            &[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &lan,
            ],
        );
        run("ip", &["-n", &lan, "link", "set", &port, "master", "br0"]);
        run("ip", &["-n", &lan, "link", "set", &port, "up"]);
        let addr = format!("10.77.0.{last_octet}/24");
        run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        // The kernel's IPv6 chatter is noise here.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "net.ipv6.conf.all.disable_ipv6=1",
            ],
        );
        self.hosts.insert(host.to_string(), last_octet);
    }

    /// The host whose address `addr` (`IP` or `IP:PORT`) is.
    pub fn host_of(&self, addr: &str) -> Option<String> {
        let ip = addr.split(':').next()?;
        self.hosts
            .iter()
            .find(|(_, o)| format!("10.77.0.{o}") == ip)
            .map(|(h, _)| h.clone())
    }

    /// A host's address.
    pub fn ip(&self, host: &str) -> String {
        format!("10.77.0.{}", self.hosts[host])
    }

    /// A command that runs `program` inside `host`'s namespace (the child keeps the pid of the
    /// `ip netns exec` process, which execs the program).
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), program]);
        c
    }

    /// Runs `f` on a thread that lives in `host`'s namespace (for the test's own connections).
    pub fn within<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = format!("/var/run/netns/{}", self.ns(host));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a namespace file we hold open; it changes only this thread's
            // network namespace, and this thread ends after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    fn apply(&self, host: &str) {
        let ns = self.ns(host);
        let rules = self
            .rules
            .lock()
            .unwrap()
            .get(host)
            .cloned()
            .unwrap_or_default();
        for chain in ["INPUT", "OUTPUT"] {
            run("ip", &["netns", "exec", &ns, "iptables", "-F", chain]);
        }
        if rules.isolated {
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "iptables", "-A", chain, dir, "eth0", "-j", "DROP",
                    ],
                );
            }
        }
        if rules.loss_pct > 0 {
            let p = format!("{:.4}", f64::from(rules.loss_pct) / 100.0);
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns,
                        "iptables",
                        "-A",
                        chain,
                        dir,
                        "eth0",
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ],
                );
            }
        }
        for (peer, dir) in &rules.drops {
            let (chain, flag) = if *dir == "in" {
                ("INPUT", "-s")
            } else {
                ("OUTPUT", "-d")
            };
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "iptables", "-A", chain, flag, peer, "-j", "DROP",
                ],
            );
        }
    }

    /// Drops traffic from `from` to `to` (one way); with `both`, the other way too.
    pub fn cut(&self, from: &str, to: &str, both: bool) {
        let (ip_from, ip_to) = (self.ip(from), self.ip(to));
        {
            let mut r = self.rules.lock().unwrap();
            r.entry(from.to_string())
                .or_default()
                .drops
                .push((ip_to.clone(), "out"));
            r.entry(to.to_string())
                .or_default()
                .drops
                .push((ip_from.clone(), "in"));
            if both {
                r.entry(to.to_string())
                    .or_default()
                    .drops
                    .push((ip_from, "out"));
                r.entry(from.to_string())
                    .or_default()
                    .drops
                    .push((ip_to, "in"));
            }
        }
        self.apply(from);
        self.apply(to);
    }

    /// Drops `pct` percent of the packets `host` sends and receives, at random.
    pub fn lose(&self, host: &str, pct: u32) {
        self.rules
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default()
            .loss_pct = pct;
        self.apply(host);
    }

    /// Cuts `host` off from every other host, both ways.
    pub fn isolate(&self, host: &str) {
        self.rules
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default()
            .isolated = true;
        self.apply(host);
    }

    /// Removes every cut, isolation and loss rule of every host.
    pub fn heal(&self) {
        let hosts: Vec<String> = self.hosts.keys().cloned().collect();
        self.rules.lock().unwrap().clear();
        for h in hosts {
            self.apply(&h);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in self.hosts.keys() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns("lan")])
            .status();
    }
}
