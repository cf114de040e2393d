//! Stream (TCP) sockets on the WSP table: the socket-layer half of DESIGN §5–§7.
//!
//! One sans-IO [`TcpEngine`] serves every stream socket of the provider, behind one mutex
//! (`TcpHost::inner`). The engine runs when something happens: an application call, a segment
//! from the engine's queue threads (`Provider::deliver_tcp`), or a timer (`Provider::tcp_tick`).
//! After each run, every segment the engine wants to send goes to the datapath (`send_ip`, then
//! one `flush_tx`), and every event wakes the sockets it concerns through their [`Signal`].
//!
//! Blocking calls never spin: they read the socket's signal generation, check their condition
//! under the engine lock, and sleep until the generation moves.
//!
//! Lock order: socket state → engine (`inner`) → datapath internals. Signals are leaf locks.
//!
//! STEER entries follow the socket (DESIGN §2/§5): a TCP endpoint is steered from bind until the
//! last of (the bound socket, every connection that uses it — TIME_WAIT included) is gone, so the
//! kernel never sees, and never resets, a segment of a flow the provider owns.
use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use provider_common::{PROTO_TCP, SteerKey};

use super::Provider;
use crate::net::rss::RssConfig;
use crate::socket::L4Out;
use crate::tcp::SegmentChecksum;

/// The checksum field's offset in a TCP header.
const TCP_CHECKSUM_AT: usize = 16;
use crate::socket::entry::{Proto, SocketState, lock};
use crate::socket::options::Linger;
use crate::socket::table::Removed;
use crate::socket::{Family, Socket, SocketEntry, SocketKind, WsaError, WspResult};
use crate::tcp::{
    ConnId, ConnOptions, Event, ListenerId, TcpConfig, TcpEngine, TcpError, TcpState,
};

/// `how` for [`Provider::wsp_shutdown`].
pub const SD_RECEIVE: i32 = 0;
pub const SD_SEND: i32 = 1;
pub const SD_BOTH: i32 = 2;
/// Largest backlog `wsp_listen` grants (Winsock's SOMAXCONN is "reasonable maximum").
pub const SOMAXCONN: i32 = 4096;

/// A stream socket's own state (the connection itself lives in the engine).
#[derive(Debug, Default)]
pub struct TcpSock {
    /// Bound local endpoint (may be the wildcard address).
    pub local: Option<SocketAddr>,
    pub role: Role,
    /// SD_SEND done.
    pub send_shut: bool,
    /// SD_RECEIVE done: queued or later data resets the connection (Windows rule).
    pub recv_shut: bool,
    /// A listener's engine listener in every shard (index = shard); `Role::Listening` names
    /// shard 0's.
    pub listeners: Vec<ListenerId>,
}

/// What a stream socket is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Idle,
    Listening(ListenerId),
    Connecting(ConnId),
    Connected(ConnId),
    /// The connection attempt failed with this error (reported once by connect / SO_ERROR).
    Failed(WsaError),
}

/// Who a connection belongs to, for events and for STEER bookkeeping.
#[derive(Debug)]
struct ConnSlot {
    socket: Weak<SocketEntry>,
    /// The steered endpoint this connection keeps alive.
    endpoint: SocketAddr,
}

/// One shard's engine and the maps from its handles back to sockets.
pub(crate) struct TcpInner {
    pub(crate) engine: TcpEngine,
    /// Overlapped completions collected under the lock, delivered by `with_shard` after it.
    pub(crate) completions: super::events::Done,
    conns: FxHashMap<ConnId, ConnSlot>,
    listeners: FxHashMap<ListenerId, Weak<SocketEntry>>,
    /// Connections of `wsp_connect` that reached ESTABLISHED while their socket was open. A
    /// nonblocking connect is only noticed when the socket looks; if the connection has been
    /// reset (CLOSED) by then, this says the connect itself succeeded (its data is readable,
    /// then the reset). Removed when the socket is released.
    pub(crate) established: FxHashSet<ConnId>,
    /// Scratch buffer for one outgoing segment.
    scratch: Vec<u8>,
}

/// One shard: the TCP engine of one RX queue (DESIGN §3), behind its own lock. The queue's
/// thread takes it once per RX batch; socket calls take only the shard of their connection.
pub(crate) struct TcpHost {
    inner: Mutex<TcpInner>,
    /// Time spent acquiring `inner` in `with_shard`.
    lock_wait: crate::histogram::LatencyHistogram,
    /// Earliest engine deadline the shard's thread knows about, as ns since `epoch` (u64::MAX:
    /// none). When a call makes an earlier one, that thread is woken.
    deadline_ns: AtomicU64,
    epoch: Instant,
    /// Segments of this shard's connections that arrived on another RX queue, handed over by
    /// that queue's thread (lock-free; drained by this shard's thread).
    inbox: SegQueue<Forwarded>,
    /// Segments this shard's engine processed, and how many of them came through `inbox`.
    segments: AtomicU64,
    segments_forwarded_in: AtomicU64,
}

/// A TCP segment passed from the RX queue it arrived on to the shard that owns its flow.
struct Forwarded {
    src: IpAddr,
    dst: IpAddr,
    segment: Box<[u8]>,
}

/// Every shard, and what they share: which shard owns a flow, and STEER references.
pub(crate) struct TcpShards {
    hosts: Box<[TcpHost]>,
    /// Ownership of a 4-tuple: the RX queue the device's RSS sends the flow's inbound segments
    /// to (or the provider's own Toeplitz function where the device gives no usable key).
    /// Fixed for the provider's life, so a connection never migrates; a segment arriving on
    /// another queue (veth, a changed indirection table) is forwarded to the owner.
    router: RssConfig,
    /// Whether `router` is the device's own function (frames arrive where it says).
    router_is_device: bool,
    /// References per steered TCP endpoint: bound sockets plus live connections, over all
    /// shards. Taken at bind, connect, accept and connection end, never per packet.
    endpoint_refs: Mutex<HashMap<SocketAddr, u32>>,
    /// Round-robin choice of the shard for an active open whose port is free to choose.
    next_connect: AtomicUsize,
    /// Where the next accept starts looking (its own counter, so accepts do not skew how
    /// active opens are spread over the shards).
    next_accept: AtomicUsize,
}

impl TcpHost {
    fn new(config: TcpConfig, secret: [u8; 16], shard: u16, now: Instant) -> Self {
        TcpHost {
            inner: Mutex::new(TcpInner {
                engine: TcpEngine::new(config, secret, now).with_shard(shard),
                completions: Vec::new(),
                conns: FxHashMap::default(),
                listeners: FxHashMap::default(),
                established: FxHashSet::default(),
                scratch: vec![0u8; 65536],
            }),
            lock_wait: Default::default(),
            deadline_ns: AtomicU64::new(u64::MAX),
            epoch: now,
            inbox: SegQueue::new(),
            segments: AtomicU64::new(0),
            segments_forwarded_in: AtomicU64::new(0),
        }
    }
}

impl TcpShards {
    /// `shards` engines (at least 1); `rss`: the device's RSS function, if it has a usable one
    /// covering exactly those queues.
    pub(crate) fn new(config: TcpConfig, shards: usize, rss: Option<RssConfig>) -> Self {
        let mut secret = [0u8; 16];
        fill_random(&mut secret);
        let now = Instant::now();
        let n = shards.clamp(1, usize::from(u16::MAX));
        let (router, router_is_device) = match rss {
            Some(r) if r.is_computable() => (r, true),
            _ => (RssConfig::software(n as u32), false),
        };
        TcpShards {
            hosts: (0..n)
                .map(|k| TcpHost::new(config.clone(), secret, k as u16, now))
                .collect(),
            router,
            router_is_device,
            endpoint_refs: Mutex::new(HashMap::new()),
            next_connect: AtomicUsize::new(0),
            next_accept: AtomicUsize::new(0),
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.hosts.len()
    }

    /// The shard that owns the flow `local` ↔ `remote`.
    fn owner(&self, local: SocketAddr, remote: SocketAddr) -> usize {
        let n = self.hosts.len();
        if n == 1 {
            return 0;
        }
        // Inbound segments go remote → local: that is the direction RSS hashes.
        match self.router.queue_for(remote, local) {
            Some(q) => q as usize % n,
            None => (local.port() ^ remote.port()) as usize % n,
        }
    }
}

/// Per-shard counters for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShardStats {
    pub shard: u32,
    /// Connections in this shard's engine (TIME_WAIT included).
    pub connections: u64,
    /// Segments its engine processed.
    pub segments: u64,
    /// Of those, segments that arrived on another RX queue and were handed over.
    pub segments_forwarded_in: u64,
    pub lock_wait: crate::histogram::LatencySummary,
}

/// RFC 6528 wants a secret the peer cannot guess; the kernel's generator is the right source.
fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom")
        && f.read_exact(buf).is_ok()
    {
        return;
    }
    // Fallback: time and address entropy (weak, but never a panic).
    let t = Instant::now().elapsed().as_nanos() ^ (buf.as_ptr() as u128);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (t >> ((i % 16) * 8)) as u8;
    }
}

/// The STEER key for a TCP endpoint (wildcard → all-zero address).
pub fn tcp_steer_key(local: SocketAddr) -> SteerKey {
    match local.ip() {
        IpAddr::V4(a) => SteerKey::v4(PROTO_TCP, a.octets(), local.port()),
        IpAddr::V6(a) => SteerKey::v6(PROTO_TCP, a.octets(), local.port()),
    }
}

pub(crate) fn map_err(e: TcpError) -> WsaError {
    match e {
        TcpError::InvalidState => WsaError::WSAEINVAL,
        TcpError::ConnectionReset => WsaError::WSAECONNRESET,
        TcpError::ConnectionRefused => WsaError::WSAECONNREFUSED,
        TcpError::TimedOut => WsaError::WSAETIMEDOUT,
        TcpError::Aborted => WsaError::WSAECONNABORTED,
        TcpError::AddrInUse => WsaError::WSAEADDRINUSE,
        TcpError::NotConnected => WsaError::WSAENOTCONN,
        TcpError::Shutdown => WsaError::WSAESHUTDOWN,
        TcpError::NoBuffers => WsaError::WSAENOBUFS,
        TcpError::WouldBlock => WsaError::WSAEWOULDBLOCK,
        TcpError::InvalidAddress => WsaError::WSAEADDRNOTAVAIL,
    }
}

/// A blocking call that slept and then finds its socket closed (or being closed with linger)
/// by another thread was interrupted (WSAEINTR, DESIGN §7).
fn interrupted(err: WsaError, waited: bool) -> WsaError {
    match err {
        WsaError::WSAENOTSOCK | WsaError::WSAEINPROGRESS if waited => WsaError::WSAEINTR,
        other => other,
    }
}

/// Sockets to wake once the engine lock is released.
type Wakes = Vec<Arc<SocketEntry>>;

impl Provider {
    pub(super) fn shard_lock(&self, k: usize) -> MutexGuard<'_, TcpInner> {
        lock(&self.tcp.hosts[k].inner)
    }

    /// Run `f` on shard `k`'s engine, then push out what it wants to send and wake who it
    /// concerns.
    pub(super) fn with_shard<R>(&self, k: usize, f: impl FnOnce(&mut TcpInner, Instant) -> R) -> R {
        let host = &self.tcp.hosts[k];
        let now = Instant::now();
        let mut wakes = Wakes::new();
        let (r, done, sent) = {
            let mut inner = lock(&host.inner);
            host.lock_wait.record(now.elapsed());
            let r = f(&mut inner, now);
            let sent = self.tcp_pump(k, &mut inner, now, &mut wakes);
            (r, std::mem::take(&mut inner.completions), sent)
        };
        for e in wakes {
            e.signal.notify();
        }
        // The TX kick is a system call (in copy mode it runs the driver's transmit inline), so
        // it runs after the engine lock is released: other threads use the engine meanwhile.
        // The frames are already on the TX ring, in order.
        if sent {
            self.datapath.flush_tx();
        }
        self.dispatch(done);
        r
    }

    /// `with_shard` on the shard of connection `id`.
    pub(super) fn with_conn<R>(
        &self,
        id: ConnId,
        f: impl FnOnce(&mut TcpInner, Instant) -> R,
    ) -> R {
        self.with_shard(id.shard(), f)
    }

    /// Shard `id`'s engine, locked, without pumping (reads only).
    fn conn_lock(&self, id: ConnId) -> MutexGuard<'_, TcpInner> {
        self.shard_lock(id.shard())
    }

    /// Drain transmits into the datapath's TX ring and events into `wakes`; publish the next
    /// deadline. True if anything was queued for transmission (the caller kicks the ring).
    fn tcp_pump(&self, k: usize, inner: &mut TcpInner, now: Instant, wakes: &mut Wakes) -> bool {
        let mut sent = false;
        // Events may make more to send (overlapped operations progress in `tcp_event`), so
        // alternate until both are drained.
        loop {
            let TcpInner {
                engine, scratch, ..
            } = &mut *inner;
            // Each segment is written once, straight into its TX frame.
            let n = self
                .datapath
                .send_l4_batch(k, PROTO_TCP, scratch, &mut |buf| {
                    engine.poll_transmit(now, buf).map(|t| L4Out {
                        src: t.local.ip(),
                        dst: t.remote.ip(),
                        len: t.len,
                        partial_checksum_at: (t.checksum == SegmentChecksum::PseudoHeader)
                            .then_some(TCP_CHECKSUM_AT),
                    })
                });
            sent |= n > 0;
            let mut any = false;
            while let Some(ev) = inner.engine.poll_event() {
                self.tcp_event(inner, ev, wakes);
                any = true;
            }
            if !any {
                break;
            }
        }
        let host = &self.tcp.hosts[k];
        let next = inner.engine.next_timeout().map_or(u64::MAX, |d| {
            d.saturating_duration_since(host.epoch).as_nanos() as u64
        });
        let prev = host.deadline_ns.swap(next, Ordering::AcqRel);
        if next < prev {
            self.datapath.wake_shard(k);
        }
        sent
    }

    fn tcp_event(&self, inner: &mut TcpInner, ev: Event, wakes: &mut Wakes) {
        let conn_socket =
            |inner: &TcpInner, id: &ConnId| inner.conns.get(id).and_then(|c| c.socket.upgrade());
        match ev {
            Event::Connected(id)
            | Event::ConnectFailed(id, _)
            | Event::Writable(id)
            | Event::PeerFin(id)
            | Event::Reset(id) => {
                if let Some(e) = conn_socket(inner, &id) {
                    if let Event::Connected(id) = ev {
                        inner.established.insert(id);
                    }
                    self.async_tcp_event(inner, ev, e.id);
                    wakes.push(e);
                }
            }
            Event::Readable(id) => {
                if let Some(e) = conn_socket(inner, &id) {
                    // SD_RECEIVE was called: data arriving afterwards resets the connection.
                    if self.recv_shut(&e) {
                        inner.engine.abort(Instant::now(), id);
                    } else {
                        self.async_tcp_event(inner, ev, e.id);
                    }
                    wakes.push(e);
                }
            }
            Event::Closed(id) => {
                if let Some(slot) = inner.conns.remove(&id) {
                    self.release_endpoint(slot.endpoint);
                    if let Some(e) = slot.socket.upgrade() {
                        self.async_tcp_event(inner, ev, e.id);
                        wakes.push(e);
                    }
                }
            }
            Event::AcceptReady(l) => {
                if let Some(e) = inner.listeners.get(&l).and_then(Weak::upgrade) {
                    self.async_tcp_event(inner, ev, e.id);
                    wakes.push(e);
                }
            }
        }
    }

    /// Whether the socket did SD_RECEIVE. `try_lock`: the caller may hold this very socket's
    /// state (an application call); then the flag is checked by that call itself.
    fn recv_shut(&self, e: &SocketEntry) -> bool {
        match e.state.try_lock() {
            Ok(mut st) => st.tcp().is_ok_and(|t| t.recv_shut),
            Err(_) => false,
        }
    }

    /// One more reference on a steered endpoint (STEER entry added with the first). Lock
    /// order: shard → endpoint references → datapath.
    fn acquire_endpoint(&self, endpoint: SocketAddr) -> WspResult<()> {
        let mut refs = lock(&self.tcp.endpoint_refs);
        let n = refs.get(&endpoint).copied().unwrap_or(0);
        if n == 0 {
            self.datapath.steer_add(tcp_steer_key(endpoint))?;
        }
        refs.insert(endpoint, n + 1);
        Ok(())
    }

    fn release_endpoint(&self, endpoint: SocketAddr) {
        let mut refs = lock(&self.tcp.endpoint_refs);
        if let Some(n) = refs.get_mut(&endpoint) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                refs.remove(&endpoint);
                self.datapath.steer_remove(tcp_steer_key(endpoint));
            }
        }
    }

    // ------------------------------------------------------------------ engine-facing

    /// How many TCP shards (engines) there are: one per RX queue served at start.
    pub fn tcp_shards(&self) -> usize {
        self.tcp.count()
    }

    /// Inbound hook for one TCP segment (header + payload, checksum verified) from `src` to
    /// `dst`, whichever queue it came from: it goes to the shard that owns its flow.
    pub fn deliver_tcp(&self, src: IpAddr, dst: IpAddr, segment: &[u8]) {
        let k = self.segment_owner(src, dst, segment);
        self.with_shard(k, |inner, now| {
            self.tcp.hosts[k].segments.fetch_add(1, Ordering::Relaxed);
            inner.engine.on_segment(now, src, dst, segment)
        });
    }

    /// The shard that owns the flow of a segment (0 if it is too short to name one: the
    /// engine drops it).
    fn segment_owner(&self, src: IpAddr, dst: IpAddr, segment: &[u8]) -> usize {
        match segment.get(..4) {
            Some(p) if self.tcp.count() > 1 => {
                let remote = SocketAddr::new(src, u16::from_be_bytes([p[0], p[1]]));
                let local = SocketAddr::new(dst, u16::from_be_bytes([p[2], p[3]]));
                self.tcp.owner(local, remote)
            }
            _ => 0,
        }
    }

    /// An RX batch of queue `queue`, for its shard: one engine lock, one transmit flush.
    /// Segments of flows another shard owns are handed to it (its inbox, then a wake-up);
    /// segments other queues handed to this shard are processed in the same pass. A queue
    /// beyond the shards (the device grew channels) only hands over.
    pub fn deliver_tcp_batch<'a>(
        &self,
        queue: usize,
        segments: impl IntoIterator<Item = (IpAddr, IpAddr, &'a [u8])>,
    ) {
        let n = self.tcp.count();
        if queue >= n {
            for (src, dst, segment) in segments {
                self.forward(self.segment_owner(src, dst, segment), src, dst, segment);
            }
            return;
        }
        let host = &self.tcp.hosts[queue];
        let mut woken = 0u64; // bit k: shard k was handed a segment (n ≤ 64 fast path)
        let mut processed = 0u64;
        self.with_shard(queue, |inner, now| {
            for (src, dst, segment) in segments {
                // The shard that processes it: this one when the flow lives here (looked up
                // first, so a resident flow costs no hash), else the flow's owner.
                let owner = match segment.get(..4) {
                    Some(p) if n > 1 => {
                        let remote = SocketAddr::new(src, u16::from_be_bytes([p[0], p[1]]));
                        let local = SocketAddr::new(dst, u16::from_be_bytes([p[2], p[3]]));
                        if inner.engine.has_tuple(local, remote) {
                            queue
                        } else {
                            self.tcp.owner(local, remote)
                        }
                    }
                    _ => queue,
                };
                if owner == queue {
                    processed += 1;
                    inner.engine.on_segment(now, src, dst, segment);
                } else {
                    self.tcp.hosts[owner].inbox.push(Forwarded {
                        src,
                        dst,
                        segment: segment.into(),
                    });
                    woken |= 1u64 << (owner % 64);
                }
            }
            processed += Self::drain_inbox(host, inner, now);
            // Counted under the shard lock, so a snapshot taken under it is consistent.
            host.segments.fetch_add(processed, Ordering::Relaxed);
        });
        for k in 0..n.min(64) {
            if woken & (1u64 << k) != 0 {
                self.datapath.wake_shard(k);
            }
        }
    }

    fn forward(&self, owner: usize, src: IpAddr, dst: IpAddr, segment: &[u8]) {
        self.tcp.hosts[owner].inbox.push(Forwarded {
            src,
            dst,
            segment: segment.into(),
        });
        self.datapath.wake_shard(owner);
    }

    /// Process what other queues handed to this shard (shard lock held). Returns how many.
    fn drain_inbox(host: &TcpHost, inner: &mut TcpInner, now: Instant) -> u64 {
        let mut n = 0;
        while let Some(f) = host.inbox.pop() {
            inner.engine.on_segment(now, f.src, f.dst, &f.segment);
            n += 1;
        }
        if n > 0 {
            host.segments_forwarded_in.fetch_add(n, Ordering::Relaxed);
        }
        n
    }

    /// Shard `k`'s handed-over segments, when no RX batch of its own came (its thread was
    /// woken for them). True if there were any.
    pub fn tcp_drain_inbox(&self, k: usize) -> bool {
        let host = &self.tcp.hosts[k];
        if host.inbox.is_empty() {
            return false;
        }
        let n = self.with_shard(k, |inner, now| {
            let n = Self::drain_inbox(host, inner, now);
            host.segments.fetch_add(n, Ordering::Relaxed);
            n
        });
        n > 0
    }

    /// Run expired TCP timers (retransmission, delayed ACK, TIME_WAIT, keepalive, …) of every
    /// shard.
    pub fn tcp_tick(&self) {
        for k in 0..self.tcp.count() {
            self.tcp_tick_shard(k);
        }
    }

    /// Run shard `k`'s expired timers.
    pub fn tcp_tick_shard(&self, k: usize) {
        self.with_shard(k, |inner, now| inner.engine.on_timeout(now));
    }

    /// When `tcp_tick` should next run (None: no timer pending in any shard).
    pub fn tcp_next_timeout(&self) -> Option<Instant> {
        (0..self.tcp.count())
            .filter_map(|k| self.tcp_next_timeout_shard(k))
            .min()
    }

    /// When shard `k`'s timers should next run.
    pub fn tcp_next_timeout_shard(&self, k: usize) -> Option<Instant> {
        let host = &self.tcp.hosts[k];
        match host.deadline_ns.load(Ordering::Acquire) {
            u64::MAX => None,
            ns => Some(host.epoch + Duration::from_nanos(ns)),
        }
    }

    /// How long `with_shard` waited for the engine locks, as percentiles (all shards).
    pub(super) fn tcp_lock_wait(&self) -> crate::histogram::LatencySummary {
        let merged = crate::histogram::LatencyHistogram::default();
        for h in self.tcp.hosts.iter() {
            merged.merge(&h.lock_wait);
        }
        merged.summary()
    }

    /// Connections the engines hold (TIME_WAIT and orphans included) and orphans alone.
    pub fn tcp_counts(&self) -> (usize, usize) {
        (0..self.tcp.count()).fold((0, 0), |(c, o), k| {
            let inner = self.shard_lock(k);
            (
                c + inner.engine.connection_count(),
                o + inner.engine.orphan_count(),
            )
        })
    }

    /// Connections in ESTABLISHED over every shard.
    pub fn tcp_established(&self) -> usize {
        (0..self.tcp.count())
            .map(|k| self.shard_lock(k).engine.established_count())
            .sum()
    }

    /// Per-shard counters (connections, segments, hand-overs, lock waits).
    pub fn tcp_shard_stats(&self) -> Vec<ShardStats> {
        self.tcp
            .hosts
            .iter()
            .enumerate()
            .map(|(k, h)| {
                // Read under the shard lock: the counters move only under it.
                let inner = self.shard_lock(k);
                ShardStats {
                    shard: k as u32,
                    connections: inner.engine.connection_count() as u64,
                    segments: h.segments.load(Ordering::Relaxed),
                    segments_forwarded_in: h.segments_forwarded_in.load(Ordering::Relaxed),
                    lock_wait: h.lock_wait.summary(),
                }
            })
            .collect()
    }

    /// Whether the shards' owner function is the device's own RSS (else the provider's).
    pub fn tcp_router_is_device(&self) -> bool {
        self.tcp.router_is_device
    }

    // ------------------------------------------------------------------ WSP calls

    pub(super) fn new_tcp_proto() -> Proto {
        Proto::Tcp(TcpSock::default())
    }

    /// WSPBind for a stream socket.
    pub(super) fn stream_bind(&self, e: &Arc<SocketEntry>, addr: SocketAddr) -> WspResult<()> {
        let mut st = e.lock_open()?;
        if Family::of(&addr) != e.family {
            return Err(WsaError::WSAEFAULT);
        }
        let t = st.tcp()?;
        if t.local.is_some() || t.role != Role::Idle {
            return Err(WsaError::WSAEINVAL);
        }
        let ip = addr.ip();
        if !ip.is_unspecified() && !self.datapath.local_addrs().contains(&ip) {
            return Err(WsaError::WSAEADDRNOTAVAIL);
        }
        let reuse = st.options.reuse_addr;
        let local = self.bind_tcp_endpoint(e, ip, addr.port(), reuse)?;
        st.tcp()?.local = Some(local);
        Ok(())
    }

    fn bind_tcp_endpoint(
        &self,
        e: &Arc<SocketEntry>,
        ip: IpAddr,
        port: u16,
        reuse: bool,
    ) -> WspResult<SocketAddr> {
        let _g = lock(&self.bind_lock);
        let local = if port == 0 {
            let range = &self.config.ephemeral_ports;
            self.tcp_ports
                .register_ephemeral(ip, range, e.id, reuse, e.id)?
        } else {
            let local = SocketAddr::new(ip, port);
            self.tcp_ports.register(local, e.id, reuse, e.id)?;
            local
        };
        if let Err(err) = self.acquire_endpoint(local) {
            self.tcp_ports.unregister(local, e.id);
            return Err(err);
        }
        Ok(local)
    }

    /// The implicit bind of a connect: the wildcard address and an ephemeral port chosen so
    /// that `to`'s replies to `src_ip` land on the next shard's RX queue (any free port if the
    /// shards' function cannot place one there).
    fn bind_tcp_for_connect(
        &self,
        e: &Arc<SocketEntry>,
        src_ip: IpAddr,
        to: SocketAddr,
        reuse: bool,
    ) -> WspResult<SocketAddr> {
        let ip = e.family.unspecified();
        let n = self.tcp.count();
        if n == 1 {
            return self.bind_tcp_endpoint(e, ip, 0, reuse);
        }
        let want = self.tcp.next_connect.fetch_add(1, Ordering::Relaxed) % n;
        let router = &self.tcp.router;
        let suits = |port: u16| {
            router
                .queue_for(to, SocketAddr::new(src_ip, port))
                .is_some_and(|q| q as usize % n == want)
        };
        let range = &self.config.ephemeral_ports;
        let local = {
            let _g = lock(&self.bind_lock);
            match self
                .tcp_ports
                .register_ephemeral_where(ip, range, e.id, reuse, e.id, suits)
            {
                Ok(l) => l,
                Err(_) => self
                    .tcp_ports
                    .register_ephemeral(ip, range, e.id, reuse, e.id)?,
            }
        };
        if let Err(err) = self.acquire_endpoint(local) {
            self.tcp_ports.unregister(local, e.id);
            return Err(err);
        }
        Ok(local)
    }

    /// WSPListen. The socket must be bound; calling it again on a listener is allowed (no-op).
    pub fn wsp_listen(&self, s: Socket, backlog: i32) -> WspResult<()> {
        let e = self.table.get(s)?;
        if e.kind != SocketKind::Stream {
            return Err(WsaError::WSAEOPNOTSUPP);
        }
        let mut st = e.lock_open()?;
        let t = st.tcp()?;
        let local = t.local.ok_or(WsaError::WSAEINVAL)?;
        match t.role {
            Role::Listening(_) => return Ok(()),
            Role::Connecting(_) | Role::Connected(_) => return Err(WsaError::WSAEISCONN),
            Role::Idle | Role::Failed(_) => {}
        }
        if !self.datapath.is_up() {
            return Err(WsaError::WSAENETDOWN);
        }
        let backlog = backlog.clamp(1, SOMAXCONN) as usize;
        let weak = Arc::downgrade(&e);
        // Listening in every shard: a SYN is handled by the shard that owns its flow.
        let mut ids = Vec::with_capacity(self.tcp.count());
        for k in 0..self.tcp.count() {
            let r = self.with_shard(k, |inner, _| {
                let l = inner.engine.listen(local, backlog).map_err(map_err)?;
                inner.listeners.insert(l, weak.clone());
                Ok::<_, WsaError>(l)
            });
            match r {
                Ok(l) => ids.push(l),
                Err(err) => {
                    for l in ids {
                        self.with_shard(l.shard(), |inner, now| {
                            inner.listeners.remove(&l);
                            inner.engine.close_listener(now, l);
                        });
                    }
                    return Err(err);
                }
            }
        }
        let t = st.tcp()?;
        t.role = Role::Listening(ids[0]);
        t.listeners = ids;
        Ok(())
    }

    /// WSPAccept: the next established connection, as a new socket that inherits the
    /// listener's options and blocking mode.
    pub fn wsp_accept(&self, s: Socket) -> WspResult<(Socket, SocketAddr)> {
        let e = self.table.get(s)?;
        if e.kind != SocketKind::Stream {
            return Err(WsaError::WSAEOPNOTSUPP);
        }
        let mut waited = false;
        let mut epoch = None;
        loop {
            let seen = e.signal.generation();
            let st = e.lock_open().map_err(|err| interrupted(err, waited))?;
            let ep = *epoch.get_or_insert(st.interrupts);
            if st.interrupts != ep {
                return Err(WsaError::WSAEINTR);
            }
            let (listeners, endpoint) = match &st.proto {
                Proto::Tcp(TcpSock {
                    role: Role::Listening(_),
                    local: Some(local),
                    listeners,
                    ..
                }) => (listeners.clone(), *local),
                _ => return Err(WsaError::WSAEINVAL),
            };
            let options = st.options.clone();
            let nonblocking = st.nonblocking;
            // Every shard's accept queue, starting at a rotating one so no shard starves.
            let first = self.tcp.next_accept.fetch_add(1, Ordering::Relaxed);
            let accepted = (0..listeners.len()).find_map(|i| {
                let l = listeners[(first + i) % listeners.len()];
                self.with_shard(l.shard(), |inner, now| {
                    let id = inner.engine.accept(l)?;
                    let Some(remote) = inner.engine.remote_addr(id) else {
                        inner.engine.abort(now, id);
                        return None;
                    };
                    if self.acquire_endpoint(endpoint).is_err() {
                        inner.engine.abort(now, id);
                        return None;
                    }
                    inner.engine.set_nodelay(id, options.nodelay);
                    inner.engine.set_keepalive(id, options.keepalive);
                    // Registered now, so a Closed event before the handle exists still releases
                    // the endpoint reference.
                    inner.conns.insert(
                        id,
                        ConnSlot {
                            socket: Weak::new(),
                            endpoint,
                        },
                    );
                    Some((id, remote))
                })
            });
            self.async_after_accept(e.id, accepted.is_some());
            if let Some((id, remote)) = accepted {
                drop(st);
                // The accepted socket owns no bind reference (`local` stays None): the
                // connection's own reference on the listener's endpoint keeps it steered.
                let sock = TcpSock {
                    role: Role::Connected(id),
                    ..TcpSock::default()
                };
                let child = Arc::new(SocketEntry::new(
                    e.family,
                    SocketKind::Stream,
                    options,
                    Proto::Tcp(sock),
                ));
                lock(&child.state).nonblocking = nonblocking;
                let weak = Arc::downgrade(&child);
                let handle = match self.table.insert(child) {
                    Ok(h) => h,
                    Err(err) => {
                        // No room for a handle: the connection cannot be handed out; reset it.
                        self.with_conn(id, |inner, now| inner.engine.abort(now, id));
                        return Err(err);
                    }
                };
                let child_id = weak.upgrade().map(|c| c.id);
                self.with_conn(id, |inner, _| {
                    if let Some(slot) = inner.conns.get_mut(&id) {
                        slot.socket = weak;
                    }
                    // Accepted sockets inherit the listener's event selection.
                    if let Some(child) = child_id {
                        self.async_inherit(inner, e.id, child, id);
                    }
                });
                self.counters.sockets_open.fetch_add(1, Ordering::Relaxed);
                return Ok((handle, remote));
            }
            if nonblocking {
                return Err(WsaError::WSAEWOULDBLOCK);
            }
            drop(st);
            e.signal.wait(seen, None);
            waited = true;
        }
    }

    /// WSPConnect. Binds an unbound socket to an ephemeral port first. Blocking: returns when
    /// established (or with WSAECONNREFUSED / WSAETIMEDOUT). Nonblocking: WSAEWOULDBLOCK, then
    /// WSAEALREADY while in progress, WSAEISCONN once connected.
    pub fn wsp_connect(&self, s: Socket, to: SocketAddr) -> WspResult<()> {
        let e = self.table.get(s)?;
        if e.kind != SocketKind::Stream {
            return Err(WsaError::WSAEOPNOTSUPP);
        }
        if Family::of(&to) != e.family {
            return Err(WsaError::WSAEFAULT);
        }
        if to.ip().is_unspecified() || to.port() == 0 {
            return Err(WsaError::WSAEADDRNOTAVAIL);
        }
        {
            let mut st = e.lock_open()?;
            let nonblocking = st.nonblocking;
            match st.tcp()?.role {
                Role::Listening(_) => return Err(WsaError::WSAEINVAL),
                Role::Connected(_) => return Err(WsaError::WSAEISCONN),
                Role::Connecting(id) => {
                    if nonblocking {
                        return match self.conn_progress(id) {
                            Progress::Pending => Err(WsaError::WSAEALREADY),
                            Progress::Established => {
                                st.tcp()?.role = Role::Connected(id);
                                Err(WsaError::WSAEISCONN)
                            }
                            Progress::Failed(err) => {
                                st.tcp()?.role = Role::Failed(err);
                                Err(err)
                            }
                        };
                    }
                    return Err(WsaError::WSAEALREADY);
                }
                Role::Idle | Role::Failed(_) => {}
            }
            if !self.datapath.is_up() {
                return Err(WsaError::WSAENETDOWN);
            }
            let source = |bound: IpAddr| {
                if bound.is_unspecified() {
                    self.datapath
                        .local_addrs()
                        .into_iter()
                        .find(|a| Family::of_ip(a) == e.family)
                        .ok_or(WsaError::WSAENETUNREACH)
                } else {
                    Ok(bound)
                }
            };
            let (bound, local) = match st.tcp()?.local {
                Some(l) => (l, SocketAddr::new(source(l.ip())?, l.port())),
                None => {
                    // An implicit bind picks a port whose replies the device's RSS brings to
                    // the connecting shard's queue (round-robin over the shards).
                    let src_ip = source(e.family.unspecified())?;
                    let reuse = st.options.reuse_addr;
                    let l = self.bind_tcp_for_connect(&e, src_ip, to, reuse)?;
                    st.tcp()?.local = Some(l);
                    (l, SocketAddr::new(src_ip, l.port()))
                }
            };
            // The flow's owner: where its inbound segments are processed.
            let shard = self.tcp.owner(local, to);
            let opts = ConnOptions {
                nodelay: st.options.nodelay,
                keepalive: st.options.keepalive,
                send_buffer: Some(st.options.sndbuf),
                recv_buffer: Some(st.options.rcvbuf),
            };
            let weak = Arc::downgrade(&e);
            let id = self.with_shard(shard, |inner, now| {
                self.acquire_endpoint(bound)?;
                match inner.engine.connect(now, local, to, opts) {
                    Ok(id) => {
                        inner.conns.insert(
                            id,
                            ConnSlot {
                                socket: weak,
                                endpoint: bound,
                            },
                        );
                        Ok(id)
                    }
                    Err(err) => {
                        self.release_endpoint(bound);
                        Err(map_err(err))
                    }
                }
            })?;
            st.tcp()?.role = Role::Connecting(id);
            if nonblocking {
                return Err(WsaError::WSAEWOULDBLOCK);
            }
        }
        let mut epoch = None;
        // Blocking: sleep until the handshake ends either way.
        loop {
            let seen = e.signal.generation();
            let mut st = e.lock_open().map_err(|err| interrupted(err, true))?;
            let ep = *epoch.get_or_insert(st.interrupts);
            if st.interrupts != ep {
                return Err(WsaError::WSAEINTR);
            }
            let Role::Connecting(id) = st.tcp()?.role else {
                return Err(WsaError::WSAEINVAL);
            };
            match self.conn_progress(id) {
                Progress::Established => {
                    st.tcp()?.role = Role::Connected(id);
                    return Ok(());
                }
                Progress::Failed(err) => {
                    st.tcp()?.role = Role::Failed(err);
                    return Err(err);
                }
                Progress::Pending => {}
            }
            drop(st);
            e.signal.wait(seen, None);
        }
    }

    fn conn_progress(&self, id: ConnId) -> Progress {
        let inner = self.conn_lock(id);
        match inner.engine.state(id) {
            Some(TcpState::SynSent | TcpState::SynReceived) => Progress::Pending,
            // Established, then reset before the socket looked: the connect succeeded.
            Some(TcpState::Closed) | None if inner.established.contains(&id) => {
                Progress::Established
            }
            Some(TcpState::Closed) | None => Progress::Failed(
                inner
                    .engine
                    .error(id)
                    .map_or(WsaError::WSAECONNREFUSED, map_err),
            ),
            Some(_) => Progress::Established,
        }
    }

    /// The connection of a connected (or connecting, now established) socket.
    pub(super) fn connected(&self, st: &mut SocketState) -> WspResult<ConnId> {
        let t = st.tcp()?;
        match t.role {
            Role::Connected(id) => Ok(id),
            Role::Connecting(id) => match self.conn_progress(id) {
                Progress::Established => {
                    t.role = Role::Connected(id);
                    Ok(id)
                }
                _ => Err(WsaError::WSAENOTCONN),
            },
            _ => Err(WsaError::WSAENOTCONN),
        }
    }

    /// WSPSend. Blocking: returns when every byte is in the send buffer. Nonblocking: as many
    /// bytes as fit, or WSAEWOULDBLOCK when none do.
    pub fn wsp_send(&self, s: Socket, buf: &[u8]) -> WspResult<usize> {
        let e = self.table.get(s)?;
        if e.kind != SocketKind::Stream {
            return Err(WsaError::WSAEOPNOTSUPP);
        }
        let mut done = 0;
        // A send that slept on a full buffer was pending even if it had copied nothing yet.
        let mut waited = false;
        let mut epoch = None;
        loop {
            let seen = e.signal.generation();
            let mut st = e
                .lock_open()
                .map_err(|err| interrupted(err, waited || done > 0))?;
            let ep = *epoch.get_or_insert(st.interrupts);
            if st.interrupts != ep {
                return Err(WsaError::WSAEINTR);
            }
            let id = self.connected(&mut st)?;
            if st.tcp()?.send_shut {
                return Err(WsaError::WSAESHUTDOWN);
            }
            let nonblocking = st.nonblocking;
            let n = self
                .with_conn(id, |inner, now| {
                    let n = inner.engine.send(now, id, &buf[done..]);
                    // About to return WSAEWOULDBLOCK: FD_WRITE is re-enabled (Winsock rule).
                    if nonblocking && done == 0 && n == Ok(0) && !buf.is_empty() {
                        self.async_enable(e.id, super::events::FD_WRITE);
                    }
                    n
                })
                .map_err(map_err)?;
            done += n;
            if done == buf.len() {
                return Ok(done);
            }
            if st.nonblocking {
                return if done > 0 {
                    Ok(done)
                } else {
                    Err(WsaError::WSAEWOULDBLOCK)
                };
            }
            drop(st);
            if n == 0 {
                e.signal.wait(seen, None);
                waited = true;
            }
        }
    }

    /// WSPRecv. `Ok(0)` is the peer's graceful close; after a reset, queued data is returned
    /// first, then WSAECONNRESET.
    pub fn wsp_recv(&self, s: Socket, buf: &mut [u8]) -> WspResult<usize> {
        self.stream_recv(s, buf, false)
    }

    /// WSPRecv with MSG_PEEK: as `wsp_recv`, but the data stays queued for the next receive.
    pub fn wsp_recv_peek(&self, s: Socket, buf: &mut [u8]) -> WspResult<usize> {
        self.stream_recv(s, buf, true)
    }

    fn stream_recv(&self, s: Socket, buf: &mut [u8], peek: bool) -> WspResult<usize> {
        let e = self.table.get(s)?;
        if e.kind != SocketKind::Stream {
            return Err(WsaError::WSAEOPNOTSUPP);
        }
        let mut waited = false;
        let mut epoch = None;
        loop {
            let seen = e.signal.generation();
            let mut st = e.lock_open().map_err(|err| interrupted(err, waited))?;
            let ep = *epoch.get_or_insert(st.interrupts);
            if st.interrupts != ep {
                return Err(WsaError::WSAEINTR);
            }
            let id = self.connected(&mut st)?;
            if st.tcp()?.recv_shut {
                return Err(WsaError::WSAESHUTDOWN);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            let r = self.with_conn(id, |inner, now| {
                let r = if peek {
                    inner.engine.peek(now, id, buf)
                } else {
                    inner.engine.recv(now, id, buf)
                };
                self.async_tcp_after_recv(inner, e.id, id);
                r
            });
            match r {
                Ok(n) => return Ok(n),
                Err(TcpError::WouldBlock) => {
                    if st.nonblocking {
                        return Err(WsaError::WSAEWOULDBLOCK);
                    }
                }
                Err(err) => return Err(map_err(err)),
            }
            drop(st);
            e.signal.wait(seen, None);
            waited = true;
        }
    }

    /// WSPShutdown. SD_SEND: FIN after queued data (never blocks). SD_RECEIVE: further receives
    /// fail with WSAESHUTDOWN, and data queued now or arriving later resets the connection
    /// (Windows behaviour). SD_BOTH: both.
    pub fn wsp_shutdown(&self, s: Socket, how: i32) -> WspResult<()> {
        let e = self.table.get(s)?;
        let mut st = e.lock_open()?;
        if !(SD_RECEIVE..=SD_BOTH).contains(&how) {
            return Err(WsaError::WSAEINVAL);
        }
        if e.kind != SocketKind::Stream {
            // Datagram sockets: Winsock allows it; there is nothing to send.
            return Ok(());
        }
        let id = self.connected(&mut st)?;
        if how == SD_SEND || how == SD_BOTH {
            st.tcp()?.send_shut = true;
            self.with_conn(id, |inner, now| inner.engine.shutdown_write(now, id))
                .map_err(map_err)?;
        }
        if how == SD_RECEIVE || how == SD_BOTH {
            st.tcp()?.recv_shut = true;
            self.with_conn(id, |inner, now| {
                if inner.engine.recv_available(id) > 0 {
                    inner.engine.abort(now, id);
                }
            });
        }
        Ok(())
    }

    /// WSPGetPeerName.
    pub fn wsp_get_peer_name(&self, s: Socket) -> WspResult<SocketAddr> {
        let e = self.table.get(s)?;
        let mut st = e.lock_open()?;
        if e.kind != SocketKind::Stream {
            return Err(WsaError::WSAENOTCONN);
        }
        let id = self.connected(&mut st)?;
        self.conn_lock(id)
            .engine
            .remote_addr(id)
            .ok_or(WsaError::WSAENOTCONN)
    }

    /// WSPGetSockName for a stream socket: the connection's local address once connected,
    /// else the bound endpoint.
    pub(super) fn stream_sock_name(&self, e: &SocketEntry) -> WspResult<SocketAddr> {
        let mut st = e.lock_open()?;
        let t = st.tcp()?;
        if let Role::Connected(id) | Role::Connecting(id) = t.role
            && let Some(l) = self.conn_lock(id).engine.local_addr(id)
        {
            return Ok(l);
        }
        t.local.ok_or(WsaError::WSAEINVAL)
    }

    /// FIONREAD for a stream socket: bytes readable now.
    pub(super) fn stream_readable(&self, st: &mut SocketState) -> WspResult<usize> {
        match st.tcp()?.role {
            Role::Connected(id) | Role::Connecting(id) => {
                Ok(self.conn_lock(id).engine.recv_available(id))
            }
            _ => Ok(0),
        }
    }

    /// Data bytes of a connection not yet acknowledged (SIOCOUTQ).
    pub(super) fn stream_unacked(&self, st: &mut SocketState) -> WspResult<usize> {
        match st.tcp()?.role {
            Role::Connected(id) | Role::Connecting(id) => {
                Ok(self.conn_lock(id).engine.send_queued(id))
            }
            _ => Ok(0),
        }
    }

    pub(super) fn stream_listening(&self, st: &mut SocketState) -> bool {
        matches!(st.tcp().map(|t| &t.role), Ok(Role::Listening(_)))
    }

    /// Apply TCP_NODELAY / SO_KEEPALIVE to a live connection after `setsockopt` stored them.
    pub(super) fn stream_apply_options(&self, st: &mut SocketState) {
        let (nodelay, keepalive, cork) =
            (st.options.nodelay, st.options.keepalive, st.options.cork);
        if let Ok(TcpSock {
            role: Role::Connected(id) | Role::Connecting(id),
            ..
        }) = st.tcp()
        {
            let id = *id;
            self.with_conn(id, |inner, _| {
                inner.engine.set_nodelay(id, nodelay);
                inner.engine.set_cork(id, cork);
                inner.engine.set_keepalive(id, keepalive);
            });
        }
    }

    /// SO_ERROR for a stream socket: a failed connect, or the connection's error.
    pub(super) fn stream_error(&self, st: &mut SocketState) -> Option<WsaError> {
        match st.tcp().ok()?.role {
            Role::Failed(err) => Some(err),
            Role::Connected(id) | Role::Connecting(id) => {
                self.conn_lock(id).engine.error(id).map(map_err)
            }
            _ => None,
        }
    }

    /// WSPCloseSocket for a stream socket — DESIGN §7, row by row:
    ///
    /// - SO_DONTLINGER (default): graceful — FIN after queued data (RST instead if received
    ///   data is unread); returns at once; the connection finishes as an orphan.
    /// - SO_LINGER {1, 0}: hard — RST (SEQ=SND.NXT, ACK=RCV.NXT) written to the TX ring inside
    ///   this call, queues discarded, no TIME_WAIT.
    /// - SO_LINGER {1, n}, blocking: FIN after queued data, then sleep until data and FIN are
    ///   acknowledged, or n seconds pass → RST; the socket is freed before returning 0. Other
    ///   calls on the socket meanwhile get WSAEINPROGRESS.
    /// - SO_LINGER {1, n}, nonblocking: if everything sent is acknowledged (or SD_SEND was done),
    ///   graceful as above; else WSAEWOULDBLOCK with the handle still valid and no disconnect
    ///   initiated.
    ///
    /// Only the last handle of a duplicated socket disconnects. WSAENETDOWN: the datapath is
    /// down — the handle is released, but no FIN/RST could be sent.
    pub(super) fn stream_close(&self, s: Socket, e: Arc<SocketEntry>) -> WspResult<()> {
        let mut st = e.lock_open()?;
        let linger = st.options.linger;
        let nonblocking = st.nonblocking;
        let t = st.tcp()?;
        let (role, send_shut) = (t.role, t.send_shut);
        // With the datapath down no acknowledgement can come: WSAENETDOWN comes first, and the
        // handle is released without waiting (nor WSAEWOULDBLOCK).
        let timed_linger = linger.l_onoff != 0 && linger.l_linger > 0 && self.datapath.is_up();
        if let (true, true, Role::Connected(id)) = (timed_linger, e.handle_count() <= 1, role) {
            let (unacked, unread) = {
                let inner = self.conn_lock(id);
                (
                    inner.engine.unacked_bytes(id),
                    inner.engine.recv_available(id),
                )
            };
            // Unread data means a reset whatever the linger: nothing to wait for. A blocking
            // close always waits for the FIN's acknowledgement too (DESIGN §7); a nonblocking
            // one only refuses while sent data is unacknowledged.
            if unread == 0 && (unacked > 0 || !nonblocking) {
                if nonblocking {
                    if !send_shut {
                        return Err(WsaError::WSAEWOULDBLOCK);
                    }
                } else {
                    st.closing = true;
                    drop(st);
                    // Nothing is recorded from here on; pending overlapped operations abort.
                    self.async_close(e.id);
                    // Blocked calls of other threads give up (WSAEINTR).
                    e.signal.notify();
                    let path =
                        self.linger_wait(&e, id, Duration::from_secs(linger.l_linger.into()));
                    {
                        let mut st = lock(&e.state);
                        st.closing = false;
                        st.closed = true;
                    }
                    let _ = self.table.remove(s);
                    self.stream_release(&e, Some(path));
                    self.counters.sockets_open.fetch_sub(1, Ordering::Relaxed);
                    return self.close_result();
                }
            }
        }
        drop(st);
        let Removed { entry, last } = self.table.remove(s)?;
        if !last {
            return Ok(());
        }
        lock(&entry.state).closed = true;
        self.async_close(entry.id);
        self.stream_release(&entry, None);
        self.counters.sockets_open.fetch_sub(1, Ordering::Relaxed);
        self.close_result()
    }

    /// The socket is released either way; the caller learns whether FIN/RST could go out.
    fn close_result(&self) -> WspResult<()> {
        if self.datapath.is_up() {
            Ok(())
        } else {
            Err(WsaError::WSAENETDOWN)
        }
    }

    /// The blocking linger wait: FIN after queued data, then sleep until everything including
    /// the FIN is acknowledged (graceful) or `limit` passes (RST). Sleeps on the socket's signal
    /// with short timeouts as the acknowledgement clock; never spins.
    fn linger_wait(&self, e: &SocketEntry, id: ConnId, limit: Duration) -> ClosePath {
        let deadline = Instant::now() + limit;
        let _ = self.with_conn(id, |inner, now| {
            // The final ACK raises an event that wakes this wait: no polling for it.
            inner.engine.notify_when_drained(id);
            inner.engine.shutdown_write(now, id)
        });
        loop {
            let seen = e.signal.generation();
            let (unacked, state) = {
                let inner = self.conn_lock(id);
                (inner.engine.unacked_bytes(id), inner.engine.state(id))
            };
            if unacked == 0 || matches!(state, None | Some(TcpState::Closed)) {
                return ClosePath::Graceful;
            }
            let now = Instant::now();
            if now >= deadline {
                self.with_conn(id, |inner, now| inner.engine.abort(now, id));
                return ClosePath::LingerTimeoutReset;
            }
            e.signal.wait(seen, Some(deadline - now));
        }
    }

    /// Release a stream socket whose last handle is gone. `lingered`: the blocking linger wait
    /// already ran and ended this way; otherwise the close happens here (hard with
    /// SO_LINGER {1, 0}, else graceful — a reset if received data is unread). A listener resets
    /// every connection still in its queues. The socket's own endpoint reference goes; the
    /// connection keeps its own until the engine is done with it (TIME_WAIT included).
    pub(super) fn stream_release(&self, e: &Arc<SocketEntry>, lingered: Option<ClosePath>) {
        let (role, local, linger, listeners) = {
            let mut st = lock(&e.state);
            let linger: Linger = st.options.linger;
            match st.tcp() {
                Ok(t) => (
                    t.role,
                    t.local.take(),
                    linger,
                    std::mem::take(&mut t.listeners),
                ),
                Err(_) => return,
            }
        };
        // A listener listens in every shard.
        for l in listeners {
            self.with_shard(l.shard(), |inner, now| {
                inner.listeners.remove(&l);
                inner.engine.close_listener(now, l);
            });
        }
        let shard = match role {
            Role::Connecting(id) | Role::Connected(id) => id.shard(),
            _ => 0,
        };
        let path = self.with_shard(shard, |inner, now| {
            let path = match role {
                Role::Listening(_) => None,
                Role::Connecting(id) | Role::Connected(id) => {
                    if let Some(slot) = inner.conns.get_mut(&id) {
                        slot.socket = Weak::new();
                    }
                    inner.established.remove(&id);
                    let path = match lingered {
                        Some(ClosePath::LingerTimeoutReset) => ClosePath::LingerTimeoutReset,
                        Some(p) => {
                            inner.engine.close(now, id);
                            p
                        }
                        None if linger.l_onoff != 0 && linger.l_linger == 0 => {
                            inner.engine.abort(now, id);
                            ClosePath::Hard
                        }
                        None => {
                            let unread = inner.engine.recv_available(id) > 0;
                            inner.engine.close(now, id);
                            if unread {
                                ClosePath::UnreadDataReset
                            } else {
                                ClosePath::Graceful
                            }
                        }
                    };
                    Some(path)
                }
                Role::Idle | Role::Failed(_) => None,
            };
            if let Some(local) = local {
                self.release_endpoint(local);
            }
            path
        });
        if let Some(path) = path {
            self.count_close(path);
            tracing::debug!(socket = e.id, ?path, "stream socket closed");
        }
        if let Some(local) = local {
            let _g = lock(&self.bind_lock);
            self.tcp_ports.unregister(local, e.id);
        }
        e.signal.notify();
    }

    fn count_close(&self, path: ClosePath) {
        let c = &self.counters;
        let counter = match path {
            ClosePath::Graceful => &c.close_graceful,
            ClosePath::Hard => &c.close_hard,
            ClosePath::LingerTimeoutReset => &c.close_linger_timeout_reset,
            ClosePath::UnreadDataReset => &c.close_unread_data_reset,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Orphans the engine reset at their deadline (the fifth close path).
    pub(super) fn orphan_timeouts(&self) -> u64 {
        (0..self.tcp.count())
            .map(|k| self.shard_lock(k).engine.orphan_timeouts())
            .sum()
    }
}

/// How a stream socket's close went (DESIGN §7 observability; counted in `ProviderStats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosePath {
    /// FIN after the queued data (default, or a linger that saw everything acknowledged).
    Graceful,
    /// SO_LINGER {1, 0}: RST at once.
    Hard,
    /// SO_LINGER {1, n}: not everything acknowledged within n seconds → RST.
    LingerTimeoutReset,
    /// Received data was unread at close → RST (RFC 2525 §2.17).
    UnreadDataReset,
}

enum Progress {
    Pending,
    Established,
    Failed(WsaError),
}

// ---------------------------------------------------------------- helpers for `crate::aio`
// (kept in their own block at the end of the file: the tokio types build on the WSP calls and
// need only the socket entry, whose `Signal` their tasks register on.)
impl Provider {
    /// The socket behind a handle: async callers register their wakers on its `signal`.
    pub(crate) fn socket_entry(&self, s: Socket) -> WspResult<Arc<SocketEntry>> {
        self.table.get(s)
    }
}
