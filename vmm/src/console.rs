//! The guest console as it leaves the VM: bytes the UART collected, forwarded after each exit,
//! and a running hash of everything forwarded so replay can compare it with the recording.

use std::io::Write;

use crate::bus::Bus;

/// Everything the guest's console has produced so far, as a count and a hash: what the state
/// check compares and a backup continues from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleStream {
    /// `xxh3_64_with_seed(chunk, previous)` over each exit's output (docs/log-format.md).
    pub hash: u64,
    /// Bytes forwarded since the guest started.
    pub bytes: u64,
}

impl ConsoleStream {
    /// Moves the UART's pending output to `out`, folding it into the hash.
    pub fn forward(&mut self, bus: &mut Bus, out: &mut dyn Write) -> std::io::Result<Forwarded> {
        let chunk = bus.devices.serial.take_output();
        if chunk.is_empty() {
            return Ok(Forwarded::default());
        }
        self.hash = xxhash_rust::xxh3::xxh3_64_with_seed(&chunk, self.hash);
        self.bytes += chunk.len() as u64;
        out.write_all(&chunk)?;
        Ok(Forwarded {
            bytes: chunk.len(),
            newline: chunk.contains(&b'\n'),
        })
    }
}

/// What one [`ConsoleStream::forward`] moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Bytes moved.
    pub bytes: usize,
    /// Whether they included a line end (a replicating primary then logs an `Output` entry).
    pub newline: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

    #[test]
    fn forwarding_hashes_what_it_writes_and_nothing_when_idle() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let mut stream = ConsoleStream::default();
        let mut out = Vec::new();
        stream.forward(&mut bus, &mut out).unwrap();
        assert_eq!(stream, ConsoleStream::default());
        for b in b"hi\n" {
            bus.write(0x3f8, &[*b], &mut env);
        }
        stream.forward(&mut bus, &mut out).unwrap();
        assert_eq!(out, b"hi\n");
        assert_eq!(stream.bytes, 3);
        assert_eq!(
            stream.hash,
            xxhash_rust::xxh3::xxh3_64_with_seed(b"hi\n", 0)
        );
        let before = stream;
        bus.write(0x3f8, b"x", &mut env);
        stream.forward(&mut bus, &mut out).unwrap();
        assert_ne!(
            stream.hash, before.hash,
            "the same prefix with more output hashes differently"
        );
    }
}
