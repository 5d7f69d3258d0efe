//! understudy's view service (MIT 6.824 lab 2 semantics): the single authority
//! on which server is primary and which is backup.
//!
//! - [`service`]: the rules, as an I/O-free state machine driven by
//!   [`ViewService::ping`] and [`ViewService::tick`]; unit-tested scenario by
//!   scenario and model-checked with stateright (`tests/model.rs`).
//! - [`http`]: a small, strict HTTP/1.1 request parser with limits.
//! - [`server`]: the network service (std threads, one ticker thread, the state
//!   machine behind a mutex).
//! - [`client`]: what nodes and `understudy view` use to talk to it.
//!
//! The API and rules are documented in `docs/viewserver.md`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod http;
pub mod server;
pub mod service;

pub use client::{ClientError, get_view, ping};
pub use server::{Config, ServerError, ViewServer};
pub use service::{MAX_SERVER_NAME, MAX_TRACKED_SERVERS, View, ViewService};
