//! The sender half: send buffer, window, congestion control, RTT, loss recovery.
//!
//! Sequence layout: `iss` is the SYN; byte `i` of `buf` has sequence `buf_seq + i`; the FIN (once
//! queued) sits at `buf_seq + buf.len()`. `una ≤ max`: `max` is the highest sequence ever sent
//! (SND.NXT; new data always goes out at `max`).
//!
//! Every segment sent and not yet cumulatively acknowledged is kept in a transmit queue
//! ([`TxSeg`], in sequence order, covering `[una, max)` exactly) with its last transmission time
//! and whether it is in flight, SACKed or lost. Loss recovery works on that queue:
//! - with SACK, losses are detected by RACK (RFC 8985 §6): a segment is lost once a segment sent
//!   after it was delivered and a reordering window has passed. That also finds lost
//!   retransmissions. A tail loss probe (RFC 8985 §7) makes the receiver produce the SACKs RACK
//!   needs when the tail of a flight is lost;
//! - what to send is RFC 6675's NextSeg, driven by `pipe` on every ACK: lost segments (rule 1),
//!   new data (rule 2), unSACKed segments below the highest SACK (rule 3), one rescue
//!   retransmission per episode (rule 4);
//! - without SACK, NewReno (RFC 6582): fast retransmit on the third duplicate ACK, one
//!   retransmission per partial ACK;
//! - a retransmission timeout marks everything outstanding lost and restarts from SND.UNA in
//!   slow start (RFC 6675 §5.1, RFC 5681 §3.1); RACK keeps finding lost retransmissions in that
//!   phase too, and no new fast recovery starts before the recovery point is acknowledged.
//!
//! The window arithmetic is the [`CongestionControl`]'s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::super::cc::{CongestionControl, new_cc};
use super::super::config::TcpConfig;
use super::super::rtt::RttEstimator;
use super::super::segment::SegmentIn;
use super::super::seq::SeqNum;
use super::super::types::ConnStats;

/// Duplicate ACK threshold (RFC 5681), also RACK's "segments SACKed" threshold (RFC 8985 §6.2).
const DUPTHRESH: u32 = 3;
/// RFC 8985 §7.2 WCDelAckT: the peer's worst-case delayed-ACK time, added to the PTO when only
/// one segment is in flight.
const WC_DEL_ACK: Duration = Duration::from_millis(200);
/// Floor of the probe timeout (timer granularity headroom; Linux uses 10 ms as well).
const MIN_PTO: Duration = Duration::from_millis(10);
/// Resolution of the timestamp clock (RFC 7323 TSval ticks are milliseconds here).
const TS_TICK: Duration = Duration::from_millis(1);
/// RFC 8985 §6.2 step 4: a widened reordering window persists for this many recoveries.
const REO_WND_PERSIST: u32 = 16;

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

/// Why a segment is sent (for [`ConnStats`] and the timers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxKind {
    /// New data (RFC 6675 rule 2, or outside recovery).
    New,
    /// Fast retransmit, NewReno partial-ACK retransmission, NextSeg rules 1 and 3.
    Fast,
    /// Retransmission after a timeout (RFC 6675 §5.1).
    Rto,
    /// RFC 6675 rule 4.
    Rescue,
    /// RFC 8985 tail loss probe (new data or the last segment).
    Tlp,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegState {
    /// Presumed in the network (the original or a retransmission).
    InFlight,
    /// Presumed lost, not retransmitted since.
    Lost,
    /// Selectively acknowledged.
    Sacked,
}

/// One transmitted, not yet cumulatively acknowledged segment.
#[derive(Clone, Copy, Debug)]
struct TxSeg {
    start: SeqNum,
    /// Exclusive; counts the FIN.
    end: SeqNum,
    fin: bool,
    /// Time of the last (re)transmission.
    xmit: Instant,
    /// Retransmitted at least once (RACK and Karn treat its ACK as ambiguous).
    retransmitted: bool,
    state: SegState,
    /// In flight twice: retransmitted while the original was still presumed in flight (rules 3
    /// and 4, tail loss probe). Counts twice in `pipe` (RFC 6675 SetPipe).
    dup: bool,
}

impl TxSeg {
    fn len(&self) -> u32 {
        self.end.dist(self.start)
    }
    fn payload_len(&self) -> u32 {
        self.len() - u32::from(self.fin)
    }
}

/// RFC 8985 §6 state.
#[derive(Debug)]
struct Rack {
    /// Transmission time and end of the most recently sent segment that was delivered.
    xmit: Option<Instant>,
    end: SeqNum,
    /// RTT of that segment.
    rtt: Duration,
    min_rtt: Option<Duration>,
    /// Highest end sequence delivered (RACK.fack).
    fack: SeqNum,
    reordering_seen: bool,
    reo_wnd_mult: u32,
    reo_wnd_persist: u32,
    /// SND.NXT when the reordering window was last widened by a D-SACK.
    dsack_round: Option<SeqNum>,
    /// Reordering timer.
    deadline: Option<Instant>,
}

/// Recovery phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// Fast recovery (RFC 6675 / RFC 6582).
    Fast,
    /// After a retransmission timeout (RFC 6675 §5.1).
    Rto,
}

#[derive(Debug)]
pub(crate) struct Sender {
    pub(crate) iss: SeqNum,
    pub(crate) una: SeqNum,
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
    /// The transmit queue: `[una, max)` in sequence order.
    q: VecDeque<TxSeg>,
    sacked_bytes: u32,
    sacked_segs: u32,
    lost_bytes: u32,
    dup_bytes: u32,
    phase: Phase,
    /// RecoveryPoint: HighData when the current (or last) recovery started.
    recovery_point: SeqNum,
    recovery_start: Instant,
    rescue_done: bool,
    dupacks: u32,
    partial_acks: u32,
    /// A retransmission to send regardless of cwnd (fast retransmit, RTO, partial ACK).
    rexmit_now: Option<SeqNum>,
    rack: Rack,
    /// RFC 8985 TLP.end_seq: a probe is outstanding.
    tlp_end: Option<SeqNum>,
    tlp_retrans: bool,
    /// The probe timer fired: the next segment is a probe.
    tlp_due: bool,
    /// Probe timeout.
    pto: Option<Instant>,
    /// SWS override from the persist timer.
    pub(crate) force_send: bool,
    /// TCP_CORK: hold partial segments.
    cork: bool,
    /// Uncorked: data below this goes out in partial segments, Nagle or not.
    push_to: Option<SeqNum>,
    last_send: Instant,
    writable_wanted: bool,
    /// Raise `writable` once every byte and the FIN are acknowledged (a lingering close).
    drained_wanted: bool,
    pub(crate) syn_sent_at: Instant,
    /// When the retransmission or probe timer last expired: timestamp echoes of segments sent
    /// before it are not RTT samples.
    rto_at: Option<Instant>,
    /// FlightSize before the first ACK processed at this instant (see
    /// [`Sender::loss_flight`]).
    batch_flight: (Instant, u32),
    pub(crate) stats: ConnStats,
}

/// RFC 8985 RACK_sent_after: (t1, s1) was sent after (t2, s2).
fn sent_after(t1: Instant, s1: SeqNum, t2: Instant, s2: SeqNum) -> bool {
    t1 > t2 || (t1 == t2 && s1.gt(s2))
}

impl Sender {
    /// Gives back the send buffer's and the transmit queue's allocations once they are empty
    /// (`tcp::buffer`); called after each ACK is processed.
    pub(crate) fn release_if_drained(&mut self) {
        super::super::buffer::release_if_empty(&mut self.buf);
        super::super::buffer::release_if_empty(&mut self.q);
    }

    /// Allocation held by the send buffer and the transmit queue.
    pub(crate) fn buffer_bytes(&self) -> usize {
        use super::super::buffer::Releasable;
        self.buf.capacity_bytes() + self.q.capacity_bytes()
    }

    pub(crate) fn new(cfg: &TcpConfig, now: Instant, iss: SeqNum, cap: usize) -> Self {
        let mss = u32::from(cfg.mss).max(64);
        Self {
            iss,
            una: iss,
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
            q: VecDeque::new(),
            sacked_bytes: 0,
            sacked_segs: 0,
            lost_bytes: 0,
            dup_bytes: 0,
            phase: Phase::Open,
            recovery_point: iss,
            recovery_start: now,
            rescue_done: false,
            dupacks: 0,
            partial_acks: 0,
            rexmit_now: None,
            rack: Rack {
                xmit: None,
                end: iss,
                rtt: Duration::ZERO,
                min_rtt: None,
                fack: iss,
                reordering_seen: false,
                reo_wnd_mult: 1,
                reo_wnd_persist: REO_WND_PERSIST,
                dsack_round: None,
                deadline: None,
            },
            tlp_end: None,
            tlp_retrans: false,
            tlp_due: false,
            pto: None,
            force_send: false,
            cork: false,
            push_to: None,
            last_send: now,
            writable_wanted: false,
            drained_wanted: false,
            syn_sent_at: now,
            rto_at: None,
            batch_flight: (now, 0),
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
        }
    }

    pub(crate) fn on_established(&mut self, _cfg: &TcpConfig, now: Instant) {
        self.buf_seq = self.iss + 1;
        if self.max.lt(self.una) {
            self.max = self.una;
        }
        self.recovery_point = self.una;
        self.rack.end = self.una;
        self.rack.fack = self.una;
        self.last_send = now;
    }

    /// TCP_CORK on or off; off pushes what is queued now.
    pub(crate) fn set_cork(&mut self, on: bool) {
        if self.cork && !on {
            self.push_to = Some(self.data_end());
        }
        self.cork = on;
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

    /// Ask for one `writable` event when nothing is left unacknowledged.
    pub(crate) fn want_drained(&mut self) {
        self.drained_wanted = true;
    }

    /// Data bytes queued or in flight (no FIN).
    pub(crate) fn queued(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn unacked(&self) -> usize {
        self.buf.len() + usize::from(self.fin_queued && !self.fin_acked())
    }

    pub(crate) fn discard(&mut self) {
        self.buf.clear();
        self.buf_seq = self.una;
        self.rexmit_now = None;
        self.q.clear();
        self.sacked_bytes = 0;
        self.sacked_segs = 0;
        self.lost_bytes = 0;
        self.dup_bytes = 0;
        self.clear_timers();
    }

    /// Stops the sender's own timers (reordering, probe).
    pub(crate) fn clear_timers(&mut self) {
        self.rack.deadline = None;
        self.pto = None;
        self.tlp_due = false;
    }

    pub(crate) fn fin_acked(&self) -> bool {
        self.fin_queued && self.una.gt(self.data_end())
    }

    /// Data or a FIN not yet sent.
    pub(crate) fn has_unsent(&self) -> bool {
        let end = self.data_end();
        end.gt(self.max) || (self.fin_queued && self.max.le(end))
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

    /// FlightSize: everything sent and not cumulatively acknowledged.
    fn flight(&self) -> u32 {
        (self.max - self.una).max(0) as u32
    }

    /// The "FlightSize" a window reduction is based on (RFC 5681 eq. 4, RFC 6675 §5 step 4.2,
    /// RFC 9438 §4.6), made robust against two distortions:
    /// - ACKs that arrive in one receive batch are all processed before the sender transmits
    ///   again; a loss revealed by the last ACK of a batch would be measured against a flight the
    ///   earlier ACKs drained transiently. So: the larger of now and before the ACKs processed at
    ///   this same instant;
    /// - SACKed data stays in FlightSize although it left the network, so under reordering the
    ///   flight can be several windows and a "reduction" to β·FlightSize would grow cwnd. So:
    ///   never more than cwnd (what Linux uses), while an application-limited flight below cwnd
    ///   still counts as it is.
    fn loss_flight(&self, now: Instant) -> u32 {
        let before = if self.batch_flight.0 == now {
            self.batch_flight.1
        } else {
            0
        };
        self.flight().max(before).min(self.cc.cwnd())
    }

    /// RFC 6675 SetPipe over the transmit queue: what is not SACKed and not lost, plus the
    /// second copy of segments in flight twice.
    fn pipe_raw(&self) -> u32 {
        self.flight()
            .saturating_sub(self.sacked_bytes)
            .saturating_sub(self.lost_bytes)
            .saturating_add(self.dup_bytes)
    }

    /// Bytes in the network as far as the congestion window is concerned. Without SACK,
    /// duplicate ACKs stand in for the segments that left the network: RFC 3042 limited
    /// transmit (two) outside recovery, all of them during NewReno recovery (RFC 6582's
    /// window inflation, expressed on pipe).
    fn pipe(&self, sack_ok: bool) -> u32 {
        let p = self.pipe_raw();
        if sack_ok {
            return p;
        }
        let d = match self.phase {
            Phase::Fast => self.dupacks,
            Phase::Open => self.dupacks.min(2),
            Phase::Rto => 0,
        };
        p.saturating_sub(d.saturating_mul(self.mss))
    }

    // ---------------------------------------------------------------- queue bookkeeping

    /// Applies `f` to segment `i`, keeping the byte counters in step.
    fn update_seg(&mut self, i: usize, f: impl FnOnce(&mut TxSeg)) {
        let Some(s) = self.q.get_mut(i) else {
            return;
        };
        let before = *s;
        f(s);
        let after = *s;
        self.account(&before, false);
        self.account(&after, true);
    }

    /// Adds (`add`) or removes a segment's share of the counters.
    fn account(&mut self, s: &TxSeg, add: bool) {
        let len = s.len();
        let apply = |v: &mut u32, n: u32| {
            if add {
                *v = v.saturating_add(n);
            } else {
                *v = v.saturating_sub(n);
            }
        };
        match s.state {
            SegState::Sacked => {
                apply(&mut self.sacked_bytes, len);
                apply(&mut self.sacked_segs, 1);
            }
            SegState::Lost => apply(&mut self.lost_bytes, len),
            SegState::InFlight if s.dup => apply(&mut self.dup_bytes, len),
            SegState::InFlight => {}
        }
    }

    /// Index of the segment starting at `seq`, if any.
    fn find(&self, seq: SeqNum) -> Option<usize> {
        let una = self.una;
        let i = self
            .q
            .partition_point(|s| s.start.dist(una) < seq.dist(una));
        (self.q.get(i)?.start == seq).then_some(i)
    }

    /// Splits segment `i` after `len` payload bytes (a retransmission that did not fit the
    /// caller's buffer).
    fn split(&mut self, i: usize, len: u32) {
        let Some(&s) = self.q.get(i) else {
            return;
        };
        if len == 0 || len >= s.payload_len() {
            return;
        }
        self.account(&s, false);
        let mid = s.start + len;
        let head = TxSeg {
            end: mid,
            fin: false,
            ..s
        };
        let tail = TxSeg { start: mid, ..s };
        self.q[i] = head;
        self.q.insert(i + 1, tail);
        self.account(&head, true);
        self.account(&tail, true);
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        let (mut sb, mut ss, mut lb, mut db) = (0u32, 0u32, 0u32, 0u32);
        let mut at = self.una;
        for s in &self.q {
            debug_assert!(s.start == at, "queue contiguous: {:?} at {at:?}", s);
            debug_assert!(s.start.lt(s.end));
            at = s.end;
            match s.state {
                SegState::Sacked => {
                    sb += s.len();
                    ss += 1;
                }
                SegState::Lost => lb += s.len(),
                SegState::InFlight if s.dup => db += s.len(),
                SegState::InFlight => {}
            }
        }
        if !self.q.is_empty() {
            debug_assert!(at == self.max, "queue ends at SND.MAX");
        }
        debug_assert_eq!(
            (sb, ss, lb, db),
            (
                self.sacked_bytes,
                self.sacked_segs,
                self.lost_bytes,
                self.dup_bytes
            )
        );
    }

    #[cfg(not(debug_assertions))]
    fn check_invariants(&self) {}

    // ---------------------------------------------------------------- ACK processing

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
        if self.batch_flight.0 != now {
            self.batch_flight = (now, self.flight());
        }
        if self.wl1.lt(seg.seq) || (self.wl1 == seg.seq && self.wl2.le(ack)) {
            self.set_window(seg, shift);
        }
        // SACK blocks; the first may be a D-SACK (RFC 2883 §4): below the cumulative ACK, or
        // inside the second block.
        let mut blocks = [(SeqNum(0), SeqNum(0)); 4];
        let mut nb = 0;
        let mut dsack = None;
        if sack_ok {
            let raw = seg.opts.sacks();
            for (i, &(l, rr)) in raw.iter().enumerate() {
                let (l, rr) = (SeqNum(l), SeqNum(rr));
                if !l.lt(rr) {
                    continue;
                }
                if i == 0 {
                    let inside_second = raw.get(1).is_some_and(|&(l2, r2)| {
                        let (l2, r2) = (SeqNum(l2), SeqNum(r2));
                        l2.lt(r2) && l2.le(l) && rr.le(r2)
                    });
                    if l.lt(ack) || inside_second {
                        dsack = Some((l, rr));
                        continue;
                    }
                }
                // Only plausible blocks: above the cumulative ACK, inside what we sent.
                if l.lt(ack) || l.lt(self.una) || rr.gt(self.max) {
                    continue;
                }
                blocks[nb] = (l, rr);
                nb += 1;
            }
        }
        // In sequence order, so that RACK sees the newly SACKed segments in the order they were
        // sent (the receiver lists the most recent block first, RFC 2018 §4).
        let una = self.una;
        blocks[..nb].sort_unstable_by_key(|b| b.0.dist(una));
        let blocks = &blocks[..nb];
        let ecr = ts_ecr.filter(|&e| e != 0);
        // For RACK: (xmit, end, rtt) of the most recently sent segment this ACK delivered.
        let mut newest: Option<(Instant, SeqNum, Duration)> = None;
        let mut delivered_any = false;

        if let Some(d) = dsack {
            self.on_dsack(d);
        }

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
            // Drop what is cumulatively acknowledged from the transmit queue.
            while let Some(&s) = self.q.front() {
                if s.end.le(ack) {
                    self.q.pop_front();
                    self.account(&s, false);
                    if s.state != SegState::Sacked {
                        delivered_any = true;
                        self.rack_delivered(&s, now, ecr, now_ts, &mut newest);
                    }
                } else {
                    if s.start.lt(ack) {
                        // Partly acknowledged: keep the rest.
                        self.update_seg(0, |s| s.start = ack);
                    }
                    break;
                }
            }
            self.una = ack;
            if self.max.lt(ack) {
                self.max = ack;
            }
            let mut sample = None;
            if let Some((s, t)) = self.rtt_probe
                && ack.ge(s)
            {
                self.rtt_probe = None;
                sample = Some(now.saturating_duration_since(t));
            }
            if let Some(ecr) = ecr {
                let d = now_ts.wrapping_sub(ecr);
                let age = Duration::from_millis(u64::from(d));
                // An echo of a segment sent before the last timeout measures the timeout, not
                // the path: the receiver echoes TS.Recent, which an old duplicate does not
                // update (RFC 7323 §4.3), so after lost ACKs and an RTO the ACK of our
                // retransmission can carry a TSval from long before it.
                let before_rto = self
                    .rto_at
                    .is_some_and(|r| now.checked_sub(age).is_none_or(|t| t + TS_TICK < r));
                if d < 1 << 30 && !before_rto {
                    sample = Some(age);
                }
            }
            if let Some(s) = sample {
                self.rtt.on_sample(s);
            }
            if self.rexmit_now.is_some_and(|s| s.lt(self.una)) {
                self.rexmit_now = None;
            }
            let flight_now = self.flight();
            match self.phase {
                Phase::Fast if ack.ge(self.recovery_point) => {
                    self.exit_recovery();
                    self.cc.on_recovery_exit(now, flight_now);
                }
                Phase::Fast => {
                    if !sack_ok {
                        // Partial ACK (RFC 6582 §3.2 step 5): retransmit the next hole.
                        self.mark_lost(0);
                        self.rexmit_now = Some(self.una);
                        self.dupacks = 0;
                        r.retransmit_timer_restart = self.partial_acks == 0;
                    }
                    self.partial_acks += 1;
                }
                Phase::Rto => {
                    if ack.ge(self.recovery_point) {
                        self.exit_recovery();
                    }
                    self.cc.on_ack(now, acked, sample, flight_now);
                }
                Phase::Open => {
                    self.dupacks = 0;
                    self.cc.on_ack(now, acked, sample, flight_now);
                }
            }
            r.advanced = true;
            if self.writable_wanted && data_acked > 0 {
                self.writable_wanted = false;
                r.writable = true;
            }
            if self.drained_wanted && self.unacked() == 0 {
                self.drained_wanted = false;
                r.writable = true;
            }
        } else if ack == self.una {
            let dup = seg.payload.is_empty()
                && !seg.syn()
                && !seg.fin()
                && self.wnd == old_wnd
                && self.una != self.max;
            if dup {
                self.dupacks = self.dupacks.saturating_add(1);
                if !sack_ok
                    && self.phase == Phase::Open
                    && self.dupacks >= DUPTHRESH
                    && !self.q.is_empty()
                {
                    self.mark_lost(0);
                    self.enter_fast_recovery(now);
                }
            }
        }

        // Selective acknowledgements (RFC 2018), every newly SACKed segment counted.
        for &(l, rr) in blocks {
            let una = self.una;
            let mut i = self.q.partition_point(|s| s.start.dist(una) < l.dist(una));
            while let Some(&s) = self.q.get(i) {
                if s.end.gt(rr) {
                    break;
                }
                if s.state != SegState::Sacked {
                    self.update_seg(i, |s| {
                        s.state = SegState::Sacked;
                        s.dup = false;
                    });
                    delivered_any = true;
                    self.rack_delivered(&s, now, ecr, now_ts, &mut newest);
                }
                i += 1;
            }
        }
        // The receiver dropped data it had SACKed (RFC 2018 §8 reneging): forget every SACK.
        if self.q.front().is_some_and(|s| s.state == SegState::Sacked) {
            for i in 0..self.q.len() {
                if self.q[i].state == SegState::Sacked {
                    self.update_seg(i, |s| s.state = SegState::InFlight);
                }
            }
        }
        if let Some((t, e, rtt)) = newest
            && self
                .rack
                .xmit
                .is_none_or(|rt| sent_after(t, e, rt, self.rack.end))
        {
            self.rack.xmit = Some(t);
            self.rack.end = e;
            self.rack.rtt = rtt;
        }
        if self.q.is_empty() {
            self.rack.deadline = None;
            self.pto = None;
        }

        self.on_ack_tlp(now, ack, dsack, delivered_any || r.advanced);

        if sack_ok && !self.q.is_empty() {
            self.rack_detect_loss(now);
            if self.lost_bytes > 0 && self.phase == Phase::Open {
                self.enter_fast_recovery(now);
            }
        }
        self.check_invariants();
        r
    }

    /// RFC 8985 §6.2 steps 1–3 for one newly delivered segment: the RTT sample (skipping
    /// ambiguous ones), and reordering detection.
    fn rack_delivered(
        &mut self,
        s: &TxSeg,
        now: Instant,
        ecr: Option<u32>,
        now_ts: u32,
        newest: &mut Option<(Instant, SeqNum, Duration)>,
    ) {
        if s.end.gt(self.rack.fack) {
            self.rack.fack = s.end;
        } else if s.end.lt(self.rack.fack) && !s.retransmitted {
            self.rack.reordering_seen = true;
        }
        let rtt = now.saturating_duration_since(s.xmit);
        if s.retransmitted {
            // The ACK may answer the original transmission: accept the sample only if the
            // echoed timestamp is not older than the retransmission, and never below min RTT.
            if let Some(ecr) = ecr {
                let ago = u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX);
                let ts_at_xmit = now_ts.wrapping_sub(ago);
                if (ts_at_xmit.wrapping_sub(ecr) as i32) > 1 {
                    return;
                }
            }
            if self.rack.min_rtt.is_some_and(|m| rtt < m) {
                return;
            }
        }
        self.rack.min_rtt = Some(self.rack.min_rtt.map_or(rtt, |m| m.min(rtt)));
        if newest.is_none_or(|(t, e, _)| sent_after(s.xmit, s.end, t, e)) {
            *newest = Some((s.xmit, s.end, rtt));
        }
    }

    /// RFC 8985 §6.2 step 4.
    fn reo_wnd(&self) -> Duration {
        if !self.rack.reordering_seen
            && (self.phase != Phase::Open || self.sacked_segs >= DUPTHRESH)
        {
            return Duration::ZERO;
        }
        let quarter = self.rack.min_rtt.unwrap_or(Duration::ZERO) / 4;
        let w = quarter.saturating_mul(self.rack.reo_wnd_mult);
        match self.rtt.srtt() {
            Some(srtt) => w.min(srtt),
            None => w,
        }
    }

    /// RFC 8985 §6.2 step 5: marks lost every segment sent before the RACK segment whose
    /// reordering window has passed, and arms the reordering timer for the others.
    fn rack_detect_loss(&mut self, now: Instant) {
        self.rack.deadline = None;
        let Some(rx) = self.rack.xmit else {
            return;
        };
        // Without SACKed segments or recovery in progress nothing can be "sent before" a
        // delivered segment and still be outstanding: skip the scan.
        if self.sacked_segs == 0 && self.phase == Phase::Open {
            return;
        }
        let reo = self.reo_wnd();
        let rack_end = self.rack.end;
        let wait = self.rack.rtt.saturating_add(reo);
        let mut latest: Option<Instant> = None;
        for i in 0..self.q.len() {
            let s = self.q[i];
            if s.state != SegState::InFlight || !sent_after(rx, rack_end, s.xmit, s.end) {
                continue;
            }
            let due = s.xmit + wait;
            if due <= now {
                if s.retransmitted {
                    self.stats.lost_retransmits += 1;
                }
                self.mark_lost(i);
            } else {
                latest = Some(latest.map_or(due, |l| l.max(due)));
            }
        }
        self.rack.deadline = latest;
    }

    fn mark_lost(&mut self, i: usize) {
        self.update_seg(i, |s| {
            if s.state != SegState::Sacked {
                s.state = SegState::Lost;
                s.dup = false;
            }
        });
    }

    /// A D-SACK arrived (RFC 2883): the peer got something twice. RFC 8985 §6.2 step 4 widens
    /// the reordering window once per round trip.
    fn on_dsack(&mut self, _block: (SeqNum, SeqNum)) {
        self.stats.dsacks_received += 1;
        if self.rack.dsack_round.is_some_and(|r| self.una.ge(r)) {
            self.rack.dsack_round = None;
        }
        if self.rack.dsack_round.is_none() {
            self.rack.dsack_round = Some(self.max);
            self.rack.reo_wnd_mult = self.rack.reo_wnd_mult.saturating_add(1).min(64);
            self.rack.reo_wnd_persist = REO_WND_PERSIST;
        }
    }

    /// RFC 8985 §7.4: did the tail loss probe repair a loss?
    fn on_ack_tlp(
        &mut self,
        now: Instant,
        ack: SeqNum,
        dsack: Option<(SeqNum, SeqNum)>,
        new_info: bool,
    ) {
        let Some(end) = self.tlp_end else {
            return;
        };
        if ack.lt(end) && dsack.is_none_or(|(_, r)| r != end) {
            return;
        }
        if !self.tlp_retrans || dsack.is_some_and(|(_, r)| r == end) {
            // New data, or both the original and the probe arrived: no loss.
            self.tlp_end = None;
        } else if ack.gt(end) {
            // Only the probe arrived: a loss, repaired without a timeout; still a congestion
            // signal.
            self.tlp_end = None;
            if self.phase == Phase::Open {
                let flight = self.loss_flight(now);
                self.cc.on_congestion_event(now, flight);
                self.cc.on_recovery_exit(now, flight);
            }
        } else if !new_info {
            // A pure duplicate ACK at TLP.end_seq: the probe was a duplicate.
            self.tlp_end = None;
        }
    }

    /// Fast recovery (RFC 6675 §5 / RFC 6582 §3.2): one window reduction per episode, the first
    /// lost segment retransmitted at once.
    fn enter_fast_recovery(&mut self, now: Instant) {
        self.phase = Phase::Fast;
        self.recovery_point = self.max;
        self.recovery_start = now;
        self.rescue_done = false;
        self.partial_acks = 0;
        self.stats.fast_recoveries += 1;
        self.cc.on_congestion_event(now, self.loss_flight(now));
        self.rexmit_now = self
            .q
            .iter()
            .find(|s| s.state == SegState::Lost)
            .map(|s| s.start);
        self.rtt_probe = None;
        self.pto = None;
        self.tlp_due = false;
    }

    fn exit_recovery(&mut self) {
        self.phase = Phase::Open;
        self.dupacks = 0;
        self.partial_acks = 0;
        self.rack.reo_wnd_persist = self.rack.reo_wnd_persist.saturating_sub(1);
        if self.rack.reo_wnd_persist == 0 {
            self.rack.reo_wnd_mult = 1;
            self.rack.reo_wnd_persist = REO_WND_PERSIST;
        }
    }

    // ---------------------------------------------------------------- timers

    /// Retransmission timeout (RFC 6298 §5.4–5.7, RFC 6675 §5.1): collapse the window, mark
    /// everything outstanding lost and resend from SND.UNA.
    pub(crate) fn on_rto(&mut self, now: Instant) {
        let flight = self.flight();
        self.stats.rto_count += 1;
        self.rto_at = Some(now);
        self.cc.on_rto(now, flight);
        self.rtt.backoff();
        self.rtt_probe = None;
        self.phase = Phase::Rto;
        self.recovery_point = self.max;
        self.recovery_start = now;
        self.dupacks = 0;
        self.partial_acks = 0;
        for i in 0..self.q.len() {
            self.mark_lost(i);
        }
        self.rexmit_now = self.q.front().map(|s| s.start);
        self.tlp_end = None;
        self.clear_timers();
        self.check_invariants();
    }

    /// The earliest of the sender's own timers (RACK reordering, tail loss probe).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.rack.deadline, self.pto) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the sender's timers due at `now`.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        if self.rack.deadline.is_some_and(|d| d <= now) {
            self.rack.deadline = None;
            self.rack_detect_loss(now);
            if self.lost_bytes > 0 && self.phase == Phase::Open {
                self.enter_fast_recovery(now);
            }
        }
        if self.pto.is_some_and(|d| d <= now) {
            self.pto = None;
            if self.phase == Phase::Open && self.tlp_end.is_none() && !self.q.is_empty() {
                self.tlp_due = true;
                // Like a timeout: ACKs echoing older segments now measure the probe timer.
                self.rto_at = Some(now);
            }
        }
    }

    /// The probe timer fired and the probe has not been sent yet.
    pub(crate) fn probe_pending(&self) -> bool {
        self.tlp_due
    }

    /// (Re)arms the probe timeout (RFC 8985 §7.2) after new data was sent or SND.UNA advanced
    /// in the open state. Never later than the retransmission timer: when the RTO would come
    /// first, the probe goes out at the RTO's time instead.
    pub(crate) fn arm_pto(&mut self, now: Instant, sack_ok: bool, rto_at: Option<Instant>) {
        self.pto = None;
        if !sack_ok || self.phase != Phase::Open || self.tlp_end.is_some() || self.q.is_empty() {
            return;
        }
        let mut pto = match self.rtt.srtt() {
            Some(srtt) => {
                let mut p = srtt.saturating_mul(2);
                if self.flight() <= self.mss {
                    p = p.saturating_add(WC_DEL_ACK);
                }
                p.max(MIN_PTO)
            }
            None => Duration::from_secs(1),
        };
        if let Some(rto_at) = rto_at {
            pto = pto.min(rto_at.saturating_duration_since(now));
        }
        self.pto = Some(now + pto);
    }

    // ---------------------------------------------------------------- what to send

    /// A retransmission of segment `i`, cut to `mss`.
    fn plan_seg(&self, i: usize, mss: u32, kind: TxKind) -> Option<Plan> {
        let s = self.q.get(i)?;
        let plen = s.payload_len();
        let len = plen.min(mss);
        let fin = s.fin && len == plen;
        if len == 0 && !fin {
            return None;
        }
        Some(Plan {
            seq: s.start,
            len,
            fin,
            psh: len > 0 && s.start + len == self.data_end(),
            rexmit: true,
            kind,
        })
    }

    /// The kind of a loss-driven retransmission in the current phase.
    fn rexmit_kind(&self) -> TxKind {
        if self.phase == Phase::Rto {
            TxKind::Rto
        } else {
            TxKind::Fast
        }
    }

    /// Decides the next data/FIN segment: forced retransmission, then RFC 6675 NextSeg (lost
    /// segments, new data under RFC 9293 §3.8.6.2.1 sender SWS, RFC 896 Nagle, cwnd and the
    /// peer's window, then rules 3 and 4 in SACK recovery), or a tail loss probe. `room` bounds
    /// the payload by the caller's buffer.
    pub(crate) fn next_segment(
        &mut self,
        now: Instant,
        nodelay: bool,
        sack_ok: bool,
        room: u32,
    ) -> Option<Plan> {
        let mss = self.mss.min(room);
        if mss == 0 {
            return None;
        }
        if let Some(s) = self.rexmit_now {
            match self.find(s).and_then(|i| {
                (self.q[i].state != SegState::Sacked)
                    .then(|| self.plan_seg(i, mss, self.rexmit_kind()))
                    .flatten()
            }) {
                Some(p) => return Some(p),
                None => self.rexmit_now = None,
            }
        }
        let cwnd = self.cc.cwnd();
        let pipe = self.pipe(sack_ok);
        // Rule 1: the first lost segment.
        if self.lost_bytes > 0
            && let Some(i) = self.q.iter().position(|s| s.state == SegState::Lost)
        {
            let len = self.q[i].len().min(mss);
            if pipe.saturating_add(len) <= cwnd || pipe == 0 {
                return self.plan_seg(i, mss, self.rexmit_kind());
            }
            return None;
        }
        if self.tlp_due {
            self.tlp_due = false;
            if let Some(p) = self.probe(mss) {
                return Some(p);
            }
        }
        if self.una == self.max && now.saturating_duration_since(self.last_send) >= self.rtt.rto() {
            // RFC 5681 §4.1 restart after idle.
            self.cc.on_idle_restart(now);
            self.last_send = now;
        }
        let cwnd = self.cc.cwnd();
        let cwnd_room = cwnd.saturating_sub(pipe);
        // Rule 2: new data.
        let wnd_end = self.una + self.wnd;
        let wnd_room = (wnd_end - self.max).max(0) as u32;
        let end = self.data_end();
        let avail = (end - self.max).max(0) as u32;
        let len = avail.min(mss).min(cwnd_room).min(wnd_room);
        let fin_here = self.fin_queued && self.max.le(end) && self.max + len == end;
        if len == 0 {
            if fin_here && (cwnd_room > 0 || pipe == 0) {
                return Some(Plan {
                    seq: self.max,
                    len: 0,
                    fin: true,
                    psh: false,
                    rexmit: false,
                    kind: TxKind::New,
                });
            }
        } else {
            let pushed = self.push_to.is_some_and(|p| self.max.lt(p));
            let ok = len == mss
                || self.force_send
                || fin_here
                || pushed
                || (!self.cork
                    && ((len == avail && (nodelay || self.una == self.max))
                        || (self.max_wnd > 0 && len >= self.max_wnd / 2)));
            if ok {
                return Some(Plan {
                    seq: self.max,
                    len,
                    fin: fin_here,
                    psh: len == avail,
                    rexmit: false,
                    kind: TxKind::New,
                });
            }
        }
        // Rules 3 and 4 apply when no new data could be sent (none, or the peer's window).
        if !sack_ok || self.phase != Phase::Fast || (avail > 0 && wnd_room > 0) {
            return None;
        }
        let highest_sacked = self
            .q
            .iter()
            .rev()
            .find(|s| s.state == SegState::Sacked)
            .map(|s| s.end);
        // Rule 3: an unSACKed segment below the highest SACK, not yet resent in this episode.
        if let Some(hs) = highest_sacked
            && let Some(i) = self.q.iter().position(|s| {
                s.state == SegState::InFlight
                    && !s.dup
                    && s.xmit < self.recovery_start
                    && s.end.le(hs)
            })
        {
            let len = self.q[i].len().min(mss);
            if pipe.saturating_add(len) <= cwnd {
                return self.plan_seg(i, mss, TxKind::Fast);
            }
            return None;
        }
        // Rule 4: once per episode, the highest unSACKed segment.
        if !self.rescue_done
            && let Some(i) = self
                .q
                .iter()
                .rposition(|s| s.state == SegState::InFlight && !s.dup)
        {
            let len = self.q[i].len().min(mss);
            if pipe.saturating_add(len) <= cwnd {
                self.rescue_done = true;
                return self.plan_seg(i, mss, TxKind::Rescue);
            }
        }
        None
    }

    /// RFC 8985 §7.3: the probe is new data if the peer's window allows, else the last segment
    /// again.
    fn probe(&self, mss: u32) -> Option<Plan> {
        let end = self.data_end();
        let avail = (end - self.max).max(0) as u32;
        let wnd_room = ((self.una + self.wnd) - self.max).max(0) as u32;
        let len = avail.min(mss).min(wnd_room);
        let fin_here = self.fin_queued && self.max.le(end) && self.max + len == end;
        if len > 0 || fin_here {
            return Some(Plan {
                seq: self.max,
                len,
                fin: fin_here,
                psh: len == avail,
                rexmit: false,
                kind: TxKind::Tlp,
            });
        }
        let i = self.q.len().checked_sub(1)?;
        if self.q[i].state == SegState::Sacked {
            return None;
        }
        self.plan_seg(i, mss, TxKind::Tlp)
    }

    /// Bookkeeping after `plan` was written.
    pub(crate) fn on_sent(&mut self, now: Instant, plan: &Plan) {
        let end = plan.seq + plan.len + u32::from(plan.fin);
        self.stats.segments_sent += 1;
        if plan.kind == TxKind::Tlp {
            self.stats.tail_loss_probes += 1;
        }
        if plan.seq.lt(self.max) {
            // A retransmission of (the head of) a queued segment.
            self.stats.retransmits += 1;
            match plan.kind {
                TxKind::Fast => self.stats.fast_retransmits += 1,
                TxKind::Rto => self.stats.rto_retransmits += 1,
                TxKind::Rescue => self.stats.rescue_retransmits += 1,
                TxKind::New | TxKind::Tlp => {}
            }
            // Karn: never time a retransmitted segment (nor anything outstanding with it).
            self.rtt_probe = None;
            if let Some(i) = self.find(plan.seq) {
                self.split(i, plan.len);
                self.update_seg(i, |s| {
                    s.xmit = now;
                    s.retransmitted = true;
                    match s.state {
                        SegState::Lost => s.state = SegState::InFlight,
                        SegState::InFlight => s.dup = true,
                        SegState::Sacked => {}
                    }
                });
            }
            if plan.kind == TxKind::Tlp {
                self.tlp_end = Some(self.max);
                self.tlp_retrans = true;
            }
        } else {
            debug_assert!(plan.seq == self.max, "new data starts at SND.MAX");
            if self.rtt_probe.is_none() {
                self.rtt_probe = Some((end, now));
            }
            let seg = TxSeg {
                start: plan.seq,
                end,
                fin: plan.fin,
                xmit: now,
                retransmitted: false,
                state: SegState::InFlight,
                dup: false,
            };
            if seg.start.lt(seg.end) {
                self.q.push_back(seg);
            }
            self.max = end;
            if plan.kind == TxKind::Tlp {
                self.tlp_end = Some(self.max);
                self.tlp_retrans = false;
            }
        }
        if self.rexmit_now == Some(plan.seq) {
            self.rexmit_now = None;
        }
        self.last_send = now;
        self.force_send = false;
        if self.push_to.is_some_and(|p| !self.max.lt(p)) {
            self.push_to = None;
        }
        self.check_invariants();
    }

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
