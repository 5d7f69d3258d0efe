//! understudy clusters on one machine, for the demo and the end-to-end tests: `understudy
//! viewserver` and `understudy node` processes started from the binary's path
//! ([`Understudy`]), what they write and the events they report ([`EventsFile`],
//! docs/events.md), waits with timeouts ([`wait`]), signals to the processes we started
//! ([`Process`]), and hosts in network namespaces for partitions ([`netns`]). Everything
//! started here is killed, and every namespace removed, when its owner is dropped.
//!
//! Errors are returned, per domain ([`SpawnError`], [`ProcessError`], [`EventsError`],
//! [`NetError`]); the tests put their panicking conveniences on top (`tests/common/`).

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod capture;
pub mod counter;
pub mod events;
pub mod netns;
pub mod process;
pub mod spawn;
pub mod wait;

pub use capture::{Captured, Line, Stream};
pub use events::{EventsError, EventsFile};
pub use netns::{Net, NetError};
pub use process::{Process, ProcessError, Signal};
pub use spawn::{
    Node, NodeRole, NodeSpec, Place, SpawnError, Spawned, Store, Understudy, Viewserver,
    ViewserverRole, ViewserverSpec,
};
