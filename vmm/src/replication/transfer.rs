//! Sending a new backup the whole machine while the guest keeps running: memory in pre-copy
//! rounds under dirty logging, then one short pause in the vCPU thread for the pages written
//! since and the rest of the machine, then the log stream on the same connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use logging_channel::net::{ChannelConfig, ChannelError, Hello, LogSender, StateSender};

use super::Replication;
use crate::snapshot::memory::MemoryError;

/// Stop pre-copying when a round finds this few dirty pages (1 MiB): the pause copies them.
const FINAL_ROUND_PAGES: usize = 256;
const MAX_ROUNDS: u32 = 8;
/// How long the vCPU thread may take to reach a clean point (a guest exit or a timer stop).
const PAUSE_WAIT: Duration = Duration::from_secs(10);
/// Installing is writing the last pages and loading registers: quick, but the backup may be
/// a busy machine.
const INSTALL_WAIT: Duration = Duration::from_secs(30);

/// Why a state transfer to a new backup failed; the primary keeps running without it.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The connection to the backup failed, or the backup refused the offer.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// Reading guest memory or the dirty log failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Dirty logging could not be switched on.
    #[error("switching dirty logging on failed: {0}")]
    DirtyLogging(kvm_ioctls::Error),
    /// The vCPU thread did not hand over the machine in time (the wait).
    #[error("the vCPU did not reach a point to save the machine within {0:?}")]
    NoPause(Duration),
    /// A newer transfer replaced this one.
    #[error("a newer view replaced this transfer")]
    Superseded,
}

/// What a finished transfer measured.
#[derive(Debug, Clone)]
pub struct TransferReport {
    /// From connecting to the backup's `StateInstalled`.
    pub total: Duration,
    /// How long the guest was stopped.
    pub pause: Duration,
    /// Dirty-page rounds after the first, which sends every page.
    pub rounds: u32,
    /// Page-record bytes sent.
    pub bytes: u64,
    /// The first entry the backup replays.
    pub next_seq: u64,
}

/// Transfers the machine to the backup at `addr` as transfer `generation` (from
/// [`Replication::begin_transfer`]). `progress` gets one line per 10% of round 0 for large
/// guests, and one per round.
pub fn transfer(
    shared: &Arc<Replication>,
    generation: u64,
    addr: &str,
    identity: Hello,
    cfg: ChannelConfig,
    progress: &mut dyn FnMut(String),
) -> Result<TransferReport, TransferError> {
    let result = run(shared, generation, addr, identity, cfg, progress);
    if result.is_err() {
        // Whatever happened, the guest must not stay under dirty logging.
        let _ = shared.tracker.set_dirty_logging(false);
    }
    let (result_for_slot, next_seq) = match &result {
        Ok((sender, report)) => (Ok(Arc::clone(sender)), report.next_seq),
        Err(e) => (Err(e.to_string()), 0),
    };
    shared.finish_transfer(generation, result_for_slot, next_seq);
    result.map(|(_, r)| r)
}

fn run(
    shared: &Arc<Replication>,
    generation: u64,
    addr: &str,
    identity: Hello,
    cfg: ChannelConfig,
    progress: &mut dyn FnMut(String),
) -> Result<(Arc<LogSender>, TransferReport), TransferError> {
    let started = Instant::now();
    let tracker = &shared.tracker;
    let mut sender = StateSender::connect(addr, identity.clone(), tracker.bytes(), cfg)?;
    // Logging first, then reading: a page written during round 0 shows up dirty in round 1.
    tracker
        .set_dirty_logging(true)
        .map_err(TransferError::DirtyLogging)?;
    let total_pages = tracker.pages();
    let mib = tracker.bytes() >> 20;
    let mut sent_pages = 0u64;
    let mut next_report = total_pages / 10;
    tracker.encode_all(|records| {
        sent_pages += records_pages(&records);
        sender.send_pages(records)?;
        if mib >= 256 && sent_pages >= next_report {
            progress(format!(
                "state transfer to {addr}: {}/{mib} MiB",
                sent_pages * mib / total_pages.max(1)
            ));
            next_report += total_pages / 10;
        }
        Ok::<_, TransferError>(())
    })?;
    let mut rounds = 1;
    loop {
        if !shared.is_current(generation) {
            return Err(TransferError::Superseded);
        }
        let dirty = tracker.take_dirty()?;
        progress(format!(
            "state transfer to {addr}: round {rounds}: {} pages written meanwhile",
            dirty.len()
        ));
        let last = dirty.len() <= FINAL_ROUND_PAGES || rounds >= MAX_ROUNDS;
        // Pages the guest writes again after this read are caught by the next round (or by
        // the pause, which reads whatever is dirty with the guest stopped).
        tracker.encode(dirty, |records| {
            sender.send_pages(records)?;
            Ok::<_, TransferError>(())
        })?;
        if last {
            break;
        }
        rounds += 1;
    }
    shared.request_state(generation);
    let paused = loop {
        match shared.paused_rx.recv_timeout(PAUSE_WAIT) {
            Ok(p) if p.generation == generation => break p,
            Ok(_) => continue,
            Err(_) => {
                shared
                    .want_state
                    .store(0, std::sync::atomic::Ordering::Release);
                return Err(TransferError::NoPause(PAUSE_WAIT));
            }
        }
    };
    for records in paused.records {
        sender.send_pages(records)?;
    }
    let bytes = sender.bytes_sent();
    let hello = Hello {
        first_seq: paused.next_seq,
        ..identity
    };
    let stream = Arc::new(sender.finish(paused.blob, hello, INSTALL_WAIT)?);
    Ok((
        stream,
        TransferReport {
            total: started.elapsed(),
            pause: paused.pause,
            rounds,
            bytes,
            next_seq: paused.next_seq,
        },
    ))
}

fn records_pages(records: &[u8]) -> u64 {
    logging_channel::net::decode_pages(records, u64::MAX)
        .map(|p| p.len() as u64)
        .unwrap_or(0)
}
