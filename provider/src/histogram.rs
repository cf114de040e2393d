//! A lock-free latency histogram for `stats`: log-linear buckets (8 per power of two, so any
//! reported percentile is within 12.5 % of the true value) from 1 ns to ≈ 4.5 min, updated with one
//! relaxed atomic add per sample so the per-packet path never waits on a reader.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Sub-buckets per power of two (as a shift).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Groups of `SUB` buckets above the first: values up to 2^39 ns (≈ 9 min) are resolved; larger
/// ones land in the last bucket.
const POWERS: usize = 36;
const BUCKETS: usize = (POWERS + 1) * SUB;

/// Latency samples, in nanoseconds.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    max_ns: AtomicU64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("summary", &self.summary())
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// Bucket of a value: values below `SUB` have a bucket each; above, the power of two selects a
/// group of `SUB` buckets and the next `SUB_BITS` bits below the top bit select within it.
fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let power = 63 - ns.leading_zeros(); // ≥ SUB_BITS
    let sub = ((ns >> (power - SUB_BITS)) as usize) & (SUB - 1);
    let group = (power - SUB_BITS + 1) as usize;
    (group * SUB + sub).min(BUCKETS - 1)
}

/// Smallest value of a bucket (the value reported for samples in it).
fn bucket_floor(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let group = (b / SUB) as u32;
    let sub = (b % SUB) as u64;
    let power = group + SUB_BITS - 1;
    (1u64 << power) | (sub << (power - SUB_BITS))
}

/// Percentiles of a histogram at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    /// Add every sample of `other` (for a summary over several histograms).
    pub fn merge(&self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter().zip(other.buckets.iter()) {
            a.fetch_add(b.load(Relaxed), Relaxed);
        }
        self.max_ns.fetch_max(other.max_ns.load(Relaxed), Relaxed);
    }

    /// p50 / p99 / p99.9 (lower bound of the bucket holding that rank) and the maximum.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let samples: u64 = counts.iter().sum();
        if samples == 0 {
            return LatencySummary::default();
        }
        let at = |q: f64| {
            // Rank of the q-quantile, 1-based, at least 1.
            let rank = ((samples as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (b, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_floor(b);
                }
            }
            bucket_floor(BUCKETS - 1)
        };
        LatencySummary {
            samples,
            p50_ns: at(0.50),
            p99_ns: at(0.99),
            p999_ns: at(0.999),
            max_ns: self.max_ns.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_floors_round_trip() {
        let mut last = 0;
        for b in 0..BUCKETS {
            let floor = bucket_floor(b);
            assert!(b == 0 || floor > last, "bucket {b}: {floor} after {last}");
            assert_eq!(bucket_of(floor), b, "floor of bucket {b} is {floor}");
            last = floor;
        }
    }

    #[test]
    fn relative_error_is_bounded() {
        for ns in [9u64, 100, 1_000, 12_345, 999_999, 50_000_000, 3_000_000_000] {
            let floor = bucket_floor(bucket_of(ns));
            assert!(floor <= ns);
            assert!(
                (ns - floor) as f64 / ns as f64 <= 1.0 / SUB as f64,
                "{ns} → {floor}"
            );
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = LatencyHistogram::default();
        assert_eq!(h.summary(), LatencySummary::default());
        // 990 samples at 1 µs, 9 at 100 µs, 1 at 10 ms.
        for _ in 0..990 {
            h.record(Duration::from_micros(1));
        }
        for _ in 0..9 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(10));
        let s = h.summary();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.p50_ns, bucket_floor(bucket_of(1_000)));
        assert_eq!(s.p99_ns, bucket_floor(bucket_of(1_000)));
        assert_eq!(s.p999_ns, bucket_floor(bucket_of(100_000)));
        assert_eq!(s.max_ns, 10_000_000);
    }

    #[test]
    fn huge_values_land_in_the_last_bucket() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_secs(100_000));
        assert_eq!(h.summary().samples, 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }
}
