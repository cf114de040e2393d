//! The sender half: send buffer, window, congestion control, RTT, loss recovery.
//!
//! Sequence layout: `iss` is the SYN; byte `i` of `buf` has sequence `buf_seq + i`; the FIN (once
//! queued) sits at `buf_seq + buf.len()`. `una ≤ nxt ≤ max`: `max` is the highest sequence ever
//! sent, `nxt` the next one to send — below `max` only while resending after an RTO (go-back-N,
//! as BSD does). Loss recovery is SACK-based (RFC 6675, through the shared [`Scoreboard`]) when
//! SACK was negotiated, NewReno (RFC 6582) otherwise; the window arithmetic is the
//! [`CongestionControl`]'s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::super::cc::{CongestionControl, new_cc};
use super::super::config::TcpConfig;
use super::super::rtt::RttEstimator;
use super::super::sack::Scoreboard;
use super::super::segment::SegmentIn;
use super::super::seq::SeqNum;
use super::super::types::ConnStats;

/// Duplicate ACK threshold (RFC 5681).
const DUPTHRESH: u32 = 3;

/// One segment the sender decided to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub seq: SeqNum,
    pub len: u32,
    pub fin: bool,
    pub psh: bool,
    pub rexmit: bool,
    pub kind: TxKind,
}

/// Why a segment is sent (for [`ConnStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxKind {
    New,
    Fast,
    Rto,
}

/// What an ACK changed, for the connection's timers and events.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AckResult {
    /// SND.UNA moved.
    pub advanced: bool,
    /// Space was freed after a short `send`.
    pub writable: bool,
    /// Restart the retransmission timer (first partial ACK in NewReno recovery).
    pub retransmit_timer_restart: bool,
}

#[derive(Debug)]
pub(crate) struct Sender {
    pub(crate) iss: SeqNum,
    pub(crate) una: SeqNum,
    pub(crate) nxt: SeqNum,
    pub(crate) max: SeqNum,
    /// Peer's window in bytes (scaled).
    pub(crate) wnd: u32,
    pub(crate) max_wnd: u32,
    wl1: SeqNum,
    wl2: SeqNum,
    buf: VecDeque<u8>,
    cap: usize,
    buf_seq: SeqNum,
    pub(crate) fin_queued: bool,
    /// Effective send MSS (payload bytes, options excluded).
    pub(crate) mss: u32,
    pub(crate) cc: Box<dyn CongestionControl>,
    pub(crate) rtt: RttEstimator,
    /// Karn: the one timed segment (end sequence, send time); cleared by any retransmission.
    rtt_probe: Option<(SeqNum, Instant)>,
    sb: Scoreboard,
    dupacks: u32,
    /// Recovery point while in fast recovery.
    recovery: Option<SeqNum>,
    high_rxt: SeqNum,
    /// A retransmission to send regardless of windows (fast retransmit, RTO, partial ACK).
    rexmit_now: Option<SeqNum>,
    /// SWS override from the persist timer.
    pub(crate) force_send: bool,
    last_send: Instant,
    writable_wanted: bool,
    pub(crate) syn_sent_at: Instant,
    partial_acks: u32,
    pub(crate) stats: ConnStats,
}

impl Sender {
    pub(crate) fn new(cfg: &TcpConfig, now: Instant, iss: SeqNum, cap: usize) -> Self {
        let mss = u32::from(cfg.mss).max(64);
        Self {
            iss,
            una: iss,
            nxt: iss,
            max: iss,
            wnd: 0,
            max_wnd: 0,
            wl1: SeqNum(0),
            wl2: SeqNum(0),
            buf: VecDeque::new(),
            cap,
            buf_seq: iss + 1,
            fin_queued: false,
            mss,
            cc: new_cc(cfg.cc, mss, cfg.initial_window_segments),
            rtt: RttEstimator::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto),
            rtt_probe: None,
            sb: Scoreboard::new(),
            dupacks: 0,
            recovery: None,
            high_rxt: iss,
            rexmit_now: None,
            force_send: false,
            last_send: now,
            writable_wanted: false,
            syn_sent_at: now,
            partial_acks: 0,
            stats: ConnStats::default(),
        }
    }

    /// Sets the negotiated MSS; the congestion controller is created afresh for it (IW10 is in
    /// segments of this size).
    pub(crate) fn set_mss(&mut self, cfg: &TcpConfig, mss: u32) {
        self.mss = mss;
        self.cc = new_cc(cfg.cc, mss, cfg.initial_window_segments);
    }

    /// Window from a SYN (never scaled).
    pub(crate) fn on_syn_window(&mut self, seg: &SegmentIn<'_>) {
        self.set_window(seg, 0);
    }

    /// Takes the segment's window unconditionally.
    pub(crate) fn set_window(&mut self, seg: &SegmentIn<'_>, shift: u8) {
        self.wnd = u32::from(seg.window) << shift;
        self.max_wnd = self.max_wnd.max(self.wnd);
        self.wl1 = seg.seq;
        self.wl2 = seg.ack;
    }

    pub(crate) fn on_syn_sent(&mut self) {
        if self.max == self.iss {
            self.max = self.iss + 1;
            self.nxt = self.max;
        }
    }

    pub(crate) fn on_established(&mut self, _cfg: &TcpConfig, now: Instant) {
        self.buf_seq = self.iss + 1;
        if self.nxt.lt(self.una) {
            self.nxt = self.una;
        }
        if self.max.lt(self.nxt) {
            self.max = self.nxt;
        }
        self.high_rxt = self.una;
        self.last_send = now;
    }

    fn data_end(&self) -> SeqNum {
        self.buf_seq + self.buf.len() as u32
    }

    /// Copies what fits into the send buffer.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.space());
        self.buf.extend(&data[..n]);
        if n < data.len() {
            self.writable_wanted = true;
        }
        n
    }

    pub(crate) fn space(&self) -> usize {
        self.cap.saturating_sub(self.buf.len())
    }

    pub(crate) fn unacked(&self) -> usize {
        self.buf.len() + usize::from(self.fin_queued && !self.fin_acked())
    }

    pub(crate) fn discard(&mut self) {
        self.buf.clear();
        self.buf_seq = self.una;
        self.rexmit_now = None;
        self.sb.clear();
    }

    pub(crate) fn fin_acked(&self) -> bool {
        self.fin_queued && self.una.gt(self.data_end())
    }

    /// Data or a FIN not yet sent (in this pass).
    pub(crate) fn has_unsent(&self) -> bool {
        let end = self.data_end();
        end.gt(self.nxt) || (self.fin_queued && self.nxt.le(end))
    }

    pub(crate) fn window_open(&self) -> bool {
        self.wnd > 0
    }

    /// The bytes of `[seq, seq+len)` as (up to) two slices.
    pub(crate) fn payload(&self, seq: SeqNum, len: u32) -> (&[u8], &[u8]) {
        let off = (seq - self.buf_seq).max(0) as usize;
        let end = (off + len as usize).min(self.buf.len());
        let off = off.min(end);
        let (a, b) = self.buf.as_slices();
        if end <= a.len() {
            (&a[off..end], &[])
        } else if off >= a.len() {
            (&b[off - a.len()..end - a.len()], &[])
        } else {
            (&a[off..], &b[..end - a.len()])
        }
    }

    fn flight(&self) -> u32 {
        (self.max - self.una).max(0) as u32
    }

    /// Bytes in the network as far as the congestion window is concerned.
    fn pipe(&self) -> u32 {
        match self.recovery {
            Some(_) if !self.sb.is_empty() => {
                self.sb
                    .pipe(self.una, self.max, self.high_rxt, self.mss, DUPTHRESH)
            }
            Some(_) => self.flight().saturating_sub(self.dupacks * self.mss),
            // Limited transmit (RFC 3042): the first two duplicate ACKs each release a segment.
            None => {
                ((self.nxt - self.una).max(0) as u32).saturating_sub(self.dupacks.min(2) * self.mss)
            }
        }
    }

    /// Processes the ACK fields of an acceptable segment (RFC 9293 §3.10.7.4 fifth check).
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        seg: &SegmentIn<'_>,
        shift: u8,
        sack_ok: bool,
        ts_ecr: Option<u32>,
        now_ts: u32,
    ) -> AckResult {
        let mut r = AckResult::default();
        let ack = seg.ack;
        let old_wnd = self.wnd;
        if self.wl1.lt(seg.seq) || (self.wl1 == seg.seq && self.wl2.le(ack)) {
            self.set_window(seg, shift);
        }
        let mut blocks = [(SeqNum(0), SeqNum(0)); 4];
        let mut nb = 0;
        if sack_ok {
            for &(l, rr) in seg.opts.sacks() {
                let (l, rr) = (SeqNum(l), SeqNum(rr));
                // Only plausible blocks: inside (UNA, MAX] and non-empty.
                if l.lt(rr) && l.ge(self.una) && rr.le(self.max) {
                    blocks[nb] = (l, rr);
                    nb += 1;
                }
            }
        }
        let blocks = &blocks[..nb];
        let flight = self.flight();
        if ack.gt(self.una) {
            let acked = (ack - self.una) as u32;
            let end = self.data_end();
            let data_acked = if ack.gt(self.buf_seq) {
                ((ack - self.buf_seq) as usize).min(self.buf.len())
            } else {
                0
            };
            self.buf.drain(..data_acked);
            self.buf_seq += data_acked as u32;
            debug_assert!(self.buf_seq.le(end));
            self.una = ack;
            if self.nxt.lt(ack) {
                self.nxt = ack;
            }
            if self.high_rxt.lt(ack) {
                self.high_rxt = ack;
            }
            let mut sample = None;
            if let Some((s, t)) = self.rtt_probe
                && ack.ge(s)
            {
                self.rtt_probe = None;
                sample = Some(now.saturating_duration_since(t));
            }
            if let Some(ecr) = ts_ecr.filter(|&e| e != 0) {
                let d = now_ts.wrapping_sub(ecr);
                if d < 1 << 30 {
                    sample = Some(Duration::from_millis(u64::from(d)));
                }
            }
            if let Some(s) = sample {
                self.rtt.on_sample(s);
            }
            if sack_ok {
                self.sb.on_ack(self.una, blocks);
            }
            if self.rexmit_now.is_some_and(|s| s.lt(self.una)) {
                self.rexmit_now = None;
            }
            match self.recovery {
                Some(rec) if ack.ge(rec) => {
                    self.recovery = None;
                    self.dupacks = 0;
                    self.partial_acks = 0;
                    self.cc.on_recovery_exit(now, flight);
                }
                Some(_) => {
                    // Partial ACK (RFC 6582 §3.2 step 5 / RFC 6675 keeps going).
                    if !sack_ok || self.sb.is_empty() {
                        self.rexmit_now = Some(self.una);
                        self.dupacks = 0;
                        r.retransmit_timer_restart = self.partial_acks == 0;
                    }
                    self.partial_acks += 1;
                }
                None => {
                    self.dupacks = 0;
                    self.cc.on_ack(now, acked, sample, flight);
                }
            }
            if sack_ok && self.recovery.is_none() && self.nxt == self.max {
                self.maybe_enter_recovery(now, false);
            }
            r.advanced = true;
            if self.writable_wanted && data_acked > 0 {
                self.writable_wanted = false;
                r.writable = true;
            }
        } else if ack == self.una {
            if sack_ok {
                self.sb.on_ack(self.una, blocks);
            }
            let dup = seg.payload.is_empty()
                && !seg.syn()
                && !seg.fin()
                && self.wnd == old_wnd
                && self.una != self.max;
            if dup {
                self.dupacks = self.dupacks.saturating_add(1);
                if self.recovery.is_none() && self.nxt == self.max {
                    self.maybe_enter_recovery(now, self.dupacks >= DUPTHRESH);
                }
            }
        }
        r
    }

    /// Fast retransmit on the third duplicate ACK, or earlier when the scoreboard shows the first
    /// segment lost (RFC 6675 §5).
    fn maybe_enter_recovery(&mut self, now: Instant, dupthresh_reached: bool) {
        let lost = !self.sb.is_empty() && self.sb.is_lost(self.una, self.mss, DUPTHRESH);
        if !(dupthresh_reached || lost) || self.una == self.max {
            return;
        }
        self.recovery = Some(self.max);
        self.stats.fast_recoveries += 1;
        self.partial_acks = 0;
        self.cc.on_congestion_event(now, self.flight());
        self.rexmit_now = Some(self.una);
        self.high_rxt = self.una;
        self.rtt_probe = None;
    }

    /// Retransmission timeout: collapse the window and go back to SND.UNA.
    pub(crate) fn on_rto(&mut self, now: Instant) {
        let flight = self.flight();
        self.stats.rto_count += 1;
        self.cc.on_rto(now, flight);
        self.rtt.backoff();
        self.rtt_probe = None;
        self.sb.clear();
        self.recovery = None;
        self.dupacks = 0;
        self.nxt = self.una;
        self.high_rxt = self.una;
        self.rexmit_now = Some(self.una);
    }

    /// A segment starting at `seq` of at most `limit` payload bytes, carrying the FIN if it ends
    /// at the FIN and the FIN was sent before (`resend`) or may be sent now.
    fn plan_at(&self, seq: SeqNum, limit: u32, rexmit: bool) -> Option<Plan> {
        let end = self.data_end();
        let seq = if seq.lt(self.buf_seq) {
            self.buf_seq
        } else {
            seq
        };
        let avail = (end - seq).max(0) as u32;
        let len = avail.min(limit);
        let fin = self.fin_queued && seq + len == end && (self.max.gt(end) || !rexmit);
        if len == 0 && !fin {
            return None;
        }
        let kind = if !rexmit {
            TxKind::New
        } else if self.recovery.is_some() {
            TxKind::Fast
        } else {
            TxKind::Rto
        };
        Some(Plan {
            seq,
            len,
            fin,
            psh: len == avail && len > 0,
            rexmit,
            kind,
        })
    }

    /// Decides the next data/FIN segment (RFC 9293 §3.8.6.2.1 sender SWS, RFC 896 Nagle, cwnd,
    /// peer window), `room` bounding the payload by the caller's buffer.
    pub(crate) fn next_segment(&mut self, now: Instant, nodelay: bool, room: u32) -> Option<Plan> {
        let mss = self.mss.min(room);
        if mss == 0 {
            return None;
        }
        if let Some(s) = self.rexmit_now {
            match self.plan_at(s, mss, true) {
                Some(p) => return Some(p),
                None => self.rexmit_now = None,
            }
        }
        let cwnd = self.cc.cwnd();
        if self.recovery.is_some() && !self.sb.is_empty() {
            let pipe = self.pipe();
            if cwnd.saturating_sub(pipe) >= self.mss
                && let Some((s, l)) =
                    self.sb
                        .next_seg(self.una, self.max, self.high_rxt, self.mss, DUPTHRESH)
                && s.lt(self.max)
                && let Some(p) = self.plan_at(s, l.min(mss), true)
            {
                return Some(p);
            }
        }
        if self.una == self.max && now.saturating_duration_since(self.last_send) >= self.rtt.rto() {
            // RFC 5681 §4.1 restart after idle.
            self.cc.on_idle_restart(now);
            self.last_send = now;
        }
        let in_flight = self.pipe();
        let cwnd_room = cwnd.saturating_sub(in_flight);
        let wnd_end = self.una + self.wnd;
        let wnd_room = (wnd_end - self.nxt).max(0) as u32;
        let end = self.data_end();
        let avail = (end - self.nxt).max(0) as u32;
        let resend = self.nxt.lt(self.max);
        let len = avail.min(mss).min(cwnd_room).min(wnd_room);
        let fin_here = self.fin_queued && self.nxt.le(end) && self.nxt + len == end;
        if len == 0 {
            if fin_here && (cwnd_room > 0 || in_flight == 0) {
                return Some(Plan {
                    seq: self.nxt,
                    len: 0,
                    fin: true,
                    psh: false,
                    rexmit: resend,
                    kind: if resend { TxKind::Rto } else { TxKind::New },
                });
            }
            return None;
        }
        let ok = len == mss
            || resend
            || self.force_send
            || fin_here
            || (len == avail && (nodelay || self.una == self.max))
            || (self.max_wnd > 0 && len >= self.max_wnd / 2);
        if !ok {
            return None;
        }
        Some(Plan {
            seq: self.nxt,
            len,
            fin: fin_here,
            psh: len == avail,
            rexmit: resend,
            kind: if resend { TxKind::Rto } else { TxKind::New },
        })
    }

    /// Bookkeeping after `plan` was written.
    pub(crate) fn on_sent(&mut self, now: Instant, plan: &Plan) {
        let end = plan.seq + plan.len + u32::from(plan.fin);
        self.stats.segments_sent += 1;
        if plan.rexmit || plan.seq.lt(self.max) {
            self.stats.retransmits += 1;
            match plan.kind {
                TxKind::Fast => self.stats.fast_retransmits += 1,
                _ => self.stats.rto_retransmits += 1,
            }
        }
        if plan.rexmit || plan.seq.lt(self.max) {
            // Karn: never time a retransmitted segment (nor anything outstanding with it).
            self.rtt_probe = None;
            if end.gt(self.high_rxt) {
                self.high_rxt = end;
            }
        } else if self.rtt_probe.is_none() {
            self.rtt_probe = Some((end, now));
        }
        if self.rexmit_now == Some(plan.seq) {
            self.rexmit_now = None;
        }
        if plan.seq.le(self.nxt) && end.gt(self.nxt) {
            self.nxt = end;
        }
        if self.nxt.gt(self.max) {
            self.max = self.nxt;
        }
        self.last_send = now;
        self.force_send = false;
    }
}

impl Sender {
    /// Counters and current congestion state.
    pub(crate) fn stats(&self) -> ConnStats {
        ConnStats {
            cwnd: self.cc.cwnd(),
            ssthresh: self.cc.ssthresh(),
            srtt: self.rtt.srtt(),
            rto: self.rtt.rto(),
            ..self.stats
        }
    }
}
