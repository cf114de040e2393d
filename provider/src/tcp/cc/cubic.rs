//! CUBIC congestion control (RFC 9438).
//!
//! Windows are kept in bytes; RFC 9438 states its formulas in segments, so `C` is scaled by the
//! MSS where the cubic function is evaluated. Time `t` comes only from the `now` arguments.
//! Floating point is used for the cubic function as in the RFC's own pseudo-code; results are
//! converted back with saturating `as` casts, so no input can panic.
use std::time::{Duration, Instant};

use super::{CongestionControl, floor_two_mss, initial_window, sane_mss, slow_start_increase};

/// RFC 9438 §4.1/§5: C = 0.4 (segments / s³).
pub const C: f64 = 0.4;
/// RFC 9438 §4.6: multiplicative decrease factor β_cubic = 0.7.
pub const BETA: f64 = 0.7;
/// RFC 9438 §4.3: α_cubic = 3(1 − β)/(1 + β), so the Reno-friendly estimate matches AIMD(1, 0.5).
pub const ALPHA_AIMD: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);

/// CUBIC state for one connection.
#[derive(Clone, Debug)]
pub struct Cubic {
    mss: u32,
    iw_segments: u32,
    cwnd: u32,
    ssthresh: u32,
    /// Growth (bytes) computed but not yet whole bytes of cwnd.
    cwnd_frac: f64,
    /// W_max (bytes): window just before the last reduction; 0 = none yet.
    w_max: f64,
    /// K (seconds): time for W_cubic to return to W_max (RFC 9438 §4.2, Figure 2).
    k: f64,
    /// epoch_start: start of the current congestion-avoidance stage; `None` = start it on the
    /// next congestion-avoidance ACK.
    epoch_start: Option<Instant>,
    /// W_est (bytes): the Reno-friendly estimate (RFC 9438 §4.3).
    w_est: f64,
    /// cwnd_prior (bytes): cwnd before the last reduction (§4.6), where α switches to 1 (§4.3).
    cwnd_prior: f64,
    /// Smoothed RTT for the `t + RTT` target (§4.2); EWMA of the samples given to `on_ack`.
    srtt: Option<Duration>,
    /// The next epoch follows a timeout: K = 0, W_max = cwnd_epoch (RFC 9438 §4.8).
    timeout_epoch: bool,
    /// See [`NewReno`](super::NewReno): RFC 3465 §2.3 after an RTO.
    after_rto: bool,
    /// See [`NewReno`](super::NewReno): repeated timeout keeps ssthresh.
    rto_pending: bool,
    /// RFC 9438 §4.7 fast convergence (SHOULD; on by default).
    fast_convergence: bool,
}

impl Cubic {
    pub fn new(mss: u32, initial_window_segments: u32) -> Self {
        let mss = sane_mss(mss);
        Cubic {
            mss,
            iw_segments: initial_window_segments,
            cwnd: initial_window(mss, initial_window_segments),
            ssthresh: u32::MAX,
            cwnd_frac: 0.0,
            w_max: 0.0,
            k: 0.0,
            epoch_start: None,
            w_est: 0.0,
            cwnd_prior: 0.0,
            srtt: None,
            timeout_epoch: false,
            after_rto: false,
            rto_pending: false,
            fast_convergence: true,
        }
    }

    /// RFC 9438 §4.7 says fast convergence SHOULD be disabled when a single flow has the path to
    /// itself; the connection cannot know that, so it is on unless the user turns it off.
    pub fn set_fast_convergence(&mut self, on: bool) {
        self.fast_convergence = on;
    }

    /// W_max in bytes (0 before the first congestion event).
    pub fn w_max(&self) -> u32 {
        to_u32(self.w_max)
    }

    /// K in seconds for the current epoch.
    pub fn k(&self) -> f64 {
        self.k
    }

    /// W_cubic(t) in bytes (RFC 9438 Figure 1): C·(t − K)³ + W_max, with C scaled to bytes.
    fn w_cubic(&self, t: f64) -> f64 {
        let d = t - self.k;
        C * f64::from(self.mss) * d * d * d + self.w_max
    }

    /// Starts a congestion-avoidance stage (RFC 9438 §4.2: epoch_start, cwnd_epoch, K; §4.3:
    /// W_est = cwnd_epoch).
    fn start_epoch(&mut self, now: Instant) {
        let cwnd_epoch = f64::from(self.cwnd);
        self.epoch_start = Some(now);
        if self.timeout_epoch || self.w_max <= 0.0 {
            // First CA stage after a timeout (§4.8) or without any loss yet (§4.10): start the
            // cubic at the current window, in its convex part.
            self.w_max = cwnd_epoch;
            self.k = 0.0;
            self.timeout_epoch = false;
        } else if cwnd_epoch >= self.w_max {
            self.k = 0.0;
        } else {
            // K = cbrt((W_max − cwnd_epoch) / C), in segments.
            self.k = ((self.w_max - cwnd_epoch) / (C * f64::from(self.mss))).cbrt();
        }
        self.w_est = cwnd_epoch;
        self.cwnd_frac = 0.0;
    }

    fn update_srtt(&mut self, rtt: Option<Duration>) {
        if let Some(r) = rtt {
            self.srtt = Some(match self.srtt {
                None => r,
                // 7/8 old + 1/8 new, as RFC 6298; checked so absurd samples cannot overflow.
                Some(s) => (s / 8)
                    .checked_mul(7)
                    .and_then(|x| x.checked_add(r / 8))
                    .unwrap_or(Duration::MAX),
            });
        }
    }

    fn add_growth(&mut self, bytes: f64) {
        if bytes.is_nan() || bytes <= 0.0 {
            return;
        }
        self.cwnd_frac += bytes;
        let whole = self.cwnd_frac.floor();
        if whole >= 1.0 {
            self.cwnd = self.cwnd.saturating_add(to_u32(whole));
            self.cwnd_frac -= whole;
        }
    }

    fn congestion_avoidance(&mut self, now: Instant, acked: u32) {
        let epoch = match self.epoch_start {
            Some(e) => e,
            None => {
                self.start_epoch(now);
                now
            }
        };
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        let rtt = self.srtt.unwrap_or(Duration::ZERO).as_secs_f64();
        let cwnd = f64::from(self.cwnd.max(1));
        let acked = f64::from(acked);
        let mss = f64::from(self.mss);

        // §4.3: W_est += α · segments_acked / cwnd (segments), α = 1 once W_est ≥ cwnd_prior.
        let alpha = if self.w_est >= self.cwnd_prior {
            1.0
        } else {
            ALPHA_AIMD
        };
        self.w_est += alpha * acked * mss / cwnd;

        if self.w_cubic(t) < self.w_est {
            // Reno-friendly region (§4.3): cwnd = W_est (never shrink on an ACK).
            if self.w_est > cwnd {
                self.cwnd = to_u32(self.w_est);
                self.cwnd_frac = 0.0;
            }
            return;
        }
        // Concave (§4.4) and convex (§4.5) regions: move towards
        // target = W_cubic(t + RTT) clamped to [cwnd, 1.5·cwnd] by (target − cwnd)/cwnd per
        // segment acknowledged.
        let target = self.w_cubic(t + rtt).max(cwnd).min(1.5 * cwnd);
        self.add_growth((target - cwnd) / cwnd * acked);
    }
}

fn to_u32(x: f64) -> u32 {
    // `as` saturates at the bounds and maps NaN to 0.
    x as u32
}

impl CongestionControl for Cubic {
    fn name(&self) -> &'static str {
        "cubic"
    }

    fn cwnd(&self) -> u32 {
        self.cwnd
    }

    fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    fn on_ack(
        &mut self,
        now: Instant,
        acked_bytes: u32,
        rtt: Option<Duration>,
        _bytes_in_flight: u32,
    ) {
        self.update_srtt(rtt);
        if acked_bytes == 0 {
            return;
        }
        self.rto_pending = false;
        let mut acked = acked_bytes;
        if self.cwnd < self.ssthresh {
            // §4.10: standard (RFC 5681) slow start below ssthresh.
            let inc = slow_start_increase(acked, self.mss, self.after_rto);
            let room = self.ssthresh - self.cwnd;
            if inc < room {
                self.cwnd += inc;
                return;
            }
            self.cwnd = self.ssthresh;
            self.after_rto = false;
            acked = inc - room;
            if acked == 0 {
                return;
            }
        }
        self.after_rto = false;
        self.congestion_avoidance(now, acked);
    }

    fn on_congestion_event(&mut self, _now: Instant, bytes_in_flight: u32) {
        let cwnd = f64::from(self.cwnd);
        // §4.7 fast convergence: a flow whose window did not get back to W_max releases more.
        self.w_max = if self.fast_convergence && cwnd < self.w_max {
            cwnd * (1.0 + BETA) / 2.0
        } else {
            cwnd
        };
        // §4.6: cwnd_prior = cwnd; ssthresh = max(flight_size·β, 2); cwnd = ssthresh.
        self.cwnd_prior = cwnd;
        self.ssthresh = floor_two_mss(to_u32(f64::from(bytes_in_flight) * BETA), self.mss);
        self.cwnd = self.ssthresh;
        self.cwnd_frac = 0.0;
        // The next CA stage starts at recovery exit (or the first CA ACK).
        self.epoch_start = None;
        self.timeout_epoch = false;
        self.after_rto = false;
        self.rto_pending = false;
    }

    fn on_rto(&mut self, _now: Instant, bytes_in_flight: u32) {
        if !self.rto_pending {
            // §4.8: ssthresh as in §4.6 (β, not ½); the cubic restarts from scratch after it.
            self.cwnd_prior = f64::from(self.cwnd);
            self.ssthresh = floor_two_mss(to_u32(f64::from(bytes_in_flight) * BETA), self.mss);
        }
        self.cwnd = self.mss;
        self.cwnd_frac = 0.0;
        self.epoch_start = None;
        self.timeout_epoch = true;
        self.after_rto = true;
        self.rto_pending = true;
    }

    fn on_recovery_exit(&mut self, now: Instant, _bytes_in_flight: u32) {
        self.cwnd = self.ssthresh.max(self.mss);
        // cwnd >= ssthresh: the congestion-avoidance stage (and so t) starts here, RFC 9438 §4.2.
        self.start_epoch(now);
    }

    fn on_idle_restart(&mut self, _now: Instant) {
        // RFC 5681 §4.1, which RFC 9438 §4.10 keeps. The idle time must not count as cubic
        // growth time, so the epoch restarts (K recomputed from the reduced window).
        self.cwnd = self.cwnd.min(initial_window(self.mss, self.iw_segments));
        self.cwnd_frac = 0.0;
        self.epoch_start = None;
    }

    fn set_mss(&mut self, mss: u32) {
        let mss = sane_mss(mss);
        let old_iw = initial_window(self.mss, self.iw_segments);
        if self.cwnd == old_iw && self.ssthresh == u32::MAX {
            self.cwnd = initial_window(mss, self.iw_segments);
        }
        self.mss = mss;
        self.cwnd = self.cwnd.max(mss);
        if self.ssthresh != u32::MAX {
            self.ssthresh = floor_two_mss(self.ssthresh, mss);
        }
        // K depends on the MSS (C is per segment); recompute on the next ACK.
        self.epoch_start = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{MSS, t0};
    use super::*;

    const RTT: Duration = Duration::from_millis(100);

    /// Acknowledges one full window, MSS by MSS, at `now`.
    fn ack_window(c: &mut Cubic, now: Instant) {
        let n = c.cwnd() / MSS;
        for _ in 0..n {
            let flight = c.cwnd;
            c.on_ack(now, MSS, Some(RTT), flight);
        }
    }

    fn grown_to(segments: u32) -> (Cubic, Instant) {
        let now = t0();
        let mut c = Cubic::new(MSS, 10);
        while c.cwnd() < segments * MSS {
            c.on_ack(now, MSS, Some(RTT), c.cwnd);
        }
        assert_eq!(c.cwnd(), segments * MSS);
        (c, now)
    }

    #[test]
    fn slow_start_like_reno() {
        let now = t0();
        let mut c = Cubic::new(MSS, 10);
        c.ssthresh = 25 * MSS;
        ack_window(&mut c, now);
        assert_eq!(c.cwnd(), 20 * MSS);
        for _ in 0..5 {
            c.on_ack(now, MSS, Some(RTT), c.cwnd);
        }
        assert_eq!(c.cwnd(), 25 * MSS); // stops exactly at ssthresh
        // Then congestion avoidance: about one MSS per window (Reno-friendly region, as no loss
        // has set W_max yet).
        ack_window(&mut c, now);
        let w = c.cwnd();
        assert!((25 * MSS + 900..=26 * MSS).contains(&w), "{w}");
    }

    #[test]
    fn beta_reduction_and_fast_convergence() {
        let (mut c, now) = grown_to(100);
        c.on_congestion_event(now, 100 * MSS);
        assert_eq!(c.ssthresh(), 70 * MSS);
        assert_eq!(c.cwnd(), 70 * MSS);
        assert_eq!(c.w_max(), 100 * MSS);
        c.on_recovery_exit(now, 60 * MSS);
        assert_eq!(c.cwnd(), 70 * MSS);
        // K = cbrt(30 / 0.4) s.
        assert!((c.k() - 75f64.cbrt()).abs() < 1e-9, "{}", c.k());
        // Second loss before getting back to W_max: W_max = cwnd·(1+β)/2.
        c.on_congestion_event(now, 70 * MSS);
        assert_eq!(c.w_max(), 59_500);
        assert_eq!(c.cwnd(), 49 * MSS);
        // Without fast convergence W_max is just cwnd.
        c.set_fast_convergence(false);
        c.on_congestion_event(now, 49 * MSS);
        assert_eq!(c.w_max(), 49 * MSS);
        // Floor: never below 2·MSS.
        c.on_congestion_event(now, MSS);
        assert_eq!(c.cwnd(), 2 * MSS);
    }

    /// After a loss at W_max = 100 segments, the window grows quickly at first, flattens out near
    /// W_max around t = K (concave), then accelerates again (convex).
    #[test]
    fn concave_then_convex_around_w_max() {
        let (mut c, start) = grown_to(100);
        c.on_congestion_event(start, 100 * MSS);
        c.on_recovery_exit(start, 70 * MSS);
        let k = c.k();
        let mut samples = Vec::new(); // (t, cwnd in segments)
        let mut now = start;
        for _ in 0..90 {
            now += RTT;
            ack_window(&mut c, now);
            let t = now.duration_since(start).as_secs_f64();
            samples.push((t, f64::from(c.cwnd()) / f64::from(MSS)));
        }
        let cw_at = |t: f64| {
            samples
                .iter()
                .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
                .map(|s| s.1)
                .unwrap_or(0.0)
        };
        // Growth over one second, well before K, just before K, after K, well after K.
        let g_early = cw_at(1.0) - cw_at(0.1);
        let g_before = cw_at(k) - cw_at(k - 1.0);
        let g_after = cw_at(k + 1.0) - cw_at(k);
        let g_late = cw_at(k + 4.0) - cw_at(k + 3.0);
        assert!(g_early > g_before, "concave: {g_early} > {g_before}");
        assert!(g_before < 3.0, "plateau near W_max: {g_before}");
        assert!(g_after < g_late, "convex: {g_after} < {g_late}");
        // Near W_max at t = K.
        let at_k = cw_at(k);
        assert!((95.0..=103.0).contains(&at_k), "cwnd at K = {at_k}");
        // Past W_max after K.
        assert!(cw_at(k + 4.0) > 100.0);
        // Never jumps by more than 1.5× per RTT.
        for w in samples.windows(2) {
            assert!(w[1].1 <= w[0].1 * 1.5 + 1.0);
        }
    }

    /// On a short-RTT path the cubic grows slower than Reno would; CUBIC then follows W_est.
    #[test]
    fn reno_friendly_region() {
        let (mut c, start) = grown_to(20);
        c.on_congestion_event(start, 20 * MSS); // cwnd 14, W_max 20, K ≈ 2.47 s
        c.on_recovery_exit(start, 14 * MSS);
        let mut now = start;
        // 1 ms RTT: 100 RTTs in 0.1 s. W_cubic barely moves in 0.1 s; W_est grows by α per RTT
        // (≈0.53 up to cwnd_prior = 20, then 1), so cwnd ≈ 14 + 6 + 89 segments.
        for _ in 0..100 {
            now += Duration::from_millis(1);
            let n = c.cwnd() / MSS;
            for _ in 0..n {
                c.on_ack(now, MSS, Some(Duration::from_millis(1)), c.cwnd);
            }
        }
        let t = now.duration_since(start).as_secs_f64();
        let cubic_only = c.w_cubic(t) / f64::from(MSS);
        let w = f64::from(c.cwnd()) / f64::from(MSS);
        assert!(w > cubic_only + 10.0, "cwnd {w} vs W_cubic {cubic_only}");
        assert!(w > 90.0 && w < 120.0, "{w}");
    }

    #[test]
    fn rto_loss_window_then_restart_from_cwnd() {
        let (mut c, now) = grown_to(50);
        c.on_rto(now, 50 * MSS);
        assert_eq!(c.cwnd(), MSS);
        assert_eq!(c.ssthresh(), 35 * MSS);
        c.on_rto(now, MSS); // repeated timeout: ssthresh held
        assert_eq!(c.ssthresh(), 35 * MSS);
        // Slow start back to ssthresh (1 MSS per ACK after an RTO).
        let mut now = now;
        while c.cwnd() < c.ssthresh() {
            now += Duration::from_millis(10);
            c.on_ack(now, 2 * MSS, Some(RTT), c.cwnd);
        }
        assert_eq!(c.cwnd(), 35 * MSS);
        // First CA stage after the timeout: W_max = cwnd_epoch, K = 0 (RFC 9438 §4.8).
        now += RTT;
        c.on_ack(now, MSS, Some(RTT), c.cwnd);
        assert_eq!(c.w_max(), 35 * MSS);
        assert_eq!(c.k(), 0.0);
    }

    #[test]
    fn idle_restart() {
        let (mut c, now) = grown_to(40);
        c.on_idle_restart(now);
        assert_eq!(c.cwnd(), 10 * MSS);
    }
}
