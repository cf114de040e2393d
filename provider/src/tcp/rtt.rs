//! Retransmission timeout estimation (RFC 6298).
//!
//! **Karn's rule is the caller's job** (RFC 6298 §3): only feed [`RttEstimator::on_sample`] with
//! samples from segments that were not retransmitted (or from the TCP timestamp echo, RFC 7323
//! §4, which is unambiguous). This type cannot tell which segment a sample came from.
//!
//! All arithmetic is done on nanoseconds in `u128`/saturating `u64`, so absurd inputs (e.g. a
//! `Duration::MAX` sample) clamp instead of panicking.
use std::time::Duration;

/// Clock granularity G of RFC 6298 §2. Our clock is the caller's `Instant` (sub-µs), but a floor
/// of 1 ms keeps RTO above ACK jitter on very short paths, as Linux does.
pub const CLOCK_GRANULARITY: Duration = Duration::from_millis(1);

/// Backoff doublings beyond this cannot change the (clamped) result; stop counting there so the
/// shift below never overflows.
const MAX_BACKOFF_SHIFT: u32 = 32;

/// SRTT / RTTVAR / RTO state of one connection (RFC 6298 §2).
#[derive(Clone, Debug)]
pub struct RttEstimator {
    srtt_ns: Option<u64>,
    rttvar_ns: u64,
    /// RTO before backoff, already clamped to `[min_rto, max_rto]`.
    base_rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
    backoff: u32,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RttEstimator {
    /// `initial_rto` is used until the first sample (RFC 6298 §2.1 recommends 1 s). `min_rto`
    /// is the floor (§2.4 says 1 s; most stacks use 200 ms and the design makes it
    /// configurable); `max_rto` the ceiling (§2.5 allows ≥ 60 s). If `min_rto > max_rto` the
    /// ceiling is raised to the floor rather than panicking.
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        let max_rto = max_rto.max(min_rto);
        RttEstimator {
            srtt_ns: None,
            rttvar_ns: 0,
            base_rto: initial_rto.max(min_rto).min(max_rto),
            min_rto,
            max_rto,
            backoff: 0,
        }
    }

    /// Feeds one RTT measurement R (RFC 6298 §2.2/§2.3). A valid sample also ends the
    /// exponential backoff: §5.7 lets the RTO collapse back once new data is acknowledged and
    /// an RTT has been measured.
    pub fn on_sample(&mut self, rtt: Duration) {
        let r = nanos(rtt);
        match self.srtt_ns {
            None => {
                // §2.2: SRTT <- R, RTTVAR <- R/2.
                self.srtt_ns = Some(r);
                self.rttvar_ns = r / 2;
            }
            Some(srtt) => {
                // §2.3 (alpha = 1/8, beta = 1/4), RTTVAR first because it uses the old SRTT.
                let err = srtt.abs_diff(r);
                self.rttvar_ns = ((3 * u128::from(self.rttvar_ns) + u128::from(err)) / 4) as u64;
                self.srtt_ns = Some(((7 * u128::from(srtt) + u128::from(r)) / 8) as u64);
            }
        }
        let srtt = self.srtt_ns.unwrap_or(r);
        // RTO = SRTT + max(G, K*RTTVAR), K = 4.
        let var = nanos(CLOCK_GRANULARITY).max(self.rttvar_ns.saturating_mul(4));
        let rto = Duration::from_nanos(srtt.saturating_add(var));
        self.base_rto = rto.max(self.min_rto).min(self.max_rto);
        self.backoff = 0;
    }

    /// The current RTO: the estimate doubled once per [`backoff`](Self::backoff) since the last
    /// sample, capped at `max_rto` (RFC 6298 §5.5).
    pub fn rto(&self) -> Duration {
        if self.backoff == 0 {
            return self.base_rto;
        }
        if self.backoff >= MAX_BACKOFF_SHIFT {
            return self.max_rto;
        }
        let factor = 1u64 << self.backoff;
        let ns = u128::from(nanos(self.base_rto)) * u128::from(factor);
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        Duration::from_nanos(ns).min(self.max_rto)
    }

    /// Doubles the RTO after the retransmission timer expires (RFC 6298 §5.5). Saturates: once the
    /// cap is reached further calls change nothing but the count.
    pub fn backoff(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    /// Smoothed RTT, `None` before the first sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt_ns.map(Duration::from_nanos)
    }

    /// RTT variation (zero before the first sample).
    pub fn rttvar(&self) -> Duration {
        Duration::from_nanos(self.rttvar_ns)
    }

    /// Consecutive timeouts since the last sample (for "give up after N retries" decisions).
    pub fn backoff_count(&self) -> u32 {
        self.backoff
    }

    /// The configured floor.
    pub fn min_rto(&self) -> Duration {
        self.min_rto
    }

    /// The configured ceiling.
    pub fn max_rto(&self) -> Duration {
        self.max_rto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn est() -> RttEstimator {
        RttEstimator::new(ms(1000), ms(200), ms(60_000))
    }

    #[test]
    fn initial_rto_before_samples() {
        let e = est();
        assert_eq!(e.rto(), ms(1000));
        assert_eq!(e.srtt(), None);
        assert_eq!(e.rttvar(), Duration::ZERO);
    }

    #[test]
    fn first_sample() {
        let mut e = est();
        e.on_sample(ms(100));
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rttvar(), ms(50));
        // 100 + 4*50 = 300 ms.
        assert_eq!(e.rto(), ms(300));
    }

    #[test]
    fn subsequent_samples_use_ewma() {
        let mut e = est();
        e.on_sample(ms(100));
        e.on_sample(ms(200));
        // RTTVAR = 3/4*50 + 1/4*|100-200| = 37.5 + 25 = 62.5 ms; SRTT = 7/8*100 + 1/8*200 = 112.5
        assert_eq!(e.rttvar(), Duration::from_micros(62_500));
        assert_eq!(e.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(e.rto(), Duration::from_micros(112_500 + 250_000));
    }

    #[test]
    fn min_clamp_and_granularity() {
        let mut e = RttEstimator::new(ms(1000), Duration::ZERO, ms(60_000));
        for _ in 0..50 {
            e.on_sample(Duration::from_micros(10));
        }
        // RTTVAR decays towards 0, so the G term (1 ms) dominates.
        let rto = e.rto();
        assert!(rto >= CLOCK_GRANULARITY && rto < ms(2), "{rto:?}");

        let mut e = est();
        e.on_sample(ms(1));
        assert_eq!(e.rto(), ms(200));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut e = est();
        e.on_sample(ms(100)); // 300 ms
        e.backoff();
        assert_eq!(e.rto(), ms(600));
        e.backoff();
        assert_eq!(e.rto(), ms(1200));
        assert_eq!(e.backoff_count(), 2);
        for _ in 0..100 {
            e.backoff();
        }
        assert_eq!(e.rto(), ms(60_000));
        e.on_sample(ms(100));
        assert_eq!(e.backoff_count(), 0);
        assert!(e.rto() < ms(1000));
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let mut e = RttEstimator::new(Duration::MAX, Duration::MAX, Duration::ZERO);
        assert_eq!(e.rto(), Duration::MAX);
        e.on_sample(Duration::MAX);
        e.on_sample(Duration::ZERO);
        e.on_sample(Duration::MAX);
        for _ in 0..u8::MAX {
            e.backoff();
        }
        let _ = e.rto();
        let mut e = est();
        e.on_sample(Duration::MAX);
        assert_eq!(e.rto(), ms(60_000));
    }
}
