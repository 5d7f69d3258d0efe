//! A TAP device as the guest's network: a `tap-reader` thread reads frames into a bounded
//! queue and wakes the vCPU thread (a doorbell for a halted guest, a kick for a running one);
//! the vCPU thread takes them where it can log them. Transmitted frames are written to the TAP
//! by whoever the recorder hands them to: at once for `run`, after the backup's
//! acknowledgement for a primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::tap::Tap;
use crate::host_net::{HostNet, Wake};

/// Frames the host keeps for a guest that has not taken them yet; beyond it, frames are
/// dropped as a NIC's full FIFO drops them.
pub const RX_QUEUE_FRAMES: usize = 256;

/// How long the reader waits for the TAP before it looks at its stop flag again.
const READER_POLL: Duration = Duration::from_millis(100);
/// How long the reader rests after a failed read: a fault that persists costs it a thousand
/// tries a second, not a core.
const READ_ERROR_PAUSE: Duration = Duration::from_millis(1);

/// What happened on the host side, counted.
#[derive(Debug, Default)]
pub struct TapNetStats {
    /// Frames read from the TAP.
    pub rx_frames: AtomicU64,
    /// Frames dropped because the queue was full (the guest was not taking them).
    pub rx_dropped: AtomicU64,
    /// Reads that failed (each is skipped; a frame too big for any guest buffer, for one).
    pub rx_errors: AtomicU64,
    /// Frames written to the TAP.
    pub tx_frames: AtomicU64,
    /// Writes that failed (link down, frame over the MTU): the frame is lost, as on a wire.
    pub tx_errors: AtomicU64,
}

/// The guest's network on a TAP device.
#[derive(Debug)]
pub struct TapNet {
    tap: Arc<Tap>,
    frames: Receiver<Vec<u8>>,
    sender: Option<Sender<Vec<u8>>>,
    put_back: Option<Vec<u8>>,
    stats: Arc<TapNetStats>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl TapNet {
    /// The guest's network on `tap`. Nothing is read until [`HostNet::wake_with`] starts the
    /// reader (a backup's TAP stays unread until it goes live).
    pub fn new(tap: Arc<Tap>) -> Self {
        let (sender, frames) = crossbeam_channel::bounded(RX_QUEUE_FRAMES);
        Self {
            tap,
            frames,
            sender: Some(sender),
            put_back: None,
            stats: Arc::new(TapNetStats::default()),
            stop: Arc::new(AtomicBool::new(false)),
            reader: None,
        }
    }

    /// The TAP device.
    pub fn tap(&self) -> &Arc<Tap> {
        &self.tap
    }

    /// What happened so far.
    pub fn stats(&self) -> &TapNetStats {
        &self.stats
    }

    /// Stops the reader (within [`READER_POLL`]): what arrives from now on stays with the
    /// kernel, so the counts hold still and can be checked against each other. Frames already
    /// queued stay queued.
    pub fn stop_reading(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Frames read from the TAP that the guest has not taken. Once the reader has stopped,
    /// every frame read was taken by the guest's card, dropped with the queue full, or is one
    /// of these.
    pub fn queued(&self) -> usize {
        self.frames.len() + usize::from(self.put_back.is_some())
    }
}

impl HostNet for TapNet {
    fn receive(&mut self) -> Option<Vec<u8>> {
        self.put_back.take().or_else(|| self.frames.try_recv().ok())
    }

    fn put_back(&mut self, frame: Vec<u8>) {
        self.put_back = Some(frame);
    }

    fn pending(&self) -> bool {
        self.put_back.is_some() || !self.frames.is_empty()
    }

    fn transmit(&mut self, frame: Vec<u8>) {
        match self.tap.write_frame(&frame) {
            Ok(()) => {
                self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if self.stats.tx_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("tap {}: a frame could not be sent: {e}", self.tap.name());
                }
            }
        }
    }

    fn wake_with(&mut self, wake: Wake) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let tap = Arc::clone(&self.tap);
        let stats = Arc::clone(&self.stats);
        let stop = Arc::clone(&self.stop);
        let spawned = std::thread::Builder::new()
            .name("tap-reader".into())
            .spawn(move || read_loop(&tap, &sender, &stats, &stop, &wake));
        match spawned {
            Ok(handle) => self.reader = Some(handle),
            Err(e) => tracing::error!("tap {}: no reader thread: {e}", self.tap.name()),
        }
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        self.stop_reading();
    }
}

fn read_loop(
    tap: &Tap,
    frames: &Sender<Vec<u8>>,
    stats: &TapNetStats,
    stop: &AtomicBool,
    wake: &Wake,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Acquire) {
        match tap.wait_readable(READER_POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!("tap {}: cannot wait for frames: {e}", tap.name());
                return;
            }
        }
        let mut queued = false;
        loop {
            match tap.read_frame(&mut buf) {
                Ok(Some(n)) => {
                    stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                    match frames.try_send(buf[..n].to_vec()) {
                        Ok(()) => queued = true,
                        Err(TrySendError::Full(_)) => {
                            stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if super::tap::FrameError::of(&e)
                        .is_some_and(|f| matches!(f, super::tap::FrameError::Gone { .. }))
                    {
                        tracing::error!("tap {}: the device is gone: {e}", tap.name());
                        return;
                    }
                    if stats.rx_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            "tap {}: reading a frame failed: {e} (counted from now on)",
                            tap.name()
                        );
                    }
                    std::thread::sleep(READ_ERROR_PAUSE);
                    break;
                }
            }
        }
        if queued {
            wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tap::tests::{frame, in_private_netns, pattern, ready_tap, run, wait_until};
    use std::sync::atomic::AtomicUsize;

    fn counting_wake() -> (Wake, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&wakes);
        (
            Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
            wakes,
        )
    }

    #[test]
    fn frames_from_the_wire_reach_the_guest_side_in_order_and_wake_it() {
        in_private_netns("tap_net_receive", || {
            let (tap, host) = ready_tap("usnet0");
            let mut net = TapNet::new(Arc::new(tap));
            let (wake, wakes) = counting_wake();
            net.wake_with(wake);
            let sent: Vec<_> = (0..5u8)
                .map(|i| frame([0x02; 6], [0x04; 6], &pattern(100 + usize::from(i), i)))
                .collect();
            for f in &sent {
                host.send(f);
            }
            let mut got = Vec::new();
            wait_until("all frames arrive", || {
                got.extend(std::iter::from_fn(|| net.receive()));
                got.len() >= sent.len()
            });
            assert_eq!(got, sent);
            assert!(wakes.load(Ordering::SeqCst) >= 1);
            // A frame the guest had no buffer for comes back first.
            host.send(&sent[0]);
            wait_until("one more frame", || net.pending());
            let f = net.receive().unwrap();
            net.put_back(f.clone());
            assert!(net.pending());
            assert_eq!(net.receive(), Some(f));
            assert_eq!(net.stats().rx_dropped.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn transmitted_frames_reach_the_wire() {
        in_private_netns("tap_net_transmit", || {
            let (tap, host) = ready_tap("usnet1");
            let mut net = TapNet::new(Arc::new(tap));
            let f = frame([0x02; 6], [0x04; 6], &pattern(1000, 7));
            net.transmit(f.clone());
            assert_eq!(host.recv(Duration::from_secs(10)), Some(f));
            assert_eq!(net.stats().tx_frames.load(Ordering::SeqCst), 1);
            // Over the MTU: lost and counted, never a failure of the VMM.
            net.transmit(frame([0x02; 6], [0x04; 6], &pattern(3000, 1)));
            assert_eq!(net.stats().tx_errors.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn frames_up_to_64_kib_arrive_whole_and_nothing_shorter_than_a_header_can_be_sent() {
        in_private_netns("tap_net_sizes", || {
            let (tap, host) = ready_tap("usnet3");
            // The most a TAP takes: MAX_MTU (65535) less the Ethernet header.
            run(&["ip", "link", "set", "usnet3", "mtu", "65521"]);
            let mut net = TapNet::new(Arc::new(tap));
            let (wake, _) = counting_wake();
            net.wake_with(wake);
            // Runts of the wire (under 60 bytes), the edges of the card's limit, jumbo and
            // the largest: the reader passes each on whole; the card decides what it takes.
            let sent: Vec<_> = [14, 15, 59, 60, 1514, 1518, 1519, 9014, 65_535]
                .into_iter()
                .map(|len: usize| frame([0x02; 6], [0x04; 6], &pattern(len - 14, len as u8)))
                .collect();
            for f in &sent {
                host.send(f);
            }
            // The kernel refuses anything shorter than an Ethernet header before it gets to
            // the TAP, so no runt of that kind ever reaches the reader from this side.
            for len in [0, 1, 13] {
                let err = host.try_send(&vec![0xff; len]).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{len} bytes: {err}");
            }
            let mut got = Vec::new();
            wait_until("all frames arrive", || {
                got.extend(std::iter::from_fn(|| net.receive()));
                got.len() >= sent.len()
            });
            assert_eq!(got, sent);
            assert_eq!(net.stats().rx_errors.load(Ordering::SeqCst), 0);
            assert_eq!(net.stats().rx_frames.load(Ordering::SeqCst), 9);
        });
    }

    #[test]
    fn a_guest_that_takes_nothing_costs_a_bounded_queue_and_counted_drops() {
        in_private_netns("tap_net_full", || {
            let (tap, host) = ready_tap("usnet2");
            let mut net = TapNet::new(Arc::new(tap));
            let (wake, _) = counting_wake();
            net.wake_with(wake);
            let n = RX_QUEUE_FRAMES + 40;
            for i in 0..n {
                host.send(&frame([0x02; 6], [0x04; 6], &pattern(64, i as u8)));
            }
            wait_until("the reader has read every frame", || {
                net.stats().rx_frames.load(Ordering::SeqCst) == n as u64
            });
            net.stop_reading();
            assert_eq!(net.queued(), RX_QUEUE_FRAMES);
            // Nothing more is read once stopped, so the counts add up.
            host.send(&frame([0x02; 6], [0x04; 6], &pattern(64, 0)));
            std::thread::sleep(READER_POLL * 2);
            assert_eq!(net.stats().rx_frames.load(Ordering::SeqCst), n as u64);
            let f = net.receive().unwrap();
            net.put_back(f);
            assert_eq!(
                net.queued(),
                RX_QUEUE_FRAMES,
                "a frame put back is still queued"
            );
            let kept = std::iter::from_fn(|| net.receive()).count();
            assert_eq!(kept, RX_QUEUE_FRAMES);
            assert_eq!(net.queued(), 0);
            assert_eq!(
                net.stats().rx_dropped.load(Ordering::SeqCst),
                (n - RX_QUEUE_FRAMES) as u64
            );
        });
    }
}
