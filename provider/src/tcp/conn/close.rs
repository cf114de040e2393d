//! Closing: FIN in both directions, simultaneous close, TIME_WAIT, and the user's
//! shutdown/close/abort (DESIGN §7).

use std::time::Instant;

use super::super::config::TcpConfig;
use super::super::segment::SegmentIn;
use super::super::seq::SeqNum;
use super::super::types::{Event, TcpError, TcpState};
use super::{Conn, Ctx};

impl Conn {
    /// Consumes the peer's FIN once every byte before it arrived (RFC 9293 §3.10.7.4 eighth check).
    pub(super) fn check_fin(&mut self, cx: &mut Ctx<'_>) {
        if self.rcv.fin_received || self.rcv.fin_seq != Some(self.rcv.nxt) {
            return;
        }
        self.rcv.nxt += 1;
        self.rcv.fin_received = true;
        self.ack_now = true;
        self.t_delack = None;
        cx.events.push_back(Event::PeerFin(self.id));
        match self.state {
            TcpState::Established => self.state = TcpState::CloseWait,
            TcpState::FinWait1 => {
                if self.snd.fin_acked() {
                    self.enter_time_wait(cx.now, cx.cfg);
                } else {
                    self.state = TcpState::Closing;
                }
            }
            TcpState::FinWait2 => self.enter_time_wait(cx.now, cx.cfg),
            _ => {}
        }
    }

    /// State changes when our FIN was just acknowledged. Returns true if the connection is done
    /// (no further processing of the segment).
    pub(super) fn on_fin_acked(&mut self, cx: &mut Ctx<'_>) -> bool {
        if !self.snd.fin_acked() {
            return false;
        }
        match self.state {
            TcpState::FinWait1 => {
                self.state = TcpState::FinWait2;
                self.t_rto = None;
                false
            }
            TcpState::Closing => {
                self.enter_time_wait(cx.now, cx.cfg);
                true
            }
            TcpState::LastAck => {
                self.enter_closed();
                true
            }
            _ => false,
        }
    }

    /// Whether a SYN arriving in TIME_WAIT may start a new incarnation of this 4-tuple
    /// (RFC 9293 §3.6.1 / RFC 1122 §4.2.2.13, with RFC 6191's timestamp rules, as Linux):
    /// a plain SYN that is not a PAWS reject and either starts above RCV.NXT or carries a
    /// timestamp newer than TS.Recent (any timestamp, if the old incarnation had none). Only
    /// then can it not be an old duplicate of the previous incarnation.
    pub(crate) fn time_wait_accepts_syn(&self, seg: &SegmentIn<'_>) -> bool {
        if self.state != TcpState::TimeWait || !seg.syn() || seg.has_ack() || seg.rst() {
            return false;
        }
        let ts = seg
            .opts
            .timestamps
            .map(|(v, _)| v.wrapping_sub(self.ts_recent) as i32);
        if self.ts_ok && ts.is_some_and(|d| d < 0) {
            return false;
        }
        let newer_ts = ts.is_some_and(|d| !self.ts_ok || d > 0);
        newer_ts || seg.seq.gt(self.rcv.nxt)
    }

    /// Ends TIME_WAIT early for a new incarnation; returns the ISS the new one should use:
    /// above anything this incarnation sent, so the peer cannot mistake old segments of ours
    /// for new ones (Linux uses the same SND.NXT + 65535 + 2).
    pub(crate) fn end_time_wait(&mut self) -> SeqNum {
        let iss = self.snd.max + 65_537;
        self.enter_closed();
        iss
    }

    fn enter_time_wait(&mut self, now: Instant, cfg: &TcpConfig) {
        self.state = TcpState::TimeWait;
        self.t_timewait = Some(now + cfg.time_wait);
        self.t_rto = None;
        self.t_persist = None;
        self.t_keepalive = None;
        self.t_orphan = None;
        self.t_delack = None;
        self.snd.clear_timers();
        self.probe_due = false;
        self.keepalive_due = false;
    }

    /// FIN after the queued data (SD_SEND).
    pub(crate) fn shutdown_write(&mut self) -> Result<(), TcpError> {
        match self.state {
            TcpState::Established => {
                self.snd.fin_queued = true;
                self.state = TcpState::FinWait1;
                Ok(())
            }
            TcpState::CloseWait => {
                self.snd.fin_queued = true;
                self.state = TcpState::LastAck;
                Ok(())
            }
            TcpState::FinWait1
            | TcpState::FinWait2
            | TcpState::Closing
            | TcpState::LastAck
            | TcpState::TimeWait => Ok(()),
            TcpState::Closed => Err(self.error.unwrap_or(TcpError::NotConnected)),
            TcpState::SynSent | TcpState::SynReceived | TcpState::Listen => {
                Err(TcpError::NotConnected)
            }
        }
    }

    /// Graceful close: the handle is released and the connection finishes on its own (orphan).
    /// Unread data → RST (RFC 2525 §2.17). In SYN_SENT nothing is sent.
    pub(crate) fn close(&mut self, cx: &mut Ctx<'_>) {
        self.released = true;
        self.user_closed = true;
        match self.state {
            TcpState::Closed | TcpState::Listen | TcpState::TimeWait => {}
            TcpState::SynSent => self.enter_closed(),
            TcpState::SynReceived => {
                self.queue_abort_rst(cx, false);
                self.enter_closed();
            }
            _ if self.rcv.available() > 0 => {
                self.queue_abort_rst(cx, false);
                self.error = Some(TcpError::Aborted);
                self.snd.discard();
                self.rcv.clear();
                self.enter_closed();
            }
            _ => {
                let _ = self.shutdown_write();
                if self.state != TcpState::TimeWait {
                    self.t_orphan = Some(cx.now + cx.cfg.orphan_timeout);
                }
            }
        }
    }

    /// Hard close: RST (SEQ=SND.NXT, ACK=RCV.NXT) at the head of the transmit queue, queues
    /// discarded, no TIME_WAIT.
    pub(crate) fn abort(&mut self, cx: &mut Ctx<'_>) {
        self.released = true;
        self.user_closed = true;
        match self.state {
            TcpState::Closed | TcpState::Listen | TcpState::TimeWait | TcpState::SynSent => {}
            _ => self.queue_abort_rst(cx, true),
        }
        if self.state != TcpState::Closed {
            self.error = Some(TcpError::Aborted);
        }
        self.snd.discard();
        self.rcv.clear();
        self.enter_closed();
    }
}
