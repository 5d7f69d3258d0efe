//! Linearizability of the replicated `kv` guest through repeated failovers (issue 10). Several
//! clients on host "ctl", each on a TCP connection of its own, run SET/GET/APPEND/INCR on a few
//! keys while the primary is taken away again and again (a fresh node joins as backup after
//! each failover): SIGKILLed, or every other time cut off from the view service and its backup
//! while its guest stays reachable by the clients (the host's own network fails, its VMs' does
//! not). That deposed primary's guest runs on and keeps receiving what reaches it; nothing it
//! answers may reach a client, or the history would fork. The cut is healed after the next
//! phase, and the old primary learns it was replaced. Retries are off: an operation whose reply never came is recorded as indeterminate
//! (invoked, never returned), which the checker may take as done or as never done, and its
//! client goes on with a new connection. Each key's history, closed by a read on a fresh
//! connection at the end, must be linearizable against a model of a Redis string value; and
//! every acknowledged write must be in the final values.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ::cluster::Net;
use common::cluster::{Cluster, Failover, KV_GUEST_IP, kv_pair};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

const CLIENTS: usize = 4;
/// Failovers: a SIGKILL, a partition, a SIGKILL, ...
const KILLS: usize = 5;
const LONG: Duration = Duration::from_secs(60);
/// How long a client waits for a reply before it gives the operation up as indeterminate (and
/// its connection with it): well beyond a failover's stall, so connections normally carry on.
const PATIENCE: Duration = Duration::from_secs(20);
/// Client 0's patience: short enough that the stall of a failover makes it give up operations
/// whose effect it then cannot know, which is what the checker must take either way.
const IMPATIENCE: Duration = Duration::from_millis(250);
/// Operations every client must complete in each phase (before the first kill, after each
/// failover): evidence that all of them carried on, whatever the host's speed.
const OPS_PER_PHASE: usize = 100;
/// A client's pause between operations: it bounds how long the histories get on a fast host
/// (the checker's search grows quickly with their length), not what the test may expect.
const PACE: Duration = Duration::from_millis(4);
/// The guest's `VALUE_MAX` (guest/src/resp.rs): an APPEND beyond it fails and changes nothing.
const VALUE_MAX: usize = 1024;

/// The keys of phase `epoch`: a register that is SET and APPENDed to, a log that is only
/// APPENDed to, a counter that is only INCRed (INCR on the others would fail on their values).
/// Each phase has keys of its own, so every key's history spans at most one kill and stays
/// short enough to check, and the keys of early phases are read again after later kills.
fn keys(epoch: usize) -> [String; 3] {
    [
        format!("reg{epoch}"),
        format!("log{epoch}"),
        format!("ctr{epoch}"),
    ]
}

// ---- The model ----------------------------------------------------------------------------

/// A key's value as the guest keeps it (absent, or a string): the sequential specification
/// every key's history is checked against.
#[derive(Clone, Debug, Default, PartialEq)]
struct Value(Option<String>);

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Get,
    Set(String),
    Append(String),
    Incr,
}

#[derive(Clone, Debug, PartialEq)]
enum Ret {
    Ok,
    Int(i64),
    Bulk(Option<String>),
    /// An error reply (`-ERR ...`): the command changed nothing.
    Err,
    /// A reply this model never gives (so a history with it never checks).
    Other(String),
}

impl SequentialSpec for Value {
    type Op = Op;
    type Ret = Ret;
    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Get => Ret::Bulk(self.0.clone()),
            Op::Set(v) => {
                self.0 = Some(v.clone());
                Ret::Ok
            }
            Op::Append(s) => {
                let old = self.0.as_ref().map_or(0, String::len);
                if old + s.len() > VALUE_MAX {
                    return Ret::Err;
                }
                let v = self.0.get_or_insert_with(String::new);
                v.push_str(s);
                Ret::Int(v.len() as i64)
            }
            Op::Incr => match self.0.as_deref().map_or(Some(0), |v| v.parse::<i64>().ok()) {
                Some(n) => {
                    self.0 = Some((n + 1).to_string());
                    Ret::Int(n + 1)
                }
                None => Ret::Err,
            },
        }
    }
}

// ---- The history ----------------------------------------------------------------------------

/// One operation as a client saw it. `invoked` and `returned` come from one counter that every
/// client steps, so one operation returned before another was invoked iff its `returned` is
/// smaller than the other's `invoked`.
#[derive(Clone, Debug)]
struct Rec {
    key: String,
    /// The connection it ran on: one sequential thread of the history (a client that gives up
    /// on an operation goes on as a new session, the old one having that operation in flight
    /// for ever).
    session: usize,
    op: Op,
    invoked: u64,
    /// When the reply came and what it was; `None`: it never came (indeterminate).
    returned: Option<(u64, Ret)>,
}

impl Rec {
    fn acked(&self) -> bool {
        self.returned.is_some()
    }
}

/// A key's history, one operation a line, by invocation.
fn show(recs: &[&Rec]) -> String {
    let mut by_invocation = recs.to_vec();
    by_invocation.sort_by_key(|r| r.invoked);
    let mut s = String::new();
    for r in by_invocation {
        let _ = match &r.returned {
            Some((at, ret)) => writeln!(
                s,
                "  [{:>6}..{:>6}] session {:>2}: {:?} -> {:?}",
                r.invoked, at, r.session, r.op, ret
            ),
            None => writeln!(
                s,
                "  [{:>6}..     ?] session {:>2}: {:?} -> no reply (indeterminate)",
                r.invoked, r.session, r.op
            ),
        };
    }
    s
}

/// Whether one key's history is linearizable; if not, why, with the history.
fn check_key(key: &str, recs: &[&Rec]) -> Result<(), String> {
    // (counter value, is a return, which operation)
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        events.push((r.invoked, false, i));
        if let Some((at, _)) = &r.returned {
            events.push((*at, true, i));
        }
    }
    events.sort_unstable();
    let mut tester = LinearizabilityTester::new(Value::default());
    for (_, is_return, i) in events {
        let r = recs[i];
        let fed = match (&r.returned, is_return) {
            (Some((_, ret)), true) => tester.on_return(r.session, ret.clone()).map(|_| ()),
            _ => tester.on_invoke(r.session, r.op.clone()).map(|_| ()),
        };
        fed.map_err(|e| format!("key {key}: a malformed history ({e}):\n{}", show(recs)))?;
    }
    if tester.is_consistent() {
        Ok(())
    } else {
        Err(format!(
            "key {key}: the history is not linearizable:\n{}",
            show(recs)
        ))
    }
}

/// Every key's history checked; the failures.
fn check_all(recs: &[Rec]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Rec>> = BTreeMap::new();
    for r in recs {
        by_key.entry(&r.key).or_default().push(r);
    }
    by_key
        .iter()
        .filter_map(|(k, h)| check_key(k, h).err())
        .collect()
}

/// Acknowledged writes missing from (or misplaced in) `last`, the value key `key` was last read
/// to have: every suffix an acknowledged APPEND added must be in it exactly once, an
/// indeterminate one at most once, and nothing else; a counter must hold every acknowledged
/// INCR and at most the indeterminate ones besides.
fn writes_missing(key: &str, recs: &[&Rec], last: Option<&str>) -> Vec<String> {
    let mut why = Vec::new();
    let appends: Vec<&Rec> = recs
        .iter()
        .copied()
        .filter(|r| matches!(r.op, Op::Append(_)))
        .collect();
    let only_appends = recs.iter().all(|r| matches!(r.op, Op::Append(_) | Op::Get));
    if only_appends && !appends.is_empty() {
        // Tokens end in ';' (see `token`), so the value splits into the suffixes that made it.
        let tokens: Vec<&str> = last.unwrap_or("").split_inclusive(';').collect();
        for r in &appends {
            let Op::Append(suffix) = &r.op else {
                continue;
            };
            let times = tokens.iter().filter(|t| **t == suffix).count();
            match &r.returned {
                Some((_, Ret::Int(_))) if times != 1 => why.push(format!(
                    "{key}: the acknowledged APPEND {suffix:?} is there {times} times"
                )),
                Some((_, Ret::Err)) if times != 0 => why.push(format!(
                    "{key}: the failed APPEND {suffix:?} is there {times} times"
                )),
                None if times > 1 => why.push(format!(
                    "{key}: the indeterminate APPEND {suffix:?} is there {times} times"
                )),
                _ => {}
            }
        }
        let appended = |t: &str| {
            appends.iter().any(|r| {
                r.op == Op::Append(t.to_string()) && !matches!(r.returned, Some((_, Ret::Err)))
            })
        };
        for t in tokens.iter().filter(|t| !appended(t)) {
            why.push(format!(
                "{key}: {t:?} is in the value but was never appended"
            ));
        }
    }
    if recs.iter().any(|r| r.op == Op::Incr) {
        let acked = recs
            .iter()
            .filter(|r| r.op == Op::Incr && matches!(r.returned, Some((_, Ret::Int(_)))))
            .count() as i64;
        let maybe = recs
            .iter()
            .filter(|r| r.op == Op::Incr && !r.acked())
            .count() as i64;
        let n = last.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        if n < acked || n > acked + maybe {
            why.push(format!(
                "{key}: the counter is {n} after {acked} acknowledged INCRs and {maybe} indeterminate ones"
            ));
        }
    }
    why
}

// ---- The clients ----------------------------------------------------------------------------

/// What the clients and the test share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Which phase's keys the clients use.
    epoch: AtomicUsize,
    /// The one counter that orders invocations and returns.
    clock: AtomicU64,
    sessions: AtomicUsize,
    /// Operations each client completed (a reply came).
    done: [AtomicUsize; CLIENTS],
    /// Operations each client gave up as indeterminate.
    lost: [AtomicUsize; CLIENTS],
    /// The longest wait for a reply so far, in milliseconds (for the report).
    slowest_ms: AtomicU64,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
    fn done(&self) -> Vec<usize> {
        self.done.iter().map(|d| d.load(Ordering::SeqCst)).collect()
    }
}

/// A RESP connection to the guest.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    /// A new connection from host "ctl" (the socket stays in the namespace it was made in);
    /// `None` if it cannot be made now or the network is gone.
    fn open(net: &Weak<Net>, patience: Duration) -> Option<Self> {
        let net = net.upgrade()?;
        let to: SocketAddr = format!("{KV_GUEST_IP}:6379").parse().ok()?;
        let s = net
            .within("ctl", move || {
                TcpStream::connect_timeout(&to, Duration::from_secs(2))
            })
            .ok()?
            .ok()?;
        s.set_read_timeout(Some(patience)).ok()?;
        s.set_write_timeout(Some(patience)).ok()?;
        s.set_nodelay(true).ok()?;
        Some(Self {
            w: s.try_clone().ok()?,
            r: BufReader::new(s),
        })
    }

    /// Sends `args` as one command and reads its reply; `None` if none came (in time).
    fn call(&mut self, args: &[&str]) -> Option<Ret> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            let _ = write!(req, "${}\r\n{a}\r\n", a.len());
        }
        self.w.write_all(req.as_bytes()).ok()?;
        let mut line = String::new();
        if self.r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.strip_suffix("\r\n")?;
        let (kind, rest) = line.split_at_checked(1)?;
        Some(match kind {
            "+" if rest == "OK" => Ret::Ok,
            ":" => rest
                .parse()
                .map_or_else(|_| Ret::Other(line.to_string()), Ret::Int),
            "-" => Ret::Err,
            "$" if rest == "-1" => Ret::Bulk(None),
            "$" => {
                let n: usize = rest.parse().ok()?;
                let mut v = vec![0; n + 2];
                self.r.read_exact(&mut v).ok()?;
                v.truncate(n);
                Ret::Bulk(Some(String::from_utf8_lossy(&v).into_owned()))
            }
            _ => Ret::Other(line.to_string()),
        })
    }
}

fn args(key: &str, op: &Op) -> Vec<String> {
    let k = key.to_string();
    match op {
        Op::Get => vec!["GET".into(), k],
        Op::Set(v) => vec!["SET".into(), k, v.clone()],
        Op::Append(s) => vec!["APPEND".into(), k, s.clone()],
        Op::Incr => vec!["INCR".into(), k],
    }
}

/// What client `id` writes in its `n`th operation: unique, short (a log key holds at most
/// `VALUE_MAX` bytes of them) and self-delimiting, so a value tells exactly which writes made it.
fn token(id: usize, n: u64) -> String {
    let mut digits = Vec::new();
    let mut n = n;
    loop {
        digits.push(char::from_digit((n % 36) as u32, 36).unwrap_or('?'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    let n: String = digits.iter().rev().collect();
    format!("{id}.{n};")
}

/// A client's next operation, on the keys of `epoch`, writing `token` if it writes.
fn pick(rng: &mut u64, epoch: usize, token: String) -> (String, Op) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let [reg, log, ctr] = keys(epoch);
    let r = *rng % 100;
    match r {
        0..=16 => (reg, Op::Get),
        17..=31 => (reg, Op::Set(token)),
        32..=46 => (reg, Op::Append(token)),
        47..=61 => (log, Op::Get),
        62..=73 => (log, Op::Append(token)),
        74..=86 => (ctr, Op::Get),
        _ => (ctr, Op::Incr),
    }
}

/// Client `id`: operations until `stop`, never one again once sent; its history.
fn client(id: usize, sh: &Shared, net: &Weak<Net>) -> Vec<Rec> {
    let mut recs = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (id as u64 + 1).wrapping_mul(0x1234_5677);
    let mut conn: Option<(usize, Conn)> = None;
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Acquire) {
        let Some((session, c)) = conn.as_mut() else {
            let patience = if id == 0 { IMPATIENCE } else { PATIENCE };
            match Conn::open(net, patience) {
                Some(c) => conn = Some((sh.sessions.fetch_add(1, Ordering::SeqCst), c)),
                None if net.strong_count() == 0 => break,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
            continue;
        };
        let (key, op) = pick(&mut rng, sh.epoch.load(Ordering::Acquire), token(id, n));
        n += 1;
        let a = args(&key, &op);
        let invoked = sh.tick();
        let sent = Instant::now();
        let reply = c.call(&a.iter().map(String::as_str).collect::<Vec<_>>());
        sh.slowest_ms
            .fetch_max(sent.elapsed().as_millis() as u64, Ordering::SeqCst);
        let returned = reply.map(|r| (sh.tick(), r));
        let counter = if returned.is_some() {
            &sh.done
        } else {
            &sh.lost
        };
        counter[id].fetch_add(1, Ordering::SeqCst);
        let session = *session;
        if returned.is_none() {
            conn = None;
        }
        recs.push(Rec {
            key,
            session,
            op,
            invoked,
            returned,
        });
        std::thread::sleep(PACE);
    }
    recs
}

/// Waits until every client completed `OPS_PER_PHASE` more operations than at `from`; returns
/// how long that took.
fn wait_phase(sh: &Shared, c: &Cluster, from: &[usize], what: &str) -> Duration {
    let t0 = Instant::now();
    let deadline = t0 + LONG;
    while sh
        .done()
        .iter()
        .zip(from)
        .any(|(d, f)| *d < f + OPS_PER_PHASE)
    {
        assert!(
            Instant::now() < deadline,
            "{what}: the clients got stuck: {:?} operations done, {:?} at the start\n{}",
            sh.done(),
            from,
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// Sets `stop` when dropped, so the clients end (and release the network) however the test
/// ends.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

#[test]
fn every_key_stays_linearizable_across_primary_kills_and_partitions() {
    // Two to start with, and a fresh one after each kill.
    let names: Vec<String> = (0..2 + KILLS).map(|i| format!("h{i}")).collect();
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some((net, mut c, mut free_hosts)) = kv_pair(&hosts) else {
        return;
    };

    let started = Instant::now();
    let sh = Arc::new(Shared::default());
    let _stop = StopOnDrop(Arc::clone(&sh));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (sh, net) = (Arc::clone(&sh), Arc::downgrade(&net));
            std::thread::spawn(move || client(id, &sh, &net))
        })
        .collect();
    wait_phase(&sh, &c, &[0; CLIENTS], "before any kill");
    for round in 0..KILLS {
        // Kill only a primary whose backup holds the state: otherwise the guest is simply gone.
        let view = c.wait_ready(LONG).view;
        let p = c.index_of(&view.primary);
        let q = c.index_of(&view.backup);
        let q_events = c.nodes[q].event_count();
        let p_events = c.nodes[p].event_count();
        let partitioned = round % 2 == 1;
        let p_host = net.host_of(&view.primary).expect("the primary's host");
        if partitioned {
            net.isolate(&p_host).expect("cut the primary's host off");
        } else {
            c.nodes[p].sigkill();
        }
        let killed = sh.done();
        match c.await_failover(&view, q, q_events, LONG) {
            Failover::Promoted(v) => assert_eq!(v.primary, c.nodes[q].addr()),
            Failover::Lost(why) => panic!("round {round}: the guest was lost: {why}"),
        }
        free_hosts.add(&mut c);
        let fault = if partitioned { "partition" } else { "kill" };
        let took = wait_phase(&sh, &c, &killed, &format!("after {fault} {round}"));
        if partitioned {
            // The deposed primary hears of the new view and stands down; its guest, which ran
            // on meanwhile, must never have spoken.
            net.heal().expect("heal the partition");
            assert!(
                c.nodes[p]
                    .wait_event("stepped_down", p_events, LONG)
                    .is_some(),
                "round {round}: the cut-off primary never stood down\n{}",
                c.logs()
            );
        }
        sh.epoch.fetch_add(1, Ordering::SeqCst);
        eprintln!(
            "{fault} {round}: {:?} operations done at the fault, {:?} {took:?} later; {:?} indeterminate",
            killed,
            sh.done(),
            sh.lost
        );
    }
    let last = sh.done();
    wait_phase(&sh, &c, &last, "after the last failover");
    sh.stop.store(true, Ordering::Release);
    let mut recs: Vec<Rec> = clients
        .into_iter()
        .flat_map(|t| t.join().expect("a client"))
        .collect();

    // The last word on every key, from a fresh connection once nobody writes any more.
    let weak = Arc::downgrade(&net);
    let mut conn = ::cluster::wait::poll(LONG, Duration::from_millis(100), || {
        Conn::open(&weak, PATIENCE)
    })
    .unwrap_or_else(|| panic!("no connection for the last reads\n{}", c.logs()));
    let session = sh.sessions.fetch_add(1, Ordering::SeqCst);
    let mut finals = BTreeMap::new();
    for epoch in 0..=KILLS {
        for key in keys(epoch) {
            let invoked = sh.tick();
            let ret = conn
                .call(&["GET", &key])
                .unwrap_or_else(|| panic!("no reply to the last GET {key}\n{}", c.logs()));
            if let Ret::Bulk(v) = &ret {
                finals.insert(key.clone(), v.clone());
            }
            recs.push(Rec {
                key,
                session,
                op: Op::Get,
                invoked,
                returned: Some((sh.tick(), ret)),
            });
        }
    }
    let ran = started.elapsed();

    // First the cheap check, which names what went wrong: a forked history (a deposed primary
    // that answered) loses acknowledged writes, and makes the search below exhaust itself.
    let mut by_key: BTreeMap<&str, Vec<&Rec>> = BTreeMap::new();
    for r in &recs {
        by_key.entry(&r.key).or_default().push(r);
    }
    let missing: Vec<String> = by_key
        .iter()
        .flat_map(|(k, h)| writes_missing(k, h, finals.get(*k).and_then(|v| v.as_deref())))
        .collect();
    assert!(
        missing.is_empty(),
        "{}\n--- the nodes' logs ---\n{}",
        missing.join("\n"),
        c.logs()
    );

    let checking = Instant::now();
    let n_recs = recs.len();
    // The checker searches depth-first, one stack frame per operation; and it gets a deadline
    // so that a pathological history fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let to_check = recs.clone();
    std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(move || {
            let _ = tx.send(check_all(&to_check));
        })
        .expect("the checker's thread");
    let failures = rx.recv_timeout(LONG).unwrap_or_else(|_| {
        panic!(
            "the checker found no linearization within {LONG:?} on {n_recs} operations (a \
             history with no valid order makes it search every one)"
        )
    });
    eprintln!(
        "{n_recs} operations in {ran:?} ({} indeterminate, {} error replies, the slowest reply after {} ms), checked in {:?}; per key: {:?}",
        recs.iter().filter(|r| !r.acked()).count(),
        recs.iter()
            .filter(|r| matches!(r.returned, Some((_, Ret::Err))))
            .count(),
        sh.slowest_ms.load(Ordering::SeqCst),
        checking.elapsed(),
        by_key
            .iter()
            .map(|(k, h)| (*k, h.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "{}\n--- the nodes' logs ---\n{}",
        failures.join("\n"),
        c.logs()
    );
}

// ---- The checker itself must be able to say no ----------------------------------------------

/// Builds histories by hand: `op(session, key, op, invoked, returned)`.
#[derive(Default)]
struct H(Vec<Rec>);

impl H {
    fn op(
        mut self,
        session: usize,
        key: &str,
        op: Op,
        invoked: u64,
        ret: Option<(u64, Ret)>,
    ) -> Self {
        self.0.push(Rec {
            key: key.to_string(),
            session,
            op,
            invoked,
            returned: ret,
        });
        self
    }
    fn refs(&self) -> Vec<&Rec> {
        self.0.iter().collect()
    }
}

fn set(v: &str) -> Op {
    Op::Set(v.to_string())
}
fn append(v: &str) -> Op {
    Op::Append(v.to_string())
}
fn bulk(v: &str) -> Ret {
    Ret::Bulk(Some(v.to_string()))
}

#[test]
fn the_checker_accepts_overlaps_and_indeterminate_operations_either_way() {
    let h = H::default()
        // Two overlapping SETs, read in either order by overlapping GETs.
        .op(0, "k", set("a"), 0, Some((3, Ret::Ok)))
        .op(1, "k", set("b"), 1, Some((4, Ret::Ok)))
        .op(2, "k", Op::Get, 2, Some((5, bulk("a"))))
        .op(0, "k", Op::Get, 6, Some((7, bulk("b"))))
        // An APPEND without reply that took effect, and one that did not.
        .op(1, "k", append("x;"), 8, None)
        .op(2, "k", append("y;"), 9, None)
        .op(3, "k", Op::Get, 10, Some((11, bulk("bx;"))))
        // Counters: an INCR without reply may have counted.
        .op(0, "c", Op::Incr, 12, Some((13, Ret::Int(1))))
        .op(2, "c", Op::Incr, 14, None)
        .op(3, "c", Op::Get, 15, Some((16, bulk("2"))));
    assert_eq!(check_all(&h.0), Vec::<String>::new());
    let by = |k: &str| -> Vec<&Rec> { h.0.iter().filter(|r| r.key == k).collect() };
    assert!(writes_missing("c", &by("c"), Some("2")).is_empty());
    assert!(writes_missing("c", &by("c"), Some("1")).is_empty());
}

#[test]
fn the_checker_rejects_a_read_of_a_value_never_written() {
    let h = H::default().op(0, "k", set("a"), 0, Some((1, Ret::Ok))).op(
        1,
        "k",
        Op::Get,
        2,
        Some((3, bulk("z"))),
    );
    let failures = check_all(&h.0);
    assert_eq!(failures.len(), 1);
    // The message shows the history.
    assert!(
        failures[0].contains("Get -> Bulk(Some(\"z\"))"),
        "{}",
        failures[0]
    );
}

#[test]
fn the_checker_rejects_a_stale_read_after_an_acknowledged_write() {
    let h = H::default()
        .op(0, "k", set("a"), 0, Some((1, Ret::Ok)))
        .op(0, "k", set("b"), 2, Some((3, Ret::Ok)))
        // Concurrent with nothing, after "b" was acknowledged: "a" is stale.
        .op(1, "k", Op::Get, 4, Some((5, bulk("a"))));
    assert_eq!(check_all(&h.0).len(), 1);
    // The same read overlapping the SET of "b" is fine.
    let h = H::default()
        .op(0, "k", set("a"), 0, Some((1, Ret::Ok)))
        .op(0, "k", set("b"), 2, Some((5, Ret::Ok)))
        .op(1, "k", Op::Get, 3, Some((4, bulk("a"))));
    assert!(check_all(&h.0).is_empty());
}

#[test]
fn the_checker_rejects_a_lost_acknowledged_append_or_incr() {
    let h = H::default()
        .op(0, "log", append("0.0;"), 0, Some((1, Ret::Int(4))))
        .op(1, "log", append("1.0;"), 2, Some((3, Ret::Int(8))))
        .op(2, "log", Op::Get, 4, Some((5, bulk("0.0;"))));
    assert_eq!(check_all(&h.0).len(), 1);
    assert_eq!(
        writes_missing("log", &h.refs(), Some("0.0;")),
        vec!["log: the acknowledged APPEND \"1.0;\" is there 0 times".to_string()]
    );
    assert!(writes_missing("log", &h.refs(), Some("0.0;1.0;")).is_empty());
    assert_eq!(
        writes_missing("log", &h.refs(), Some("0.0;1.0;2.0;")),
        vec!["log: \"2.0;\" is in the value but was never appended".to_string()]
    );
    // Applied twice (a replayed request) is as wrong.
    let h = H::default()
        .op(0, "ctr", Op::Incr, 0, Some((1, Ret::Int(1))))
        .op(0, "ctr", Op::Incr, 2, Some((3, Ret::Int(3))));
    assert_eq!(check_all(&h.0).len(), 1);
    let h = H::default()
        .op(0, "ctr", Op::Incr, 0, Some((1, Ret::Int(1))))
        .op(0, "ctr", Op::Incr, 2, None);
    assert!(check_all(&h.0).is_empty());
    assert_eq!(writes_missing("ctr", &h.refs(), Some("0")).len(), 1);
    assert_eq!(writes_missing("ctr", &h.refs(), Some("3")).len(), 1);
    assert!(writes_missing("ctr", &h.refs(), Some("2")).is_empty());
}
