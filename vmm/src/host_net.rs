//! The host side of the guest's network card, as the recorder sees it: frames arriving from
//! outside (a source of non-determinism, so behind this trait like the clock and the ticks)
//! and frames the guest sends out.
//!
//! The recorder takes arriving frames only where it can log them (a guest exit, or a
//! mid-execution stop where an interrupt may land) and copies them into the guest there;
//! replay takes them from the log instead and never asks a `HostNet`.

/// What a `HostNet` calls when a frame arrives: the recorder's wakes a halted guest's thread
/// (a doorbell) and stops a running one (a kick) so it can take the frame.
pub type Wake = Box<dyn Fn() + Send + Sync>;

/// Frames in and out of the host.
pub trait HostNet: Send {
    /// The next frame from outside, if one is waiting. Never blocks.
    fn receive(&mut self) -> Option<Vec<u8>>;
    /// Gives back the frame [`HostNet::receive`] just returned, because the guest had no
    /// buffer for it: `receive` returns it first next time (a NIC's FIFO keeps it too).
    fn put_back(&mut self, frame: Vec<u8>);
    /// Whether a frame is waiting.
    fn pending(&self) -> bool;
    /// A frame the guest transmitted: it leaves the host at once, or once the output rule
    /// lets it (the primary's implementation holds it).
    fn transmit(&mut self, frame: Vec<u8>);
    /// From now on, call `wake` when frames arrive.
    fn wake_with(&mut self, wake: Wake);
}
