//! Congestion control behind a trait (DESIGN §5): NewReno (RFC 5681/6582) and CUBIC (RFC 9438).
//!
//! The connection owns loss detection and recovery (RFC 6675 / RFC 6582) and tells the algorithm
//! what happened; the algorithm only owns `cwnd` and `ssthresh`. All quantities are bytes. Time is
//! whatever `Instant` the caller passes in (sans-IO: no clock reads here).
//!
//! Division of labour, so the two sides agree:
//! - [`CongestionControl::on_ack`] is called for ACKs that advance `SND.UNA` while *not* in loss
//!   recovery; during recovery the connection runs the RFC 6675 pipe algorithm against the
//!   `cwnd` fixed at [`CongestionControl::on_congestion_event`].
//! - Entering recovery calls `on_congestion_event` once per recovery episode (RFC 6582 §3.2 step
//!   2/RFC 6675 §5: no second reduction before `RecoveryPoint` is acknowledged).
//! - A retransmission timeout calls [`CongestionControl::on_rto`] every time the timer fires; a
//!   repeated timeout without any ACK in between keeps `ssthresh` (RFC 5681 §3.1, note on
//!   equation 4) and only re-applies the loss window.
//! - The algorithms do not apply RFC 7661 cwnd validation (not growing while application
//!   limited); a connection that wants it should skip `on_ack` when it was not cwnd-limited.
use std::time::{Duration, Instant};

pub mod cubic;
pub mod newreno;

pub use cubic::Cubic;
pub use newreno::NewReno;

/// A congestion controller (RFC 5681 vocabulary; bytes throughout).
pub trait CongestionControl: Send + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn cwnd(&self) -> u32;
    fn ssthresh(&self) -> u32;
    /// New data cumulatively acknowledged outside loss recovery. `rtt`: latest sample if any.
    fn on_ack(
        &mut self,
        now: Instant,
        acked_bytes: u32,
        rtt: Option<Duration>,
        bytes_in_flight: u32,
    );
    /// Loss detected by duplicate ACKs / SACK (RFC 5681 §3.2 / RFC 6675): ssthresh = max(flight/2,
    /// 2·MSS) (CUBIC: β=0.7 multiplicative decrease, RFC 9438 §4.6, with fast convergence),
    /// cwnd = ssthresh.
    fn on_congestion_event(&mut self, now: Instant, bytes_in_flight: u32);
    /// Retransmission timeout: ssthresh as above, cwnd = 1·MSS (loss window, RFC 5681 §3.1).
    fn on_rto(&mut self, now: Instant, bytes_in_flight: u32);
    /// Leaving fast recovery (RFC 6582 full ACK / RFC 6675 recovery point reached): cwnd = ssthresh
    /// (NewReno: min(ssthresh, flight+MSS)).
    fn on_recovery_exit(&mut self, now: Instant, bytes_in_flight: u32);
    /// RFC 5681 §4.1 restart after idle longer than the RTO: cwnd = min(cwnd, IW).
    fn on_idle_restart(&mut self, now: Instant);
    fn set_mss(&mut self, mss: u32);
}

/// Which algorithm a connection uses. CUBIC is the default, as in Linux, Windows and macOS
/// (RFC 9438 §1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CcAlgorithm {
    NewReno,
    #[default]
    Cubic,
}

/// Builds the controller for a new connection. `initial_window_segments` is normally 10 (IW10,
/// RFC 6928); see [`initial_window`] for the byte cap.
pub fn new_cc(
    alg: CcAlgorithm,
    mss: u32,
    initial_window_segments: u32,
) -> Box<dyn CongestionControl> {
    match alg {
        CcAlgorithm::NewReno => Box::new(NewReno::new(mss, initial_window_segments)),
        CcAlgorithm::Cubic => Box::new(Cubic::new(mss, initial_window_segments)),
    }
}

/// Smallest MSS we compute with: an MSS of 0 would make every window 0 and divide by zero.
pub(crate) fn sane_mss(mss: u32) -> u32 {
    mss.max(1)
}

/// Initial window in bytes for `segments` segments of `mss` bytes.
///
/// RFC 6928 §2: `IW = min(10·MSS, max(2·MSS, 14600))`. We generalise the 14600-byte cap to
/// `segments·1460`, so IW10 is exactly RFC 6928 and other settings scale the same way; jumbo
/// MSS values therefore do not get a 90 kB initial burst. Never below 1·MSS.
pub fn initial_window(mss: u32, segments: u32) -> u32 {
    let mss = sane_mss(mss);
    let segments = segments.max(1);
    let by_segments = segments.saturating_mul(mss);
    let byte_cap = segments.saturating_mul(1460).max(mss.saturating_mul(2));
    by_segments.min(byte_cap).max(mss)
}

/// Slow-start increase for one ACK (RFC 5681 §3.1 with RFC 3465 appropriate byte counting):
/// `min(acked, L)`, L = 2·MSS, except 1·MSS while slow-starting after a timeout (RFC 3465 §2.3).
pub(crate) fn slow_start_increase(acked: u32, mss: u32, after_rto: bool) -> u32 {
    let limit = if after_rto {
        mss
    } else {
        mss.saturating_mul(2)
    };
    acked.min(limit)
}

/// `max(x, 2·MSS)`, the floor for ssthresh (RFC 5681 equation 4, RFC 9438 §4.6).
pub(crate) fn floor_two_mss(x: u32, mss: u32) -> u32 {
    x.max(mss.saturating_mul(2))
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::time::Instant;

    pub const MSS: u32 = 1000;

    pub fn t0() -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_window_rfc6928() {
        assert_eq!(initial_window(1460, 10), 14600);
        assert_eq!(initial_window(1000, 10), 10_000);
        // Jumbo MSS: max(2·MSS, 14600) cap.
        assert_eq!(initial_window(9000, 10), 18_000);
        assert_eq!(initial_window(536, 10), 5360);
        assert_eq!(initial_window(0, 0), 1);
        assert_eq!(initial_window(u32::MAX, u32::MAX), u32::MAX);
    }

    #[test]
    fn factory_picks_algorithm() {
        let c = new_cc(CcAlgorithm::default(), 1460, 10);
        assert_eq!(c.name(), "cubic");
        assert_eq!(c.cwnd(), 14600);
        assert_eq!(c.ssthresh(), u32::MAX);
        let r = new_cc(CcAlgorithm::NewReno, 1460, 10);
        assert_eq!(r.name(), "newreno");
        assert_eq!(r.cwnd(), 14600);
    }

    /// Both algorithms: no input sequence pushes cwnd below the RFC floors or panics.
    #[test]
    fn floors_hold_for_both() {
        for alg in [CcAlgorithm::NewReno, CcAlgorithm::Cubic] {
            let now = test_util::t0();
            let mss = test_util::MSS;
            let mut c = new_cc(alg, mss, 10);
            c.on_congestion_event(now, 0);
            assert_eq!(c.cwnd(), 2 * mss, "{alg:?}");
            assert_eq!(c.ssthresh(), 2 * mss, "{alg:?}");
            c.on_rto(now, 0);
            assert_eq!(c.cwnd(), mss, "{alg:?}");
            assert!(c.ssthresh() >= 2 * mss, "{alg:?}");
            c.on_recovery_exit(now, 0);
            assert!(c.cwnd() >= mss, "{alg:?}");
            c.on_ack(now, u32::MAX, Some(Duration::MAX), u32::MAX);
            c.on_ack(now, u32::MAX, Some(Duration::ZERO), u32::MAX);
            c.on_congestion_event(now, u32::MAX);
            c.on_ack(
                now + Duration::from_secs(1_000_000),
                u32::MAX,
                None,
                u32::MAX,
            );
            c.on_idle_restart(now);
            c.set_mss(0);
            c.on_ack(now, 1, None, 0);
            assert!(c.cwnd() >= 1);
            c.set_mss(u32::MAX);
            c.on_congestion_event(now, 5);
            c.on_rto(now, 5);
            assert!(c.cwnd() >= 1);
        }
    }
}
