//! Engine and per-connection configuration.

use std::net::SocketAddr;
use std::time::Duration;

use super::cc::CcAlgorithm;
use super::segment::SegmentChecksum;

/// Engine-wide TCP parameters. [`Default`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// The MSS we advertise on IPv4 connections (and the largest segment we send on them); the
    /// caller caps it from the MTU (MTU − 40).
    pub mss: u16,
    /// The same for IPv6 connections (MTU − 60: the IPv6 header is 20 bytes longer).
    pub mss_v6: u16,
    /// RTO before any RTT sample (RFC 6298 §2.1: 1 s).
    pub initial_rto: Duration,
    /// Lower bound of the RTO.
    pub min_rto: Duration,
    /// Upper bound of the RTO (also of backed-off timers).
    pub max_rto: Duration,
    /// TIME_WAIT duration (2 MSL).
    pub time_wait: Duration,
    /// Delayed ACK timeout; zero disables delayed ACKs.
    pub delayed_ack: Duration,
    /// Default send buffer (SO_SNDBUF).
    pub send_buffer: usize,
    /// Default receive buffer (SO_RCVBUF); also bounds the advertised window.
    pub recv_buffer: usize,
    /// Engine-wide bound on half-open (SYN_RECEIVED) connections.
    pub syn_backlog: usize,
    /// Congestion control algorithm.
    pub cc: CcAlgorithm,
    /// Initial window in segments (RFC 6928: 10).
    pub initial_window_segments: u32,
    /// Bound on out-of-order segments held per connection.
    pub ooo_max_segments: usize,
    /// Bound on out-of-order bytes held per connection.
    pub ooo_max_bytes: usize,
    /// RFC 5961 challenge ACKs per second (engine-wide).
    pub challenge_ack_limit: u32,
    /// SYN (and SYN-ACK) retransmissions before the open fails.
    pub syn_retries: u32,
    /// Data retransmissions (consecutive RTOs) before the connection aborts.
    pub data_retries: u32,
    /// Idle time before the first keepalive probe.
    pub keepalive_idle: Duration,
    /// Time between unanswered keepalive probes.
    pub keepalive_interval: Duration,
    /// Unanswered probes before the connection aborts.
    pub keepalive_probes: u32,
    /// Keepalive on for new connections (SO_KEEPALIVE default: off).
    pub keepalive: bool,
    /// Offer window scaling (RFC 7323).
    pub window_scale: bool,
    /// Offer timestamps (RFC 7323).
    pub timestamps: bool,
    /// Offer SACK (RFC 2018).
    pub sack: bool,
    /// How long an orphan (closed by the user) may linger in FIN_WAIT_2 or wait for its data to be
    /// acknowledged before it is reset and freed (DESIGN §7 orphan deadline).
    pub orphan_timeout: Duration,
    /// How connection segments carry their checksum: `PseudoHeader` when the datapath offloads
    /// TX checksums (the provider sets it from the datapath). Control segments written for no
    /// connection (RSTs to strays) are always complete.
    pub tx_checksum: SegmentChecksum,
}

impl TcpConfig {
    /// The MSS for a connection with `peer` (its family decides).
    pub fn mss_for(&self, peer: &SocketAddr) -> u16 {
        if peer.is_ipv6() {
            self.mss_v6
        } else {
            self.mss
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            mss: 1460,
            mss_v6: 1440,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            time_wait: Duration::from_secs(60),
            delayed_ack: Duration::from_millis(40),
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            syn_backlog: 1024,
            cc: CcAlgorithm::default(),
            initial_window_segments: 10,
            ooo_max_segments: 256,
            ooo_max_bytes: 1 << 20,
            challenge_ack_limit: 1000,
            syn_retries: 6,
            data_retries: 15,
            keepalive_idle: Duration::from_secs(7200),
            keepalive_interval: Duration::from_secs(75),
            keepalive_probes: 9,
            keepalive: false,
            window_scale: true,
            timestamps: true,
            sack: true,
            orphan_timeout: Duration::from_secs(60),
            tx_checksum: SegmentChecksum::Complete,
        }
    }
}

/// Per-connection options given to `connect` (accepted connections use the defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnOptions {
    /// Disable Nagle (TCP_NODELAY).
    pub nodelay: bool,
    /// Enable keepalive (SO_KEEPALIVE).
    pub keepalive: bool,
    /// SO_SNDBUF override.
    pub send_buffer: Option<usize>,
    /// SO_RCVBUF override.
    pub recv_buffer: Option<usize>,
}
