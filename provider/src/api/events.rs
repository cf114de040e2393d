//! WSPEventSelect / WSPEnumNetworkEvents, overlapped WSPSend / WSPRecv / WSPSendTo /
//! WSPRecvFrom and their interaction with close (DESIGN §7, §8).
//!
//! # State and locks
//!
//! A socket's asynchronous state ([`AsyncSock`]: the selection, the recorded network events,
//! the re-enabling flags and the pending overlapped operations) lives in one provider-wide map
//! (`Provider::asyncs`, keyed by socket id), not behind the socket's own lock, so the TCP
//! engine's event hook can reach it while it holds the engine lock. Lock order:
//! socket state → engine → `asyncs` → (event objects, overlapped descriptors, completion queues —
//! leaf locks). Completions are collected under the locks and delivered (event set, routine
//! handed to the completion thread, completion queued) once the engine lock is released.
//!
//! # Network events (Windows rules)
//!
//! An event is recorded only if it is in the selection and *enabled*; recording it disables it
//! until the re-enabling call:
//!
//! | event | recorded when | re-enabled by |
//! |---|---|---|
//! | FD_READ | data arrives (TCP) / a datagram is queued (UDP) | any recv call (blocking, nonblocking, overlapped); recorded at once if data is still there after it |
//! | FD_WRITE | connect / accept completes; UDP bind | a send that returned WSAEWOULDBLOCK; recorded when space becomes available |
//! | FD_ACCEPT | a connection is ready to accept | accept; recorded at once if more are waiting |
//! | FD_CONNECT | the connect attempt ends (0, WSAECONNREFUSED, WSAETIMEDOUT) | — |
//! | FD_CLOSE | the peer's FIN (0), a RST (WSAECONNRESET), a timeout / abort (WSAECONNABORTED) | — |
//!
//! `wsp_event_select` clears the record, enables everything, forces nonblocking mode and
//! records at once every selected event whose condition already holds (data queued, send space
//! on a connected socket, a connection waiting, a connect that has ended, a connection closed
//! by the peer, a bound UDP socket). FIONBIO back to blocking fails with WSAEINVAL while the
//! selection is not empty. Accepted sockets inherit the listener's selection and event object
//! (and record FD_WRITE, plus FD_READ / FD_CLOSE if already due). After the last close nothing
//! is recorded (the state is gone) and every pending overlapped operation completes with
//! WSA_OPERATION_ABORTED through its own mechanism.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Provider;
use super::overlapped::{OpResult, Overlapped, capacity, scatter};
use super::stream::{Role, TcpInner, map_err};
use crate::socket::entry::lock;
use crate::socket::{Socket, SocketKind, WsaError, WspResult};
use crate::tcp::{ConnId, Event, TcpEngine, TcpError, TcpState};

pub const FD_READ: u32 = 1;
pub const FD_WRITE: u32 = 2;
pub const FD_OOB: u32 = 4;
pub const FD_ACCEPT: u32 = 8;
pub const FD_CONNECT: u32 = 16;
pub const FD_CLOSE: u32 = 32;
pub const FD_READ_BIT: usize = 0;
pub const FD_WRITE_BIT: usize = 1;
pub const FD_OOB_BIT: usize = 2;
pub const FD_ACCEPT_BIT: usize = 3;
pub const FD_CONNECT_BIT: usize = 4;
pub const FD_CLOSE_BIT: usize = 5;
/// Length of `NetworkEvents::errors` (Windows FD_MAX_EVENTS).
pub const FD_MAX_EVENTS: usize = 10;
/// Every event the provider records.
pub const FD_ALL: u32 = FD_READ | FD_WRITE | FD_ACCEPT | FD_CONNECT | FD_CLOSE;

/// Process-wide generation of [`WsaEvent::set`] calls: a thread waiting for several events
/// ([`WsaEvent::wait_multiple`]) sleeps on `SET_CV` and rechecks after every set — no polling,
/// no lost wake-up (a set bumps the generation under `SET_GEN`, which the waiter holds between
/// its check and its sleep). Lock order: `SET_GEN` → an event's own lock.
static SET_GEN: Mutex<u64> = Mutex::new(0);
static SET_CV: Condvar = Condvar::new();

/// A manual-reset event object (WSAEVENT): set stays set until `reset`.
#[derive(Debug, Default)]
pub struct WsaEvent {
    set: Mutex<bool>,
    cv: Condvar,
}

impl WsaEvent {
    /// A new, non-signalled event (WSACreateEvent).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// WSASetEvent: wakes every waiter.
    pub fn set(&self) {
        *lock(&self.set) = true;
        self.cv.notify_all();
        *lock(&SET_GEN) += 1;
        SET_CV.notify_all();
    }

    /// WSAResetEvent.
    pub fn reset(&self) {
        *lock(&self.set) = false;
    }

    pub fn is_set(&self) -> bool {
        *lock(&self.set)
    }

    /// Wait until set or `timeout` passes (None: forever); true if set. Does not reset.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut set = lock(&self.set);
        while !*set {
            match deadline {
                None => set = self.cv.wait(set).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    set = self
                        .cv
                        .wait_timeout(set, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        true
    }

    /// WSAWaitForMultipleEvents: wait until any event of `events` is set (`all`: every one at
    /// once), or `timeout` passes (None: forever). `Some(i)`: the lowest index set (any), or 0
    /// (all); `None`: timed out. Resets nothing (manual-reset events).
    pub fn wait_multiple(
        events: &[Arc<WsaEvent>],
        all: bool,
        timeout: Option<Duration>,
    ) -> Option<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = lock(&SET_GEN);
        loop {
            if all {
                if events.iter().all(|e| e.is_set()) {
                    return Some(0);
                }
            } else if let Some(i) = events.iter().position(|e| e.is_set()) {
                return Some(i);
            }
            match deadline {
                None => g = SET_CV.wait(g).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    g = SET_CV
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

/// WSANETWORKEVENTS: the recorded events and, per event, its error code indexed by FD_*_BIT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkEvents {
    pub events: u32,
    pub errors: [i32; FD_MAX_EVENTS],
}

impl NetworkEvents {
    /// Whether `fd` is recorded.
    pub fn has(&self, fd: u32) -> bool {
        self.events & fd != 0
    }

    /// The error recorded with `fd` (0: none).
    pub fn error(&self, fd: u32) -> i32 {
        self.errors[fd.trailing_zeros() as usize]
    }
}

/// One pending overlapped operation.
pub(crate) struct PendingOp {
    ov: Overlapped,
    bufs: Vec<Vec<u8>>,
    /// Bytes already handed to the engine (sends).
    done: usize,
}

/// A socket's asynchronous state (see the module docs).
pub(crate) struct AsyncSock {
    mask: u32,
    event: Option<Arc<WsaEvent>>,
    recorded: u32,
    errors: [i32; FD_MAX_EVENTS],
    /// Events that may be recorded (not yet recorded since their re-enabling call).
    enabled: u32,
    /// Connections completed on a listener and not yet accepted (as far as we know).
    accept_backlog: usize,
    recvs: VecDeque<PendingOp>,
    sends: VecDeque<PendingOp>,
}

impl Default for AsyncSock {
    fn default() -> Self {
        AsyncSock {
            mask: 0,
            event: None,
            recorded: 0,
            errors: [0; FD_MAX_EVENTS],
            enabled: FD_ALL,
            accept_backlog: 0,
            recvs: VecDeque::new(),
            sends: VecDeque::new(),
        }
    }
}

impl AsyncSock {
    /// Record `fd` with `err` if selected and enabled; set the event object.
    fn record(&mut self, fd: u32, err: i32) {
        if self.mask & fd == 0 || self.enabled & fd == 0 {
            return;
        }
        self.enabled &= !fd;
        self.recorded |= fd;
        self.errors[fd.trailing_zeros() as usize] = err;
        if let Some(ev) = &self.event {
            ev.set();
        }
    }
}

/// Provider-wide map of asynchronous socket state.
pub(crate) type Asyncs = Mutex<HashMap<u64, AsyncSock>>;

/// Completions collected under the locks, delivered after.
pub(crate) type Done = Vec<(Overlapped, OpResult)>;

/// FD_CLOSE's code for the error that ended a connection.
fn close_code(err: Option<TcpError>) -> i32 {
    match err {
        None => 0,
        Some(TcpError::ConnectionReset) => WsaError::WSAECONNRESET.code(),
        Some(_) => WsaError::WSAECONNABORTED.code(),
    }
}

/// Receive into the scatter buffers, in order. `Ok(0)`: EOF (or no capacity).
fn tcp_fill(
    engine: &mut TcpEngine,
    now: Instant,
    id: ConnId,
    bufs: &mut [Vec<u8>],
) -> Result<usize, TcpError> {
    let mut total = 0;
    for b in bufs.iter_mut() {
        if b.is_empty() {
            continue;
        }
        match engine.recv(now, id, b) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                if n < b.len() {
                    break;
                }
            }
            Err(_) if total > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Hand what fits of a pending send to the engine; true once every byte is in.
fn tcp_push(
    engine: &mut TcpEngine,
    now: Instant,
    id: ConnId,
    op: &mut PendingOp,
) -> Result<bool, TcpError> {
    let mut skip = op.done;
    for b in &op.bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let n = engine.send(now, id, &b[skip..])?;
        op.done += n;
        if n < b.len() - skip {
            return Ok(false);
        }
        skip = 0;
    }
    Ok(true)
}

/// Network events whose condition holds on a connection now.
fn tcp_conditions(engine: &TcpEngine, a: &mut AsyncSock, id: ConnId, send_shut: bool) {
    let Some(state) = engine.state(id) else {
        return;
    };
    if matches!(state, TcpState::SynSent | TcpState::SynReceived) {
        return;
    }
    if engine.recv_available(id) > 0 {
        a.record(FD_READ, 0);
    }
    let err = engine.error(id);
    if err.is_some()
        || matches!(
            state,
            TcpState::CloseWait | TcpState::LastAck | TcpState::Closing | TcpState::TimeWait
        )
    {
        a.record(FD_CLOSE, close_code(err));
    }
    if !send_shut
        && matches!(state, TcpState::Established | TcpState::CloseWait)
        && engine.send_space(id) > 0
    {
        a.record(FD_WRITE, 0);
    }
}

impl Provider {
    /// Deliver collected completions (no lock of ours held).
    pub(crate) fn dispatch(&self, done: Done) {
        for (ov, r) in done {
            if let Some(job) = ov.complete(r) {
                self.routines.run(job);
            }
        }
    }

    /// The socket's selection (0: none).
    pub(crate) fn async_mask(&self, sock: u64) -> u32 {
        lock(&self.asyncs).get(&sock).map_or(0, |a| a.mask)
    }

    /// Record `fd` on the socket if it is selected and enabled.
    pub(crate) fn async_record(&self, sock: u64, fd: u32, err: i32) {
        if let Some(a) = lock(&self.asyncs).get_mut(&sock) {
            a.record(fd, err);
        }
    }

    /// Re-enable `fd` (the re-enabling call happened).
    pub(crate) fn async_enable(&self, sock: u64, fd: u32) {
        if let Some(a) = lock(&self.asyncs).get_mut(&sock) {
            a.enabled |= fd;
        }
    }

    /// The last handle is gone: forget the socket's selection and record (nothing is recorded
    /// afterwards) and abort every pending overlapped operation (WSA_OPERATION_ABORTED).
    pub(crate) fn async_close(&self, sock: u64) {
        let Some(a) = lock(&self.asyncs).remove(&sock) else {
            return;
        };
        let done = a
            .recvs
            .into_iter()
            .chain(a.sends)
            .map(|op| {
                let mut r = OpResult::err(WsaError::WSA_OPERATION_ABORTED, op.bufs);
                r.bytes = op.done;
                (op.ov, r)
            })
            .collect();
        self.dispatch(done);
    }

    // ------------------------------------------------------------------ TCP hooks

    /// The engine reported `ev` for a connection (or listener) of socket `sock`: complete what
    /// pending operations can, then record network events. Engine lock held.
    pub(crate) fn async_tcp_event(&self, inner: &mut TcpInner, ev: Event, sock: u64) {
        let now = Instant::now();
        let TcpInner {
            engine,
            completions,
            ..
        } = inner;
        let mut asyncs = lock(&self.asyncs);
        if let Event::AcceptReady(_) = ev {
            // The listener is live (the caller found it): keep its backlog even unselected.
            let a = asyncs.entry(sock).or_default();
            a.accept_backlog += 1;
            a.record(FD_ACCEPT, 0);
            return;
        }
        let Some(a) = asyncs.get_mut(&sock) else {
            return;
        };
        match ev {
            Event::Readable(id) | Event::PeerFin(id) | Event::Reset(id) | Event::Closed(id) => {
                Self::progress(engine, now, id, a, completions);
            }
            Event::Writable(id) | Event::Connected(id) => {
                Self::progress(engine, now, id, a, completions);
            }
            _ => {}
        }
        match ev {
            Event::Connected(_) => {
                a.record(FD_CONNECT, 0);
                a.record(FD_WRITE, 0);
            }
            Event::ConnectFailed(_, err) => a.record(FD_CONNECT, map_err(err).code()),
            Event::Readable(id) => {
                if engine.recv_available(id) > 0 {
                    a.record(FD_READ, 0);
                }
            }
            Event::Writable(_) => a.record(FD_WRITE, 0),
            Event::PeerFin(_) => a.record(FD_CLOSE, 0),
            Event::Reset(id) => a.record(FD_CLOSE, close_code(engine.error(id))),
            Event::Closed(_) | Event::AcceptReady(_) => {}
        }
    }

    /// Complete pending receives and sends of one connection as far as the engine allows.
    fn progress(
        engine: &mut TcpEngine,
        now: Instant,
        id: ConnId,
        a: &mut AsyncSock,
        done: &mut Done,
    ) {
        while let Some(op) = a.recvs.front_mut() {
            let r = match tcp_fill(engine, now, id, &mut op.bufs) {
                Err(TcpError::WouldBlock) => break,
                Ok(n) => Ok(n),
                Err(e) => Err(map_err(e)),
            };
            let op = a.recvs.pop_front().expect("front exists");
            done.push(match r {
                Ok(n) => (op.ov, OpResult::ok(n, op.bufs)),
                Err(e) => (op.ov, OpResult::err(e, op.bufs)),
            });
        }
        while let Some(op) = a.sends.front_mut() {
            let r = match tcp_push(engine, now, id, op) {
                Ok(false) => break,
                Ok(true) => Ok(op.done),
                Err(TcpError::WouldBlock) => break,
                Err(e) => Err(map_err(e)),
            };
            let op = a.sends.pop_front().expect("front exists");
            done.push(match r {
                Ok(n) => (op.ov, OpResult::ok(n, op.bufs)),
                Err(e) => {
                    let mut r = OpResult::err(e, op.bufs);
                    r.bytes = op.done;
                    (op.ov, r)
                }
            });
        }
    }

    /// A recv call happened on a connection (engine lock held): re-enable FD_READ, and record
    /// it at once if data remains.
    pub(crate) fn async_tcp_after_recv(&self, inner: &TcpInner, sock: u64, id: ConnId) {
        if let Some(a) = lock(&self.asyncs).get_mut(&sock) {
            a.enabled |= FD_READ;
            if inner.engine.recv_available(id) > 0 {
                a.record(FD_READ, 0);
            }
        }
    }

    /// An accept call happened on a listener (engine lock held): re-enable FD_ACCEPT and
    /// record it at once if more connections wait.
    pub(crate) fn async_after_accept(&self, sock: u64, got: bool) {
        if let Some(a) = lock(&self.asyncs).get_mut(&sock) {
            a.accept_backlog = if got {
                a.accept_backlog.saturating_sub(1)
            } else {
                0
            };
            a.enabled |= FD_ACCEPT;
            if a.accept_backlog > 0 {
                a.record(FD_ACCEPT, 0);
            }
        }
    }

    /// A socket was accepted from `listener` (engine lock held): it inherits the selection and
    /// records FD_WRITE (and FD_READ / FD_CLOSE if due).
    pub(crate) fn async_inherit(&self, inner: &TcpInner, listener: u64, child: u64, id: ConnId) {
        let mut asyncs = lock(&self.asyncs);
        let Some((mask, event)) = asyncs
            .get(&listener)
            .filter(|a| a.mask != 0)
            .map(|a| (a.mask, a.event.clone()))
        else {
            return;
        };
        let a = asyncs.entry(child).or_default();
        a.mask = mask;
        a.event = event;
        tcp_conditions(&inner.engine, a, id, false);
    }

    // ------------------------------------------------------------------ WSP calls

    /// WSPEventSelect: associate `event` with the network events in `mask` (FD_*). Clears the
    /// record, forces nonblocking mode and records at once what already holds. `mask` 0 cancels
    /// the selection (the socket stays nonblocking, FIONBIO may then make it blocking).
    pub fn wsp_event_select(&self, s: Socket, event: Arc<WsaEvent>, mask: u32) -> WspResult<()> {
        let e = self.table.get(s)?;
        let mut st = e.lock_open()?;
        st.nonblocking = true;
        let mask = mask & (FD_ALL | FD_OOB);
        let select = |a: &mut AsyncSock| {
            a.mask = mask;
            a.event = (mask != 0).then(|| event.clone());
            a.recorded = 0;
            a.errors = [0; FD_MAX_EVENTS];
            a.enabled = FD_ALL;
        };
        if e.kind == SocketKind::Datagram {
            let u = st.udp()?;
            let (bound, queued) = (u.local.is_some(), u.queue.front_len().is_some());
            let mut asyncs = lock(&self.asyncs);
            let a = asyncs.entry(e.id).or_default();
            select(a);
            if bound {
                a.record(FD_WRITE, 0);
            }
            if queued {
                a.record(FD_READ, 0);
            }
            return Ok(());
        }
        let t = st.tcp()?;
        let (role, send_shut) = (t.role, t.send_shut);
        let shard = match role {
            Role::Connecting(id) | Role::Connected(id) => id.shard(),
            Role::Listening(l) => l.shard(),
            Role::Idle | Role::Failed(_) => 0,
        };
        self.with_shard(shard, |inner, _| {
            let mut asyncs = lock(&self.asyncs);
            let a = asyncs.entry(e.id).or_default();
            select(a);
            match role {
                Role::Listening(_) => {
                    if a.accept_backlog > 0 {
                        a.record(FD_ACCEPT, 0);
                    }
                }
                Role::Connecting(id) => match inner.engine.state(id) {
                    Some(TcpState::SynSent | TcpState::SynReceived) => {}
                    Some(TcpState::Closed) | None if !inner.established.contains(&id) => {
                        let err = inner
                            .engine
                            .error(id)
                            .map_or(WsaError::WSAECONNREFUSED, map_err);
                        a.record(FD_CONNECT, err.code());
                    }
                    _ => {
                        a.record(FD_CONNECT, 0);
                        tcp_conditions(&inner.engine, a, id, send_shut);
                    }
                },
                Role::Connected(id) => tcp_conditions(&inner.engine, a, id, send_shut),
                Role::Idle | Role::Failed(_) => {}
            }
        });
        Ok(())
    }

    /// WSPEnumNetworkEvents: the events recorded since the last call, with their error codes;
    /// clears the record and resets `event` if given.
    pub fn wsp_enum_network_events(
        &self,
        s: Socket,
        event: Option<&WsaEvent>,
    ) -> WspResult<NetworkEvents> {
        let e = self.table.get(s)?;
        let _st = e.lock_open()?;
        let mut out = NetworkEvents::default();
        if let Some(a) = lock(&self.asyncs).get_mut(&e.id) {
            out.events = a.recorded;
            out.errors = a.errors;
            a.recorded = 0;
            a.errors = [0; FD_MAX_EVENTS];
        }
        if let Some(ev) = event {
            ev.reset();
        }
        Ok(out)
    }

    /// Overlapped WSPRecv on a stream socket (on a datagram socket: `wsp_recv_from_overlapped`).
    /// Fills `bufs` in order; completes as soon as any data (or EOF: 0 bytes) is available.
    pub fn wsp_recv_overlapped(
        &self,
        s: Socket,
        bufs: Vec<Vec<u8>>,
        ov: &Overlapped,
    ) -> WspResult<usize> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Datagram {
            return self.wsp_recv_from_overlapped(s, bufs, ov);
        }
        let mut st = e.lock_open()?;
        let id = self.connected(&mut st)?;
        if st.tcp()?.recv_shut {
            return Err(WsaError::WSAESHUTDOWN);
        }
        ov.begin()?;
        let r = self.with_conn(id, |inner, now| {
            let r = {
                let TcpInner {
                    engine,
                    completions,
                    ..
                } = &mut *inner;
                let mut asyncs = lock(&self.asyncs);
                let a = asyncs.entry(e.id).or_default();
                let mut op = PendingOp {
                    ov: ov.clone(),
                    bufs,
                    done: 0,
                };
                if a.recvs.is_empty() {
                    match tcp_fill(engine, now, id, &mut op.bufs) {
                        Ok(n) => {
                            completions.push((op.ov, OpResult::ok(n, op.bufs)));
                            Ok(n)
                        }
                        Err(TcpError::WouldBlock) => {
                            a.recvs.push_back(op);
                            Err(WsaError::WSA_IO_PENDING)
                        }
                        Err(err) => Err(map_err(err)),
                    }
                } else {
                    a.recvs.push_back(op);
                    Err(WsaError::WSA_IO_PENDING)
                }
            };
            self.async_tcp_after_recv(inner, e.id, id);
            r
        });
        if let Err(err) = r
            && err != WsaError::WSA_IO_PENDING
        {
            ov.fail_now(err);
        }
        r
    }

    /// Overlapped WSPSend on a stream socket (gather: `bufs` are sent in order). Completes when
    /// every byte is in the send buffer.
    pub fn wsp_send_overlapped(
        &self,
        s: Socket,
        bufs: Vec<Vec<u8>>,
        ov: &Overlapped,
    ) -> WspResult<usize> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Datagram {
            return Err(WsaError::WSAENOTCONN);
        }
        let mut st = e.lock_open()?;
        let id = self.connected(&mut st)?;
        if st.tcp()?.send_shut {
            return Err(WsaError::WSAESHUTDOWN);
        }
        ov.begin()?;
        let r = self.with_conn(id, |inner, now| {
            let TcpInner {
                engine,
                completions,
                ..
            } = &mut *inner;
            let mut asyncs = lock(&self.asyncs);
            let a = asyncs.entry(e.id).or_default();
            let mut op = PendingOp {
                ov: ov.clone(),
                bufs,
                done: 0,
            };
            if !a.sends.is_empty() {
                a.sends.push_back(op);
                return Err(WsaError::WSA_IO_PENDING);
            }
            match tcp_push(engine, now, id, &mut op) {
                Ok(true) => {
                    let n = op.done;
                    completions.push((op.ov, OpResult::ok(n, op.bufs)));
                    Ok(n)
                }
                Ok(false) | Err(TcpError::WouldBlock) => {
                    a.sends.push_back(op);
                    Err(WsaError::WSA_IO_PENDING)
                }
                Err(err) => Err(map_err(err)),
            }
        });
        if let Err(err) = r
            && err != WsaError::WSA_IO_PENDING
        {
            ov.fail_now(err);
        }
        r
    }

    /// Overlapped WSPSendTo: the gathered buffers form one datagram. UDP sends never wait, so
    /// this completes at once (and is still reported through the mechanism). On a stream
    /// socket `to` is ignored (`wsp_send_overlapped`).
    pub fn wsp_send_to_overlapped(
        &self,
        s: Socket,
        bufs: Vec<Vec<u8>>,
        to: SocketAddr,
        ov: &Overlapped,
    ) -> WspResult<usize> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Stream {
            return self.wsp_send_overlapped(s, bufs, ov);
        }
        ov.begin()?;
        let data = bufs.concat();
        match self.wsp_send_to(s, &data, to) {
            Ok(n) => {
                self.dispatch(vec![(ov.clone(), OpResult::ok(n, bufs))]);
                Ok(n)
            }
            Err(err) => {
                ov.fail_now(err);
                Err(err)
            }
        }
    }

    /// Overlapped WSPRecvFrom: the next datagram, scattered into `bufs`; the sender is in the
    /// completion (`Completion::from`, `Overlapped::from`). A datagram larger than the buffers
    /// fills them and completes with WSAEMSGSIZE. On a stream socket: `wsp_recv_overlapped`,
    /// the sender being the peer.
    pub fn wsp_recv_from_overlapped(
        &self,
        s: Socket,
        mut bufs: Vec<Vec<u8>>,
        ov: &Overlapped,
    ) -> WspResult<usize> {
        let e = self.table.get(s)?;
        if e.kind == SocketKind::Stream {
            return self.wsp_recv_overlapped(s, bufs, ov);
        }
        let mut st = e.lock_open()?;
        if st.udp()?.local.is_none() {
            return Err(WsaError::WSAEINVAL);
        }
        ov.begin()?;
        let mut done = Done::new();
        let r = {
            let mut asyncs = lock(&self.asyncs);
            let a = asyncs.entry(e.id).or_default();
            let udp = st.udp()?;
            let r = if a.recvs.is_empty()
                && let Some(d) = udp.queue.pop()
            {
                let n = scatter(&d.payload, &mut bufs);
                let mut r = OpResult::ok(n, bufs);
                r.from = Some(d.from);
                if d.payload.len() > capacity(&r.buffers) {
                    r.error = Some(WsaError::WSAEMSGSIZE);
                }
                let err = r.error;
                done.push((ov.clone(), r));
                err.map_or(Ok(n), Err)
            } else {
                a.recvs.push_back(PendingOp {
                    ov: ov.clone(),
                    bufs,
                    done: 0,
                });
                Err(WsaError::WSA_IO_PENDING)
            };
            a.enabled |= FD_READ;
            if udp.queue.front_len().is_some() {
                a.record(FD_READ, 0);
            }
            r
        };
        drop(st);
        self.dispatch(done);
        r
    }

    /// UDP delivery hook (socket state locked by the caller): hand queued datagrams to pending
    /// overlapped receives, then record FD_READ if one is still queued.
    pub(crate) fn async_udp_delivered(&self, sock: u64, udp: &mut crate::udp::UdpState) -> Done {
        let mut done = Done::new();
        let mut asyncs = lock(&self.asyncs);
        let Some(a) = asyncs.get_mut(&sock) else {
            return done;
        };
        while !a.recvs.is_empty()
            && let Some(d) = udp.queue.pop()
        {
            let mut op = a.recvs.pop_front().expect("not empty");
            let n = scatter(&d.payload, &mut op.bufs);
            let mut r = OpResult::ok(n, op.bufs);
            r.from = Some(d.from);
            if d.payload.len() > n {
                r.error = Some(WsaError::WSAEMSGSIZE);
            }
            done.push((op.ov, r));
        }
        if udp.queue.front_len().is_some() {
            a.record(FD_READ, 0);
        }
        done
    }

    /// A UDP recv call happened (socket state locked): re-enable FD_READ, record it at once if
    /// another datagram is queued.
    pub(crate) fn async_udp_after_recv(&self, sock: u64, queued: bool) {
        if let Some(a) = lock(&self.asyncs).get_mut(&sock) {
            a.enabled |= FD_READ;
            if queued {
                a.record(FD_READ, 0);
            }
        }
    }

    /// WSPGetOverlappedResult: `Ok((bytes, flags))`, or the operation's error. `wait`: block
    /// until it completes; else WSA_IO_INCOMPLETE while pending. WSAEINVAL: nothing was ever
    /// issued with `ov`. The handle is not checked: an operation aborted by close must still be
    /// readable after the handle is gone, and the result belongs to the descriptor.
    pub fn wsp_get_overlapped_result(
        &self,
        _s: Socket,
        ov: &Overlapped,
        wait: bool,
    ) -> WspResult<(usize, u32)> {
        ov.result(wait)
    }

    /// WSPCancelBlockingCall (Winsock 1.1). It cancels a blocking call of the *calling* thread,
    /// which only a blocking hook running inside that call could do; this provider has no
    /// blocking hooks, so the calling thread never has a blocking call in progress and the
    /// call fails with WSAEINVAL ("no outstanding blocking call"), as Winsock does then. Use
    /// [`Provider::cancel_blocking_calls`] to interrupt the blocking calls on a socket from
    /// another thread.
    pub fn wsp_cancel_blocking_call(&self) -> WspResult<()> {
        Err(WsaError::WSAEINVAL)
    }
}

#[cfg(test)]
mod wait_multiple_tests {
    use super::*;

    #[test]
    fn any_all_and_timeout() {
        let evs: Vec<_> = (0..3).map(|_| WsaEvent::new()).collect();
        let short = Some(Duration::from_millis(20));
        assert_eq!(WsaEvent::wait_multiple(&evs, false, short), None);
        evs[2].set();
        assert_eq!(WsaEvent::wait_multiple(&evs, false, short), Some(2));
        evs[1].set();
        assert_eq!(
            WsaEvent::wait_multiple(&evs, false, short),
            Some(1),
            "lowest index"
        );
        assert_eq!(WsaEvent::wait_multiple(&evs, true, short), None);
        // Woken (not polled) by sets from other threads, forever-wait included.
        let e0 = evs[0].clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            e0.set();
        });
        assert_eq!(WsaEvent::wait_multiple(&evs, true, None), Some(0));
        t.join().unwrap();
        for e in &evs {
            e.reset();
        }
        let e1 = evs[1].clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            e1.set();
        });
        let start = Instant::now();
        assert_eq!(
            WsaEvent::wait_multiple(&evs, false, Some(Duration::from_secs(10))),
            Some(1)
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }
}
