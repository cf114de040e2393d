//! A fixed one-second-window rate limiter (RFC 5961 §7 challenge ACK limit).

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: u32,
    window_start: Option<Instant>,
    count: u32,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            limit: per_second,
            window_start: None,
            count: 0,
        }
    }

    /// Whether one more event is allowed at `now`; counts it if so.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let fresh = match self.window_start {
            None => true,
            Some(s) => now.saturating_duration_since(s) >= Duration::from_secs(1),
        };
        if fresh {
            self.window_start = Some(now);
            self.count = 0;
        }
        if self.count < self.limit {
            self.count += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_second() {
        let t = Instant::now();
        let mut r = RateLimiter::new(2);
        assert!(r.allow(t));
        assert!(r.allow(t));
        assert!(!r.allow(t + Duration::from_millis(999)));
        assert!(r.allow(t + Duration::from_secs(1)));
    }
}
