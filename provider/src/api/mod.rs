//! The WSP calls (DESIGN §6, §7) over the socket table, for UDP datagram sockets.
//!
//! [`Provider`] is the socket provider: one handle table, one UDP demultiplexer and the
//! [`Datapath`] that moves frames. Any thread may call anything. Blocking calls sleep on the
//! socket's condition variable and are woken by [`Provider::deliver_udp`] (the engine's inbound
//! hook) or by the last close. Stream sockets (TCP) arrive in a later issue on the same table;
//! every call dispatches on [`SocketKind`].
//!
//! # Error codes
//!
//! Every call first resolves its handle: a handle that is 0, `INVALID_SOCKET`, made up, closed,
//! or names a slot reused since (new generation) gives **WSAENOTSOCK**, for every call,
//! `wsp_close_socket` included. The other codes, in the order they are checked:
//!
//! | call | code | when |
//! |---|---|---|
//! | `wsp_socket` | WSAEAFNOSUPPORT | `af` not AF_INET (2) / AF_INET6 (23, or Linux 10) |
//! | | WSAESOCKTNOSUPPORT | `ty` not SOCK_DGRAM (2); SOCK_STREAM (1) too until the TCP issue |
//! | | WSAEPROTONOSUPPORT | `protocol` not 0 / IPPROTO_UDP (17) for a datagram socket |
//! | | WSAEMFILE | the handle table is full (`ProviderConfig::max_sockets`) |
//! | `wsp_bind` | WSAEFAULT | address family differs from the socket's (Winsock `bind` documents WSAEFAULT when "the first two bytes of … name do not match the address family associated with the socket") |
//! | | WSAEINVAL | socket already bound (explicitly or by a send) |
//! | | WSAEADDRNOTAVAIL | address neither the wildcard nor one of `Datapath::local_addrs` |
//! | | WSAEADDRINUSE | endpoint taken, unless both sockets set SO_REUSEADDR |
//! | | WSAENOBUFS | port 0 and the ephemeral range is exhausted |
//! | | (datapath) | whatever `Datapath::steer_add` returns; the bind is undone |
//! | `wsp_send_to` | WSAEFAULT | destination family differs from the socket's (as `bind`; Winsock `sendto` also lists WSAEAFNOSUPPORT for this — we keep one code for both calls) |
//! | | WSAEADDRNOTAVAIL | destination address unspecified, or port 0 |
//! | | WSAEMSGSIZE | payload larger than `Datapath::max_udp_payload` (no fragmentation) or than a UDP datagram can be |
//! | | WSAENETDOWN | `Datapath::is_up` is false |
//! | | WSAENOBUFS | unbound socket (auto-bind to the wildcard) and the ephemeral range is exhausted |
//! | | WSAENETUNREACH | bound to the wildcard and the datapath has no address of this family |
//! | | (datapath) | whatever `Datapath::send_udp` returns (WSAEHOSTUNREACH, WSAENOBUFS, …) |
//! | `wsp_recv_from` | WSAEINVAL | socket not bound (Winsock `recvfrom` on an unbound socket) |
//! | | WSAEWOULDBLOCK | nonblocking and nothing queued |
//! | | WSAEINTR | a blocking call was pending when the last handle was closed by another thread |
//! | | WSAEMSGSIZE | datagram larger than the buffer: the buffer is filled, the rest is discarded, the datagram is consumed (Winsock). `wsp_recv_msg` gives length and sender in that case |
//! | `wsp_close_socket` | — | datagram close never fails on a valid handle (nothing to flush; also when the datapath is down) |
//! | `wsp_ioctl` | WSAEINVAL | code other than FIONBIO / FIONREAD (WSPIoctl: "not a valid command"; we do not use WSAEOPNOTSUPP) |
//! | `wsp_set_sock_opt` | WSAEINVAL | unknown level, or negative SO_SNDBUF / SO_RCVBUF |
//! | | WSAENOPROTOOPT | unknown name; read-only option (SO_ERROR, SO_TYPE); option meaningless for UDP (SO_LINGER, SO_DONTLINGER, SO_KEEPALIVE, TCP_NODELAY) |
//! | | WSAEFAULT | `optval` shorter than the option (4 bytes) |
//! | `wsp_get_sock_opt` | WSAEINVAL / WSAENOPROTOOPT / WSAEFAULT | as for set (minus read-only) |
//! | `wsp_get_sock_name` | WSAEINVAL | socket not bound |
//! | `duplicate` | WSAEMFILE | the handle table is full |
//!
//! A closed socket reached through a handle resolved just before the close behaves like a stale
//! handle (WSAENOTSOCK), except a blocking call that was already sleeping (WSAEINTR).
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use provider_common::{PROTO_UDP, SteerKey};
use serde::{Deserialize, Serialize};

pub use crate::socket::entry::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SOCK_DGRAM, SOCK_STREAM,
};
use crate::socket::entry::{Proto, lock};
use crate::socket::options::{FIONBIO, FIONREAD};
use crate::socket::table::{DEFAULT_CAPACITY, Removed, SocketTable};
use crate::socket::{
    Datapath, Family, Socket, SocketEntry, SocketKind, SocketOptions, WsaError, WspResult,
};
use crate::udp::{DEFAULT_EPHEMERAL, UdpDemux, UdpState};

#[cfg(test)]
mod close_tests;
pub mod events;
#[cfg(test)]
mod events_tests;
pub mod loopback;
pub mod overlapped;
pub mod readiness;
#[cfg(test)]
mod shard_tests;
pub mod stream;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

pub use events::{
    FD_ACCEPT, FD_ACCEPT_BIT, FD_ALL, FD_CLOSE, FD_CLOSE_BIT, FD_CONNECT, FD_CONNECT_BIT,
    FD_MAX_EVENTS, FD_OOB, FD_READ, FD_READ_BIT, FD_WRITE, FD_WRITE_BIT, NetworkEvents, WsaEvent,
};
pub use loopback::LoopbackDatapath;
pub use overlapped::{Completion, CompletionQueue, CompletionRoutine, Overlapped};
pub use readiness::Readiness;
pub use stream::{SD_BOTH, SD_RECEIVE, SD_SEND, SOMAXCONN};

/// Largest UDP payload over IPv4 (65535 − 20 − 8) and IPv6 (65535 − 8, no jumbograms).
const MAX_UDP_V4: usize = 65507;
const MAX_UDP_V6: usize = 65527;

/// Provider settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    /// Handles open at once (WSAEMFILE beyond). Default 65536.
    pub max_sockets: usize,
    /// Ports for implicit binds and `bind(port 0)`. Default 61000..=65535, which the lab reserves
    /// from the kernel. Port 0 in the range is never handed out.
    pub ephemeral_ports: RangeInclusive<u16>,
    /// Initial SO_RCVBUF (bytes). Default 1 MiB.
    pub default_rcvbuf: usize,
    /// Initial SO_SNDBUF (bytes). Default 1 MiB (stored; UDP sends are not buffered).
    pub default_sndbuf: usize,
    /// TCP engine settings (TIME_WAIT, RTO bounds, orphan deadline, buffers, …).
    #[serde(skip)]
    pub tcp: crate::tcp::TcpConfig,
    /// TCP engines (shards), one per RX queue served (DESIGN §3); the engine sets it from
    /// the queues it serves at start. Default 1.
    pub tcp_shards: usize,
    /// The device's RSS function (key, indirection table), if usable: which shard owns a flow
    /// then follows the device, and active opens choose ports the device brings back to the
    /// connecting shard. None: the provider's own Toeplitz function over the shards.
    #[serde(skip)]
    pub rss: Option<crate::net::rss::RssConfig>,
    /// RX queues datagrams may arrive on: one set of UDP receive counters each (written only by
    /// the thread serving that queue; `stats` sums them). The engine sets it to the device's
    /// queue slots. Default 1; a higher queue index is counted in the last set.
    pub rx_queues: usize,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            max_sockets: DEFAULT_CAPACITY,
            ephemeral_ports: DEFAULT_EPHEMERAL,
            default_rcvbuf: 1 << 20,
            default_sndbuf: 1 << 20,
            tcp: crate::tcp::TcpConfig::default(),
            tcp_shards: 1,
            rss: None,
            rx_queues: 1,
        }
    }
}

/// One RX queue's UDP receive counters (`ProviderStats::udp_queues`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UdpQueueStats {
    pub queue: u32,
    /// Datagrams that arrived on this queue and were queued on a socket.
    pub delivered: u64,
    /// Dropped because the socket's SO_RCVBUF was full.
    pub dropped_queue_full: u64,
    /// No (open) socket was bound to the destination.
    pub no_socket: u64,
}

/// Counters, as `provider stats` prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProviderStats {
    /// Underlying sockets not yet released (duplicates count once).
    pub sockets_open: u64,
    /// Live handles (duplicates count each).
    pub handles_open: u64,
    /// Distinct bound UDP endpoints.
    pub udp_endpoints: u64,
    /// Datagrams handed to the datapath.
    pub udp_sent: u64,
    /// Datagrams queued on a socket by `deliver_udp` (sum of `udp_queues`).
    pub udp_delivered: u64,
    /// Datagrams dropped because the socket's SO_RCVBUF was full.
    pub udp_dropped_queue_full: u64,
    /// Datagrams for which no (open) socket was bound.
    pub udp_no_socket: u64,
    /// TCP connections the engine holds (TIME_WAIT and orphans included).
    pub tcp_connections: u64,
    /// Of those, in ESTABLISHED.
    pub tcp_established: u64,
    /// Of those, closed by the application and finishing on their own.
    pub tcp_orphans: u64,
    /// Stream closes by path (DESIGN §7): FIN after queued data.
    pub close_graceful: u64,
    /// SO_LINGER {1, 0}: RST at once.
    pub close_hard: u64,
    /// SO_LINGER {1, n}: n seconds passed with data unacknowledged → RST.
    pub close_linger_timeout_reset: u64,
    /// Orphans reset at the orphan deadline.
    pub close_orphan_timeout_reset: u64,
    /// Unread received data at close → RST.
    pub close_unread_data_reset: u64,
    /// How long calls and queue passes waited for the TCP engine's lock: its tail is the
    /// convoy a single engine for every queue and socket call produces.
    pub tcp_lock_wait: crate::histogram::LatencySummary,
    /// UDP receive counters per RX queue (`ProviderConfig::rx_queues` of them): which queues
    /// carried the datagrams, and where they were dropped.
    pub udp_queues: Vec<UdpQueueStats>,
}

/// Per-datagram counters of one RX queue, on a cache line of their own: the receive path
/// writes no cache line another queue writes.
#[derive(Debug, Default)]
#[repr(align(128))]
struct UdpQueueCounters {
    delivered: AtomicU64,
    dropped_queue_full: AtomicU64,
    no_socket: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    sockets_open: AtomicU64,
    close_graceful: AtomicU64,
    close_hard: AtomicU64,
    close_linger_timeout_reset: AtomicU64,
    close_unread_data_reset: AtomicU64,
    udp_sent: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What `wsp_recv_msg` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// Sender.
    pub from: SocketAddr,
    /// Size of the datagram; larger than `len` if it was truncated.
    pub datagram_len: usize,
}

impl RecvMeta {
    /// True if the datagram did not fit (Winsock reports WSAEMSGSIZE).
    pub fn truncated(&self) -> bool {
        self.datagram_len > self.len
    }
}

/// The socket provider.
pub struct Provider {
    datapath: Arc<dyn Datapath>,
    config: ProviderConfig,
    table: SocketTable,
    udp: UdpDemux<Arc<SocketEntry>>,
    /// Serialises demux registration with the matching STEER add/remove, so the "first on this
    /// endpoint → steer_add, last → steer_remove" bookkeeping cannot interleave. Never held by
    /// the receive path. Lock order: socket state → `bind_lock` → demux.
    bind_lock: Mutex<()>,
    counters: Counters,
    /// UDP receive counters, one set per RX queue.
    udp_rx: Box<[UdpQueueCounters]>,
    /// Bound TCP endpoints (for WSAEADDRINUSE and ephemeral ports), keyed by socket id.
    tcp_ports: UdpDemux<u64>,
    /// The TCP engine and its socket maps.
    tcp: stream::TcpShards,
    /// Event selections, recorded network events and pending overlapped operations, per
    /// socket id (see `events`). Lock order: socket state → engine → this.
    asyncs: events::Asyncs,
    /// The completion thread that runs overlapped completion routines.
    routines: overlapped::RoutineThread,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The STEER key for a bound UDP endpoint (wildcard → all-zero address).
/// A datagram's payload into `buf` (truncated to it), with its sender and full length.
fn copy_datagram(d: &crate::udp::Datagram, buf: &mut [u8]) -> RecvMeta {
    let len = d.payload.len().min(buf.len());
    buf[..len].copy_from_slice(&d.payload[..len]);
    RecvMeta {
        len,
        from: d.from,
        datagram_len: d.payload.len(),
    }
}

pub fn udp_steer_key(local: SocketAddr) -> SteerKey {
    match local.ip() {
        IpAddr::V4(a) => SteerKey::v4(PROTO_UDP, a.octets(), local.port()),
        IpAddr::V6(a) => SteerKey::v6(PROTO_UDP, a.octets(), local.port()),
    }
}

impl Provider {
    pub fn new(datapath: Arc<dyn Datapath>, config: ProviderConfig) -> Self {
        let mut tcp_config = config.tcp.clone();
        // The MSS must fit the link: MTU − IP header − TCP header, per family.
        let link_mss =
            |v6: bool| u16::try_from(datapath.max_udp_payload(v6) + 8 - 20).unwrap_or(u16::MAX);
        tcp_config.mss = tcp_config.mss.min(link_mss(false));
        tcp_config.mss_v6 = tcp_config.mss_v6.min(link_mss(true));
        if datapath.tx_checksum_offload() {
            tcp_config.tx_checksum = crate::tcp::SegmentChecksum::PseudoHeader;
        }
        let udp_rx = (0..config.rx_queues.max(1))
            .map(|_| UdpQueueCounters::default())
            .collect();
        Provider {
            tcp_ports: UdpDemux::new(),
            tcp: stream::TcpShards::new(tcp_config, config.tcp_shards, config.rss.clone()),
            datapath,
            table: SocketTable::new(config.max_sockets),
            config,
            udp: UdpDemux::new(),
            bind_lock: Mutex::new(()),
            counters: Counters::default(),
            udp_rx,
            asyncs: Default::default(),
            routines: Default::default(),
        }
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    pub fn datapath(&self) -> &Arc<dyn Datapath> {
        &self.datapath
    }

    /// WSPSocket.
    pub fn wsp_socket(&self, af: i32, ty: i32, protocol: i32) -> WspResult<Socket> {
        let family = Family::from_af(af)?;
        let kind = match ty {
            SOCK_DGRAM => SocketKind::Datagram,
            SOCK_STREAM => SocketKind::Stream,
            _ => return Err(WsaError::WSAESOCKTNOSUPPORT),
        };
        let proto = match (kind, protocol) {
            (SocketKind::Datagram, 0 | IPPROTO_UDP) => Proto::Udp(UdpState::default()),
            (SocketKind::Stream, 0 | IPPROTO_TCP) => Self::new_tcp_proto(),
            _ => return Err(WsaError::WSAEPROTONOSUPPORT),
        };
        let options = SocketOptions::new(self.config.default_rcvbuf, self.config.default_sndbuf);
        let entry = Arc::new(SocketEntry::new(family, kind, options, proto));
        let s = self.table.insert(entry)?;
        bump(&self.counters.sockets_open);
        Ok(s)
    }

    /// WSPBind. Port 0 picks an ephemeral port; the wildcard address binds every local address.
    pub fn wsp_bind(&self, s: Socket, addr: SocketAddr) -> WspResult<()> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Stream {
            return self.stream_bind(&e, addr);
        }
        let mut st = e.lock_open()?;
        if Family::of(&addr) != e.family {
            return Err(WsaError::WSAEFAULT);
        }
        if st.udp()?.local.is_some() {
            return Err(WsaError::WSAEINVAL);
        }
        let ip = addr.ip();
        if !ip.is_unspecified() && !self.datapath.local_addrs().contains(&ip) {
            return Err(WsaError::WSAEADDRNOTAVAIL);
        }
        let reuse = st.options.reuse_addr;
        let local = self.bind_endpoint(&e, ip, addr.port(), reuse)?;
        st.udp()?.local = Some(local);
        self.async_record(e.id, events::FD_WRITE, 0);
        Ok(())
    }

    /// Register `e` on (ip, port) — an ephemeral port if 0 — and steer the endpoint if it is new.
    fn bind_endpoint(
        &self,
        e: &Arc<SocketEntry>,
        ip: IpAddr,
        port: u16,
        reuse: bool,
    ) -> WspResult<SocketAddr> {
        let _g = lock(&self.bind_lock);
        let (local, first) = if port == 0 {
            let range = &self.config.ephemeral_ports;
            (
                self.udp
                    .register_ephemeral(ip, range, e.id, reuse, Arc::clone(e))?,
                true,
            )
        } else {
            let local = SocketAddr::new(ip, port);
            (local, self.udp.register(local, e.id, reuse, Arc::clone(e))?)
        };
        if first && let Err(err) = self.datapath.steer_add(udp_steer_key(local)) {
            self.udp.unregister(local, e.id);
            return Err(err);
        }
        Ok(local)
    }

    fn unbind_endpoint(&self, e: &SocketEntry, local: SocketAddr) {
        let _g = lock(&self.bind_lock);
        if self.udp.unregister(local, e.id) {
            self.datapath.steer_remove(udp_steer_key(local));
        }
    }

    /// WSPSendTo. Binds an unbound socket to the wildcard address and an ephemeral port first.
    /// A wildcard-bound socket sends from the datapath's first address of its family.
    /// On a stream socket `to` is ignored and this is `wsp_send` (Winsock).
    pub fn wsp_send_to(&self, s: Socket, buf: &[u8], to: SocketAddr) -> WspResult<usize> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Stream {
            return self.wsp_send(s, buf);
        }
        if Family::of(&to) != e.family {
            return Err(WsaError::WSAEFAULT);
        }
        if to.ip().is_unspecified() || to.port() == 0 {
            return Err(WsaError::WSAEADDRNOTAVAIL);
        }
        let v6 = e.family == Family::V6;
        let max = self
            .datapath
            .max_udp_payload(v6)
            .min(if v6 { MAX_UDP_V6 } else { MAX_UDP_V4 });
        if buf.len() > max {
            return Err(WsaError::WSAEMSGSIZE);
        }
        if !self.datapath.is_up() {
            return Err(WsaError::WSAENETDOWN);
        }
        let local = {
            let mut st = e.lock_open()?;
            match st.udp()?.local {
                Some(l) => l,
                None => {
                    let reuse = st.options.reuse_addr;
                    let l = self.bind_endpoint(&e, e.family.unspecified(), 0, reuse)?;
                    st.udp()?.local = Some(l);
                    l
                }
            }
        };
        // No socket lock is held while sending: a loopback datapath delivers synchronously,
        // possibly to this very socket.
        let src = if local.ip().is_unspecified() {
            let ip = self
                .datapath
                .local_addrs()
                .into_iter()
                .find(|a| Family::of_ip(a) == e.family)
                .ok_or(WsaError::WSAENETUNREACH)?;
            SocketAddr::new(ip, local.port())
        } else {
            local
        };
        self.datapath.send_udp(src, to, buf)?;
        bump(&self.counters.udp_sent);
        Ok(buf.len())
    }

    /// WSPRecvFrom: the next datagram and its sender. Blocking sockets sleep until one arrives.
    /// A datagram larger than `buf` fills `buf`, is consumed, and gives WSAEMSGSIZE (Winsock).
    pub fn wsp_recv_from(&self, s: Socket, buf: &mut [u8]) -> WspResult<(usize, SocketAddr)> {
        let m = self.wsp_recv_msg(s, buf)?;
        if m.truncated() {
            Err(WsaError::WSAEMSGSIZE)
        } else {
            Ok((m.len, m.from))
        }
    }

    /// `wsp_recv_from` that reports truncation in the result instead of as WSAEMSGSIZE, so a
    /// caller (the C ABI) can still fill in the sender of a truncated datagram.
    /// On a stream socket this is `wsp_recv`, and the sender is the peer.
    pub fn wsp_recv_msg(&self, s: Socket, buf: &mut [u8]) -> WspResult<RecvMeta> {
        self.recv_msg(s, buf, false)
    }

    /// `wsp_recv_msg` with MSG_PEEK: the datagram (or stream data) stays queued.
    pub fn wsp_recv_msg_peek(&self, s: Socket, buf: &mut [u8]) -> WspResult<RecvMeta> {
        self.recv_msg(s, buf, true)
    }

    fn recv_msg(&self, s: Socket, buf: &mut [u8], peek: bool) -> WspResult<RecvMeta> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Stream {
            let from = self.wsp_get_peer_name(s)?;
            let len = if peek {
                self.wsp_recv_peek(s, buf)?
            } else {
                self.wsp_recv(s, buf)?
            };
            return Ok(RecvMeta {
                len,
                from,
                datagram_len: len,
            });
        }
        let mut st = e.lock_open()?;
        if st.udp()?.local.is_none() {
            return Err(WsaError::WSAEINVAL);
        }
        let epoch = st.interrupts;
        loop {
            if peek && let Some(d) = st.udp()?.queue.front() {
                return Ok(copy_datagram(d, buf));
            }
            if let Some(d) = st.udp()?.queue.pop() {
                let queued = st.udp()?.queue.front_len().is_some();
                self.async_udp_after_recv(e.id, queued);
                drop(st);
                return Ok(copy_datagram(&d, buf));
            }
            if st.nonblocking {
                self.async_udp_after_recv(e.id, false);
                return Err(WsaError::WSAEWOULDBLOCK);
            }
            st.waiters += 1;
            st = e
                .readable
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.waiters -= 1;
            if st.closed || st.interrupts != epoch {
                return Err(WsaError::WSAEINTR);
            }
        }
    }

    /// WSPCloseSocket. Releases the handle; the last handle of a socket releases the socket:
    /// queued datagrams are discarded, blocked callers get WSAEINTR, the demux entry goes and
    /// the STEER entry too if no other socket shares the endpoint. Closing a handle that is not
    /// the last one interrupts nobody (the socket lives on through its other handles).
    pub fn wsp_close_socket(&self, s: Socket) -> WspResult<()> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Stream {
            return self.stream_close(s, e);
        }
        drop(e);
        let Removed { entry, last } = self.table.remove(s)?;
        if !last {
            return Ok(());
        }
        let local = {
            let mut st = lock(&entry.state);
            st.closed = true;
            if st.waiters > 0 {
                entry.readable.notify_all();
            }
            match st.udp() {
                Ok(u) => {
                    u.queue.clear();
                    u.local.take()
                }
                Err(_) => None,
            }
        };
        self.async_close(entry.id);
        if let Some(local) = local {
            self.unbind_endpoint(&entry, local);
        }
        self.counters.sockets_open.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// WSPIoctl: FIONBIO (`*arg != 0` → nonblocking) and FIONREAD (`*arg` ← size of the first
    /// queued datagram, 0 if none). Anything else → WSAEINVAL.
    pub fn wsp_ioctl(&self, s: Socket, code: u32, arg: &mut u32) -> WspResult<()> {
        let e = self.table.get(s)?;
        let mut st = e.lock_open()?;
        match code {
            FIONBIO => {
                // WSPEventSelect'ed sockets stay nonblocking (Winsock: WSAEINVAL).
                if *arg == 0 && self.async_mask(e.id) != 0 {
                    return Err(WsaError::WSAEINVAL);
                }
                st.nonblocking = *arg != 0;
            }
            FIONREAD => {
                let n = if e.kind == SocketKind::Stream {
                    self.stream_readable(&mut st)?
                } else {
                    st.udp()?.queue.front_len().unwrap_or(0)
                };
                *arg = u32::try_from(n).unwrap_or(u32::MAX);
            }
            crate::socket::options::SIOCOUTQ if e.kind == SocketKind::Stream => {
                let n = self.stream_unacked(&mut st)?;
                *arg = u32::try_from(n).unwrap_or(u32::MAX);
            }
            _ => return Err(WsaError::WSAEINVAL),
        }
        Ok(())
    }

    /// WSPSetSockOpt (see `socket::options` for the rules).
    pub fn wsp_set_sock_opt(
        &self,
        s: Socket,
        level: i32,
        name: i32,
        optval: &[u8],
    ) -> WspResult<()> {
        let e = self.table.get(s)?;
        let mut st = e.lock_open()?;
        st.options.set(e.kind, level, name, optval)?;
        if e.kind == SocketKind::Stream {
            self.stream_apply_options(&mut st);
        }
        Ok(())
    }

    /// WSPGetSockOpt: writes the value at the start of `optval`, returns its length.
    pub fn wsp_get_sock_opt(
        &self,
        s: Socket,
        level: i32,
        name: i32,
        optval: &mut [u8],
    ) -> WspResult<usize> {
        let e = self.table.get(s)?;
        let mut st = e.lock_open()?;
        if e.kind == SocketKind::Stream
            && level == crate::socket::options::SOL_SOCKET
            && name == crate::socket::options::SO_ERROR
            && st.options.error == 0
            && let Some(err) = self.stream_error(&mut st)
        {
            st.options.error = err.code();
        }
        if level == crate::socket::options::SOL_SOCKET
            && name == crate::socket::options::SO_ACCEPTCONN
        {
            let listening = e.kind == SocketKind::Stream && self.stream_listening(&mut st);
            let v = i32::from(listening).to_ne_bytes();
            let out = optval.get_mut(..4).ok_or(WsaError::WSAEFAULT)?;
            out.copy_from_slice(&v);
            return Ok(4);
        }
        st.options.get(e.kind, level, name, optval)
    }

    /// WSPGetSockName: the bound local endpoint (the wildcard address if bound to it).
    pub fn wsp_get_sock_name(&self, s: Socket) -> WspResult<SocketAddr> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Stream {
            return self.stream_sock_name(&e);
        }
        let mut st = e.lock_open()?;
        st.udp()?.local.ok_or(WsaError::WSAEINVAL)
    }

    /// Interrupt every blocking call in progress on `s` (any thread): each returns WSAEINTR.
    /// Calls started afterwards block normally. The per-socket analogue of Winsock 1.1's
    /// WSACancelBlockingCall (see [`Provider::wsp_cancel_blocking_call`]).
    pub fn cancel_blocking_calls(&self, s: Socket) -> WspResult<()> {
        let e = self.table.get(s)?;
        {
            let mut st = e.lock_open()?;
            st.interrupts = st.interrupts.wrapping_add(1);
            if st.waiters > 0 {
                e.readable.notify_all();
            }
        }
        e.signal.notify();
        Ok(())
    }

    /// A second handle to the same socket (WSPDuplicateSocket within the process). The socket is
    /// released when its last handle is closed.
    pub fn duplicate(&self, s: Socket) -> WspResult<Socket> {
        // Held across the insert: a blocking linger close in progress gives WSAEINPROGRESS, one
        // starting later sees the second handle (DESIGN §7).
        let e = self.table.get(s)?;
        let _st = e.lock_open()?;
        self.table.duplicate(s)
    }

    /// Inbound hook for the engine: queue `payload` from `remote`, which arrived on RX queue
    /// `queue`, on the socket bound to `local` (exact address, then wildcard). False if no
    /// open socket is bound there (the caller may count or pass it on); a full receive queue
    /// drops the datagram, counts it and returns true.
    ///
    /// Nothing global is taken: the demux lookup is lock-free, the counters are the queue's
    /// own; the one lock is the socket's.
    pub fn deliver_udp(
        &self,
        queue: usize,
        local: SocketAddr,
        remote: SocketAddr,
        payload: &[u8],
    ) -> bool {
        let c = &self.udp_rx[queue.min(self.udp_rx.len() - 1)];
        let Some(e) = self.udp.lookup(local) else {
            bump(&c.no_socket);
            return false;
        };
        let mut st = lock(&e.state);
        if st.closed {
            bump(&c.no_socket);
            return false;
        }
        let limit = st.options.rcvbuf;
        let Ok(udp) = st.udp() else {
            return false;
        };
        if udp.queue.push(remote, payload, limit) {
            bump(&c.delivered);
            let done = self.async_udp_delivered(e.id, udp);
            if st.waiters > 0 {
                e.readable.notify_one();
            }
            drop(st);
            self.dispatch(done);
            // Async receivers (`aio::UdpSocket`) wait on the signal.
            e.signal.notify();
        } else {
            bump(&c.dropped_queue_full);
        }
        true
    }

    /// Current counters.
    pub fn stats(&self) -> ProviderStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let tcp = self.tcp_counts();
        let udp_queues: Vec<UdpQueueStats> = self
            .udp_rx
            .iter()
            .enumerate()
            .map(|(q, c)| UdpQueueStats {
                queue: q as u32,
                delivered: get(&c.delivered),
                dropped_queue_full: get(&c.dropped_queue_full),
                no_socket: get(&c.no_socket),
            })
            .collect();
        let sum = |f: fn(&UdpQueueStats) -> u64| udp_queues.iter().map(f).sum();
        ProviderStats {
            sockets_open: get(&c.sockets_open),
            handles_open: self.table.len() as u64,
            udp_endpoints: self.udp.endpoints() as u64,
            udp_sent: get(&c.udp_sent),
            udp_delivered: sum(|q| q.delivered),
            udp_dropped_queue_full: sum(|q| q.dropped_queue_full),
            udp_no_socket: sum(|q| q.no_socket),
            tcp_connections: tcp.0 as u64,
            tcp_established: self.tcp_established() as u64,
            tcp_orphans: tcp.1 as u64,
            close_graceful: get(&c.close_graceful),
            close_hard: get(&c.close_hard),
            close_linger_timeout_reset: get(&c.close_linger_timeout_reset),
            close_orphan_timeout_reset: self.orphan_timeouts(),
            close_unread_data_reset: get(&c.close_unread_data_reset),
            tcp_lock_wait: self.tcp_lock_wait(),
            udp_queues,
        }
    }
}
