//! The primary's network: frames arrive from the TAP as for a plain run, but a frame the guest
//! transmits waits in the release queue with the console output until the backup holds the
//! log entry that covers it (the output rule); the release thread then writes it to the TAP.

use std::sync::Arc;

use super::tap_net::TapNet;
use crate::host_net::{HostNet, Wake};
use crate::replication::release::ReleaseQueue;

/// Received frames from the TAP, transmitted frames into the release queue.
#[derive(Debug)]
pub struct HeldNet {
    tap: TapNet,
    queue: Arc<ReleaseQueue>,
}

impl HeldNet {
    /// Frames from `tap`; frames to `queue`, whose release thread writes them to the TAP.
    pub fn new(tap: TapNet, queue: Arc<ReleaseQueue>) -> Self {
        Self { tap, queue }
    }
}

impl HostNet for HeldNet {
    fn receive(&mut self) -> Option<Vec<u8>> {
        self.tap.receive()
    }
    fn put_back(&mut self, frame: Vec<u8>) {
        self.tap.put_back(frame);
    }
    fn pending(&self) -> bool {
        self.tap.pending()
    }
    fn transmit(&mut self, frame: Vec<u8>) {
        self.queue.push_frame(frame);
    }
    fn wake_with(&mut self, wake: Wake) {
        self.tap.wake_with(wake);
    }
}
