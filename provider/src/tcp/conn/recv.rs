//! The receiver half: receive buffer, advertised window (with scaling and receiver SWS
//! avoidance), reassembly of out-of-order data, delayed ACKs, SACK block generation.

use std::collections::VecDeque;

use super::super::buffer::{Releasable, release_if_empty};
use super::super::config::TcpConfig;
use super::super::options::MAX_SACK_BLOCKS;
use super::super::reassembly::Reassembler;
use super::super::segment::SegmentIn;
use super::super::seq::SeqNum;
use super::super::types::{Event, TcpState};
use super::{Conn, Ctx};
use crate::net::tcp::TcpFlags;

/// Most earlier ACKs kept for one transmit round (see [`AckPoint`]).
const MAX_ACK_POINTS: usize = 16;

/// An immediate ACK owed for an earlier receive state. When several segments are processed
/// before the next transmit poll (a receive batch), each one that calls for an immediate ACK —
/// every second full-sized segment, every out-of-order or duplicate segment (RFC 5681 §4.2,
/// RFC 9293 §3.8.6.3) — still gets its own ACK, with the SACK and D-SACK information of that
/// moment, instead of one stretch ACK for the whole batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AckPoint {
    pub ack: SeqNum,
    pub dsack: Option<(SeqNum, SeqNum)>,
    pub sacks: [(SeqNum, SeqNum); MAX_SACK_BLOCKS],
    pub n: u8,
}

#[derive(Debug)]
pub(crate) struct Receiver {
    pub(crate) irs: SeqNum,
    pub(crate) nxt: SeqNum,
    buf: VecDeque<u8>,
    cap: usize,
    reasm: Reassembler,
    /// Right edge of the window last advertised (RCV.NXT + RCV.WND at that time).
    adv_edge: SeqNum,
    /// Sequence number of the peer's FIN once seen (possibly ahead of RCV.NXT).
    pub(crate) fin_seq: Option<SeqNum>,
    pub(crate) fin_received: bool,
    /// In-order bytes received since our last ACK.
    unacked_bytes: u32,
    /// Largest segment we expect (for "every second full segment").
    rcv_mss: u32,
    /// The user read since our last ACK: a window update may be due.
    read_since_ack: bool,
    /// In-order data with PSH arrived since our last ACK (see `Conn::recv`).
    pub(crate) pushed: bool,
    /// Earlier immediate ACKs still to send, oldest first.
    pub(crate) points: VecDeque<AckPoint>,
    /// The receive state the pending immediate ACK was owed for.
    owed: Option<AckPoint>,
    /// A duplicate to report in the next ACK's first SACK block (RFC 2883).
    dsack: Option<(SeqNum, SeqNum)>,
}

impl Receiver {
    pub(crate) fn new(cfg: &TcpConfig, cap: usize) -> Self {
        Self {
            irs: SeqNum(0),
            nxt: SeqNum(0),
            buf: VecDeque::new(),
            cap,
            reasm: Reassembler::new(cfg.ooo_max_segments, cfg.ooo_max_bytes),
            adv_edge: SeqNum(0),
            fin_seq: None,
            fin_received: false,
            unacked_bytes: 0,
            rcv_mss: u32::from(cfg.mss),
            read_since_ack: false,
            pushed: false,
            points: VecDeque::new(),
            owed: None,
            dsack: None,
        }
    }

    pub(crate) fn on_syn(&mut self, seq: SeqNum) {
        self.irs = seq;
        self.nxt = seq + 1;
        self.adv_edge = self.nxt;
    }

    pub(crate) fn set_rcv_mss(&mut self, mss: u32) {
        self.rcv_mss = mss.max(1);
    }

    /// RCV.WND as last advertised, relative to the current RCV.NXT.
    pub(crate) fn current_window(&self) -> u32 {
        (self.adv_edge - self.nxt).max(0) as u32
    }

    fn free(&self) -> u32 {
        self.cap
            .saturating_sub(self.buf.len())
            .min(u32::MAX as usize >> 1) as u32
    }

    /// The window for a SYN or SYN-ACK (unscaled, RFC 7323 §2.2).
    pub(crate) fn syn_window(&mut self) -> u16 {
        let w = self.free().min(0xffff);
        if (self.nxt + w).gt(self.adv_edge) {
            self.adv_edge = self.nxt + w;
        }
        w as u16
    }

    /// The window we would offer now: free space, but moving the right edge only by at least
    /// min(RCV.BUFF/2, MSS) (receiver SWS avoidance, RFC 9293 §3.8.6.2.2) and never shrinking it.
    fn candidate(&self, shift: u8) -> u32 {
        let cur = self.current_window();
        let free = self.free().min(0xffff << shift);
        let thresh = (self.cap as u32 / 2).min(self.rcv_mss).max(1);
        if free > cur && free - cur >= thresh {
            free
        } else {
            cur
        }
    }

    /// The window field for an outgoing non-SYN segment; records the advertised right edge.
    pub(crate) fn advertise(&mut self, shift: u8) -> u16 {
        let w = self.candidate(shift);
        // Round up so that the edge never moves left.
        let field = w.div_ceil(1 << shift).min(0xffff);
        let edge = self.nxt + (field << shift);
        if edge.gt(self.adv_edge) {
            self.adv_edge = edge;
        }
        field as u16
    }

    /// Whether reading opened the window enough to tell the peer (the window at least doubled
    /// and grew by the SWS threshold).
    pub(crate) fn window_update_due(&self, shift: u8) -> bool {
        if !self.read_since_ack {
            return false;
        }
        let cur = self.current_window();
        let cand = self.candidate(shift);
        let thresh = (self.cap as u32 / 2).min(2 * self.rcv_mss).max(1);
        cand > cur && cand - cur >= thresh && cand >= cur.saturating_mul(2)
    }

    /// The window field of an earlier ACK (an [`AckPoint`]): the right edge already advertised,
    /// seen from `ack`.
    pub(crate) fn advertise_at(&mut self, ack: SeqNum, shift: u8) -> u16 {
        let w = (self.adv_edge - ack).max(0) as u32;
        let field = w.div_ceil(1 << shift).min(0xffff);
        let edge = ack + (field << shift);
        if edge.gt(self.adv_edge) {
            self.adv_edge = edge;
        }
        field as u16
    }

    /// The D-SACK block the next ACK of the current state carries.
    pub(crate) fn pending_dsack(&self) -> Option<(SeqNum, SeqNum)> {
        self.owed.and_then(|o| o.dsack).or(self.dsack)
    }

    /// An ACK of the current state went out: it supersedes every earlier one still queued.
    pub(crate) fn on_ack_sent(&mut self) {
        self.unacked_bytes = 0;
        self.read_since_ack = false;
        self.pushed = false;
        self.points.clear();
        release_if_empty(&mut self.points);
        self.owed = None;
        self.dsack = None;
    }

    /// Copy what `read` would return, leaving it queued (MSG_PEEK).
    pub(crate) fn peek(&self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.buf.len());
        let (a, b) = self.buf.as_slices();
        let na = n.min(a.len());
        out[..na].copy_from_slice(&a[..na]);
        out[na..n].copy_from_slice(&b[..n - na]);
        n
    }

    pub(crate) fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.buf.len());
        let (a, b) = self.buf.as_slices();
        let na = n.min(a.len());
        out[..na].copy_from_slice(&a[..na]);
        out[na..n].copy_from_slice(&b[..n - na]);
        self.buf.drain(..n);
        if n > 0 {
            self.read_since_ack = true;
            release_if_empty(&mut self.buf);
        }
        n
    }

    /// Allocation held by the receive buffer, the out-of-order blocks and the ACK points.
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.buf.capacity_bytes() + self.points.capacity_bytes() + self.reasm.held_bytes()
    }

    pub(crate) fn available(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn sack_blocks(&self, max: usize) -> Vec<(SeqNum, SeqNum)> {
        if self.reasm.is_empty() {
            return Vec::new();
        }
        self.reasm.sack_blocks(max)
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.reasm.clear();
        self.points.clear();
        self.owed = None;
        self.dsack = None;
    }
}

impl Conn {
    /// The sixth and seventh checks of RFC 9293 §3.10.7.4: segment text, then FIN.
    pub(super) fn on_data(&mut self, cx: &mut Ctx<'_>, seg: &SegmentIn<'_>) {
        let takes_data = matches!(
            self.state,
            TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2
        );
        if !takes_data {
            return;
        }
        if !seg.payload.is_empty() {
            let seg_end = seg.seq + seg.payload.len() as u32;
            if self.user_closed && seg_end.gt(self.rcv.nxt) {
                // Data after close (DESIGN §7, RFC 9293 §3.10.7.4 "segment text" after CLOSE).
                self.queue_abort_rst(cx, false);
                self.error = Some(super::super::types::TcpError::Aborted);
                self.snd.discard();
                self.rcv.clear();
                self.enter_closed();
                return;
            }
            self.on_text(cx, seg.seq, seg.payload);
            if seg.flags.contains(TcpFlags::PSH) {
                self.rcv.pushed = true;
            }
        }
        if seg.fin() {
            self.rcv.fin_seq = Some(seg.seq + seg.payload.len() as u32);
        }
        self.check_fin(cx);
    }

    /// Most SACK blocks (D-SACK included) an ACK of ours carries (RFC 2018 §3: three when
    /// timestamps take room), 0 without SACK.
    pub(super) fn sack_block_max(&self) -> usize {
        match (self.sack_ok, self.ts_ok) {
            (false, _) => 0,
            (true, true) => 3,
            (true, false) => MAX_SACK_BLOCKS,
        }
    }

    /// An immediate ACK is due for the state just reached. If one is already owed for an
    /// earlier state (same receive batch), that one is queued to go out first.
    pub(super) fn owe_ack(&mut self) {
        if let Some(prev) = self.rcv.owed.take() {
            if self.rcv.points.len() >= MAX_ACK_POINTS {
                self.rcv.points.pop_front();
            }
            self.rcv.points.push_back(prev);
        }
        let dsack = self.rcv.dsack.take();
        let mut p = AckPoint {
            ack: self.rcv.nxt,
            dsack,
            sacks: [(SeqNum(0), SeqNum(0)); MAX_SACK_BLOCKS],
            n: 0,
        };
        let room = self
            .sack_block_max()
            .saturating_sub(usize::from(dsack.is_some()));
        for (i, b) in self.rcv.sack_blocks(room).into_iter().enumerate() {
            p.sacks[i] = b;
            p.n = i as u8 + 1;
        }
        self.rcv.owed = Some(p);
        self.rcv.unacked_bytes = 0;
        self.ack_now = true;
    }

    /// A segment whose data all lies below RCV.NXT: report it in a D-SACK (RFC 2883 §4) with
    /// the immediate ACK it gets.
    pub(super) fn on_old_duplicate(&mut self, seg: &SegmentIn<'_>) {
        let end = seg.seq + seg.payload.len() as u32;
        if self.sack_ok && !seg.payload.is_empty() && end.le(self.rcv.nxt) {
            self.rcv.dsack = Some((seg.seq, end));
            self.owe_ack();
        } else {
            self.ack_now = true;
        }
    }

    fn on_text(&mut self, cx: &mut Ctx<'_>, seq: SeqNum, payload: &[u8]) {
        let sack_ok = self.sack_ok;
        let rcv = &mut self.rcv;
        let mut seq = seq;
        let mut data = payload;
        let mut immediate = false;
        if seq.lt(rcv.nxt) {
            let d = (rcv.nxt - seq) as usize;
            if sack_ok {
                // The part we already had is a duplicate (RFC 2883 §4.1.1).
                rcv.dsack = Some((seq, seq + d.min(payload.len()) as u32));
            }
            immediate = true;
            data = data.get(d..).unwrap_or(&[]);
            seq = rcv.nxt;
        }
        if data.is_empty() {
            // Entirely old: a duplicate; ACK at once so the sender learns RCV.NXT.
            self.owe_ack();
            return;
        }
        let wnd_end = rcv.nxt + rcv.current_window();
        if seq != rcv.nxt {
            let end = seq + data.len() as u32;
            if sack_ok && let Some(dup) = rcv.reasm.overlap(seq, end) {
                rcv.dsack = Some(dup);
            }
            rcv.reasm.insert(rcv.nxt, seq, data, wnd_end);
            self.owe_ack();
            return;
        }
        let take = data.len().min(rcv.current_window() as usize);
        let was_empty = rcv.buf.is_empty();
        rcv.buf.extend(&data[..take]);
        rcv.nxt += take as u32;
        rcv.unacked_bytes = rcv.unacked_bytes.saturating_add(take as u32);
        if !rcv.reasm.is_empty() {
            let Receiver {
                reasm, buf, nxt, ..
            } = rcv;
            let n = reasm.pop_contiguous(*nxt, &mut |d: &[u8]| buf.extend(d));
            *nxt += n;
            // Filling a hole: ACK at once (RFC 5681 §4.2).
            immediate = true;
        }
        // Every arrival of in-order data, not only the first into an empty buffer: an
        // edge-triggered epoll waiter (Linux wakes one per arrival) is waiting for exactly the
        // next one. Winsock's FD_READ stays one per recv (the API layer re-enables it).
        if !self.rcv.buf.is_empty() && (was_empty || take > 0) {
            cx.events.push_back(Event::Readable(self.id));
        }
        if take > 0 {
            self.last_data_rcv = Some(cx.now);
        }
        if immediate
            || cx.cfg.delayed_ack.is_zero()
            || self.rcv.unacked_bytes >= 2 * self.rcv.rcv_mss
        {
            self.owe_ack();
        } else if self.t_delack.is_none() {
            self.t_delack = Some(cx.now + cx.cfg.delayed_ack);
        }
    }
}
