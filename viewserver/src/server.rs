//! The network service: an accept loop spawning one short-lived thread per
//! connection (one request each), a ticker thread, and the [`ViewService`]
//! behind a mutex. Nothing here decides anything about views.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::api::{ApiError, ErrorBody, error_json, parse_ping};
use crate::coordinator::{Coordinator, Rules};
use crate::http::{self, MAX_BODY, Request};
use crate::service::Status;
use crate::store::{Store, StoreError};

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: String,
    /// Servers ping this often; one tick per interval.
    pub ping_interval: Duration,
    /// Consecutive missed intervals after which a server is dead.
    pub dead_pings: u32,
    /// How long a backup may take to hold the state before it is replaced.
    pub backup_timeout: Duration,
    /// Read and write timeout of each connection.
    pub io_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Print view changes to stderr.
    pub log_view_changes: bool,
}

impl Config {
    pub fn new(listen: impl Into<String>) -> Self {
        Config {
            listen: listen.into(),
            ping_interval: Duration::from_millis(100),
            dead_pings: 5,
            backup_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(2),
            max_connections: 64,
            log_view_changes: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the bound address of the listener on {addr}")]
    LocalAddr {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("ping interval must be at least 1 ms")]
    ZeroInterval,
    #[error("dead pings must be at least 1")]
    ZeroDeadPings,
    #[error("cannot start from the stored view")]
    Store(#[from] StoreError),
    #[error("cannot start the {what} thread")]
    Spawn {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

struct Shared {
    coordinator: Coordinator,
    connections: AtomicUsize,
    config: Config,
}

/// A bound, not yet serving, view service.
#[derive(Debug)]
pub struct ViewServer {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
    coordinator: Coordinator,
}

impl ViewServer {
    /// Binds `config.listen` and checks the state in `store`.
    pub fn bind(config: Config, store: Box<dyn Store>) -> Result<Self, ServerError> {
        check(&config)?;
        let listener = listen(&config.listen)?;
        Self::with_listener(config, listener, store)
    }

    /// Serves on `listener` (bound with [`listen`]: a store that must know
    /// the real address, such as the etcd store's advertise address, can
    /// then be made in between); checks the state in `store`.
    pub fn with_listener(
        config: Config,
        listener: TcpListener,
        store: Box<dyn Store>,
    ) -> Result<Self, ServerError> {
        check(&config)?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::LocalAddr {
                addr: config.listen.clone(),
                source,
            })?;
        let ticks = config.backup_timeout.as_nanos() / config.ping_interval.as_nanos().max(1);
        let rules = Rules {
            dead_pings: config.dead_pings,
            backup_ticks: u32::try_from(ticks).unwrap_or(u32::MAX).max(1),
            lease: Rules::lease_for(config.dead_pings, config.ping_interval),
        };
        let coordinator = Coordinator::new(store, rules, config.log_view_changes);
        coordinator.load()?;
        Ok(ViewServer {
            listener,
            addr,
            config,
            coordinator,
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves forever (returns only if a thread cannot be started).
    pub fn serve(self) -> Result<(), ServerError> {
        let shared = Arc::new(Shared {
            coordinator: self.coordinator,
            connections: AtomicUsize::new(0),
            config: self.config,
        });
        let ticker = Arc::clone(&shared);
        thread::Builder::new()
            .name("viewserver-tick".into())
            .spawn(move || tick_forever(&ticker))
            .map_err(|source| ServerError::Spawn {
                what: "ticker",
                source,
            })?;
        for stream in self.listener.incoming() {
            // Accept errors (e.g. EMFILE, a peer that reset before accept)
            // concern one connection, not the service.
            let Ok(stream) = stream else { continue };
            if shared.connections.fetch_add(1, Ordering::AcqRel) >= shared.config.max_connections {
                shared.connections.fetch_sub(1, Ordering::AcqRel);
                refuse(stream, shared.config.io_timeout);
                continue;
            }
            let conn = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name("viewserver-conn".into())
                .spawn(move || {
                    handle_connection(&conn, stream);
                    conn.connections.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                shared.connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// Serves on background threads; for tests and embedding.
    pub fn spawn(self) -> Result<SocketAddr, ServerError> {
        let addr = self.addr;
        thread::Builder::new()
            .name("viewserver-accept".into())
            .spawn(move || self.serve())
            .map_err(|source| ServerError::Spawn {
                what: "accept",
                source,
            })?;
        Ok(addr)
    }
}

fn check(config: &Config) -> Result<(), ServerError> {
    if config.ping_interval.is_zero() {
        return Err(ServerError::ZeroInterval);
    }
    if config.dead_pings == 0 {
        return Err(ServerError::ZeroDeadPings);
    }
    Ok(())
}

/// Binds `addr` (port 0 picks a free one) for [`ViewServer::with_listener`].
pub fn listen(addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).map_err(|source| ServerError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// One tick per interval of the viewserver's own time. After a stall (the
/// process was stopped or starved) the missed ticks are skipped rather than
/// replayed: the servers did not miss those pings, we did not listen.
fn tick_forever(shared: &Shared) {
    let interval = shared.config.ping_interval;
    let mut next = Instant::now() + interval;
    loop {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        // Not leading, or the store failing: nothing to tick; the next tick
        // tries again.
        let _ = shared.coordinator.tick();
        next += interval;
        let now = Instant::now();
        if next + interval < now {
            next = now + interval;
        }
    }
}

fn refuse(mut stream: TcpStream, timeout: Duration) {
    let _ = stream.set_write_timeout(Some(timeout));
    let _ = http::write_response(&mut stream, 503, &[], &message("too many connections"));
}

fn message(msg: &str) -> String {
    error_json(&ErrorBody {
        error: msg.to_string(),
        leader: None,
    })
}

fn status_json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_else(|_| message("cannot encode the view"))
}

fn handle_connection(shared: &Shared, mut stream: TcpStream) {
    let timeout = Some(shared.config.io_timeout);
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return;
    }
    let (status, headers, body) = match http::read_request(&mut stream) {
        Ok(req) => route(shared, &req),
        Err(e) => match e.status() {
            Some(status) => (status, Vec::new(), message(&e.to_string())),
            None => return,
        },
    };
    // The client may be gone; nothing useful to do about it.
    let _ = http::write_response(&mut stream, status, &headers, &body);
    let _ = stream.flush();
    // Unread request bytes plus close() would make the kernel send RST, which
    // may destroy the response before the client reads it.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = io::copy(
        &mut io::Read::take(&mut stream, MAX_BODY as u64),
        &mut io::sink(),
    );
}

type Response = (u16, Vec<(&'static str, &'static str)>, String);

/// Answers one request: (status, extra headers, JSON body).
fn route(shared: &Shared, req: &Request) -> Response {
    let not_allowed = |allow: &'static str| {
        (
            405,
            vec![("Allow", allow)],
            message(&format!(
                "method {} not allowed on {}; use {allow}",
                req.method, req.path
            )),
        )
    };
    let answer = |r: Result<Status, ApiError>| match r {
        Ok(status) => (200, Vec::new(), status_json(&status)),
        Err(e) => (e.status(), Vec::new(), error_json(&e.body())),
    };
    match req.path.as_str() {
        "/ping" if req.method == "POST" => {
            answer(parse_ping(&req.body).and_then(|p| shared.coordinator.ping(&p)))
        }
        "/ping" => not_allowed("POST"),
        "/view" if req.method == "GET" => answer(shared.coordinator.status()),
        "/view" => not_allowed("GET"),
        _ => (
            404,
            Vec::new(),
            message(&format!(
                "no such endpoint {}: use POST /ping or GET /view",
                req.path
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::MAX_SERVER_NAME;

    fn shared() -> Shared {
        let mut config = Config::new("127.0.0.1:0");
        config.log_view_changes = false;
        let rules = Rules {
            dead_pings: 3,
            backup_ticks: 10,
            lease: Duration::from_millis(100),
        };
        Shared {
            coordinator: Coordinator::new(Box::new(crate::MemoryStore::default()), rules, false),
            connections: AtomicUsize::new(0),
            config,
        }
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn ping_answers_the_view_and_get_view_does_not_count_as_a_ping() {
        let s = shared();
        let (status, _, body) = route(&s, &req("POST", "/ping", r#"{"server":"a","viewnum":0}"#));
        assert_eq!(status, 200);
        let pinged: Status = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (pinged.view.viewnum, pinged.view.primary.as_str()),
            (1, "a")
        );
        let (status, _, body) = route(&s, &req("GET", "/view", ""));
        assert_eq!(status, 200);
        let got: Status = serde_json::from_str(&body).unwrap();
        assert_eq!(got, pinged);
        assert!(!got.acked);
    }

    #[test]
    fn bad_requests_get_4xx_with_an_error_body() {
        let s = shared();
        let cases = [
            (req("POST", "/ping", "{"), 400),
            (req("POST", "/ping", r#"{"server":"a"}"#), 400),
            (req("POST", "/ping", r#"{"viewnum":1}"#), 400),
            (req("POST", "/ping", r#"{"server":"","viewnum":1}"#), 400),
            (req("POST", "/ping", r#"{"server":"a","viewnum":-1}"#), 400),
            (
                req("POST", "/ping", r#"{"server":"a","viewnum":1,"x":2}"#),
                400,
            ),
            (req("POST", "/ping", r#"{"server":"a\n","viewnum":1}"#), 400),
            (req("POST", "/ping", "\u{0}\u{1}"), 400),
            (
                req(
                    "POST",
                    "/ping",
                    r#"{"server":"a","viewnum":0,"incarnation":0}"#,
                ),
                400,
            ),
            (req("GET", "/ping", ""), 405),
            (req("POST", "/view", ""), 405),
            (req("GET", "/", ""), 404),
            (req("GET", "/view?x=1", ""), 404),
        ];
        for (r, want) in cases {
            let (status, _, body) = route(&s, &r);
            assert_eq!(status, want, "{r:?}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        }
        let long = "x".repeat(MAX_SERVER_NAME + 1);
        let (status, _, _) = route(
            &s,
            &req(
                "POST",
                "/ping",
                &format!(r#"{{"server":"{long}","viewnum":0}}"#),
            ),
        );
        assert_eq!(status, 400);
        assert_eq!(s.coordinator.status().unwrap().view.viewnum, 0);
    }

    #[test]
    fn refuses_bad_config() {
        let mut c = Config::new("127.0.0.1:0");
        c.dead_pings = 0;
        assert!(matches!(
            ViewServer::bind(c, Box::new(crate::MemoryStore::default())),
            Err(ServerError::ZeroDeadPings)
        ));
        let mut c = Config::new("127.0.0.1:0");
        c.ping_interval = Duration::ZERO;
        assert!(matches!(
            ViewServer::bind(c, Box::new(crate::MemoryStore::default())),
            Err(ServerError::ZeroInterval)
        ));
        let c = Config::new("256.0.0.1:0");
        assert!(matches!(
            ViewServer::bind(c, Box::new(crate::MemoryStore::default())),
            Err(ServerError::Bind { .. })
        ));
    }
}
