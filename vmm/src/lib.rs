//! understudy's VMM: one uniprocessor KVM guest on standard PC devices, run live, recorded, or
//! replayed from a log. See docs/design.md for threads, data flow and position semantics.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod boot;
pub mod bus;
pub mod checkpoint;
pub mod clock;

pub mod console;
pub mod cost_share;
pub mod devices;
pub mod digest;
pub mod exit;
pub mod guest_image;
pub mod host_net;
pub mod live;
pub mod machine;
pub mod net;
pub mod outcome;
pub mod precise;
pub mod replay;
pub mod replication;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod stop;
pub mod ticker;
pub mod vcpu;
pub mod vcpu_core;
