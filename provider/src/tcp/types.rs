//! The engine's public vocabulary: handles, states, errors, events and transmit descriptors.

use std::net::SocketAddr;

use super::segment::SegmentChecksum;

/// A connection handle: slab index plus generation, so a stale handle never aliases a new
/// connection that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The engine (shard) that made it: an engine ignores handles of another shard.
    pub(crate) shard: u16,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ConnId {
    /// The shard (engine) the connection lives in.
    pub fn shard(self) -> usize {
        usize::from(self.shard)
    }
}

/// A listener handle: slab index plus generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId {
    pub(crate) shard: u16,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ListenerId {
    /// The shard (engine) the listener lives in.
    pub fn shard(self) -> usize {
        usize::from(self.shard)
    }
}

/// RFC 9293 §3.3.2 connection states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl TcpState {
    /// Whether the state is one of the synchronized states (RFC 9293 §3.5.2 group 3).
    pub fn is_synchronized(self) -> bool {
        !matches!(
            self,
            TcpState::Closed | TcpState::Listen | TcpState::SynSent | TcpState::SynReceived
        )
    }
}

/// Errors of engine calls and of connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TcpError {
    /// The call does not fit the connection's state.
    #[error("invalid state for this operation")]
    InvalidState,
    /// The peer reset the connection.
    #[error("connection reset by peer")]
    ConnectionReset,
    /// The peer answered our SYN with RST.
    #[error("connection refused")]
    ConnectionRefused,
    /// SYN retries, data retries or keepalive probes were exhausted.
    #[error("connection timed out")]
    TimedOut,
    /// The connection was aborted locally.
    #[error("connection aborted")]
    Aborted,
    /// The 4-tuple (or listening address) is already in use.
    #[error("address in use")]
    AddrInUse,
    /// The handle does not name a live connection, or it is not yet connected.
    #[error("not connected")]
    NotConnected,
    /// The write side was shut down.
    #[error("send after shutdown")]
    Shutdown,
    /// A queue or table is full.
    #[error("no buffer space")]
    NoBuffers,
    /// Nothing to read yet (the connection is open and no FIN arrived).
    #[error("operation would block")]
    WouldBlock,
    /// Local and remote address families differ, or a port is zero.
    #[error("invalid address")]
    InvalidAddress,
}

/// One segment written by [`crate::tcp::TcpEngine::poll_transmit`]: `len` bytes of TCP header,
/// options and payload, to be wrapped in an IP header from `local` to `remote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub len: usize,
    /// `PseudoHeader`: the checksum field holds only the pseudo-header sum; whoever sends the
    /// segment finishes it (the device, with TX checksum offload).
    pub checksum: SegmentChecksum,
}

/// What the engine tells the socket layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An active open completed.
    Connected(ConnId),
    /// An active open failed (refused, timed out).
    ConnectFailed(ConnId, TcpError),
    /// In-order data (or EOF) became available.
    Readable(ConnId),
    /// Send buffer space became available after a short `send`.
    Writable(ConnId),
    /// The peer sent FIN: after the queued data, `recv` returns 0.
    PeerFin(ConnId),
    /// The connection was reset by the peer, or aborted by a timeout (see `recv`/`send` errors).
    Reset(ConnId),
    /// All protocol state is gone (including TIME_WAIT): the 4-tuple is free again and the caller
    /// removes its steering entry.
    Closed(ConnId),
    /// A listener's accept queue became non-empty.
    AcceptReady(ListenerId),
}

/// Per-connection sender counters and state (a small TCP_INFO), for diagnostics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnStats {
    /// Data and FIN segments sent, first transmissions and retransmissions.
    pub segments_sent: u64,
    /// Retransmitted segments, every cause.
    pub retransmits: u64,
    /// Retransmission timer expirations.
    pub rto_count: u64,
    /// Retransmissions sent while recovering from a timeout (RFC 6675 §5.1).
    pub rto_retransmits: u64,
    /// Fast-recovery episodes (duplicate ACKs, SACK or RACK detected a loss).
    pub fast_recoveries: u64,
    /// Retransmissions in fast recovery: the fast retransmit, NewReno partial-ACK
    /// retransmissions and RFC 6675 NextSeg rules 1 and 3.
    pub fast_retransmits: u64,
    /// RFC 6675 rule 4 rescue retransmissions.
    pub rescue_retransmits: u64,
    /// RFC 8985 tail loss probes sent.
    pub tail_loss_probes: u64,
    /// Retransmissions found lost again (RFC 8985 RACK) and resent without a timeout.
    pub lost_retransmits: u64,
    /// D-SACK blocks received (RFC 2883): the peer got something twice.
    pub dsacks_received: u64,
    /// D-SACK blocks sent: we received something twice.
    pub dsacks_sent: u64,
    /// Congestion window (bytes).
    pub cwnd: u32,
    /// Slow-start threshold (bytes; `u32::MAX` before the first loss).
    pub ssthresh: u32,
    /// Smoothed RTT, once measured.
    pub srtt: Option<std::time::Duration>,
    /// Current retransmission timeout (with backoff).
    pub rto: std::time::Duration,
}
