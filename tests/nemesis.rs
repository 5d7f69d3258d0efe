//! The nemesis: a replicated guest under random faults for a while. One seed per run, printed
//! first (`NEMESIS_SEED`; fixed by default, drawn anew by `bench/nemesis.sh`); the duration is
//! `NEMESIS_SECS` (default 60; `bench/nemesis.sh` runs 10 minutes), the coordinator
//! `NEMESIS_COORDINATOR=file|etcd` (default: file).
//!
//! Every host is a network namespace: the viewserver (or three viewservers, each with an etcd
//! member), four node slots, and a control host the test talks from. Faults, one at a time:
//! SIGKILL of the primary (only while its backup holds the state: killing the only holder loses
//! the guest, which is no protocol failure), of the backup, of an idle node, of a viewserver
//! (and its restart), of an etcd member; SIGSTOP of primary, backup or viewserver for up to 2 s;
//! isolation of a host, a cut or one-way drop between two hosts, packet loss; junk connections
//! to every port. After each fault heals, the service must release output again within a bound
//! unless nobody holding the guest survives ("lost": a new service starts, counted). At the end
//! of each service's life, every byte any node released is checked against one history.
//!
//! The result is a table (faults by kind, failovers and their time, output gaps, bytes released
//! and repeated, losses, wedges, violations) on stderr, and in `NEMESIS_REPORT` if set.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::netns::{self, Net};
use common::cluster::Cluster;
use common::cluster::Signal;
use common::etcd::EtcdCluster;
use common::rng::Rng;

const PING_MS: u64 = 100;
const SLOTS: [&str; 4] = ["n0", "n1", "n2", "n3"];
/// After a fault heals, the service must release output again within this (it includes a
/// possible failover, a state transfer, and a viewserver failover on etcd).
const HEAL_BOUND: Duration = Duration::from_secs(30);

/// How the service came out of a fault.
enum Health {
    Healthy,
    Lost(&'static str),
    Wedged,
}

#[derive(Default)]
struct Stats {
    faults: BTreeMap<&'static str, usize>,
    /// By the fault that caused them: from the fault to the first byte the new primary released.
    failovers: BTreeMap<&'static str, Vec<Duration>>,
    /// Times with no output released by anyone, longer than 200 ms.
    gaps: Vec<Duration>,
    released: usize,
    repeated: usize,
    /// Guests lost, by cause.
    lost: BTreeMap<&'static str, usize>,
    services: usize,
    wedges: Vec<String>,
    violations: Vec<String>,
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn percentile(xs: &[Duration], p: usize) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

struct Nemesis {
    net: Arc<Net>,
    etcd: Option<EtcdCluster>,
    c: Cluster,
    rng: Rng,
    stats: Stats,
    /// Total released output (all nodes) at the last sample, and when it last grew.
    last_total: usize,
    last_growth: Instant,
    /// Every node's released output at the last sample.
    last_out: Vec<usize>,
    /// A fault on the primary in progress: when, which, and the old primary's address.
    watch: Option<(Instant, &'static str, String)>,
    dumps: std::path::PathBuf,
}

/// The coordinator's hosts: one viewserver, or three (each with an etcd member).
fn vs_hosts(etcd: bool) -> Vec<&'static str> {
    if etcd {
        vec!["vs0", "vs1", "vs2"]
    } else {
        vec!["vs"]
    }
}

impl Nemesis {
    fn new_service(net: &Arc<Net>, etcd: Option<&EtcdCluster>) -> Cluster {
        let args = ["hz=100", "ticks=100000000"];
        let mut c = match etcd {
            None => Cluster::start_on(Some(Arc::clone(net)), "ticker", &args, PING_MS),
            Some(e) => Cluster::start_on_etcd_net(
                Arc::clone(net),
                "ticker",
                &args,
                PING_MS,
                &e.urls_arg(),
                &vs_hosts(true),
            ),
        };
        for h in SLOTS {
            c.add_node_on(h);
        }
        c
    }

    /// Sums every node's released output; notes gaps, and the end of a failover (the first
    /// output of a node other than the old primary).
    fn sample(&mut self) {
        let outs: Vec<usize> = self.c.nodes.iter().map(|n| n.out_len()).collect();
        let total: usize = outs.iter().sum();
        let now = Instant::now();
        if let Some((t0, kind, old)) = &self.watch {
            let grew = outs.iter().enumerate().any(|(i, o)| {
                *o > self.last_out.get(i).copied().unwrap_or(0) && self.c.nodes[i].addr() != *old
            });
            if grew {
                let who: Vec<&str> = outs
                    .iter()
                    .enumerate()
                    .filter(|(i, o)| **o > self.last_out.get(*i).copied().unwrap_or(0))
                    .map(|(i, _)| self.c.nodes[i].addr())
                    .collect();
                eprintln!(
                    "nemesis: after \"{kind}\" of {old}: output from {who:?} {} ms later",
                    (now - *t0).as_millis()
                );
                self.stats
                    .failovers
                    .entry(kind)
                    .or_default()
                    .push(now - *t0);
                self.watch = None;
            }
        }
        self.last_out = outs;
        if total != self.last_total {
            let gap = now - self.last_growth;
            if gap > Duration::from_millis(200) {
                self.stats.gaps.push(gap);
            }
            self.last_total = total;
            self.last_growth = now;
        }
    }

    /// Sleeps `d`, sampling output every 20 ms.
    fn idle(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.sample();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The live process (the newest one) behind address `addr`.
    fn live(&self, addr: &str) -> Option<usize> {
        self.c
            .nodes
            .iter()
            .rposition(|n| n.addr() == addr && !n.reaped())
    }

    fn host_of(&self, addr: &str) -> Option<&'static str> {
        let host = self.net.host_of(addr)?;
        SLOTS.into_iter().find(|h| *h == host)
    }

    /// Restarts every slot whose node was killed (a new incarnation under the same name).
    fn refill(&mut self) {
        for h in SLOTS {
            let ip = self.net.ip(h).unwrap();
            let alive = self
                .c
                .nodes
                .iter()
                .any(|n| n.addr().starts_with(&format!("{ip}:")) && !n.reaped());
            if !alive {
                self.c.add_node_on(h);
            }
        }
        if let Some(e) = self.etcd.as_mut() {
            for i in 0..e.len() {
                if !e.running(i) {
                    e.restart(i);
                }
            }
        }
        for i in 0..self.c.vs.len() {
            if self.c.vs[i].reaped() {
                self.c.restart_viewserver_at(i);
            }
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.faults.entry(what).or_default() += 1;
    }

    /// Waits until the service releases output again (`Healthy`). `Lost` when nobody holding
    /// the guest is left: the view's primary is dead or says it holds nothing, and its backup
    /// is dead or not ready. `Wedged` when a holder lives but nothing is released in time.
    fn wait_healthy(&mut self) -> Health {
        let deadline = Instant::now() + HEAL_BOUND;
        let mut lost_since: Option<Instant> = None;
        loop {
            self.sample();
            if let Some(s) = self.c.status() {
                let primary = self.live(&s.view.primary);
                if let Some(p) = primary.filter(|_| s.acked) {
                    let before = self.c.nodes[p].out_len();
                    self.idle(Duration::from_millis(300));
                    if self.c.nodes[p].out_len() > before {
                        // A fault on the primary that did not make anyone else primary.
                        if self.watch.as_ref().is_some_and(|w| w.2 == s.view.primary) {
                            self.watch = None;
                        }
                        return Health::Healthy;
                    }
                }
                let stranded = primary.is_some_and(|p| {
                    self.c.nodes[p]
                        .events_named("stranded")
                        .iter()
                        .any(|e| e["view"] == s.view.viewnum)
                });
                let primary_holds = primary.is_some() && !stranded;
                let backup_holds = s.backup_ready && self.live(&s.view.backup).is_some();
                if !primary_holds && !backup_holds && s.view.viewnum > 0 {
                    // Give a backup that is about to report ready a moment.
                    let since = *lost_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(3) {
                        let cause = if stranded {
                            "the backup promoted had lost its replica (a failed replay) just before"
                        } else {
                            "the primary and its backup are both gone"
                        };
                        eprintln!("nemesis: guest lost in view {}: {cause}", s.view.viewnum);
                        return Health::Lost(cause);
                    }
                } else {
                    lost_since = None;
                }
            }
            if Instant::now() >= deadline {
                let why = format!(
                    "no output within {HEAL_BOUND:?} after the faults healed, status {:?}",
                    self.c.status()
                );
                self.dump(&why);
                self.stats.wedges.push(why);
                return Health::Wedged;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dump(&self, why: &str) {
        let n = self.stats.wedges.len() + self.stats.violations.len();
        let path = self.dumps.join(format!("nemesis-{n}.log"));
        let _ = std::fs::write(&path, format!("{why}\n{}", self.c.logs()));
        eprintln!("nemesis: {why} (logs in {})", path.display());
    }

    /// The end of one service's life: every byte released against one history.
    fn check(&mut self) {
        let segs = self.c.segments();
        let holder = self.c.status().and_then(|s| self.live(&s.view.primary));
        let result = match holder {
            Some(p) => common::history::check(&self.c.nodes[p].transcript(), &segs),
            None => self
                .c
                .nodes
                .iter()
                .map(|n| common::history::check(&n.transcript(), &segs))
                .find(Result::is_ok)
                .unwrap_or_else(|| Err("no single history explains what was released".into())),
        };
        match result {
            Ok(r) => {
                self.stats.released += r.released;
                self.stats.repeated += r.repeated;
            }
            Err(e) => {
                self.dump(&e);
                self.stats.violations.push(e);
            }
        }
    }

    /// One random fault, healed before returning.
    fn fault(&mut self) {
        let Some(s) = self.c.status() else {
            return;
        };
        let p = self.live(&s.view.primary);
        let b = self.live(&s.view.backup).filter(|_| s.backup_ready);
        let idle: Vec<usize> = (0..self.c.nodes.len())
            .filter(|i| {
                !self.c.nodes[*i].reaped()
                    && self.c.nodes[*i].addr() != s.view.primary
                    && self.c.nodes[*i].addr() != s.view.backup
            })
            .collect();
        let etcd = self.etcd.is_some();
        let mut kinds = vec![
            "kill primary",
            "kill backup",
            "kill idle",
            "stop primary",
            "stop backup",
            "stop viewserver",
            "kill viewserver",
            "isolate primary",
            "isolate backup",
            "isolate viewserver",
            "cut pair",
            "drop one way",
            "loss",
            "junk",
        ];
        if etcd {
            kinds.extend(["kill etcd member", "stop etcd member"]);
        }
        let kind = self.rng.pick(&kinds);
        eprintln!(
            "nemesis: {kind} (view {}: {} / {})",
            s.view.viewnum, s.view.primary, s.view.backup
        );
        let dur = self.rng.ms(200, 2500);
        if kind.contains("primary") {
            self.watch = Some((Instant::now(), kind, s.view.primary.clone()));
        }
        let vs_host = self.rng.pick(&vs_hosts(etcd));
        let vs_index = vs_hosts(etcd).iter().position(|h| *h == vs_host).unwrap();
        match kind {
            "kill primary" => {
                // Only while the backup holds the guest: killing its only holder is no test.
                let (Some(p), Some(_)) = (p, b) else { return };
                self.c.nodes[p].sigkill();
            }
            "kill backup" => {
                let Some(b) = self.live(&s.view.backup) else {
                    return;
                };
                self.c.nodes[b].sigkill();
            }
            "kill idle" => {
                if idle.is_empty() {
                    return;
                }
                let i = self.rng.pick(&idle);
                self.c.nodes[i].sigkill();
            }
            "stop primary" | "stop backup" => {
                let who = if kind == "stop primary" {
                    p
                } else {
                    self.live(&s.view.backup)
                };
                let Some(i) = who else { return };
                if kind == "stop primary" && b.is_none() && dur > Duration::from_millis(400) {
                    // A long stop of the only holder would look like its death: keep it short.
                    return;
                }
                self.c.nodes[i].signal(Signal::Stop);
                self.idle(dur);
                self.c.nodes[i].signal(Signal::Cont);
            }
            "stop viewserver" => {
                self.c.vs[vs_index].signal(Signal::Stop);
                self.idle(dur);
                self.c.vs[vs_index].signal(Signal::Cont);
            }
            "kill viewserver" => {
                self.c.vs[vs_index].sigkill();
                self.idle(dur);
                self.c.restart_viewserver_at(vs_index);
            }
            "isolate primary" | "isolate backup" | "isolate viewserver" => {
                let host = match kind {
                    "isolate primary" => self.host_of(&s.view.primary),
                    "isolate backup" => self.host_of(&s.view.backup),
                    _ => Some(vs_host),
                };
                let Some(h) = host else { return };
                if kind == "isolate primary" && b.is_none() && dur > Duration::from_millis(400) {
                    return;
                }
                self.net.isolate(h).unwrap();
                self.idle(dur);
                self.net.heal().unwrap();
            }
            "cut pair" | "drop one way" => {
                let mut hosts: Vec<&str> = SLOTS.to_vec();
                hosts.extend(vs_hosts(etcd));
                let a = self.rng.pick(&hosts);
                let z = self.rng.pick(&hosts);
                if a == z {
                    return;
                }
                self.net.cut(a, z, kind == "cut pair").unwrap();
                self.idle(dur);
                self.net.heal().unwrap();
            }
            "loss" => {
                let mut hosts: Vec<&str> = SLOTS.to_vec();
                hosts.extend(vs_hosts(etcd));
                let h = self.rng.pick(&hosts);
                let pct = 5 + self.rng.below(26) as u32;
                self.net.lose(h, pct).unwrap();
                self.idle(dur);
                self.net.heal().unwrap();
            }
            "junk" => {
                let mut targets: Vec<String> =
                    self.c.vs.iter().map(|v| v.addr().to_string()).collect();
                targets.extend(
                    self.c
                        .nodes
                        .iter()
                        .filter(|n| !n.reaped())
                        .map(|n| n.addr().to_string()),
                );
                let held = self.net.within("ctl", move || {
                    use std::io::Write;
                    let mut held = Vec::new();
                    for t in &targets {
                        for k in 0..30 {
                            let Ok(addr) = t.parse() else { continue };
                            let Ok(mut s) = std::net::TcpStream::connect_timeout(
                                &addr,
                                Duration::from_millis(200),
                            ) else {
                                continue;
                            };
                            if k % 3 == 1 {
                                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                            } else if k % 3 == 2 {
                                let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x00]);
                            }
                            held.push(s);
                        }
                    }
                    held
                });
                let held = held.unwrap();
                self.idle(dur);
                drop(held);
            }
            "kill etcd member" | "stop etcd member" => {
                let e = self.etcd.as_mut().unwrap();
                let i = self.rng.below(e.len() as u64) as usize;
                if kind == "kill etcd member" {
                    e.kill(i);
                    self.idle(dur);
                    self.etcd.as_mut().unwrap().restart(i);
                } else {
                    if !e.running(i) {
                        return;
                    }
                    e.signal(i, Signal::Stop);
                    self.idle(dur);
                    self.etcd.as_ref().unwrap().signal(i, Signal::Cont);
                }
            }
            _ => unreachable!(),
        }
        self.count(kind);
    }
}

#[test]
fn nemesis() {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let etcd_mode = std::env::var("NEMESIS_COORDINATOR").is_ok_and(|c| c == "etcd");
    if etcd_mode && !common::etcd::available() {
        return;
    }
    let secs: u64 = std::env::var("NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // A fixed seed by default, so that a plain `cargo test` (CI) makes the same choices every
    // time (the processes' timing still varies); `bench/nemesis.sh` draws a new one per run.
    let seed: u64 = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0x5eed_f417);
    eprintln!(
        "NEMESIS_SEED={seed} NEMESIS_SECS={secs} NEMESIS_COORDINATOR={}",
        if etcd_mode { "etcd" } else { "file" }
    );
    let mut hosts: Vec<&str> = vec!["ctl"];
    hosts.extend(vs_hosts(etcd_mode));
    hosts.extend(SLOTS);
    let net = Arc::new(Net::new(&hosts).unwrap());
    let etcd = etcd_mode.then(|| EtcdCluster::start_on(Arc::clone(&net), &vs_hosts(true)));
    let c = Nemesis::new_service(&net, etcd.as_ref());
    let dumps = std::env::var("NEMESIS_DUMPS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let mut n = Nemesis {
        net,
        etcd,
        c,
        rng: Rng(seed),
        stats: Stats::default(),
        last_total: 0,
        last_growth: Instant::now(),
        last_out: Vec::new(),
        watch: None,
        dumps,
    };
    n.stats.services = 1;
    assert!(
        matches!(n.wait_healthy(), Health::Healthy),
        "the first service never started"
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        n.fault();
        // Killed nodes come back (same name, new incarnation) only once the service has healed
        // without them: a primary back at once would be recognised as restarted at once, and
        // the failover would not wait for the failure detector.
        let health = n.wait_healthy();
        n.refill();
        if let Health::Lost(_) | Health::Wedged = health {
            // A new service, after checking this one: with the guest lost (or wedged) there is
            // nothing left to inject faults into.
            if let Health::Lost(cause) = health {
                *n.stats.lost.entry(cause).or_default() += 1;
            }
            n.check();
            n.stats.services += 1;
            let fresh = Nemesis::new_service(&n.net, n.etcd.as_ref());
            n.c = fresh;
            n.watch = None;
            n.last_out.clear();
            assert!(
                matches!(n.wait_healthy(), Health::Healthy),
                "a new service never started"
            );
        }
        let gap = n.rng.ms(300, 1500);
        n.idle(gap);
    }
    n.net.heal().unwrap();
    let _ = n.wait_healthy();
    n.check();

    let s = &n.stats;
    let faults: usize = s.faults.values().sum();
    let mut t = String::new();
    let _ = writeln!(t, "| | |\n|---|---|");
    let _ = writeln!(
        t,
        "| seed, duration, coordinator | {seed}, {secs} s, {} |",
        if etcd_mode {
            "etcd (3 viewservers)"
        } else {
            "file"
        }
    );
    let _ = writeln!(t, "| faults injected | {faults} |");
    for (k, v) in &s.faults {
        let _ = writeln!(t, "| — {k} | {v} |");
    }
    for (kind, f) in &s.failovers {
        let _ = writeln!(
            t,
            "| failovers after \"{kind}\" (fault → successor's first output) | {} : p50 {}, p90 {}, max {} |",
            f.len(),
            ms(percentile(f, 50)),
            ms(percentile(f, 90)),
            ms(percentile(f, 100))
        );
    }
    let _ = writeln!(
        t,
        "| output gaps > 200 ms | {} : p50 {}, p90 {}, max {} |",
        s.gaps.len(),
        ms(percentile(&s.gaps, 50)),
        ms(percentile(&s.gaps, 90)),
        ms(percentile(&s.gaps, 100))
    );
    let _ = writeln!(
        t,
        "| bytes released, repeated | {}, {} |",
        s.released, s.repeated
    );
    let _ = writeln!(t, "| services started | {} |", s.services);
    for (cause, count) in &s.lost {
        let _ = writeln!(t, "| guests lost: {cause} | {count} |");
    }
    let _ = writeln!(t, "| wedged while a holder lived | {} |", s.wedges.len());
    let _ = writeln!(t, "| history violations | {} |", s.violations.len());
    eprintln!("{t}");
    if let Ok(path) = std::env::var("NEMESIS_REPORT") {
        std::fs::write(path, &t).unwrap();
    }
    assert!(
        s.violations.is_empty(),
        "history violations: {:?}",
        s.violations
    );
    assert!(s.wedges.is_empty(), "wedged: {:?}", s.wedges);
}
