//! The host side of the guest's network: the TAP device a virtio-net NIC is backed by.
//!
//! [`tap::Tap`] is only the host interface (open, carrier, link state, frames in and out); the
//! device logic (rings, logging, the output rule) lives elsewhere.

pub mod tap;
pub mod tap_net;
