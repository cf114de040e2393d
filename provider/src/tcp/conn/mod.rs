//! One connection: state, negotiation, and the RFC 9293 §3.10.7 segment dispatch.
//!
//! The sender half lives in [`send`], the receiver half in [`recv`], FIN/TIME_WAIT/close in
//! [`close`]. The connection never talks to the outside directly: it reads its inputs from a
//! [`Ctx`] (clock, configuration, rate limiter) and writes events and stateless control segments
//! (RSTs) into it; the engine polls [`Conn::poll_transmit`] for everything else.

mod close;
mod recv;
mod send;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::{ConnOptions, TcpConfig};
use super::options::{MAX_WSCALE, TcpOptions};
use super::ratelimit::RateLimiter;
use super::segment::{SegmentIn, SegmentOut, write_segment};
use super::seq::SeqNum;
use super::types::{ConnId, ConnStats, Event, ListenerId, TcpError, TcpState};
use crate::net::tcp::{MIN_HEADER_LEN, TcpFlags};

pub(crate) use recv::{AckPoint, Receiver};
pub(crate) use send::Sender;

/// A control segment not tied to connection state (RST replies, aborts).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctl {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub seg: SegmentOut,
}

/// What a connection may touch outside itself during one call.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub cfg: &'a TcpConfig,
    /// Origin of the timestamp clock.
    pub epoch: Instant,
    pub events: &'a mut VecDeque<Event>,
    pub ctl: &'a mut VecDeque<Ctl>,
    pub challenge: &'a mut RateLimiter,
}

/// Smallest effective MSS we accept from a peer (guards against MSS 0 and tiny-segment attacks).
const MIN_MSS: u32 = 64;
/// MSS assumed when the peer sends none (RFC 9293 §3.7.1).
const DEFAULT_MSS: u16 = 536;
/// TCP timestamp option length as carried on every segment (NOP NOP TS).
const TS_LEN: u32 = 12;

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    pub(crate) state: TcpState,
    /// Passive open not yet accepted: the listener that owns it.
    pub(crate) listener: Option<ListenerId>,
    /// A passive open just completed; the engine moves it to the accept queue.
    pub(crate) notify_listener: bool,
    /// The user released the handle (`close`/`abort`), or it never had one.
    pub(crate) released: bool,
    /// The user called `close`/`abort`: arriving data is answered with RST.
    pub(crate) user_closed: bool,
    /// Active open (for the event kind on failure).
    active: bool,
    pub(crate) error: Option<TcpError>,
    pub(crate) nodelay: bool,
    pub(crate) keepalive: bool,

    snd: Sender,
    rcv: Receiver,

    // Negotiated options.
    ts_ok: bool,
    sack_ok: bool,
    snd_wscale: u8,
    rcv_wscale: u8,
    /// Shift we offer in our SYN (if window scaling is configured).
    our_wscale: u8,
    ts_recent: u32,
    ts_offset: u32,
    /// Peer's MSS as received (or the default).
    peer_mss: u16,

    // Control flags consumed by poll_transmit.
    syn_pending: bool,
    ack_now: bool,
    probe_due: bool,
    keepalive_due: bool,

    // Timers (the engine keeps one wheel entry per connection at the earliest of these).
    t_rto: Option<Instant>,
    t_delack: Option<Instant>,
    /// Request/response traffic: our data went out carrying a delayed ACK (the reply
    /// piggybacks it). Off again when the delayed-ACK timer fires. While on, draining pushed
    /// data does not ACK at once (the reply will carry it) — Linux's "pingpong" mode.
    interactive: bool,
    /// When data last arrived: data sent within a delayed-ACK time of it makes the connection
    /// interactive too, as Linux's `lrcvtime` check does — else an ACK sent at once for every
    /// drained request keeps the reply from ever carrying one, and interactive mode never starts.
    last_data_rcv: Option<Instant>,
    t_persist: Option<Instant>,
    t_keepalive: Option<Instant>,
    t_timewait: Option<Instant>,
    t_orphan: Option<Instant>,

    syn_retries: u32,
    rto_retries: u32,
    persist_backoff: u32,
    ka_probes: u32,
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: ConnId,
        cfg: &TcpConfig,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        iss: SeqNum,
        opts: ConnOptions,
        state: TcpState,
    ) -> Self {
        let send_cap = opts.send_buffer.unwrap_or(cfg.send_buffer).max(1);
        let recv_cap = opts
            .recv_buffer
            .unwrap_or(cfg.recv_buffer)
            .clamp(1, (u32::MAX >> 2) as usize);
        let mut our_wscale = 0u8;
        while our_wscale < MAX_WSCALE && (recv_cap >> our_wscale) > 0xffff {
            our_wscale += 1;
        }
        Self {
            id,
            local,
            remote,
            state,
            listener: None,
            notify_listener: false,
            released: false,
            user_closed: false,
            active: false,
            error: None,
            nodelay: opts.nodelay,
            keepalive: opts.keepalive || cfg.keepalive,
            snd: Sender::new(cfg, now, iss, send_cap),
            rcv: Receiver::new(cfg, recv_cap),
            ts_ok: false,
            sack_ok: false,
            snd_wscale: 0,
            rcv_wscale: 0,
            our_wscale: if cfg.window_scale { our_wscale } else { 0 },
            ts_recent: 0,
            ts_offset: iss.0.rotate_left(13),
            peer_mss: DEFAULT_MSS,
            syn_pending: false,
            ack_now: false,
            probe_due: false,
            keepalive_due: false,
            t_rto: None,
            t_delack: None,
            interactive: false,
            last_data_rcv: None,
            t_persist: None,
            t_keepalive: None,
            t_timewait: None,
            t_orphan: None,
            syn_retries: 0,
            rto_retries: 0,
            persist_backoff: 0,
            ka_probes: 0,
        }
    }

    /// An active open: SYN_SENT with the SYN queued.
    pub(crate) fn connect(
        id: ConnId,
        cfg: &TcpConfig,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        iss: SeqNum,
        opts: ConnOptions,
    ) -> Self {
        let mut c = Self::new(id, cfg, now, local, remote, iss, opts, TcpState::SynSent);
        c.active = true;
        c.syn_pending = true;
        c
    }

    /// A passive open from a listener's SYN: SYN_RECEIVED with the SYN-ACK queued.
    pub(crate) fn accept_syn(
        id: ConnId,
        cx: &mut Ctx<'_>,
        local: SocketAddr,
        remote: SocketAddr,
        iss: SeqNum,
        listener: ListenerId,
        seg: &SegmentIn<'_>,
    ) -> Self {
        let mut c = Self::new(
            id,
            cx.cfg,
            cx.now,
            local,
            remote,
            iss,
            ConnOptions::default(),
            TcpState::SynReceived,
        );
        c.listener = Some(listener);
        c.released = true;
        c.rcv.on_syn(seg.seq);
        c.negotiate(cx.cfg, &seg.opts, false);
        c.snd.on_syn_window(seg);
        c.syn_pending = true;
        c
    }

    /// Applies the peer's SYN options. `we_offered` tells whether our own SYN (active side) already
    /// carried our offers; on the passive side we answer only what the peer offered.
    fn negotiate(&mut self, cfg: &TcpConfig, o: &TcpOptions, _we_offered: bool) {
        self.peer_mss = o.mss.unwrap_or(DEFAULT_MSS);
        self.ts_ok = cfg.timestamps && o.timestamps.is_some();
        if let (true, Some((val, _))) = (self.ts_ok, o.timestamps) {
            self.ts_recent = val;
        }
        self.sack_ok = cfg.sack && o.sack_permitted;
        match (cfg.window_scale, o.wscale) {
            (true, Some(ws)) => {
                self.snd_wscale = ws.min(MAX_WSCALE);
                self.rcv_wscale = self.our_wscale;
            }
            _ => {
                self.snd_wscale = 0;
                self.rcv_wscale = 0;
                self.our_wscale = 0;
            }
        }
        let mut mss = u32::from(self.peer_mss.min(cfg.mss_for(&self.remote)));
        if self.ts_ok {
            mss = mss.saturating_sub(TS_LEN);
        }
        self.snd.set_mss(cfg, mss.max(MIN_MSS));
        // The peer sends at most this much per segment: ACK every second one of these.
        self.rcv.set_rcv_mss(mss.max(MIN_MSS));
    }

    /// Our timestamp clock (ms) with the per-connection offset (RFC 7323 §5.4).
    fn ts_now(&self, now: Instant, epoch: Instant) -> u32 {
        (now.saturating_duration_since(epoch).as_millis() as u32).wrapping_add(self.ts_offset)
    }

    /// The earliest timer deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.t_rto,
            self.t_delack,
            self.t_persist,
            self.t_keepalive,
            self.t_timewait,
            self.t_orphan,
            self.snd.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(crate) fn rto(&self) -> Duration {
        self.snd.rtt.rto()
    }

    // ---------------------------------------------------------------- inbound

    /// Processes one inbound segment for this connection.
    pub(crate) fn on_segment(&mut self, cx: &mut Ctx<'_>, seg: &SegmentIn<'_>) {
        match self.state {
            TcpState::Closed | TcpState::Listen => {}
            TcpState::SynSent => self.on_segment_syn_sent(cx, seg),
            _ => self.on_segment_sync(cx, seg),
        }
        if self.keepalive && self.state.is_synchronized() {
            self.ka_probes = 0;
            self.t_keepalive = Some(cx.now + cx.cfg.keepalive_idle);
        }
    }

    /// RFC 9293 §3.10.7.3.
    fn on_segment_syn_sent(&mut self, cx: &mut Ctx<'_>, seg: &SegmentIn<'_>) {
        let iss = self.snd.iss;
        if seg.has_ack() && (seg.ack.le(iss) || seg.ack.gt(self.snd.max)) {
            if !seg.rst() {
                self.queue_rst_reply(cx, seg.ack);
            }
            return;
        }
        if seg.rst() {
            if seg.has_ack() {
                self.fail(cx, TcpError::ConnectionRefused);
            }
            return;
        }
        if !seg.syn() {
            return;
        }
        self.rcv.on_syn(seg.seq);
        self.negotiate(cx.cfg, &seg.opts, true);
        self.snd.on_syn_window(seg);
        if seg.has_ack() {
            // Karn: time the SYN only if it was never retransmitted.
            if self.syn_retries == 0 {
                let rtt = cx.now.saturating_duration_since(self.snd.syn_sent_at);
                self.snd.rtt.on_sample(rtt);
            }
            self.snd.una = seg.ack;
            self.establish(cx);
            self.ack_now = true;
        } else {
            // Simultaneous open (RFC 9293 §3.5 figure 7).
            self.state = TcpState::SynReceived;
            self.syn_pending = true;
            self.t_rto = None;
        }
    }

    /// Enter ESTABLISHED from SYN_SENT or SYN_RECEIVED.
    fn establish(&mut self, cx: &mut Ctx<'_>) {
        self.state = TcpState::Established;
        self.syn_pending = false;
        self.t_rto = None;
        self.rto_retries = 0;
        self.snd.on_established(cx.cfg, cx.now);
        if self.listener.is_some() {
            self.notify_listener = true;
        } else {
            cx.events.push_back(Event::Connected(self.id));
        }
        if self.keepalive {
            self.t_keepalive = Some(cx.now + cx.cfg.keepalive_idle);
        }
    }

    /// Sequence acceptability test (RFC 9293 §3.10.7.4, first check).
    fn acceptable(&self, seg: &SegmentIn<'_>) -> bool {
        let nxt = self.rcv.nxt;
        let wnd = self.rcv.current_window();
        let len = seg.len();
        let in_win = |s: SeqNum| s.ge(nxt) && s.lt(nxt + wnd);
        match (len, wnd) {
            (0, 0) => seg.seq == nxt,
            (0, _) => in_win(seg.seq),
            (_, 0) => false,
            _ => in_win(seg.seq) || in_win(seg.seq + (len - 1)),
        }
    }

    /// Sends a challenge ACK if the rate limit allows (RFC 5961 §7).
    fn challenge_ack(&mut self, cx: &mut Ctx<'_>) {
        if cx.challenge.allow(cx.now) {
            self.ack_now = true;
        }
    }

    /// RFC 9293 §3.10.7.4 for SYN_RECEIVED and the synchronized states.
    fn on_segment_sync(&mut self, cx: &mut Ctx<'_>, seg: &SegmentIn<'_>) {
        // A retransmitted SYN, or the SYN-ACK of a simultaneous open.
        if self.state == TcpState::SynReceived && seg.syn() && !seg.rst() && seg.seq == self.rcv.irs
        {
            if seg.has_ack() && seg.ack == self.snd.max {
                self.snd.una = seg.ack;
                self.snd.on_syn_window(seg);
                self.establish(cx);
                self.ack_now = true;
            } else if !seg.has_ack() {
                self.syn_pending = true;
            }
            return;
        }

        // PAWS (RFC 7323 §5.3).
        if self.ts_ok
            && !seg.rst()
            && let Some((tsval, _)) = seg.opts.timestamps
            && (tsval.wrapping_sub(self.ts_recent) as i32) < 0
        {
            self.on_old_duplicate(seg);
            return;
        }

        if !self.acceptable(seg) {
            if !seg.rst() {
                if self.state == TcpState::TimeWait && seg.fin() {
                    // A retransmitted FIN: re-ACK it and restart 2 MSL.
                    self.t_timewait = Some(cx.now + cx.cfg.time_wait);
                }
                self.on_old_duplicate(seg);
            }
            return;
        }

        // RST (RFC 5961 §3.2).
        if seg.rst() {
            if seg.seq == self.rcv.nxt {
                self.on_reset(cx);
            } else {
                self.challenge_ack(cx);
            }
            return;
        }

        // Remember the timestamp (RFC 7323 §4.3): the segment covers RCV.NXT.
        if self.ts_ok
            && let Some((tsval, _)) = seg.opts.timestamps
            && seg.seq.le(self.rcv.nxt)
        {
            self.ts_recent = tsval;
        }

        // SYN in a synchronized state (RFC 5961 §4).
        if seg.syn() {
            self.challenge_ack(cx);
            return;
        }

        if !seg.has_ack() {
            return;
        }

        if self.state == TcpState::SynReceived {
            if seg.ack.gt(self.snd.una) && seg.ack.le(self.snd.max) {
                self.snd.una = seg.ack;
                self.snd.set_window(seg, self.snd_wscale);
                if self.syn_retries == 0 {
                    let rtt = cx.now.saturating_duration_since(self.snd.syn_sent_at);
                    self.snd.rtt.on_sample(rtt);
                }
                self.establish(cx);
            } else {
                self.queue_rst_reply(cx, seg.ack);
                return;
            }
        } else {
            // ACK acceptability (RFC 5961 §5.2).
            let max_back = self.snd.max_wnd.max(1);
            if seg.ack.gt(self.snd.max) || seg.ack.lt(SeqNum(self.snd.una.0.wrapping_sub(max_back)))
            {
                self.challenge_ack(cx);
                return;
            }
            let ts_ecr = if self.ts_ok {
                seg.opts.timestamps.map(|t| t.1)
            } else {
                None
            };
            let now_ts = self.ts_now(cx.now, cx.epoch);
            let r = self
                .snd
                .on_ack(cx.now, seg, self.snd_wscale, self.sack_ok, ts_ecr, now_ts);
            self.snd.release_if_drained();
            if r.advanced {
                self.rto_retries = 0;
                self.persist_backoff = 0;
                self.t_persist = None;
                self.t_rto = if self.snd.una == self.snd.max {
                    None
                } else {
                    Some(cx.now + self.rto())
                };
                if r.writable {
                    cx.events.push_back(Event::Writable(self.id));
                }
            }
            if self.snd.window_open() {
                self.t_persist = None;
            }
            if r.retransmit_timer_restart && self.snd.una != self.snd.max {
                self.t_rto = Some(cx.now + self.rto());
            }
            if r.advanced {
                self.snd.arm_pto(cx.now, self.sack_ok, self.t_rto);
            }
            if self.on_fin_acked(cx) {
                return;
            }
        }

        self.on_data(cx, seg);
    }

    /// A valid RST for this connection (RFC 9293 §3.10.7.4 second check, exact sequence).
    fn on_reset(&mut self, cx: &mut Ctx<'_>) {
        match self.state {
            TcpState::SynReceived if self.active => self.fail(cx, TcpError::ConnectionRefused),
            TcpState::SynReceived => self.enter_closed(),
            TcpState::Established
            | TcpState::FinWait1
            | TcpState::FinWait2
            | TcpState::CloseWait => {
                self.error = Some(TcpError::ConnectionReset);
                cx.events.push_back(Event::Reset(self.id));
                self.snd.discard();
                self.enter_closed();
            }
            _ => self.enter_closed(),
        }
    }

    /// An active open failed, or an established connection died of a timeout.
    fn fail(&mut self, cx: &mut Ctx<'_>, e: TcpError) {
        self.error = Some(e);
        match self.state {
            TcpState::SynSent | TcpState::SynReceived if self.active => {
                cx.events.push_back(Event::ConnectFailed(self.id, e));
            }
            TcpState::SynReceived => {}
            _ => cx.events.push_back(Event::Reset(self.id)),
        }
        self.snd.discard();
        self.enter_closed();
    }

    /// Drops every timer and flag; the engine sees CLOSED and unmaps the 4-tuple.
    fn enter_closed(&mut self) {
        self.state = TcpState::Closed;
        self.snd.clear_timers();
        self.t_rto = None;
        self.t_delack = None;
        self.t_persist = None;
        self.t_keepalive = None;
        self.t_timewait = None;
        self.t_orphan = None;
        self.ack_now = false;
        self.syn_pending = false;
        self.probe_due = false;
        self.keepalive_due = false;
    }

    /// Queues `<SEQ=seq><CTL=RST>` (reply to an unacceptable ACK).
    fn queue_rst_reply(&self, cx: &mut Ctx<'_>, seq: SeqNum) {
        cx.ctl.push_back(Ctl {
            local: self.local,
            remote: self.remote,
            seg: SegmentOut {
                seq,
                ack: SeqNum(0),
                flags: TcpFlags::RST,
                window: 0,
                opts: TcpOptions::default(),
            },
        });
    }

    /// The RST of an abort: SEQ=SND.NXT, ACK=RCV.NXT, timestamps if negotiated. `first` puts it at
    /// the head of the transmit queue.
    fn queue_abort_rst(&self, cx: &mut Ctx<'_>, first: bool) {
        let mut opts = TcpOptions::default();
        if self.ts_ok {
            opts.timestamps = Some((self.ts_now(cx.now, cx.epoch), self.ts_recent));
        }
        let synced = self.state != TcpState::SynSent;
        let c = Ctl {
            local: self.local,
            remote: self.remote,
            seg: SegmentOut {
                seq: self.snd.max,
                ack: if synced { self.rcv.nxt } else { SeqNum(0) },
                flags: if synced {
                    TcpFlags::RST | TcpFlags::ACK
                } else {
                    TcpFlags::RST
                },
                window: 0,
                opts,
            },
        };
        if first {
            cx.ctl.push_front(c);
        } else {
            cx.ctl.push_back(c);
        }
    }

    // ---------------------------------------------------------------- timers

    /// Runs every timer due at `cx.now`.
    pub(crate) fn on_timeout(&mut self, cx: &mut Ctx<'_>) {
        let now = cx.now;
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.t_timewait) {
            self.enter_closed();
            return;
        }
        if due(self.t_orphan) {
            self.t_orphan = None;
            self.queue_abort_rst(cx, false);
            self.error = Some(TcpError::TimedOut);
            self.enter_closed();
            return;
        }
        if due(self.t_delack) {
            self.t_delack = None;
            self.ack_now = true;
            self.interactive = false;
        }
        if self.snd.next_deadline().is_some_and(|t| t <= now) && self.state.is_synchronized() {
            self.snd.on_timer(now);
            if self.snd.probe_pending() && due(self.t_rto) {
                // RFC 8985 §7.2: the probe timeout is capped at the RTO; when both expire the
                // probe goes out instead of the timeout, and the RTO restarts after it.
                self.t_rto = Some(now + self.rto());
            }
        }
        if due(self.t_rto) {
            self.t_rto = None;
            self.on_rto(cx);
            if self.state == TcpState::Closed {
                return;
            }
        }
        if due(self.t_persist) {
            self.t_persist = None;
            self.on_persist();
        }
        if due(self.t_keepalive) {
            self.t_keepalive = None;
            self.on_keepalive(cx);
        }
    }

    /// Retransmission timeout (RFC 6298 §5.4–5.7).
    fn on_rto(&mut self, cx: &mut Ctx<'_>) {
        match self.state {
            TcpState::SynSent | TcpState::SynReceived => {
                self.syn_retries += 1;
                if self.syn_retries > cx.cfg.syn_retries {
                    self.fail(cx, TcpError::TimedOut);
                    return;
                }
                self.snd.rtt.backoff();
                self.syn_pending = true;
            }
            TcpState::Closed | TcpState::Listen | TcpState::TimeWait => {}
            _ => {
                if self.snd.una == self.snd.max {
                    return;
                }
                self.rto_retries += 1;
                if self.rto_retries > cx.cfg.data_retries {
                    self.fail(cx, TcpError::TimedOut);
                    return;
                }
                self.snd.on_rto(cx.now);
            }
        }
    }

    /// TCP_CORK (see `Sender::set_cork`).
    pub(crate) fn set_cork(&mut self, on: bool) {
        self.snd.set_cork(on);
    }

    /// Persist timer: a zero-window probe, or the SWS override (RFC 9293 §3.8.6.2.1).
    fn on_persist(&mut self) {
        if !self.state.is_synchronized() || !self.snd.has_unsent() || self.snd.una != self.snd.max {
            return;
        }
        if self.snd.wnd == 0 {
            self.probe_due = true;
            self.persist_backoff = self.persist_backoff.saturating_add(1);
        } else {
            self.snd.force_send = true;
        }
    }

    fn persist_interval(&self, cfg: &TcpConfig) -> Duration {
        let base = self.rto();
        let shift = self.persist_backoff.min(16);
        base.saturating_mul(1u32 << shift).min(cfg.max_rto)
    }

    /// Keepalive timer (RFC 9293 §3.8.4).
    fn on_keepalive(&mut self, cx: &mut Ctx<'_>) {
        if !self.keepalive || !self.state.is_synchronized() || self.state == TcpState::TimeWait {
            return;
        }
        if self.snd.una != self.snd.max {
            // Data in flight: the retransmission timer watches the peer.
            self.t_keepalive = Some(cx.now + cx.cfg.keepalive_idle);
            return;
        }
        if self.ka_probes >= cx.cfg.keepalive_probes {
            self.queue_abort_rst(cx, false);
            self.fail(cx, TcpError::TimedOut);
            return;
        }
        self.ka_probes += 1;
        self.keepalive_due = true;
        self.t_keepalive = Some(cx.now + cx.cfg.keepalive_interval);
    }

    // ---------------------------------------------------------------- outbound

    /// Writes the next segment this connection wants to send into `buf`; `None` if nothing.
    pub(crate) fn poll_transmit(&mut self, cx: &mut Ctx<'_>, buf: &mut [u8]) -> Option<usize> {
        let r = self.poll_transmit_inner(cx, buf);
        if r.is_none() {
            self.arm_persist(cx);
        }
        r
    }

    fn poll_transmit_inner(&mut self, cx: &mut Ctx<'_>, buf: &mut [u8]) -> Option<usize> {
        let now = cx.now;
        if self.keepalive
            && self.t_keepalive.is_none()
            && self.state.is_synchronized()
            && self.state != TcpState::TimeWait
        {
            self.t_keepalive = Some(now + cx.cfg.keepalive_idle);
        }
        match self.state {
            TcpState::Closed | TcpState::Listen => None,
            TcpState::SynSent | TcpState::SynReceived => {
                if self.syn_pending {
                    let n = self.write_syn(cx, buf)?;
                    self.syn_pending = false;
                    self.ack_now = false;
                    if self.syn_retries == 0 {
                        self.snd.syn_sent_at = now;
                    }
                    self.t_rto = Some(now + self.rto());
                    return Some(n);
                }
                if self.ack_now && self.state == TcpState::SynReceived {
                    // Answer to an unacceptable segment in SYN_RECEIVED: repeat the SYN-ACK.
                    self.ack_now = false;
                    return self.write_syn(cx, buf);
                }
                None
            }
            TcpState::TimeWait => {
                if self.ack_now {
                    return self.write_pure_ack(cx, buf, self.snd.max);
                }
                None
            }
            _ => {
                if let Some(&p) = self.rcv.points.front() {
                    let n = self.write_ack_point(cx, buf, p);
                    self.rcv.points.pop_front();
                    if n.is_some() {
                        return n;
                    }
                }
                let room = buf.len().saturating_sub(MIN_HEADER_LEN + 40);
                if let Some(plan) =
                    self.snd
                        .next_segment(now, self.nodelay, self.sack_ok, room as u32)
                {
                    return self.write_data(cx, buf, plan);
                }
                if self.probe_due {
                    self.probe_due = false;
                    self.t_persist = Some(now + self.persist_interval(cx.cfg));
                    return self.write_pure_ack(cx, buf, self.snd.una + u32::MAX);
                }
                if self.keepalive_due {
                    self.keepalive_due = false;
                    return self.write_pure_ack(cx, buf, self.snd.una + u32::MAX);
                }
                if self.ack_now || self.rcv.window_update_due(self.rcv_wscale) {
                    return self.write_pure_ack(cx, buf, self.snd.max);
                }
                None
            }
        }
    }

    /// Arms the persist timer when data waits but nothing is in flight to clock it out.
    fn arm_persist(&mut self, cx: &Ctx<'_>) {
        if matches!(
            self.state,
            TcpState::Established
                | TcpState::CloseWait
                | TcpState::FinWait1
                | TcpState::Closing
                | TcpState::LastAck
        ) && self.t_persist.is_none()
            && self.t_rto.is_none()
            && self.snd.una == self.snd.max
            && self.snd.has_unsent()
        {
            self.t_persist = Some(cx.now + self.persist_interval(cx.cfg));
        }
    }

    /// The options of a non-SYN segment: timestamps and (for ACKs) SACK blocks.
    fn data_options(&self, cx: &Ctx<'_>) -> TcpOptions {
        let mut o = TcpOptions::default();
        if self.ts_ok {
            o.timestamps = Some((self.ts_now(cx.now, cx.epoch), self.ts_recent));
        }
        if self.sack_ok {
            let mut blocks = Vec::with_capacity(4);
            blocks.extend(self.rcv.pending_dsack());
            let room = self.sack_block_max().saturating_sub(blocks.len());
            blocks.extend(self.rcv.sack_blocks(room));
            for (i, (l, r)) in blocks.into_iter().enumerate() {
                o.sack_blocks[i] = (l.0, r.0);
                o.sack_count = i as u8 + 1;
            }
        }
        o
    }

    /// Bookkeeping common to every segment that carries our current ACK.
    fn on_ack_sent(&mut self) {
        if self.sack_ok && self.rcv.pending_dsack().is_some() {
            self.snd.stats.dsacks_sent += 1;
        }
        self.ack_now = false;
        self.t_delack = None;
        self.rcv.on_ack_sent();
    }

    /// A pure ACK of an earlier receive state (see [`AckPoint`]).
    fn write_ack_point(&mut self, cx: &mut Ctx<'_>, buf: &mut [u8], p: AckPoint) -> Option<usize> {
        let window = self.rcv.advertise_at(p.ack, self.rcv_wscale);
        let mut opts = TcpOptions::default();
        if self.ts_ok {
            opts.timestamps = Some((self.ts_now(cx.now, cx.epoch), self.ts_recent));
        }
        if self.sack_ok {
            let blocks = p
                .dsack
                .into_iter()
                .chain(p.sacks[..usize::from(p.n)].iter().copied());
            for (i, (l, r)) in blocks.take(self.sack_block_max()).enumerate() {
                opts.sack_blocks[i] = (l.0, r.0);
                opts.sack_count = i as u8 + 1;
            }
            if p.dsack.is_some() {
                self.snd.stats.dsacks_sent += 1;
            }
        }
        let seg = SegmentOut {
            seq: self.snd.max,
            ack: p.ack,
            flags: TcpFlags::ACK,
            window,
            opts,
        };
        write_segment(
            buf,
            self.local,
            self.remote,
            &seg,
            (&[], &[]),
            cx.cfg.tx_checksum,
        )
    }

    fn write_syn(&mut self, cx: &mut Ctx<'_>, buf: &mut [u8]) -> Option<usize> {
        let cfg = cx.cfg;
        let synack = self.state == TcpState::SynReceived;
        let mut o = TcpOptions {
            mss: Some(cfg.mss_for(&self.remote)),
            ..Default::default()
        };
        // Active SYN: offer what is configured. SYN-ACK: answer what was negotiated.
        let (ws, ts, sack) = if synack {
            (
                (self.our_wscale > 0 || self.rcv_wscale > 0 || self.snd_wscale > 0)
                    && cfg.window_scale,
                self.ts_ok,
                self.sack_ok,
            )
        } else {
            (cfg.window_scale, cfg.timestamps, cfg.sack)
        };
        if ws {
            o.wscale = Some(self.our_wscale);
        }
        if ts {
            let ecr = if synack { self.ts_recent } else { 0 };
            o.timestamps = Some((self.ts_now(cx.now, cx.epoch), ecr));
        }
        o.sack_permitted = sack;
        let window = self.rcv.syn_window();
        let seg = SegmentOut {
            seq: self.snd.iss,
            ack: if synack { self.rcv.nxt } else { SeqNum(0) },
            flags: if synack {
                TcpFlags::SYN | TcpFlags::ACK
            } else {
                TcpFlags::SYN
            },
            window,
            opts: o,
        };
        let n = write_segment(
            buf,
            self.local,
            self.remote,
            &seg,
            (&[], &[]),
            cx.cfg.tx_checksum,
        )?;
        if synack {
            self.on_ack_sent();
        }
        self.snd.on_syn_sent();
        Some(n)
    }

    fn write_pure_ack(&mut self, cx: &mut Ctx<'_>, buf: &mut [u8], seq: SeqNum) -> Option<usize> {
        let window = self.rcv.advertise(self.rcv_wscale);
        let seg = SegmentOut {
            seq,
            ack: self.rcv.nxt,
            flags: TcpFlags::ACK,
            window,
            opts: self.data_options(cx),
        };
        let n = write_segment(
            buf,
            self.local,
            self.remote,
            &seg,
            (&[], &[]),
            cx.cfg.tx_checksum,
        )?;
        self.on_ack_sent();
        Some(n)
    }

    fn write_data(&mut self, cx: &mut Ctx<'_>, buf: &mut [u8], plan: send::Plan) -> Option<usize> {
        let window = self.rcv.advertise(self.rcv_wscale);
        let mut flags = TcpFlags::ACK;
        if plan.fin {
            flags = flags | TcpFlags::FIN;
        }
        if plan.psh {
            flags = flags | TcpFlags::PSH;
        }
        let seg = SegmentOut {
            seq: plan.seq,
            ack: self.rcv.nxt,
            flags,
            window,
            opts: self.data_options(cx),
        };
        let payload = self.snd.payload(plan.seq, plan.len);
        let n = write_segment(
            buf,
            self.local,
            self.remote,
            &seg,
            payload,
            cx.cfg.tx_checksum,
        )?;
        self.snd.on_sent(cx.now, &plan);
        if plan.len > 0
            && (self.t_delack.is_some()
                || self
                    .last_data_rcv
                    .is_some_and(|t| cx.now.saturating_duration_since(t) < cx.cfg.delayed_ack))
        {
            self.interactive = true;
        }
        self.on_ack_sent();
        if self.t_rto.is_none() || plan.kind == send::TxKind::Tlp {
            // RFC 8985 §7.3: after a probe the retransmission timer restarts.
            self.t_rto = Some(cx.now + self.rto());
        }
        if plan.kind == send::TxKind::New {
            self.snd.arm_pto(cx.now, self.sack_ok, self.t_rto);
        }
        self.t_persist = None;
        Some(n)
    }

    // ---------------------------------------------------------------- user calls

    pub(crate) fn send(&mut self, data: &[u8]) -> Result<usize, TcpError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.state {
            TcpState::Established | TcpState::CloseWait if !self.snd.fin_queued => {
                Ok(self.snd.push(data))
            }
            TcpState::SynSent | TcpState::SynReceived => Err(TcpError::NotConnected),
            TcpState::Closed => Err(TcpError::NotConnected),
            _ => Err(TcpError::Shutdown),
        }
    }

    pub(crate) fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        self.recv_or_peek(buf, false)
    }

    /// `recv` that leaves the data queued (MSG_PEEK): no window update, no ACK.
    pub(crate) fn peek(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        self.recv_or_peek(buf, true)
    }

    fn recv_or_peek(&mut self, buf: &mut [u8], peek: bool) -> Result<usize, TcpError> {
        if peek {
            let n = self.rcv.peek(buf);
            if n > 0 {
                return Ok(n);
            }
        }
        let n = if peek { 0 } else { self.rcv.read(buf) };
        if n > 0 {
            // The application drained data the peer pushed while our ACK is being delayed:
            // ACK now, as Linux does (ICSK_ACK_PUSHED) — a Nagle sender waits for exactly this
            // ACK before its next small segment. Not for request/response traffic, where the
            // reply carries the ACK.
            if self.rcv.pushed
                && !self.interactive
                && self.rcv.available() == 0
                && self.t_delack.is_some()
            {
                self.ack_now = true;
            }
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(n);
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.rcv.fin_received {
            return Ok(0);
        }
        match self.state {
            TcpState::SynSent | TcpState::SynReceived => Err(TcpError::NotConnected),
            TcpState::Closed => Err(TcpError::NotConnected),
            _ => Err(TcpError::WouldBlock),
        }
    }

    pub(crate) fn set_keepalive(&mut self, on: bool) {
        self.keepalive = on;
        if !on {
            self.t_keepalive = None;
            self.ka_probes = 0;
        }
    }

    /// Allocation held by the connection's queues (see `tcp::buffer`).
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.snd.buffer_bytes() + self.rcv.buffer_bytes()
    }

    pub(crate) fn recv_available(&self) -> usize {
        self.rcv.available()
    }
    pub(crate) fn send_space(&self) -> usize {
        match self.state {
            TcpState::Established | TcpState::CloseWait if !self.snd.fin_queued => self.snd.space(),
            _ => 0,
        }
    }
    pub(crate) fn stats(&self) -> ConnStats {
        self.snd.stats()
    }
    pub(crate) fn unacked_bytes(&self) -> usize {
        self.snd.unacked()
    }
    pub(crate) fn send_queued(&self) -> usize {
        self.snd.queued()
    }
    pub(crate) fn want_drained(&mut self) {
        self.snd.want_drained();
    }
}
