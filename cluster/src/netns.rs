//! Separate hosts on one machine: one network namespace per host, each with an `eth0` on a
//! shared LAN bridge (`br0`, in a namespace of its own), addresses 10.77.0.0/24 (hosts from .10
//! in the order they are added). Every namespace is created here and removed when the [`Net`]
//! is dropped, even if building it failed half-way; nothing is added to the machine's own
//! namespace, and traffic between the hosts never leaves these namespaces. Namespace names carry
//! the process id and a count, so that networks of different runs, or of one, never meet.
//!
//! Programs run on a host through [`Net::command`] (a child) or [`Net::exec`] (run to the end);
//! the caller's own connections through [`Net::within`]. Faults: [`Net::cut`] (both ways or one
//! way between two hosts, with iptables DROP, so TCP connections hang as on a real partition
//! rather than being reset), [`Net::isolate`], [`Net::lose`] (random packet loss),
//! [`Net::heal`]. This kernel has no `netem` qdisc (CONFIG_NET_SCH_NETEM is not set), so loss is
//! iptables' `statistic` match, and latency is left to a delaying proxy.
//!
//! Needs root, iproute2 and iptables: [`unavailable`] says why not, for a test to skip.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The LAN's first three octets.
const SUBNET: [u8; 3] = [10, 77, 0];
/// The last octet of the first host's address.
const FIRST_HOST: u8 = 10;
/// The bridge every host's `eth0` is a port of, in the LAN's namespace ([`Net::lan_namespace`]).
pub const BRIDGE: &str = "br0";
/// The name of the LAN's namespace, after the network's prefix.
const LAN: &str = "lan";

/// What went wrong building or changing the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command could not be run at all.
    #[error("{command}: {source}")]
    Run {
        /// The command line.
        command: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {output}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// No host of that name on this network.
    #[error("no host {0:?} on this network")]
    UnknownHost(String),
    /// A host of that name exists already (or it is the LAN's own name).
    #[error("a host {0:?} exists already")]
    HostExists(String),
    /// The LAN has no address left for another host.
    #[error("no address left on the LAN for host {0:?}")]
    Full(String),
    /// A thread could not enter a host's namespace.
    #[error("entering the namespace {path}: {source}")]
    Enter {
        /// The namespace's file.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A thread could not be started, or the work given to [`Net::within`] panicked.
    #[error("the thread inside host {host:?}: {why}")]
    Thread {
        /// The host.
        host: String,
        /// What happened.
        why: String,
    },
}

/// Runs `program args...` to its end; an error if it cannot be run or fails.
fn run(program: &str, args: &[&str]) -> Result<(), NetError> {
    let command = || format!("{program} {}", args.join(" "));
    let o = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetError::Run {
            command: command(),
            source,
        })?;
    if !o.status.success() {
        return Err(NetError::Failed {
            command: command(),
            status: o.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        });
    }
    Ok(())
}

/// Whether this machine can build a [`Net`] (root, iproute2, iptables); if not, the reason,
/// for a test to report itself skipped.
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
    // One name per call: tests in one process probe at the same time, and a name taken by
    // another probe would read as "cannot create namespaces".
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let probe = format!(
        "ustprobe{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    if run("ip", &["netns", "add", &probe]).is_err() {
        return Some("cannot create network namespaces (not root?)".to_string());
    }
    let _ = run("ip", &["netns", "del", &probe]);
    None
}

/// Which way [`Net::cut`] drops a peer's traffic on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// What comes from the peer.
    In,
    /// What goes to the peer.
    Out,
}

/// One host's faults, kept so that the rules can be rebuilt whole and healing one fault does
/// not heal another.
#[derive(Debug, Default, Clone)]
struct Rules {
    /// Peers whose traffic is dropped, and which way.
    drops: Vec<(Ipv4Addr, Way)>,
    isolated: bool,
    loss_pct: u32,
}

/// The hosts and the LAN. Dropping it removes every namespace it created.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    /// Host name to its address's last octet, for every host whose namespace exists.
    hosts: BTreeMap<String, u8>,
    /// Whether the LAN's namespace exists.
    lan: bool,
    rules: Mutex<BTreeMap<String, Rules>>,
    /// Hosts given a TAP ([`Net::add_tap`]): their own address is on their local bridge.
    tapped: Mutex<BTreeSet<String>>,
}

impl Net {
    /// A LAN with one host per name, addressed in order.
    pub fn new(hosts: &[&str]) -> Result<Self, NetError> {
        // Namespace names are global: the pid keeps two runs apart, the count two networks of
        // one run.
        static NETS: AtomicU32 = AtomicU32::new(0);
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        let mut net = Net {
            prefix: format!("us{}-{n}-", std::process::id() % 100_000),
            hosts: BTreeMap::new(),
            lan: false,
            rules: Mutex::new(BTreeMap::new()),
            tapped: Mutex::new(BTreeSet::new()),
        };
        // On an error `net` is dropped, which removes what was made so far.
        let lan = net.ns(LAN);
        run("ip", &["netns", "add", &lan])?;
        net.lan = true;
        run("ip", &["-n", &lan, "link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["-n", &lan, "link", "set", BRIDGE, "up"])?;
        for h in hosts {
            net.add_host(h)?;
        }
        Ok(net)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Adds a host on the LAN (the next address); returns its address.
    pub fn add_host(&mut self, host: &str) -> Result<Ipv4Addr, NetError> {
        if self.hosts.contains_key(host) || host == LAN {
            return Err(NetError::HostExists(host.to_string()));
        }
        let last_octet = self
            .hosts
            .values()
            .max()
            .map_or(Some(FIRST_HOST), |o| o.checked_add(1))
            .filter(|o| *o < 255)
            .ok_or_else(|| NetError::Full(host.to_string()))?;
        let ns = self.ns(host);
        let lan = self.ns(LAN);
        let port = format!("v{last_octet}");
        run("ip", &["netns", "add", &ns])?;
        // From here on, dropping the network removes this namespace too.
        self.hosts.insert(host.to_string(), last_octet);
        run(
            "ip",
            &[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &lan,
            ],
        )?;
        run("ip", &["-n", &lan, "link", "set", &port, "master", BRIDGE])?;
        run("ip", &["-n", &lan, "link", "set", &port, "up"])?;
        let ip = Self::address(last_octet);
        let cidr = format!("{ip}/24");
        run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        // The kernel's IPv6 chatter is noise here.
        self.exec(host, "sysctl", &["-q", "net.ipv6.conf.all.disable_ipv6=1"])?;
        Ok(ip)
    }

    fn address(last_octet: u8) -> Ipv4Addr {
        let [a, b, c] = SUBNET;
        Ipv4Addr::new(a, b, c, last_octet)
    }

    /// Gives `host` a TAP device `tap` on the LAN, as a hypervisor host plugs a VM's card into
    /// its network: a local bridge holds the uplink and the TAP, and the host's address moves
    /// to the bridge. The TAP is persistent (made with `ip tuntap add`), so a VMM attaches to
    /// it and a restarted one finds it again. From then on `cut`, `lose` and `isolate` apply to
    /// the host's own traffic (its VMM's logging channel, its pings to the view service), not
    /// to its guest's frames, which cross the bridges without reaching the host's INPUT and
    /// OUTPUT chains: as when a hypervisor host's own network fails while its VMs' network
    /// stays up — the case where a deposed primary's guest is still reachable by clients.
    pub fn add_tap(&self, host: &str, tap: &str) -> Result<(), NetError> {
        let ns = self.namespace(host)?;
        let cidr = format!("{}/24", self.ip(host)?);
        for args in [
            vec!["-n", &ns, "link", "add", BRIDGE, "type", "bridge"],
            vec!["-n", &ns, "link", "set", BRIDGE, "up"],
            vec!["-n", &ns, "addr", "del", &cidr, "dev", "eth0"],
            vec!["-n", &ns, "link", "set", "eth0", "master", BRIDGE],
            vec!["-n", &ns, "addr", "add", &cidr, "dev", BRIDGE],
            vec!["-n", &ns, "tuntap", "add", tap, "mode", "tap"],
            vec!["-n", &ns, "link", "set", tap, "master", BRIDGE],
            vec!["-n", &ns, "link", "set", tap, "up"],
        ] {
            run("ip", &args)?;
        }
        self.tapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host.to_string());
        // Rules made before the TAP filtered on eth0, which is now a bridge port.
        self.apply(host)
    }

    /// The interface the host's own traffic uses: its local bridge once it has a TAP.
    fn own_interface(&self, host: &str) -> &'static str {
        let tapped = self
            .tapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(host);
        if tapped { BRIDGE } else { "eth0" }
    }

    /// The hosts, by name.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// A host's address.
    pub fn ip(&self, host: &str) -> Result<Ipv4Addr, NetError> {
        self.hosts
            .get(host)
            .map(|o| Self::address(*o))
            .ok_or_else(|| NetError::UnknownHost(host.to_string()))
    }

    /// The host whose address `addr` (`IP` or `IP:PORT`) is.
    pub fn host_of(&self, addr: &str) -> Option<String> {
        let ip: Ipv4Addr = addr.split(':').next()?.parse().ok()?;
        self.hosts
            .iter()
            .find(|(_, o)| Self::address(**o) == ip)
            .map(|(h, _)| h.clone())
    }

    /// The name of `host`'s network namespace (for `ip -n`, `ip netns exec`).
    pub fn namespace(&self, host: &str) -> Result<String, NetError> {
        self.ip(host)?;
        Ok(self.ns(host))
    }

    /// The name of the LAN's namespace, where the bridge [`BRIDGE`] is.
    pub fn lan_namespace(&self) -> String {
        self.ns(LAN)
    }

    /// A command that runs `program` inside `host`'s namespace (the child's pid is that of the
    /// `ip netns exec` process, which execs the program: signals reach the program).
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Result<Command, NetError> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace(host)?])
            .arg(program);
        Ok(c)
    }

    /// Runs `program args...` inside `host`'s namespace to its end; an error if it fails.
    pub fn exec(&self, host: &str, program: &str, args: &[&str]) -> Result<(), NetError> {
        let ns = self.namespace(host)?;
        let mut all = vec!["netns", "exec", &ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread that lives in `host`'s namespace (for the caller's own
    /// connections); returns what it returns.
    pub fn within<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetError> {
        let path = format!("/var/run/netns/{}", self.namespace(host)?);
        let thread_error = |why: String| NetError::Thread {
            host: host.to_string(),
            why,
        };
        let worker = std::thread::Builder::new()
            .name(format!("netns-{host}"))
            .spawn(move || {
                let ns = std::fs::File::open(&path).map_err(|source| NetError::Enter {
                    path: path.clone(),
                    source,
                })?;
                // SAFETY: setns on a namespace file we hold open; it changes only this thread's
                // network namespace, and this thread ends after `f`.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(NetError::Enter {
                        path,
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .map_err(|e| thread_error(format!("cannot start it: {e}")))?;
        worker
            .join()
            .map_err(|_| thread_error("it panicked".to_string()))?
    }

    fn rules(&self) -> MutexGuard<'_, BTreeMap<String, Rules>> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rebuilds `host`'s iptables rules from its faults.
    fn apply(&self, host: &str) -> Result<(), NetError> {
        let rules = self.rules().get(host).cloned().unwrap_or_default();
        let iptables = |args: &[&str]| self.exec(host, "iptables", args);
        let own = self.own_interface(host);
        for chain in ["INPUT", "OUTPUT"] {
            iptables(&["-F", chain])?;
        }
        if rules.isolated {
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                iptables(&["-A", chain, dir, own, "-j", "DROP"])?;
            }
        }
        if rules.loss_pct > 0 {
            let p = format!("{:.4}", f64::from(rules.loss_pct) / 100.0);
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                iptables(&[
                    "-A",
                    chain,
                    dir,
                    own,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ])?;
            }
        }
        for (peer, way) in &rules.drops {
            let (chain, flag) = match way {
                Way::In => ("INPUT", "-s"),
                Way::Out => ("OUTPUT", "-d"),
            };
            iptables(&["-A", chain, flag, &peer.to_string(), "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Drops traffic from `from` to `to` (one way); with `both`, the other way too.
    pub fn cut(&self, from: &str, to: &str, both: bool) -> Result<(), NetError> {
        let (ip_from, ip_to) = (self.ip(from)?, self.ip(to)?);
        {
            let mut r = self.rules();
            let mut add = |host: &str, peer: Ipv4Addr, way: Way| {
                r.entry(host.to_string())
                    .or_default()
                    .drops
                    .push((peer, way));
            };
            add(from, ip_to, Way::Out);
            add(to, ip_from, Way::In);
            if both {
                add(to, ip_from, Way::Out);
                add(from, ip_to, Way::In);
            }
        }
        self.apply(from)?;
        self.apply(to)
    }

    /// Drops `pct` percent of the packets `host` sends and receives, at random.
    pub fn lose(&self, host: &str, pct: u32) -> Result<(), NetError> {
        self.ip(host)?;
        self.rules().entry(host.to_string()).or_default().loss_pct = pct;
        self.apply(host)
    }

    /// Cuts `host` off from every other host, both ways.
    pub fn isolate(&self, host: &str) -> Result<(), NetError> {
        self.ip(host)?;
        self.rules().entry(host.to_string()).or_default().isolated = true;
        self.apply(host)
    }

    /// Removes every cut, isolation and loss rule of every host.
    pub fn heal(&self) -> Result<(), NetError> {
        self.rules().clear();
        for h in self.hosts.keys() {
            self.apply(h)?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in self.hosts.keys() {
            let _ = run("ip", &["netns", "del", &self.ns(h)]);
        }
        if self.lan {
            let _ = run("ip", &["netns", "del", &self.ns(LAN)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn builds_cuts_heals_and_cleans_up() {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
        let ns_list = || {
            let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let net = Net::new(&["a", "b"]).unwrap();
        assert_eq!(net.ip("a").unwrap(), Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(net.ip("b").unwrap(), Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(net.host_of("10.77.0.11:7000").as_deref(), Some("b"));
        assert!(matches!(net.ip("c"), Err(NetError::UnknownHost(_))));
        // A socket belongs to the namespace it was made in: b listens, a connects.
        let b = std::net::SocketAddr::from((net.ip("b").unwrap(), 7000));
        let _listener = net
            .within("b", move || std::net::TcpListener::bind(b))
            .unwrap()
            .unwrap();
        let connects = || {
            net.within("a", move || {
                std::net::TcpStream::connect_timeout(&b, Duration::from_millis(300)).is_ok()
            })
            .unwrap()
        };
        assert!(connects());
        net.cut("a", "b", false).unwrap();
        assert!(!connects());
        net.heal().unwrap();
        assert!(connects());
        net.isolate("b").unwrap();
        assert!(!connects());
        net.heal().unwrap();
        assert!(connects());
        let answer = net.within("a", || 42).unwrap();
        assert_eq!(answer, 42);
        let lan = net.lan_namespace();
        assert!(ns_list().contains(&lan));
        drop(net);
        assert!(!ns_list().contains(&lan));
    }
}
