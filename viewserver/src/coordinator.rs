//! The view service as one process runs it: the rules ([`ViewService`]),
//! where their state is kept ([`Store`]), whether this process leads, and
//! leases in time. Every answer is given only after whatever it reveals is
//! stored: a view, an acknowledgement or a lease that a restarted (or
//! another) viewserver could forget would let two primaries speak.
//!
//! The network front end (`server`) calls [`Coordinator::ping`],
//! [`Coordinator::status`] and, once per ping interval,
//! [`Coordinator::tick`]; nothing here does I/O other than the store's.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::{ApiError, PingRequest};
use crate::events::{Observer, ServiceEvent, emit};
use crate::service::{Status, ViewService};
use crate::store::{Leadership, Store, StoreError};

/// How the rules are parametrised.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Consecutive missed intervals after which a server is dead.
    pub dead_pings: u32,
    /// Intervals a backup may take to become ready before it is replaced.
    pub backup_ticks: u32,
    /// How long a primary's lease lasts from when it sent the ping. Must be
    /// shorter than `dead_pings` intervals: a server is declared dead only
    /// after more than that without a ping, so every lease has run out
    /// before its holder can be replaced.
    pub lease: Duration,
}

impl Rules {
    /// The lease for a ping interval: three quarters of the detection time,
    /// the rest a margin for a primary that checks its lease and then writes.
    pub fn lease_for(dead_pings: u32, interval: Duration) -> Duration {
        interval * dead_pings.max(1) * 3 / 4
    }
}

#[derive(Debug)]
struct Inner {
    store: Box<dyn Store>,
    /// Loaded while leading; dropped when leadership is lost, so that the
    /// next term starts from what is stored.
    vs: Option<ViewService>,
    term: Option<u64>,
    /// `persisted_version` of `vs` last stored.
    stored: u64,
    /// The leader last reported as followed, so that it is said once.
    following: Option<String>,
}

/// The view service of one viewserver process.
#[derive(Debug)]
pub struct Coordinator {
    inner: Mutex<Inner>,
    rules: Rules,
    events: Option<Observer>,
}

impl Coordinator {
    /// A coordinator over `store`. Loads nothing yet: state is loaded when
    /// this process (first, or again) leads.
    pub fn new(store: Box<dyn Store>, rules: Rules, events: Option<Observer>) -> Self {
        Coordinator {
            inner: Mutex::new(Inner {
                store,
                vs: None,
                term: None,
                stored: 0,
                following: None,
            }),
            rules,
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock aborts the process (panic = "abort"),
        // so a poisoned lock cannot be observed; take the data regardless.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks the stored state now (at start, so that a damaged store is
    /// reported before anything is served). Not leading is not an error.
    pub fn load(&self) -> Result<(), StoreError> {
        let mut g = self.lock();
        if matches!(g.store.leadership(), Leadership::Leader { .. }) {
            g.store.load()?;
        }
        Ok(())
    }

    /// Makes sure this process leads and holds the state of its term;
    /// returns until when it leads.
    fn leading(&self, g: &mut Inner) -> Result<Option<Instant>, ApiError> {
        match g.store.leadership() {
            Leadership::Follower { leader } => {
                if g.vs.take().is_some() {
                    emit(self.events.as_ref(), ServiceEvent::NoLongerLeading);
                }
                g.term = None;
                if let Some(l) = &leader
                    && g.following.as_ref() != Some(l)
                {
                    emit(
                        self.events.as_ref(),
                        ServiceEvent::Following { leader: l.clone() },
                    );
                    g.following = Some(l.clone());
                }
                Err(ApiError::NotLeader { leader })
            }
            Leadership::Leader { term, until } => {
                if g.term != Some(term) || g.vs.is_none() {
                    let loaded = g
                        .store
                        .load()
                        .map_err(|e| ApiError::Unavailable(chain(&e)))?;
                    let vs = match loaded {
                        Some(p) => {
                            ViewService::restore(p, self.rules.dead_pings, self.rules.backup_ticks)
                        }
                        None => ViewService::new(
                            new_service_id(),
                            self.rules.dead_pings,
                            self.rules.backup_ticks,
                        ),
                    };
                    emit(
                        self.events.as_ref(),
                        ServiceEvent::Leading {
                            term,
                            service: vs.status().service,
                            view: vs.view(),
                        },
                    );
                    g.following = None;
                    g.stored = vs.persisted_version();
                    g.vs = Some(vs);
                    g.term = Some(term);
                }
                Ok(until)
            }
        }
    }

    /// Runs `f` on the rules and stores what it changed before returning;
    /// if storing fails, the change is undone and the caller gets the error.
    fn apply<T>(
        &self,
        f: impl FnOnce(&mut ViewService) -> Result<T, ApiError>,
    ) -> Result<(T, Status, Option<Instant>), ApiError> {
        let mut g = self.lock();
        let until = self.leading(&mut g)?;
        let inner = &mut *g;
        let Some(vs) = inner.vs.as_mut() else {
            return Err(ApiError::Unavailable("no state loaded".to_string()));
        };
        let before = vs.persisted().clone();
        let before_viewnum = before.view.viewnum;
        let out = f(vs)?;
        if vs.persisted_version() != inner.stored {
            let p = vs.persisted().clone();
            if let Err(e) = inner.store.save(&p) {
                vs.revert_persisted(before);
                inner.stored = vs.persisted_version();
                if matches!(e, StoreError::NotLeader) {
                    inner.vs = None;
                    inner.term = None;
                    emit(self.events.as_ref(), ServiceEvent::NoLongerLeading);
                    return Err(ApiError::NotLeader { leader: None });
                }
                return Err(ApiError::Unavailable(chain(&e)));
            }
            inner.stored = vs.persisted_version();
        }
        let status = vs.status();
        if let (None, Some(finished)) = (before.finished, status.finished) {
            emit(self.events.as_ref(), ServiceEvent::EndRecorded { finished });
        }
        if status.view.viewnum != before_viewnum {
            emit(
                self.events.as_ref(),
                ServiceEvent::ViewChanged {
                    view: status.view.clone(),
                },
            );
        }
        Ok((out, status, until))
    }

    /// Answers one ping; the status carries a lease (in milliseconds from
    /// when the pinger sent it) if the pinger is the acknowledged primary.
    pub fn ping(&self, req: &PingRequest) -> Result<Status, ApiError> {
        let (lease, mut status, until) =
            self.apply(|vs| vs.ping(&req.as_ping()).map(|r| r.lease).map_err(Into::into))?;
        if lease {
            let mut d = self.rules.lease;
            if let Some(until) = until {
                d = d.min(until.saturating_duration_since(Instant::now()));
            }
            status.lease_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        }
        Ok(status)
    }

    /// The current status (not a ping: no lease, no liveness).
    pub fn status(&self) -> Result<Status, ApiError> {
        let mut g = self.lock();
        self.leading(&mut g)?;
        g.vs.as_ref()
            .map(ViewService::status)
            .ok_or_else(|| ApiError::Unavailable("no state loaded".to_string()))
    }

    /// One ping interval passed (only counts while leading).
    pub fn tick(&self) -> Result<(), ApiError> {
        self.apply(|vs| {
            vs.tick();
            Ok(())
        })
        .map(|_| ())
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

/// `error: cause: cause`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A random service identity: nonzero, from the kernel's generator.
fn new_service_id() -> u64 {
    let mut b = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    let id = u64::from_le_bytes(b);
    if read.is_ok() && id != 0 {
        return id;
    }
    // No urandom: time and pid are unique enough for an identity that only
    // has to differ from the one a lost state had.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ (u64::from(std::process::id()) << 32)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Persisted;
    use crate::store::MemoryStore;

    fn rules() -> Rules {
        Rules {
            dead_pings: 3,
            backup_ticks: 10,
            lease: Duration::from_millis(300),
        }
    }

    fn ping(c: &Coordinator, server: &str, inc: u64, seq: u64, viewnum: u64, holds: u64) -> Status {
        c.ping(&PingRequest {
            server: server.into(),
            viewnum,
            incarnation: Some(inc),
            seq: Some(seq),
            holds: Some(holds),
            finished: None,
            primary_lost: None,
        })
        .unwrap()
    }

    #[test]
    fn leases_go_to_the_acknowledged_primary_only() {
        let c = Coordinator::new(Box::new(MemoryStore::default()), rules(), None);
        let s = ping(&c, "a", 1, 1, 0, 0);
        assert_eq!((s.view.viewnum, s.lease_ms), (1, 0));
        let s = ping(&c, "a", 1, 2, 1, 1);
        assert_eq!(s.lease_ms, 300);
        assert_eq!(ping(&c, "b", 2, 1, 0, 0).lease_ms, 0);
        assert_eq!(c.status().unwrap().lease_ms, 0);
    }

    /// Fails every save after the first `ok` ones.
    #[derive(Debug)]
    struct Failing {
        ok: usize,
        saved: Vec<Persisted>,
    }
    impl Store for Failing {
        fn load(&mut self) -> Result<Option<Persisted>, StoreError> {
            Ok(self.saved.last().cloned())
        }
        fn save(&mut self, p: &Persisted) -> Result<(), StoreError> {
            if self.saved.len() >= self.ok {
                return Err(StoreError::Etcd("disk on fire".into()));
            }
            self.saved.push(p.clone());
            Ok(())
        }
        fn leadership(&self) -> Leadership {
            Leadership::Leader {
                term: 1,
                until: None,
            }
        }
    }

    #[test]
    fn nothing_unstored_is_ever_revealed() {
        // View 1 is stored; its acknowledgement cannot be: no lease, and the
        // view stays unacknowledged.
        let c = Coordinator::new(
            Box::new(Failing {
                ok: 1,
                saved: Vec::new(),
            }),
            rules(),
            None,
        );
        ping(&c, "a", 1, 1, 0, 0);
        let err = c
            .ping(&PingRequest {
                server: "a".into(),
                viewnum: 1,
                incarnation: Some(1),
                seq: Some(2),
                holds: Some(1),
                finished: None,
                primary_lost: None,
            })
            .unwrap_err();
        assert_eq!(err.status(), 503);
        assert!(err.to_string().contains("disk on fire"), "{err}");
        let s = c.status().unwrap();
        assert!(!s.acked);
    }

    #[derive(Debug)]
    struct Follower;
    impl Store for Follower {
        fn load(&mut self) -> Result<Option<Persisted>, StoreError> {
            Ok(None)
        }
        fn save(&mut self, _: &Persisted) -> Result<(), StoreError> {
            Err(StoreError::NotLeader)
        }
        fn leadership(&self) -> Leadership {
            Leadership::Follower {
                leader: Some("10.0.0.9:7100".into()),
            }
        }
    }

    #[test]
    fn a_follower_points_at_the_leader() {
        let c = Coordinator::new(Box::new(Follower), rules(), None);
        let err = c.status().unwrap_err();
        assert_eq!(err.status(), 503);
        assert_eq!(err.body().leader.as_deref(), Some("10.0.0.9:7100"));
        assert!(err.to_string().contains("10.0.0.9:7100 does"), "{err}");
    }

    #[test]
    fn a_new_term_starts_from_the_stored_state() {
        let mut store = MemoryStore::default();
        let first = Coordinator::new(Box::new(MemoryStore::default()), rules(), None);
        ping(&first, "a", 1, 1, 0, 0);
        ping(&first, "a", 1, 2, 1, 1);
        let p = first.lock().vs.as_ref().unwrap().persisted().clone();
        store.save(&p).unwrap();
        let second = Coordinator::new(Box::new(store), rules(), None);
        let s = second.status().unwrap();
        assert_eq!((s.view.viewnum, s.acked), (1, true));
        assert_eq!(s.service, first.status().unwrap().service);
    }

    #[test]
    fn lease_is_three_quarters_of_detection() {
        assert_eq!(
            Rules::lease_for(5, Duration::from_millis(100)),
            Duration::from_millis(375)
        );
        assert_eq!(
            Rules::lease_for(0, Duration::from_millis(100)),
            Duration::from_millis(75)
        );
    }
}
