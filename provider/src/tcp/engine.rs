//! The multi-connection engine: connection slab, 4-tuple lookup, listeners, the timer wheel,
//! and the transmit/event queues the caller drains.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::config::{ConnOptions, TcpConfig};
use super::conn::{Conn, Ctl, Ctx};
use super::isn::IsnGenerator;
use super::listener::Listener;
use super::options::TcpOptions;
use super::ratelimit::RateLimiter;
use super::segment::{SegmentChecksum, SegmentIn, SegmentOut, write_segment};
use super::seq::SeqNum;
use super::timer_wheel::TimerWheel;
use super::types::{ConnId, ConnStats, Event, ListenerId, TcpError, TcpState, Transmit};
use crate::net::tcp::TcpFlags;

/// Timer wheel granularity.
const TICK: Duration = Duration::from_millis(1);
/// Timer wheel slots (one revolution = 4.096 s; later deadlines are the wheel's business).
const SLOTS: usize = 4096;

#[derive(Debug)]
struct Slot {
    generation: u32,
    conn: Option<Box<Conn>>,
    /// In the 4-tuple map (not yet CLOSED).
    mapped: bool,
    /// In the transmit round-robin.
    dirty: bool,
    /// Counted in the engine-wide half-open total.
    half_open: bool,
}

#[derive(Debug)]
struct ListenerSlot {
    generation: u32,
    listener: Option<Listener>,
}

/// The sans-IO TCP engine (DESIGN §5). Feed it segments and time; poll it for segments and
/// events.
///
/// Connection handles stay valid after the connection reached CLOSED (so `recv` can still drain
/// data and report the error) until the user calls [`TcpEngine::close`] or [`TcpEngine::abort`].
/// Connections of a listener that were never accepted are freed on their own; their
/// [`Event::Closed`] names a handle the user never saw.
#[derive(Debug)]
pub struct TcpEngine {
    /// Which of the provider's per-RX-queue engines this is; stamped into every handle.
    shard: u16,
    cfg: TcpConfig,
    epoch: Instant,
    isn: IsnGenerator,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Peer-chosen keys: a randomly seeded hash (foldhash), fast yet not steerable into
    /// collisions by a peer that picks addresses and ports.
    by_tuple: HashMap<(SocketAddr, SocketAddr), ConnId, foldhash::fast::RandomState>,
    listeners: Vec<ListenerSlot>,
    by_local: HashMap<SocketAddr, ListenerId>,
    wheel: TimerWheel<ConnId>,
    /// Orphans reset because they could not finish in time (DESIGN §7 close observability).
    orphan_timeouts: u64,
    ctl: VecDeque<Ctl>,
    dirty: VecDeque<ConnId>,
    events: VecDeque<Event>,
    challenge: RateLimiter,
    half_open: usize,
    expired: Vec<ConnId>,
}

impl TcpEngine {
    /// A new engine. `secret` keys the RFC 6528 ISN function; `now` is the clock origin.
    pub fn new(config: TcpConfig, secret: [u8; 16], now: Instant) -> Self {
        let challenge = RateLimiter::new(config.challenge_ack_limit);
        Self {
            shard: 0,
            cfg: config,
            epoch: now,
            isn: IsnGenerator::new(secret, now),
            slots: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::default(),
            listeners: Vec::new(),
            by_local: HashMap::new(),
            wheel: TimerWheel::new(now, TICK, SLOTS),
            orphan_timeouts: 0,
            ctl: VecDeque::new(),
            dirty: VecDeque::new(),
            events: VecDeque::new(),
            challenge,
            half_open: 0,
            expired: Vec::new(),
        }
    }

    /// This engine as shard `shard` of several (one per RX queue): its handles carry the
    /// number, and handles of other shards are strangers to it.
    pub fn with_shard(mut self, shard: u16) -> Self {
        self.shard = shard;
        self
    }

    /// The shard number (0 for a lone engine).
    pub fn shard(&self) -> usize {
        usize::from(self.shard)
    }

    /// Whether a connection to `remote` from `local` lives here (TIME_WAIT included).
    pub fn has_tuple(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        self.by_tuple.contains_key(&(local, remote))
    }

    /// The configuration.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    // ------------------------------------------------------------ slab plumbing

    fn alloc(&mut self) -> ConnId {
        if let Some(index) = self.free.pop() {
            let generation = self.slots[index as usize].generation;
            return ConnId {
                shard: self.shard,
                index,
                generation,
            };
        }
        self.slots.push(Slot {
            generation: 0,
            conn: None,
            mapped: false,
            dirty: false,
            half_open: false,
        });
        ConnId {
            shard: self.shard,
            index: (self.slots.len() - 1) as u32,
            generation: 0,
        }
    }

    fn slot(&self, id: ConnId) -> Option<&Slot> {
        self.slots
            .get(id.index as usize)
            .filter(|s| id.shard == self.shard && s.generation == id.generation && s.conn.is_some())
    }

    /// The connection behind a user handle (not one the user closed, nor an unaccepted one).
    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.slot(id)
            .and_then(|s| s.conn.as_deref())
            .filter(|c| !c.released)
    }

    /// Runs a user call on a connection the user holds.
    fn with_user_conn<R>(
        &mut self,
        now: Instant,
        id: ConnId,
        f: impl FnOnce(&mut Conn, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        self.conn(id)?;
        self.with_conn(now, id, f)
    }

    /// Runs `f` on the connection with a context, then [`TcpEngine::after`].
    fn with_conn<R>(
        &mut self,
        now: Instant,
        id: ConnId,
        f: impl FnOnce(&mut Conn, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation || id.shard != self.shard {
            return None;
        }
        let conn = slot.conn.as_deref_mut()?;
        let mut cx = Ctx {
            now,
            cfg: &self.cfg,
            epoch: self.epoch,
            events: &mut self.events,
            ctl: &mut self.ctl,
            challenge: &mut self.challenge,
        };
        let r = f(conn, &mut cx);
        self.after(now, id, true);
        Some(r)
    }

    /// Housekeeping after anything touched a connection: listener hand-over, unmapping and
    /// freeing, timer rescheduling, transmit round-robin.
    fn after(&mut self, now: Instant, id: ConnId, mark_dirty: bool) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.generation != id.generation || id.shard != self.shard {
            return;
        }
        let Some(conn) = slot.conn.as_deref_mut() else {
            return;
        };
        if conn.notify_listener {
            conn.notify_listener = false;
            if slot.half_open {
                slot.half_open = false;
                self.half_open = self.half_open.saturating_sub(1);
            }
            let lid = conn.listener;
            let taken = lid
                .and_then(|l| listener_mut(&mut self.listeners, l))
                .map(|l| l.complete(id))
                .unwrap_or(false);
            if taken {
                if let Some(l) = lid {
                    self.events.push_back(Event::AcceptReady(l));
                }
            } else {
                // Accept queue full (or listener gone): reset the new connection.
                let mut cx = Ctx {
                    now,
                    cfg: &self.cfg,
                    epoch: self.epoch,
                    events: &mut self.events,
                    ctl: &mut self.ctl,
                    challenge: &mut self.challenge,
                };
                conn.abort(&mut cx);
                conn.listener = None;
            }
        }
        if conn.state == TcpState::Closed && slot.mapped {
            slot.mapped = false;
            self.by_tuple.remove(&(conn.local, conn.remote));
            self.wheel.cancel(id);
            if slot.half_open {
                slot.half_open = false;
                self.half_open = self.half_open.saturating_sub(1);
            }
            if let Some(l) = conn
                .listener
                .and_then(|l| listener_mut(&mut self.listeners, l))
            {
                l.forget(id);
            }
            if conn.released && conn.error == Some(TcpError::TimedOut) {
                // An orphan the engine gave up on (orphan deadline, or retries): it was reset.
                self.orphan_timeouts += 1;
            }
            self.events.push_back(Event::Closed(id));
        }
        if !slot.mapped {
            if conn.released || conn.listener.is_some() {
                slot.conn = None;
                slot.generation = slot.generation.wrapping_add(1);
                slot.dirty = false;
                self.free.push(id.index);
            }
            return;
        }
        match conn.next_deadline() {
            Some(d) => self.wheel.schedule(id, d),
            None => self.wheel.cancel(id),
        }
        if mark_dirty && !slot.dirty {
            slot.dirty = true;
            self.dirty.push_back(id);
        }
    }

    fn find_listener(&self, local: SocketAddr) -> Option<ListenerId> {
        if let Some(&l) = self.by_local.get(&local) {
            return Some(l);
        }
        let any: IpAddr = match local.ip() {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        self.by_local
            .get(&SocketAddr::new(any, local.port()))
            .copied()
    }

    fn queue_rst(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        seq: SeqNum,
        ack: Option<SeqNum>,
    ) {
        self.ctl.push_back(Ctl {
            local,
            remote,
            seg: SegmentOut {
                seq,
                ack: ack.unwrap_or(SeqNum(0)),
                flags: if ack.is_some() {
                    TcpFlags::RST | TcpFlags::ACK
                } else {
                    TcpFlags::RST
                },
                window: 0,
                opts: TcpOptions::default(),
            },
        });
    }

    /// RFC 9293 §3.10.7.1: the reply to a segment for no connection (unless it is a RST).
    fn reply_closed(&mut self, local: SocketAddr, remote: SocketAddr, seg: &SegmentIn<'_>) {
        if seg.rst() {
            return;
        }
        if seg.has_ack() {
            self.queue_rst(local, remote, seg.ack, None);
        } else {
            self.queue_rst(local, remote, SeqNum(0), Some(seg.seq + seg.len()));
        }
    }

    // ------------------------------------------------------------ input

    /// One inbound TCP segment (header + payload) from `src` to `dst`; the checksum was verified
    /// by the caller. Never panics, whatever the bytes.
    pub fn on_segment(&mut self, now: Instant, src: IpAddr, dst: IpAddr, segment: &[u8]) {
        let Some(seg) = SegmentIn::parse(segment) else {
            return;
        };
        if seg.src_port == 0
            || seg.dst_port == 0
            || src.is_multicast()
            || src.is_unspecified()
            || dst.is_multicast()
            || src.is_ipv4() != dst.is_ipv4()
        {
            return;
        }
        let local = SocketAddr::new(dst, seg.dst_port);
        let remote = SocketAddr::new(src, seg.src_port);
        if let Some(&id) = self.by_tuple.get(&(local, remote)) {
            // A new incarnation of a 4-tuple in TIME_WAIT (RFC 6191): the old one gives way
            // and the listener takes the SYN.
            let reuse = self
                .slots
                .get(id.index as usize)
                .and_then(|s| s.conn.as_deref())
                .is_some_and(|c| c.time_wait_accepts_syn(&seg));
            if reuse && let Some(lid) = self.find_listener(local) {
                let iss = self.with_conn(now, id, |c, _| c.end_time_wait());
                self.listener_segment(now, lid, local, remote, &seg, iss);
                return;
            }
            self.with_conn(now, id, |c, cx| c.on_segment(cx, &seg));
            return;
        }
        if let Some(lid) = self.find_listener(local) {
            self.listener_segment(now, lid, local, remote, &seg, None);
            return;
        }
        self.reply_closed(local, remote, &seg);
    }

    /// RFC 9293 §3.10.7.2 (LISTEN). `iss` overrides the RFC 6528 ISS (TIME_WAIT reuse).
    fn listener_segment(
        &mut self,
        now: Instant,
        lid: ListenerId,
        local: SocketAddr,
        remote: SocketAddr,
        seg: &SegmentIn<'_>,
        iss: Option<SeqNum>,
    ) {
        if seg.rst() {
            return;
        }
        if seg.has_ack() {
            self.queue_rst(local, remote, seg.ack, None);
            return;
        }
        if !seg.syn() {
            return;
        }
        let admits = listener_mut(&mut self.listeners, lid)
            .map(|l| l.admits_syn(self.half_open, self.cfg.syn_backlog))
            .unwrap_or(false);
        if !admits {
            self.queue_rst(local, remote, SeqNum(0), Some(seg.seq + seg.len()));
            return;
        }
        let id = self.alloc();
        let iss = iss.unwrap_or_else(|| self.isn.isn(now, local, remote));
        let mut cx = Ctx {
            now,
            cfg: &self.cfg,
            epoch: self.epoch,
            events: &mut self.events,
            ctl: &mut self.ctl,
            challenge: &mut self.challenge,
        };
        let conn = Conn::accept_syn(id, &mut cx, local, remote, iss, lid, seg);
        let slot = &mut self.slots[id.index as usize];
        slot.conn = Some(Box::new(conn));
        slot.mapped = true;
        slot.half_open = true;
        self.half_open += 1;
        self.by_tuple.insert((local, remote), id);
        if let Some(l) = listener_mut(&mut self.listeners, lid) {
            l.syn_queue.insert(id);
        }
        self.after(now, id, true);
    }

    /// Runs the timers due at `now`.
    pub fn on_timeout(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.wheel.expire(now, &mut expired);
        for &id in &expired {
            self.with_conn(now, id, |c, cx| c.on_timeout(cx));
        }
        self.expired = expired;
    }

    /// When [`TcpEngine::on_timeout`] wants to run next.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.wheel.next_deadline()
    }

    // ------------------------------------------------------------ output

    /// Writes the next segment into `buf` (header, options, payload, checksum). Call until
    /// `None`. Control segments (RSTs) go first, then connections round-robin.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(c) = self.ctl.pop_front() {
            if let Some(t) = write_ctl(buf, &c) {
                return Some(t);
            }
        }
        while let Some(&id) = self.dirty.front() {
            let Some(slot) = self.slots.get_mut(id.index as usize) else {
                self.dirty.pop_front();
                continue;
            };
            if slot.generation != id.generation || !slot.mapped {
                slot.dirty = slot.dirty && slot.generation != id.generation;
                self.dirty.pop_front();
                continue;
            }
            let Some(conn) = slot.conn.as_deref_mut() else {
                self.dirty.pop_front();
                continue;
            };
            let mut cx = Ctx {
                now,
                cfg: &self.cfg,
                epoch: self.epoch,
                events: &mut self.events,
                ctl: &mut self.ctl,
                challenge: &mut self.challenge,
            };
            let r = conn.poll_transmit(&mut cx, buf);
            let (local, remote) = (conn.local, conn.remote);
            self.dirty.pop_front();
            match r {
                Some(len) => {
                    // Stay in the round-robin, behind the others.
                    self.dirty.push_back(id);
                    self.after(now, id, false);
                    return Some(Transmit {
                        local,
                        remote,
                        len,
                        checksum: self.cfg.tx_checksum,
                    });
                }
                None => {
                    slot.dirty = false;
                    self.after(now, id, false);
                }
            }
            if let Some(c) = self.ctl.pop_front()
                && let Some(t) = write_ctl(buf, &c)
            {
                return Some(t);
            }
        }
        None
    }

    /// The next event for the socket layer.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ------------------------------------------------------------ listeners

    /// Listens on `local` (an unspecified IP listens on every address of the family).
    pub fn listen(&mut self, local: SocketAddr, backlog: usize) -> Result<ListenerId, TcpError> {
        if local.port() == 0 {
            return Err(TcpError::InvalidAddress);
        }
        if self.by_local.contains_key(&local) {
            return Err(TcpError::AddrInUse);
        }
        let l = Listener::new(local, backlog);
        let index = match self.listeners.iter().position(|s| s.listener.is_none()) {
            Some(i) => i,
            None => {
                self.listeners.push(ListenerSlot {
                    generation: 0,
                    listener: None,
                });
                self.listeners.len() - 1
            }
        };
        let s = &mut self.listeners[index];
        s.listener = Some(l);
        let id = ListenerId {
            shard: self.shard,
            index: index as u32,
            generation: s.generation,
        };
        self.by_local.insert(local, id);
        Ok(id)
    }

    /// Takes one established connection from the accept queue.
    /// A connection is waiting in `l`'s accept queue (it may still turn out stale: `accept`
    /// skips those).
    pub fn accept_pending(&self, l: ListenerId) -> bool {
        l.shard == self.shard
            && listener(&self.listeners, l).is_some_and(|x| !x.accept_queue.is_empty())
    }

    pub fn accept(&mut self, l: ListenerId) -> Option<ConnId> {
        if l.shard != self.shard {
            return None;
        }
        loop {
            let id = listener_mut(&mut self.listeners, l)?
                .accept_queue
                .pop_front()?;
            let Some(slot) = self.slots.get_mut(id.index as usize) else {
                continue;
            };
            if slot.generation != id.generation {
                continue;
            }
            let Some(conn) = slot.conn.as_deref_mut() else {
                continue;
            };
            conn.listener = None;
            conn.released = false;
            return Some(id);
        }
    }

    /// Closes a listener; every connection still in its SYN or accept queue is reset.
    pub fn close_listener(&mut self, now: Instant, l: ListenerId) {
        if l.shard != self.shard {
            return;
        }
        let Some(slot) = self.listeners.get_mut(l.index as usize) else {
            return;
        };
        if slot.generation != l.generation {
            return;
        }
        let Some(listener) = slot.listener.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.by_local.remove(&listener.local);
        let mut ids: Vec<ConnId> = listener.syn_queue.iter().copied().collect();
        ids.sort();
        ids.extend(listener.accept_queue.iter().copied());
        for id in ids {
            self.with_conn(now, id, |c, cx| {
                c.abort(cx);
                c.listener = None;
            });
        }
    }

    // ------------------------------------------------------------ connections

    /// Active open: queues a SYN from `local` to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        opts: ConnOptions,
    ) -> Result<ConnId, TcpError> {
        if local.port() == 0
            || remote.port() == 0
            || local.is_ipv4() != remote.is_ipv4()
            || remote.ip().is_unspecified()
            || local.ip().is_unspecified()
            || remote.ip().is_multicast()
        {
            return Err(TcpError::InvalidAddress);
        }
        if self.by_tuple.contains_key(&(local, remote)) {
            return Err(TcpError::AddrInUse);
        }
        let id = self.alloc();
        let iss = self.isn.isn(now, local, remote);
        let conn = Conn::connect(id, &self.cfg, now, local, remote, iss, opts);
        let slot = &mut self.slots[id.index as usize];
        slot.conn = Some(Box::new(conn));
        slot.mapped = true;
        self.by_tuple.insert((local, remote), id);
        self.after(now, id, true);
        Ok(id)
    }

    /// Copies what fits of `data` into the send buffer (0 if full).
    pub fn send(&mut self, now: Instant, id: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        self.with_user_conn(now, id, |c, _| c.send(data))
            .unwrap_or(Err(TcpError::NotConnected))
    }

    /// Reads in-order data. `Ok(0)` is EOF after the peer's FIN; `Err(WouldBlock)` means no data
    /// yet; after a RST, `Err(ConnectionReset)` once the queued data is drained.
    pub fn recv(&mut self, now: Instant, id: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        self.with_user_conn(now, id, |c, _| c.recv(buf))
            .unwrap_or(Err(TcpError::NotConnected))
    }

    /// `recv` that leaves the data queued (MSG_PEEK).
    pub fn peek(&mut self, now: Instant, id: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        self.with_user_conn(now, id, |c, _| c.peek(buf))
            .unwrap_or(Err(TcpError::NotConnected))
    }

    /// FIN after the queued data (SD_SEND).
    pub fn shutdown_write(&mut self, now: Instant, id: ConnId) -> Result<(), TcpError> {
        self.with_user_conn(now, id, |c, _| c.shutdown_write())
            .unwrap_or(Err(TcpError::NotConnected))
    }

    /// Graceful close (see the module docs of `conn::close`); the handle is invalid afterwards.
    pub fn close(&mut self, now: Instant, id: ConnId) {
        self.with_user_conn(now, id, |c, cx| c.close(cx));
    }

    /// Hard close: RST first in the transmit queue, queues discarded, no TIME_WAIT.
    pub fn abort(&mut self, now: Instant, id: ConnId) {
        self.with_user_conn(now, id, |c, cx| c.abort(cx));
    }

    /// The connection's state (`Closed` after a reset until the handle is closed).
    pub fn state(&self, id: ConnId) -> Option<TcpState> {
        self.conn(id).map(|c| c.state)
    }

    /// The error that ended the connection, if any.
    pub fn error(&self, id: ConnId) -> Option<TcpError> {
        self.conn(id).and_then(|c| c.error)
    }

    pub fn local_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.conn(id).map(|c| c.local)
    }

    pub fn remote_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.conn(id).map(|c| c.remote)
    }

    /// Bytes `recv` can return now.
    pub fn recv_available(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.recv_available())
    }

    /// Bytes `send` can take now.
    pub fn send_space(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.send_space())
    }

    /// Data bytes queued or in flight, not yet acknowledged (Linux SIOCOUTQ).
    pub fn send_queued(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.send_queued())
    }

    /// Bytes queued or in flight, plus one for an unacknowledged FIN.
    pub fn unacked_bytes(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.unacked_bytes())
    }

    /// Raise one `Event::Writable(id)` when every sent byte and the FIN are acknowledged
    /// (`unacked_bytes` reaches 0): what a lingering close waits for.
    pub fn notify_when_drained(&mut self, id: ConnId) {
        if let Some(slot) = self.slots.get_mut(id.index as usize)
            && slot.generation == id.generation
            && id.shard == self.shard
            && let Some(c) = slot.conn.as_deref_mut()
        {
            c.want_drained();
        }
    }

    /// Sender counters and congestion state (a small TCP_INFO).
    pub fn stats(&self, id: ConnId) -> Option<ConnStats> {
        self.conn(id).map(|c| c.stats())
    }

    /// TCP_NODELAY.
    pub fn set_nodelay(&mut self, id: ConnId, on: bool) {
        if let Some(slot) = self.slots.get_mut(id.index as usize)
            && slot.generation == id.generation
            && id.shard == self.shard
            && let Some(c) = slot.conn.as_deref_mut()
            && !c.released
        {
            c.nodelay = on;
            if !slot.dirty && slot.mapped {
                slot.dirty = true;
                self.dirty.push_back(id);
            }
        }
    }

    /// TCP_CORK (a provider extension): corked, only full segments are sent; uncorking sends
    /// what is queued at once, Nagle or not (Linux's TCP_NAGLE_PUSH).
    pub fn set_cork(&mut self, id: ConnId, on: bool) {
        if let Some(slot) = self.slots.get_mut(id.index as usize)
            && slot.generation == id.generation
            && id.shard == self.shard
            && let Some(c) = slot.conn.as_deref_mut()
            && !c.released
        {
            c.set_cork(on);
            if !on && !slot.dirty && slot.mapped {
                slot.dirty = true;
                self.dirty.push_back(id);
            }
        }
    }

    /// SO_KEEPALIVE. The idle timer starts at the next transmit poll or received segment.
    pub fn set_keepalive(&mut self, id: ConnId, on: bool) {
        if let Some(slot) = self.slots.get_mut(id.index as usize)
            && slot.generation == id.generation
            && id.shard == self.shard
            && let Some(c) = slot.conn.as_deref_mut()
            && !c.released
        {
            c.set_keepalive(on);
            if !slot.dirty && slot.mapped {
                slot.dirty = true;
                self.dirty.push_back(id);
            }
        }
    }

    /// Connections holding a 4-tuple (every state but CLOSED, TIME_WAIT included).
    pub fn connection_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// Orphans the engine reset because they did not finish before the orphan deadline (or ran
    /// out of retries), since the engine started.
    pub fn orphan_timeouts(&self) -> u64 {
        self.orphan_timeouts
    }

    /// Bytes of allocation the connection's queues hold (buffers, transmit queue, out-of-order
    /// blocks, queued ACKs): see [`super::buffer`].
    pub fn buffer_bytes(&self, id: ConnId) -> Option<usize> {
        self.conn(id).map(|c| c.buffer_bytes())
    }

    /// Connections in ESTABLISHED (accepted or not). A scan of the slab, like
    /// [`TcpEngine::orphan_count`]: for stats, not for the per-packet path.
    pub fn established_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.mapped)
            .filter_map(|s| s.conn.as_deref())
            .filter(|c| c.state == TcpState::Established)
            .count()
    }

    /// Connections the user closed that the engine is still finishing.
    pub fn orphan_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.mapped)
            .filter_map(|s| s.conn.as_deref())
            // TIME_WAIT means the FIN handshake is over: that is not an orphan (DESIGN §7).
            .filter(|c| c.released && c.listener.is_none() && c.state != TcpState::TimeWait)
            .count()
    }
}

fn listener(ls: &[ListenerSlot], id: ListenerId) -> Option<&Listener> {
    ls.get(id.index as usize)
        .filter(|s| s.generation == id.generation)
        .and_then(|s| s.listener.as_ref())
}

fn listener_mut(ls: &mut [ListenerSlot], id: ListenerId) -> Option<&mut Listener> {
    ls.get_mut(id.index as usize)
        .filter(|s| s.generation == id.generation)
        .and_then(|s| s.listener.as_mut())
}

/// A control segment for no connection (a RST to a stray): always a complete checksum.
fn write_ctl(buf: &mut [u8], c: &Ctl) -> Option<Transmit> {
    let len = write_segment(
        buf,
        c.local,
        c.remote,
        &c.seg,
        (&[], &[]),
        SegmentChecksum::Complete,
    )?;
    Some(Transmit {
        local: c.local,
        remote: c.remote,
        len,
        checksum: SegmentChecksum::Complete,
    })
}

#[cfg(test)]
mod size_tests {
    /// Memory per idle established connection, without its buffers (which start empty and
    /// grow on demand): the connection itself, its slot, and its 4-tuple map entry.
    #[test]
    fn an_idle_connection_costs_at_most_2_kib_plus_its_buffers() {
        let conn = std::mem::size_of::<super::Conn>();
        let slot = std::mem::size_of::<super::Slot>();
        let tuple =
            std::mem::size_of::<((std::net::SocketAddr, std::net::SocketAddr), super::ConnId)>();
        let total = conn + slot + tuple;
        println!("Conn {conn} B + slot {slot} B + tuple entry {tuple} B = {total} B");
        assert!(total <= 2048, "{total} B per idle connection");
    }
}
