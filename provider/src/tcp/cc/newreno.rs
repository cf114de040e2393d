//! NewReno congestion control (RFC 5681, RFC 6582 recovery exit, RFC 3465 byte counting).
use std::time::{Duration, Instant};

use super::{CongestionControl, floor_two_mss, initial_window, sane_mss, slow_start_increase};

/// Reno-style AIMD: slow start below `ssthresh`, one MSS per RTT above it, halve on loss.
#[derive(Clone, Debug)]
pub struct NewReno {
    mss: u32,
    iw_segments: u32,
    cwnd: u32,
    ssthresh: u32,
    /// Bytes acknowledged in congestion avoidance not yet turned into growth (RFC 3465 §2.1):
    /// when it reaches cwnd, cwnd grows by one MSS. This is the exact form of RFC 5681's
    /// `cwnd += MSS·MSS/cwnd` per ACK, without its rounding loss.
    bytes_acked: u32,
    /// Slow start following a timeout: RFC 3465 §2.3 limits the per-ACK increase to 1·MSS.
    after_rto: bool,
    /// A timeout fired and no ACK advanced since: a further timeout is for the same segment and
    /// must keep ssthresh (RFC 5681 §3.1, the note after equation 4).
    rto_pending: bool,
}

impl NewReno {
    pub fn new(mss: u32, initial_window_segments: u32) -> Self {
        let mss = sane_mss(mss);
        NewReno {
            mss,
            iw_segments: initial_window_segments,
            cwnd: initial_window(mss, initial_window_segments),
            // RFC 5681 §3.1: "initial value of ssthresh SHOULD be set arbitrarily high".
            ssthresh: u32::MAX,
            bytes_acked: 0,
            after_rto: false,
            rto_pending: false,
        }
    }

    fn congestion_avoidance(&mut self, acked: u32) {
        self.bytes_acked = self.bytes_acked.saturating_add(acked);
        if self.bytes_acked >= self.cwnd {
            self.bytes_acked -= self.cwnd;
            self.cwnd = self.cwnd.saturating_add(self.mss);
            // One MSS per ACK at most (RFC 5681 equation 3): do not bank a huge stretch ACK.
            self.bytes_acked = self.bytes_acked.min(self.cwnd.saturating_sub(1));
        }
    }
}

impl CongestionControl for NewReno {
    fn name(&self) -> &'static str {
        "newreno"
    }

    fn cwnd(&self) -> u32 {
        self.cwnd
    }

    fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    fn on_ack(
        &mut self,
        _now: Instant,
        acked_bytes: u32,
        _rtt: Option<Duration>,
        _bytes_in_flight: u32,
    ) {
        if acked_bytes == 0 {
            return;
        }
        self.rto_pending = false;
        if self.cwnd < self.ssthresh {
            let inc = slow_start_increase(acked_bytes, self.mss, self.after_rto);
            let room = self.ssthresh - self.cwnd;
            if inc < room {
                self.cwnd += inc;
                return;
            }
            // Crossing ssthresh: stop slow start exactly there, count the rest as CA bytes.
            self.cwnd = self.ssthresh;
            self.after_rto = false;
            self.congestion_avoidance(inc - room);
        } else {
            self.after_rto = false;
            self.congestion_avoidance(acked_bytes);
        }
    }

    fn on_congestion_event(&mut self, _now: Instant, bytes_in_flight: u32) {
        // RFC 5681 equation 4 (RFC 6675 §5 step 4.2 uses the same), then RFC 6675's cwnd = ssthresh.
        self.ssthresh = floor_two_mss(bytes_in_flight / 2, self.mss);
        self.cwnd = self.ssthresh;
        self.bytes_acked = 0;
        self.after_rto = false;
        self.rto_pending = false;
    }

    fn on_rto(&mut self, _now: Instant, bytes_in_flight: u32) {
        if !self.rto_pending {
            self.ssthresh = floor_two_mss(bytes_in_flight / 2, self.mss);
        }
        // Loss window (RFC 5681 §3.1): cwnd = 1 full-sized segment.
        self.cwnd = self.mss;
        self.bytes_acked = 0;
        self.after_rto = true;
        self.rto_pending = true;
    }

    fn on_recovery_exit(&mut self, _now: Instant, bytes_in_flight: u32) {
        // RFC 6582 §3.2 step 3, option (1): deflate to min(ssthresh, max(FlightSize, MSS) + MSS)
        // so a burst of previously-inflated window is not released at once.
        let deflated = bytes_in_flight.max(self.mss).saturating_add(self.mss);
        self.cwnd = self.ssthresh.min(deflated).max(self.mss);
        self.bytes_acked = 0;
    }

    fn on_idle_restart(&mut self, _now: Instant) {
        // RFC 5681 §4.1: RW = min(IW, cwnd).
        self.cwnd = self.cwnd.min(initial_window(self.mss, self.iw_segments));
        self.bytes_acked = 0;
    }

    fn set_mss(&mut self, mss: u32) {
        let mss = sane_mss(mss);
        let old_iw = initial_window(self.mss, self.iw_segments);
        // Before any growth or loss (typically: MSS learnt from the SYN), the window is still
        // "IW segments", so recompute it for the new MSS; otherwise keep the byte window.
        if self.cwnd == old_iw && self.ssthresh == u32::MAX {
            self.cwnd = initial_window(mss, self.iw_segments);
        }
        self.mss = mss;
        self.cwnd = self.cwnd.max(mss);
        if self.ssthresh != u32::MAX {
            self.ssthresh = floor_two_mss(self.ssthresh, mss);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MSS, t0};
    use super::*;

    fn ack_segments(c: &mut NewReno, now: Instant, n: u32) {
        for _ in 0..n {
            let flight = c.cwnd;
            c.on_ack(now, MSS, None, flight);
        }
    }

    #[test]
    fn slow_start_grows_to_ssthresh() {
        let now = t0();
        let mut c = NewReno::new(MSS, 10);
        assert_eq!(c.cwnd(), 10 * MSS);
        c.ssthresh = 40 * MSS;
        // One MSS per ACKed MSS: doubling per RTT.
        ack_segments(&mut c, now, 10);
        assert_eq!(c.cwnd(), 20 * MSS);
        ack_segments(&mut c, now, 20);
        assert_eq!(c.cwnd(), 40 * MSS); // stops exactly at ssthresh
        // Stretch ACK of 5 MSS counts at most 2 MSS (RFC 3465 L = 2).
        let mut d = NewReno::new(MSS, 10);
        d.on_ack(now, 5 * MSS, None, 10 * MSS);
        assert_eq!(d.cwnd(), 12 * MSS);
    }

    #[test]
    fn congestion_avoidance_one_mss_per_rtt() {
        let now = t0();
        let mut c = NewReno::new(MSS, 10);
        c.ssthresh = 10 * MSS;
        for rtt in 0..5 {
            let w = c.cwnd();
            assert_eq!(w, (10 + rtt) * MSS);
            // A whole window acknowledged, one MSS at a time, grows cwnd by exactly one MSS.
            ack_segments(&mut c, now, w / MSS);
            assert_eq!(c.cwnd(), w + MSS);
        }
        // Partial segments accumulate exactly.
        let w = c.cwnd();
        for _ in 0..w {
            c.on_ack(now, 1, None, w);
        }
        assert_eq!(c.cwnd(), w + MSS);
    }

    #[test]
    fn congestion_event_halves_flight() {
        let now = t0();
        let mut c = NewReno::new(MSS, 10);
        ack_segments(&mut c, now, 30); // 40 MSS
        c.on_congestion_event(now, 40 * MSS);
        assert_eq!(c.ssthresh(), 20 * MSS);
        assert_eq!(c.cwnd(), 20 * MSS);
        // Small flight: floor of 2·MSS.
        c.on_congestion_event(now, MSS);
        assert_eq!(c.ssthresh(), 2 * MSS);
        assert_eq!(c.cwnd(), 2 * MSS);
    }

    #[test]
    fn rto_loss_window_and_repeated_timeouts() {
        let now = t0();
        let mut c = NewReno::new(MSS, 10);
        c.on_rto(now, 30 * MSS);
        assert_eq!(c.cwnd(), MSS);
        assert_eq!(c.ssthresh(), 15 * MSS);
        // The retransmission times out again: ssthresh held, not halved from the tiny flight.
        c.on_rto(now, MSS);
        assert_eq!(c.ssthresh(), 15 * MSS);
        assert_eq!(c.cwnd(), MSS);
        // Slow start after RTO counts at most 1 MSS per ACK.
        c.on_ack(now, 3 * MSS, None, MSS);
        assert_eq!(c.cwnd(), 2 * MSS);
        // After an ACK a new timeout is a new event again.
        c.on_rto(now, 8 * MSS);
        assert_eq!(c.ssthresh(), 4 * MSS);
    }

    #[test]
    fn recovery_exit_deflates() {
        let now = t0();
        let mut c = NewReno::new(MSS, 10);
        ack_segments(&mut c, now, 30);
        c.on_congestion_event(now, 40 * MSS); // ssthresh 20
        c.on_recovery_exit(now, 5 * MSS);
        assert_eq!(c.cwnd(), 6 * MSS);
        c.on_congestion_event(now, 40 * MSS);
        c.on_recovery_exit(now, 30 * MSS);
        assert_eq!(c.cwnd(), 20 * MSS);
    }

    #[test]
    fn idle_restart_and_mss_change() {
        let now = t0();
        let mut c = NewReno::new(536, 10);
        c.set_mss(MSS); // learnt from the SYN: IW recomputed
        assert_eq!(c.cwnd(), 10 * MSS);
        ack_segments(&mut c, now, 20);
        assert_eq!(c.cwnd(), 30 * MSS);
        c.on_idle_restart(now);
        assert_eq!(c.cwnd(), 10 * MSS);
        c.on_congestion_event(now, 4 * MSS);
        c.on_idle_restart(now);
        assert_eq!(c.cwnd(), 2 * MSS); // already below IW: unchanged
    }
}
