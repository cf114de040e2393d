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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use provider_common::{PROTO_TCP, SteerKey};

use super::Provider;
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

/// The engine and the maps from its handles back to sockets.
pub(crate) struct TcpInner {
    pub(crate) engine: TcpEngine,
    /// Overlapped completions collected under the lock, delivered by `with_tcp` after it.
    pub(crate) completions: super::events::Done,
    conns: FxHashMap<ConnId, ConnSlot>,
    listeners: FxHashMap<ListenerId, Weak<SocketEntry>>,
    /// References per steered TCP endpoint: bound sockets plus live connections.
    endpoint_refs: HashMap<SocketAddr, u32>,
    /// Connections of `wsp_connect` that reached ESTABLISHED while their socket was open. A
    /// nonblocking connect is only noticed when the socket looks; if the connection has been
    /// reset (CLOSED) by then, this says the connect itself succeeded (its data is readable,
    /// then the reset). Removed when the socket is released.
    pub(crate) established: FxHashSet<ConnId>,
    /// Scratch buffer for one outgoing segment.
    scratch: Vec<u8>,
}

pub(crate) struct TcpHost {
    inner: Mutex<TcpInner>,
    /// Time spent acquiring `inner` in `with_tcp`.
    lock_wait: crate::histogram::LatencyHistogram,
    /// Earliest engine deadline the timer thread knows about, as ns since `epoch` (u64::MAX:
    /// none). When a call makes an earlier one, the datapath is woken.
    deadline_ns: AtomicU64,
    epoch: Instant,
}

impl TcpHost {
    pub(crate) fn new(config: TcpConfig) -> Self {
        let mut secret = [0u8; 16];
        fill_random(&mut secret);
        let now = Instant::now();
        TcpHost {
            inner: Mutex::new(TcpInner {
                engine: TcpEngine::new(config, secret, now),
                completions: Vec::new(),
                conns: FxHashMap::default(),
                listeners: FxHashMap::default(),
                endpoint_refs: HashMap::new(),
                established: FxHashSet::default(),
                scratch: vec![0u8; 65536],
            }),
            lock_wait: Default::default(),
            deadline_ns: AtomicU64::new(u64::MAX),
            epoch: now,
        }
    }
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
    fn tcp_lock(&self) -> MutexGuard<'_, TcpInner> {
        lock(&self.tcp.inner)
    }

    /// Run `f` on the engine, then push out what it wants to send and wake who it concerns.
    pub(super) fn with_tcp<R>(&self, f: impl FnOnce(&mut TcpInner, Instant) -> R) -> R {
        let now = Instant::now();
        let mut wakes = Wakes::new();
        let (r, done, sent) = {
            let mut inner = self.tcp_lock();
            self.tcp.lock_wait.record(now.elapsed());
            let r = f(&mut inner, now);
            let sent = self.tcp_pump(&mut inner, now, &mut wakes);
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

    /// Drain transmits into the datapath's TX ring and events into `wakes`; publish the next
    /// deadline. True if anything was queued for transmission (the caller kicks the ring).
    fn tcp_pump(&self, inner: &mut TcpInner, now: Instant, wakes: &mut Wakes) -> bool {
        let mut sent = false;
        // Events may make more to send (overlapped operations progress in `tcp_event`), so
        // alternate until both are drained.
        loop {
            let TcpInner {
                engine, scratch, ..
            } = &mut *inner;
            while let Some(t) = engine.poll_transmit(now, scratch) {
                let segment = &scratch[..t.len];
                if let Err(err) =
                    self.datapath
                        .send_ip(t.local.ip(), t.remote.ip(), PROTO_TCP, segment)
                {
                    tracing::debug!(%err, remote = %t.remote, "TCP segment not sent");
                }
                sent = true;
            }
            let mut any = false;
            while let Some(ev) = inner.engine.poll_event() {
                self.tcp_event(inner, ev, wakes);
                any = true;
            }
            if !any {
                break;
            }
        }
        let next = inner.engine.next_timeout().map_or(u64::MAX, |d| {
            d.saturating_duration_since(self.tcp.epoch).as_nanos() as u64
        });
        let prev = self.tcp.deadline_ns.swap(next, Ordering::AcqRel);
        if next < prev {
            self.datapath.wake();
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
                    self.release_endpoint(inner, slot.endpoint);
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

    fn acquire_endpoint(&self, inner: &mut TcpInner, endpoint: SocketAddr) -> WspResult<()> {
        let refs = inner.endpoint_refs.get(&endpoint).copied().unwrap_or(0);
        if refs == 0 {
            self.datapath.steer_add(tcp_steer_key(endpoint))?;
        }
        inner.endpoint_refs.insert(endpoint, refs + 1);
        Ok(())
    }

    fn release_endpoint(&self, inner: &mut TcpInner, endpoint: SocketAddr) {
        if let Some(refs) = inner.endpoint_refs.get_mut(&endpoint) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                inner.endpoint_refs.remove(&endpoint);
                self.datapath.steer_remove(tcp_steer_key(endpoint));
            }
        }
    }

    // ------------------------------------------------------------------ engine-facing

    /// Inbound hook for the engine's queue threads: one TCP segment (header + payload, checksum
    /// verified) from `src` to `dst`.
    pub fn deliver_tcp(&self, src: IpAddr, dst: IpAddr, segment: &[u8]) {
        self.with_tcp(|inner, now| inner.engine.on_segment(now, src, dst, segment));
    }

    /// `deliver_tcp` for a whole RX batch: one engine lock, one transmit flush.
    pub fn deliver_tcp_batch<'a>(
        &self,
        segments: impl IntoIterator<Item = (IpAddr, IpAddr, &'a [u8])>,
    ) {
        self.with_tcp(|inner, now| {
            for (src, dst, segment) in segments {
                inner.engine.on_segment(now, src, dst, segment);
            }
        });
    }

    /// Run expired TCP timers (retransmission, delayed ACK, TIME_WAIT, keepalive, …).
    pub fn tcp_tick(&self) {
        self.with_tcp(|inner, now| inner.engine.on_timeout(now));
    }

    /// When `tcp_tick` should next run (None: no timer pending).
    pub fn tcp_next_timeout(&self) -> Option<Instant> {
        match self.tcp.deadline_ns.load(Ordering::Acquire) {
            u64::MAX => None,
            ns => Some(self.tcp.epoch + Duration::from_nanos(ns)),
        }
    }

    /// How long `with_tcp` waited for the engine lock, as percentiles.
    pub(super) fn tcp_lock_wait(&self) -> crate::histogram::LatencySummary {
        self.tcp.lock_wait.summary()
    }

    /// Connections the engine holds (TIME_WAIT and orphans included) and orphans alone.
    pub fn tcp_counts(&self) -> (usize, usize) {
        let inner = self.tcp_lock();
        (inner.engine.connection_count(), inner.engine.orphan_count())
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
        let mut inner = self.tcp_lock();
        if let Err(err) = self.acquire_endpoint(&mut inner, local) {
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
        let l = self.with_tcp(|inner, _| {
            let l = inner.engine.listen(local, backlog).map_err(map_err)?;
            inner.listeners.insert(l, weak);
            Ok::<_, WsaError>(l)
        })?;
        st.tcp()?.role = Role::Listening(l);
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
            let (l, endpoint) = match &st.proto {
                Proto::Tcp(TcpSock {
                    role: Role::Listening(l),
                    local: Some(local),
                    ..
                }) => (*l, *local),
                _ => return Err(WsaError::WSAEINVAL),
            };
            let options = st.options.clone();
            let nonblocking = st.nonblocking;
            let accepted = self.with_tcp(|inner, now| {
                let got = inner.engine.accept(l);
                self.async_after_accept(e.id, got.is_some());
                let id = got?;
                let remote = inner.engine.remote_addr(id)?;
                if self.acquire_endpoint(inner, endpoint).is_err() {
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
            });
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
                        self.with_tcp(|inner, now| inner.engine.abort(now, id));
                        return Err(err);
                    }
                };
                let child_id = weak.upgrade().map(|c| c.id);
                self.with_tcp(|inner, _| {
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
            let bound = match st.tcp()?.local {
                Some(l) => l,
                None => {
                    let reuse = st.options.reuse_addr;
                    let l = self.bind_tcp_endpoint(&e, e.family.unspecified(), 0, reuse)?;
                    st.tcp()?.local = Some(l);
                    l
                }
            };
            let src_ip = if bound.ip().is_unspecified() {
                self.datapath
                    .local_addrs()
                    .into_iter()
                    .find(|a| Family::of_ip(a) == e.family)
                    .ok_or(WsaError::WSAENETUNREACH)?
            } else {
                bound.ip()
            };
            let local = SocketAddr::new(src_ip, bound.port());
            let opts = ConnOptions {
                nodelay: st.options.nodelay,
                keepalive: st.options.keepalive,
                send_buffer: Some(st.options.sndbuf),
                recv_buffer: Some(st.options.rcvbuf),
            };
            let weak = Arc::downgrade(&e);
            let id = self.with_tcp(|inner, now| {
                self.acquire_endpoint(inner, bound)?;
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
                        self.release_endpoint(inner, bound);
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
        let inner = self.tcp_lock();
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
                .with_tcp(|inner, now| {
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
            let r = self.with_tcp(|inner, now| {
                let r = inner.engine.recv(now, id, buf);
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
            self.with_tcp(|inner, now| inner.engine.shutdown_write(now, id))
                .map_err(map_err)?;
        }
        if how == SD_RECEIVE || how == SD_BOTH {
            st.tcp()?.recv_shut = true;
            self.with_tcp(|inner, now| {
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
        self.tcp_lock()
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
            && let Some(l) = self.tcp_lock().engine.local_addr(id)
        {
            return Ok(l);
        }
        t.local.ok_or(WsaError::WSAEINVAL)
    }

    /// FIONREAD for a stream socket: bytes readable now.
    pub(super) fn stream_readable(&self, st: &mut SocketState) -> WspResult<usize> {
        match st.tcp()?.role {
            Role::Connected(id) | Role::Connecting(id) => {
                Ok(self.tcp_lock().engine.recv_available(id))
            }
            _ => Ok(0),
        }
    }

    /// Apply TCP_NODELAY / SO_KEEPALIVE to a live connection after `setsockopt` stored them.
    pub(super) fn stream_apply_options(&self, st: &mut SocketState) {
        let (nodelay, keepalive) = (st.options.nodelay, st.options.keepalive);
        if let Ok(TcpSock {
            role: Role::Connected(id) | Role::Connecting(id),
            ..
        }) = st.tcp()
        {
            let id = *id;
            self.with_tcp(|inner, _| {
                inner.engine.set_nodelay(id, nodelay);
                inner.engine.set_keepalive(id, keepalive);
            });
        }
    }

    /// SO_ERROR for a stream socket: a failed connect, or the connection's error.
    pub(super) fn stream_error(&self, st: &mut SocketState) -> Option<WsaError> {
        match st.tcp().ok()?.role {
            Role::Failed(err) => Some(err),
            Role::Connected(id) | Role::Connecting(id) => {
                self.tcp_lock().engine.error(id).map(map_err)
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
                let inner = self.tcp_lock();
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
        let _ = self.with_tcp(|inner, now| {
            // The final ACK raises an event that wakes this wait: no polling for it.
            inner.engine.notify_when_drained(id);
            inner.engine.shutdown_write(now, id)
        });
        loop {
            let seen = e.signal.generation();
            let (unacked, state) = {
                let inner = self.tcp_lock();
                (inner.engine.unacked_bytes(id), inner.engine.state(id))
            };
            if unacked == 0 || matches!(state, None | Some(TcpState::Closed)) {
                return ClosePath::Graceful;
            }
            let now = Instant::now();
            if now >= deadline {
                self.with_tcp(|inner, now| inner.engine.abort(now, id));
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
        let (role, local, linger) = {
            let mut st = lock(&e.state);
            let linger: Linger = st.options.linger;
            match st.tcp() {
                Ok(t) => (t.role, t.local.take(), linger),
                Err(_) => return,
            }
        };
        let path = self.with_tcp(|inner, now| {
            let path = match role {
                Role::Listening(l) => {
                    inner.listeners.remove(&l);
                    inner.engine.close_listener(now, l);
                    None
                }
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
                self.release_endpoint(inner, local);
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
        self.tcp_lock().engine.orphan_timeouts()
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
