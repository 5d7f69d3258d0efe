//! The view service's state in etcd, shared by several viewserver processes
//! of which at most one leads at a time ([`EtcdStore`]).
//!
//! - **Election.** Each viewserver holds an etcd lease (TTL a couple of
//!   seconds) and campaigns with a transaction "`PREFIX/leader` does not exist
//!   → put `PREFIX/leader` = my advertise address, attached to my lease". The
//!   key disappears when the leader's lease expires (its process died or lost
//!   etcd), and then the next campaign wins.
//! - **Term.** The leader's term is the leader key's `create_revision`:
//!   etcd's revisions only grow, so every term has its own number.
//! - **Until.** A leader leads until (send time of its last keepalive that
//!   succeeded) + TTL − a margin. etcd expires a lease no earlier than TTL
//!   after it *received* the last keepalive, which is after we sent it; so by
//!   our own `until` the lease, and with it the leader key, still exists, and
//!   no other viewserver can have won. Past `until` this process reports
//!   itself a follower, even if the thread that keeps the lease alive is
//!   stuck.
//! - **Saves.** Every state change is a transaction conditioned on
//!   `create_revision(PREFIX/leader) == term` (we still lead, in the term in
//!   which the state was loaded) and `mod_revision(PREFIX/state) == the
//!   revision we loaded or last wrote`: a deposed leader's write can never
//!   land after its successor's, nor over it.
//!
//! All calls go through the JSON gateway ([`gateway`]), blocking, one
//! endpoint after the other, each bounded by a timeout. A background thread
//! keeps the lease alive and campaigns; [`Store::leadership`] only reads what
//! it found.

mod gateway;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use self::gateway::{
    CallError, Gateway, KeepAliveMessage, KeyValue, LeaseGrantResponse, RangeResponse, TxnResponse,
    b64, unb64,
};
use crate::events::Observer;
use crate::events::{ServiceEvent, emit};
use crate::service::Persisted;
use crate::store::{Leadership, Store, StoreError, Undecodable, decode_state, encode_state};

/// How to reach etcd and take part in the election.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// The members' client URLs (`http://HOST:PORT`); tried in turn.
    pub endpoints: Vec<String>,
    /// Keys used: `PREFIX/leader` and `PREFIX/state`. One prefix per service.
    pub prefix: String,
    /// Where clients reach this viewserver: what it writes into the leader
    /// key, and what followers point clients to.
    pub advertise: String,
    /// TTL asked for the election lease (whole seconds, at least one; etcd
    /// may grant more: it clamps TTLs to 1.5 of its election timeout). A
    /// dead leader is replaced within about this long.
    pub lease_ttl: Duration,
    /// How often a follower checks whether it can lead (and a leader that
    /// it still does).
    pub poll: Duration,
    /// Bound on one call to one endpoint.
    pub timeout: Duration,
    /// Told when etcd stops answering and when it answers again.
    pub events: Option<Observer>,
}

impl EtcdConfig {
    /// Defaults: TTL 2 s, poll every 100 ms, 500 ms per call, no observer.
    pub fn new(
        endpoints: Vec<String>,
        prefix: impl Into<String>,
        advertise: impl Into<String>,
    ) -> Self {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            advertise: advertise.into(),
            lease_ttl: Duration::from_secs(2),
            poll: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            events: None,
        }
    }
}

/// What the election thread found, read by [`EtcdStore::leadership`].
#[derive(Debug, Default)]
struct Election {
    /// The lease we hold, if any.
    lease_id: Option<i64>,
    /// Until when that lease certainly exists in etcd.
    lease_until: Option<Instant>,
    /// The leader key's `create_revision` while it carries our lease.
    term: Option<u64>,
    /// The leader key's value (the leader's advertise address).
    leader: Option<String>,
}

#[derive(Debug)]
struct Shared {
    gw: Gateway,
    me: String,
    leader_key: String,
    state_key: String,
    ttl_secs: i64,
    poll: Duration,
    events: Option<Observer>,
    stopped: AtomicBool,
    election: Mutex<Election>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Election> {
        // Nothing panics while holding it (and panics abort); take the data.
        self.election.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn leadership(&self) -> Leadership {
        let e = self.lock();
        match (e.term, e.lease_until) {
            (Some(term), Some(until)) if Instant::now() < until => Leadership::Leader {
                term,
                until: Some(until),
            },
            _ => Leadership::Follower {
                leader: e.leader.clone().filter(|l| *l != self.me),
            },
        }
    }

    /// etcd no longer has our lease: nothing we held is ours any more.
    fn lease_lost(&self, lease: &mut Option<Lease>) {
        *lease = None;
        let mut e = self.lock();
        e.lease_id = None;
        e.lease_until = None;
        e.term = None;
    }

    fn revoke(&self, id: i64) {
        // Best effort: the lease expires on its own anyway.
        let _ = self
            .gw
            .call::<serde_json::Value>("/v3/lease/revoke", &json!({ "ID": id.to_string() }));
    }
}

/// The lease as the election thread holds it.
#[derive(Debug)]
struct Lease {
    id: i64,
    ttl: Duration,
    next_keepalive: Instant,
}

/// Until when a lease whose keepalive (or grant) was sent at `sent` and
/// answered with `ttl` certainly exists: etcd counts the TTL from when it
/// received the request, which is later. The margin covers clock rate
/// differences between this host and etcd's leader.
fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.saturating_sub(ttl / 10 + Duration::from_millis(10))
}

/// The view service's state in etcd, and this process's part in the
/// election of the one viewserver that acts for the service.
#[derive(Debug)]
pub struct EtcdStore {
    shared: Arc<Shared>,
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// `mod_revision` of the state key as last loaded or saved (0: absent).
    revision: i64,
    /// The term in which the state was loaded: saves are conditioned on it.
    loaded_in: Option<u64>,
}

/// Gives up this viewserver's leadership from another thread (a signal
/// handler's): stops the election and revokes the lease, so another
/// viewserver can lead at once instead of after the lease's TTL.
#[derive(Debug, Clone)]
pub struct Resigner {
    shared: Arc<Shared>,
    wake: mpsc::Sender<()>,
}

impl Resigner {
    /// Stops campaigning and revokes the lease (if etcd answers).
    pub fn resign(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        let _ = self.wake.send(());
        let id = {
            let mut e = self.shared.lock();
            e.term = None;
            e.lease_until = None;
            e.lease_id.take()
        };
        if let Some(id) = id {
            self.shared.revoke(id);
        }
    }
}

impl EtcdStore {
    /// Connects to etcd, takes a lease, campaigns once and checks that the
    /// stored state (if any) is readable; then keeps the lease alive and
    /// campaigns on a background thread. Fails if no endpoint answers.
    pub fn open(cfg: EtcdConfig) -> Result<Self, StoreError> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Etcd("no endpoint given".to_string()));
        }
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|u| gateway::parse_endpoint(u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Etcd)?;
        if cfg.advertise.is_empty() {
            return Err(StoreError::Etcd(
                "the advertise address is empty".to_string(),
            ));
        }
        let prefix = cfg.prefix.trim_end_matches('/');
        let ttl_secs = i64::try_from(cfg.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let shared = Arc::new(Shared {
            gw: Gateway::new(endpoints, cfg.timeout),
            me: cfg.advertise.clone(),
            leader_key: format!("{prefix}/leader"),
            state_key: format!("{prefix}/state"),
            ttl_secs,
            poll: cfg.poll.max(Duration::from_millis(1)),
            events: cfg.events.clone(),
            stopped: AtomicBool::new(false),
            election: Mutex::new(Election::default()),
        });
        let mut lease = None;
        step(&shared, &mut lease).map_err(|e| StoreError::Etcd(e.to_string()))?;
        let mut store = EtcdStore {
            shared: Arc::clone(&shared),
            wake: None,
            thread: None,
            revision: 0,
            loaded_in: None,
        };
        // A damaged state is reported now, by every viewserver, rather than
        // when one of them first leads.
        if let Err(e) = store.load() {
            if let Some(l) = &lease {
                shared.revoke(l.id);
            }
            return Err(e);
        }
        store.loaded_in = None;
        let (wake, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("viewserver-etcd".into())
            .spawn(move || run(&shared, &rx, lease))
            .map_err(|e| StoreError::Etcd(format!("cannot start the election thread: {e}")))?;
        store.wake = Some(wake);
        store.thread = Some(thread);
        Ok(store)
    }

    /// A handle that resigns (see [`Resigner`]).
    pub fn resigner(&self) -> Option<Resigner> {
        self.wake.as_ref().map(|wake| Resigner {
            shared: Arc::clone(&self.shared),
            wake: wake.clone(),
        })
    }

    /// Stops keeping the lease alive and campaigning *without* revoking the
    /// lease: to etcd this process is as good as dead, and another
    /// viewserver leads once the lease expires (what a crash, or a stuck
    /// election thread, looks like). This store still says it leads until
    /// the `until` it had, and not after.
    pub fn halt(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        if let Some(w) = self.wake.take() {
            let _ = w.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The keys used, for messages: (leader key, state key).
    pub fn keys(&self) -> (&str, &str) {
        (&self.shared.leader_key, &self.shared.state_key)
    }

    fn etcd_error(&self, what: &str, e: &CallError) -> StoreError {
        StoreError::Etcd(format!(
            "cannot {what} {} at {}: {e}",
            self.shared.state_key,
            self.shared.gw.describe()
        ))
    }
}

impl Drop for EtcdStore {
    /// A clean exit: stop, and give the leadership up at once.
    fn drop(&mut self) {
        let was_running = self.thread.is_some();
        self.halt();
        let id = {
            let mut e = self.shared.lock();
            e.term = None;
            e.lease_until = None;
            e.lease_id.take()
        };
        if let (true, Some(id)) = (was_running, id) {
            self.shared.revoke(id);
        }
    }
}

impl Store for EtcdStore {
    fn load(&mut self) -> Result<Option<Persisted>, StoreError> {
        // The term first: whatever the range returns was stored before it,
        // so by a leader of this term or an earlier one.
        let term = match self.shared.leadership() {
            Leadership::Leader { term, .. } => Some(term),
            Leadership::Follower { .. } => None,
        };
        let key = self.shared.state_key.clone();
        let r: RangeResponse = self
            .shared
            .gw
            .call("/v3/kv/range", &json!({ "key": b64(key.as_bytes()) }))
            .map_err(|e| self.etcd_error("read", &e))?;
        let Some(kv) = r.kvs.first() else {
            self.revision = 0;
            self.loaded_in = term;
            return Ok(None);
        };
        let bytes = unb64(&kv.value).map_err(|detail| StoreError::EtcdCorrupt {
            key: key.clone(),
            detail,
        })?;
        let p = decode_state(&bytes).map_err(|e| match e {
            Undecodable::Corrupt(detail) => StoreError::EtcdCorrupt {
                key: key.clone(),
                detail,
            },
            Undecodable::Format(found) => StoreError::EtcdFormat {
                key: key.clone(),
                found,
            },
        })?;
        self.revision = kv.mod_revision;
        self.loaded_in = term;
        Ok(Some(p))
    }

    fn save(&mut self, p: &Persisted) -> Result<(), StoreError> {
        let Some(term) = self.loaded_in else {
            return Err(StoreError::NotLeader);
        };
        if !matches!(self.shared.leadership(), Leadership::Leader { term: t, .. } if t == term) {
            return Err(StoreError::NotLeader);
        }
        let value = encode_state(p).map_err(|e| StoreError::Etcd(format!("cannot encode: {e}")))?;
        let leader = b64(self.shared.leader_key.as_bytes());
        let state = b64(self.shared.state_key.as_bytes());
        let body = json!({
            "compare": [
                {"key": leader, "target": "CREATE", "result": "EQUAL", "create_revision": term.to_string()},
                {"key": state, "target": "MOD", "result": "EQUAL", "mod_revision": self.revision.to_string()},
            ],
            "success": [{"request_put": {"key": state, "value": b64(&value)}}],
            "failure": [{"request_range": {"key": leader}}],
        });
        let t: TxnResponse = self
            .shared
            .gw
            .call("/v3/kv/txn", &body)
            .map_err(|e| self.etcd_error("write", &e))?;
        if t.succeeded {
            let rev = t
                .responses
                .first()
                .and_then(|r| r.response_put.as_ref())
                .map_or(t.header.revision, |put| put.header.revision);
            self.revision = rev;
            return Ok(());
        }
        // Deposed (the key is gone or another's), or the state moved under
        // us (a write of ours whose answer was lost): either way what we hold
        // is not what is stored; the coordinator drops it and, if we still
        // lead, loads afresh.
        let leader_now = first_kv(&t).map(|kv| kv.create_revision);
        if leader_now != i64::try_from(term).ok() {
            let mut e = self.shared.lock();
            if e.term == Some(term) {
                e.term = None;
            }
        }
        self.loaded_in = None;
        Err(StoreError::NotLeader)
    }

    fn leadership(&self) -> Leadership {
        self.shared.leadership()
    }
}

fn first_kv(t: &TxnResponse) -> Option<&KeyValue> {
    t.responses
        .iter()
        .filter_map(|r| r.response_range.as_ref())
        .find_map(|r| r.kvs.first())
}

/// The election thread: one [`step`] per poll interval (sooner when a
/// keepalive is due), until stopped.
fn run(shared: &Shared, wake: &mpsc::Receiver<()>, mut lease: Option<Lease>) {
    let mut failing = false;
    loop {
        if shared.stopped() {
            return;
        }
        let r = step(shared, &mut lease);
        match (&r, failing) {
            (Err(e), false) => emit(
                shared.events.as_ref(),
                ServiceEvent::EtcdFailing {
                    error: e.to_string(),
                },
            ),
            (Ok(()), true) => emit(shared.events.as_ref(), ServiceEvent::EtcdAnswersAgain),
            _ => {}
        }
        failing = r.is_err();
        let mut wait = shared.poll;
        if let Some(l) = &lease {
            wait = wait.min(l.next_keepalive.saturating_duration_since(Instant::now()));
        }
        match wake.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if shared.stopped() {
                    return;
                }
            }
        }
    }
}

/// Takes or renews the lease as needed, then campaigns (which, when the
/// leader key exists, just reads who leads).
fn step(sh: &Shared, lease: &mut Option<Lease>) -> Result<(), CallError> {
    let now = Instant::now();
    match lease {
        None => {
            let g: LeaseGrantResponse = sh.gw.call(
                "/v3/lease/grant",
                &json!({ "TTL": sh.ttl_secs.to_string() }),
            )?;
            let ttl = u64::try_from(g.ttl).ok().filter(|t| *t > 0);
            let (Some(ttl), true) = (ttl, g.id != 0) else {
                return Err(CallError::BadAnswer {
                    path: "/v3/lease/grant".to_string(),
                    detail: format!("no lease granted: {}", g.error),
                });
            };
            let ttl = Duration::from_secs(ttl);
            *lease = Some(Lease {
                id: g.id,
                ttl,
                next_keepalive: now + ttl / 3,
            });
            let mut e = sh.lock();
            e.lease_id = Some(g.id);
            e.lease_until = Some(valid_until(now, ttl));
        }
        Some(l) if now >= l.next_keepalive => {
            let r = sh.gw.call::<KeepAliveMessage>(
                "/v3/lease/keepalive",
                &json!({ "ID": l.id.to_string() }),
            );
            match r {
                Ok(KeepAliveMessage {
                    result: Some(res), ..
                }) if res.ttl > 0 => {
                    let ttl = Duration::from_secs(u64::try_from(res.ttl).unwrap_or(1));
                    l.ttl = ttl;
                    l.next_keepalive = now + ttl / 3;
                    sh.lock().lease_until = Some(valid_until(now, ttl));
                }
                Ok(KeepAliveMessage {
                    result: Some(_), ..
                }) => {
                    // TTL 0: etcd no longer knows the lease. Take a new one.
                    sh.lease_lost(lease);
                    return step(sh, lease);
                }
                Err(e) if e.lease_not_found() => {
                    sh.lease_lost(lease);
                    return step(sh, lease);
                }
                Ok(other) => {
                    l.next_keepalive = now + sh.poll;
                    return Err(CallError::BadAnswer {
                        path: "/v3/lease/keepalive".to_string(),
                        detail: format!("{:?}", other.error),
                    });
                }
                Err(e) => {
                    l.next_keepalive = now + sh.poll;
                    return Err(e);
                }
            }
        }
        Some(_) => {}
    }
    if sh.stopped() {
        return Ok(());
    }
    campaign(sh, lease)
}

/// "If nobody leads, I do": the leader key created with our lease, or read
/// as it is.
fn campaign(sh: &Shared, lease: &mut Option<Lease>) -> Result<(), CallError> {
    let Some(id) = lease.as_ref().map(|l| l.id) else {
        return Ok(());
    };
    let key = b64(sh.leader_key.as_bytes());
    let body = json!({
        "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
        "success": [
            {"request_put": {"key": key, "value": b64(sh.me.as_bytes()), "lease": id.to_string()}},
            {"request_range": {"key": key}},
        ],
        "failure": [{"request_range": {"key": key}}],
    });
    let t: TxnResponse = match sh.gw.call("/v3/kv/txn", &body) {
        Ok(t) => t,
        Err(e) if e.lease_not_found() => {
            sh.lease_lost(lease);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut e = sh.lock();
    match first_kv(&t) {
        Some(kv) if kv.lease == id => {
            e.term = u64::try_from(kv.create_revision).ok();
            e.leader = Some(sh.me.clone());
        }
        Some(kv) => {
            e.term = None;
            e.leader = unb64(&kv.value)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
        }
        None => {
            e.term = None;
            e.leader = None;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_trusted_for_less_than_its_ttl_from_when_the_keepalive_left() {
        let t0 = Instant::now();
        assert_eq!(
            valid_until(t0, Duration::from_secs(2)),
            t0 + Duration::from_millis(1790)
        );
        assert_eq!(
            valid_until(t0, Duration::from_secs(1)),
            t0 + Duration::from_millis(890)
        );
        assert_eq!(valid_until(t0, Duration::ZERO), t0);
    }

    #[test]
    fn opening_without_etcd_is_a_clear_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let mut cfg = EtcdConfig::new(vec![url.clone()], "/t", "127.0.0.1:1");
        cfg.timeout = Duration::from_millis(200);
        let err = EtcdStore::open(cfg).unwrap_err().to_string();
        assert!(err.starts_with("etcd: no endpoint answered"), "{err}");
        assert!(err.contains(url.trim_start_matches("http://")), "{err}");
        let err = EtcdStore::open(EtcdConfig::new(vec!["https://h:1".into()], "/t", "a:1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TLS is not supported"), "{err}");
    }
}
