//! Counters the engine keeps, and the snapshot `cargo xtask stats` shows.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::{api::ProviderStats, xdp::VerdictCounters, xsk::XskStatistics};

/// Frame-level counters, updated by the queue threads and senders.
#[derive(Debug, Default)]
pub struct EngineCounters {
    rx_frames: AtomicU64,
    rx_udp: AtomicU64,
    rx_malformed: AtomicU64,
    rx_bad_checksum: AtomicU64,
    rx_no_socket: AtomicU64,
    rx_unhandled_proto: AtomicU64,
    tx_frames: AtomicU64,
}

/// A copy of `EngineCounters` at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct EngineCounterSnapshot {
    pub rx_frames: u64,
    pub rx_udp: u64,
    pub rx_malformed: u64,
    pub rx_bad_checksum: u64,
    pub rx_no_socket: u64,
    pub rx_unhandled_proto: u64,
    pub tx_frames: u64,
}

impl EngineCounters {
    pub(super) fn add_rx(&self, n: u64) {
        self.rx_frames.fetch_add(n, Relaxed);
    }
    pub(super) fn add_udp(&self) {
        self.rx_udp.fetch_add(1, Relaxed);
    }
    pub(super) fn add_malformed(&self) {
        self.rx_malformed.fetch_add(1, Relaxed);
    }
    pub(super) fn add_bad_checksum(&self) {
        self.rx_bad_checksum.fetch_add(1, Relaxed);
    }
    pub(super) fn add_no_socket(&self) {
        self.rx_no_socket.fetch_add(1, Relaxed);
    }
    pub(super) fn add_unhandled(&self) {
        self.rx_unhandled_proto.fetch_add(1, Relaxed);
    }
    pub(super) fn add_tx(&self, n: u64) {
        self.tx_frames.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> EngineCounterSnapshot {
        EngineCounterSnapshot {
            rx_frames: self.rx_frames.load(Relaxed),
            rx_udp: self.rx_udp.load(Relaxed),
            rx_malformed: self.rx_malformed.load(Relaxed),
            rx_bad_checksum: self.rx_bad_checksum.load(Relaxed),
            rx_no_socket: self.rx_no_socket.load(Relaxed),
            rx_unhandled_proto: self.rx_unhandled_proto.load(Relaxed),
            tx_frames: self.tx_frames.load(Relaxed),
        }
    }
}

/// Frames through one queue's AF_XDP socket.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub(super) rx_frames: AtomicU64,
    pub(super) tx_frames: AtomicU64,
}

/// One AF_XDP socket's view.
#[derive(Clone, Debug, Serialize)]
pub struct QueueStats {
    pub queue: u32,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub zero_copy: bool,
    pub xsk: XskStatistics,
    pub pending_tx: usize,
    pub free_tx_frames: usize,
}

/// Everything at once: XDP verdicts, rings, engine and socket table.
#[derive(Clone, Debug, Serialize)]
pub struct EngineStats {
    pub xdp: VerdictCounters,
    pub queues: Vec<QueueStats>,
    pub engine: EngineCounterSnapshot,
    pub sockets: ProviderStats,
}
