//! The built-in guest kernel, compiled from `guest/` by the build script and embedded here, so
//! `understudy run --guest compute` needs no file on disk.

use sha2::{Digest, Sha256};

/// The built-in guest's ELF image.
pub static BUILTIN_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/understudy-guest.elf"));

/// Workloads of the built-in guest.
pub const BUILTIN_WORKLOADS: [&str; 4] = ["ticker", "compute", "tcploop", "kv"];

/// SHA-256 of `image`, as logs and the channel handshake name guest images.
pub fn sha256(image: &[u8]) -> [u8; 32] {
    Sha256::digest(image).into()
}

/// Lowercase hex of `bytes`, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
