//! understudy's view service: the single authority on which server is primary
//! and which is backup (MIT 6.824 lab 2 semantics, made safe against
//! restarts, reordered pings and a restarted viewserver).
//!
//! - [`service`]: the rules, as an I/O-free state machine driven by
//!   [`ViewService::ping`] and [`ViewService::tick`]; unit-tested scenario by
//!   scenario and model-checked with stateright (`tests/model.rs`).
//! - [`node`]: the rules a node follows, as pure functions the node runs and
//!   the model checker drives.
//! - [`store`]: where the service's state survives a restart (a data
//!   directory, or etcd: [`etcd`]), and who leads.
//! - [`coordinator`]: rules + store + leases in time, for one process.
//! - [`http`], [`api`], [`server`]: the HTTP/JSON front end.
//! - [`client`]: what nodes and `understudy view` use to talk to it.
//! - [`events`]: what it tells its operator (it prints nothing itself).
//!
//! The API and rules are documented in `docs/viewserver.md`.

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod client;
pub mod coordinator;
pub mod etcd;
pub mod events;
pub mod http;
pub mod node;
pub mod server;
pub mod service;
pub mod store;

pub use api::{ApiError, PingRequest};
pub use client::{ClientError, get_view, ping};
pub use coordinator::{Coordinator, Rules};
pub use etcd::{EtcdConfig, EtcdStore};
pub use events::{Observer, ServiceEvent};
pub use server::{Config, ServerError, ViewServer};
pub use service::{
    EndReason, Finished, GuestEnd, MAX_SERVER_NAME, MAX_TRACKED_SERVERS, Persisted, Status, View,
    ViewService,
};
pub use store::{FileStore, Leadership, MemoryStore, Store, StoreError};
