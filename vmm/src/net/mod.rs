//! The host side of the guest's network: the TAP device a virtio-net card is backed by, the
//! reader that brings its frames to the vCPU thread, the primary's held transmit path, and the
//! announcement a new primary makes.
//!
//! [`tap::Tap`] is only the host interface (open, carrier, link state, frames in and out); the
//! device logic (rings, logging) lives in `devices`, the output rule in `replication`.

pub mod announce;
pub mod held;
pub mod tap;
pub mod tap_net;
