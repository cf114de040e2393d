//! Counters the engine keeps, and the snapshot `cargo xtask stats` shows.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::{api::ProviderStats, xdp::VerdictCounters, xsk::XskStatistics};

/// Frame-level counters, updated by the queue threads and senders.
#[derive(Debug, Default)]
pub struct EngineCounters {
    rx_frames: AtomicU64,
    pub(super) rx_udp: AtomicU64,
    pub(super) rx_malformed: AtomicU64,
    pub(super) rx_bad_checksum: AtomicU64,
    pub(super) rx_partial_checksum: AtomicU64,
    pub(super) rx_no_socket: AtomicU64,
    pub(super) rx_unhandled_proto: AtomicU64,
    tx_frames: AtomicU64,
}

/// A copy of `EngineCounters` at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct EngineCounterSnapshot {
    pub rx_frames: u64,
    pub rx_udp: u64,
    pub rx_malformed: u64,
    pub rx_bad_checksum: u64,
    /// Accepted with a partial (offload-pending) checksum from a veth peer.
    pub rx_partial_checksum: u64,
    pub rx_no_socket: u64,
    pub rx_unhandled_proto: u64,
    pub tx_frames: u64,
}

impl EngineCounters {
    pub(super) fn add_rx(&self, n: u64) {
        self.rx_frames.fetch_add(n, Relaxed);
    }
    /// Add a batch's count to one of the per-frame counters (nothing when it is 0: no write to
    /// a line other queues write).
    pub(super) fn add_batch(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Relaxed);
        }
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
            rx_partial_checksum: self.rx_partial_checksum.load(Relaxed),
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
    /// How long each pass that found work took (receive, TCP/UDP processing, transmit).
    pub(super) busy_pass: crate::histogram::LatencyHistogram,
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
    /// Kick system calls on this queue's socket since it was bound.
    pub kicks: crate::xsk::KickCounts,
    /// TX kicks per transmitted frame (batching and `need_wakeup` keep it well below 1).
    pub tx_kicks_per_frame: f64,
    /// Duration of the passes that found work: a slow pass delays every frame behind it, so
    /// its tail is part of every connection's tail latency.
    pub busy_pass: crate::histogram::LatencySummary,
    /// TCP segments leave their checksum to the kernel / device (AF_XDP TX metadata).
    pub tx_checksum_offload: bool,
    /// Which kernel busy-poll options the socket accepted (`--kernel-busy-poll-us`).
    pub busy_poll: crate::xsk::BusyPollApplied,
}

/// The interface as the engine found it at start.
#[derive(Clone, Debug, Serialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub ifindex: u32,
    /// XDP attach mode in effect (`Driver` = native, `Skb` = generic).
    pub attach_mode: String,
    /// The link's MTU, and the one the engine works with (smaller when a UMEM frame cannot
    /// hold the link's: the TCP MSS and UDP sizes follow it).
    pub link_mtu: u32,
    pub mtu: u32,
    pub frame_size: u32,
    /// RX queues the device allocated (`IFLA_NUM_RX_QUEUES`).
    pub allocated_rx_queues: u32,
    /// `ethtool -l` at start (None: the driver reports no channels).
    pub channels: Option<crate::net::ethtool::Channels>,
    /// The driver (`ethtool -i`), if it says.
    pub driver: Option<String>,
    /// Partial (offload-pending) transport checksums are accepted (veth).
    pub partial_checksums: bool,
}

/// Which queues are served, and how the served set followed channel changes.
#[derive(Clone, Debug, Serialize)]
pub struct InterfaceStats {
    #[serde(flatten)]
    pub info: InterfaceInfo,
    /// RX queues served now: queues 0..served_queues.
    pub served_queues: u32,
    /// Active RX queues at the last check.
    pub active_rx_queues: Option<u32>,
    /// A monitor re-reads the channel counts and follows them.
    pub follows_channels: bool,
    /// Changes of the served set since start.
    pub queue_changes: u64,
    /// What the last change (or failed change) was.
    pub last_change: Option<String>,
}

/// Everything at once: XDP verdicts, rings, engine and socket table.
#[derive(Clone, Debug, Serialize)]
pub struct EngineStats {
    /// Absent when the datapath alone is asked (no engine around it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceStats>,
    pub xdp: VerdictCounters,
    pub queues: Vec<QueueStats>,
    pub engine: EngineCounterSnapshot,
    /// One TCP engine per RX queue served at start: its connections, the segments it
    /// processed and how many of them another queue handed over (a flow's segments arriving
    /// on a queue other than its owner's).
    pub tcp_shards: Vec<crate::api::stream::ShardStats>,
    /// "device-rss" when flow ownership follows the device's RSS function, else "software".
    pub tcp_flow_owner: &'static str,
    pub sockets: ProviderStats,
}
