//! TCP sequence numbers: 32-bit values compared modulo 2^32.
//!
//! RFC 9293 §3.4 requires all sequence arithmetic to be done modulo 2^32. Comparisons use the
//! serial-number rule of RFC 1982 §3.2: `a < b` iff the signed 32-bit difference `a - b` is
//! negative. That is well defined whenever the two numbers are less than 2^31 apart, which TCP
//! guarantees because windows are at most 2^30 bytes (RFC 7323 §2.3). `SeqNum` deliberately does
//! not implement `PartialOrd`/`Ord`: a total order over a circle does not exist, and a derived one
//! would silently be wrong across the wrap.
use std::ops::{Add, AddAssign, Sub};

/// A TCP sequence (or acknowledgment) number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// Signed distance `self - other` (RFC 1982 §3.2).
    #[inline]
    fn diff(self, other: SeqNum) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// `self < other`, modulo 2^32.
    #[inline]
    pub fn lt(self, other: SeqNum) -> bool {
        self.diff(other) < 0
    }

    /// `self <= other`, modulo 2^32.
    #[inline]
    pub fn le(self, other: SeqNum) -> bool {
        self.diff(other) <= 0
    }

    /// `self > other`, modulo 2^32.
    #[inline]
    pub fn gt(self, other: SeqNum) -> bool {
        self.diff(other) > 0
    }

    /// `self >= other`, modulo 2^32.
    #[inline]
    pub fn ge(self, other: SeqNum) -> bool {
        self.diff(other) >= 0
    }

    /// The later of the two (wrap-aware).
    #[inline]
    pub fn max(self, other: SeqNum) -> SeqNum {
        if self.lt(other) { other } else { self }
    }

    /// The earlier of the two (wrap-aware).
    #[inline]
    pub fn min(self, other: SeqNum) -> SeqNum {
        if self.gt(other) { other } else { self }
    }

    /// `start <= self < start + len`, modulo 2^32: the acceptability tests of RFC 9293 §3.10.7.4
    /// in one place. Measured as an unsigned offset from `start`, so it is exact for any `len`
    /// and an empty window contains nothing.
    #[inline]
    pub fn in_window(self, start: SeqNum, len: u32) -> bool {
        self.0.wrapping_sub(start.0) < len
    }

    /// Bytes from `earlier` up to `self`, modulo 2^32 (e.g. `snd_nxt.dist(snd_una)` = flight).
    /// If `earlier` is actually after `self` the result wraps to a large value, so callers check
    /// order first when it is not guaranteed.
    #[inline]
    pub fn dist(self, earlier: SeqNum) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
}

impl Add<u32> for SeqNum {
    type Output = SeqNum;
    #[inline]
    fn add(self, rhs: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(rhs))
    }
}

impl AddAssign<u32> for SeqNum {
    #[inline]
    fn add_assign(&mut self, rhs: u32) {
        self.0 = self.0.wrapping_add(rhs);
    }
}

impl Sub<u32> for SeqNum {
    type Output = SeqNum;
    #[inline]
    fn sub(self, rhs: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(rhs))
    }
}

/// Signed distance `self - rhs` (RFC 1982): negative when `self` is before `rhs`.
impl Sub<SeqNum> for SeqNum {
    type Output = i32;
    #[inline]
    fn sub(self, rhs: SeqNum) -> i32 {
        self.diff(rhs)
    }
}

impl std::fmt::Display for SeqNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: SeqNum = SeqNum(u32::MAX - 9); // 10 below the wrap

    #[test]
    fn order_simple() {
        let a = SeqNum(100);
        let b = SeqNum(200);
        assert!(a.lt(b) && a.le(b) && !a.gt(b) && !a.ge(b));
        assert!(b.gt(a) && b.ge(a) && !b.lt(a) && !b.le(a));
        assert!(a.le(a) && a.ge(a) && !a.lt(a) && !a.gt(a));
    }

    #[test]
    fn order_across_wrap() {
        let after = TOP + 20; // 10 past zero
        assert_eq!(after, SeqNum(10));
        assert!(TOP.lt(after));
        assert!(after.gt(TOP));
        assert_eq!(after - TOP, 20);
        assert_eq!(TOP - after, -20);
        assert_eq!(after.dist(TOP), 20);
        assert_eq!(TOP.max(after), after);
        assert_eq!(after.max(TOP), after);
        assert_eq!(TOP.min(after), TOP);
        assert_eq!(after.min(TOP), TOP);
        assert_eq!(after - 20u32, TOP);
    }

    #[test]
    fn half_space_boundary() {
        let a = SeqNum(0);
        // Just under 2^31 ahead is "after"; 2^31 exactly is the ambiguous point (RFC 1982 leaves
        // it undefined); we treat it as "before" consistently (i32::MIN is negative).
        assert!(a.lt(a + 0x7fff_ffff));
        assert!((a + 0x8000_0000).lt(a));
        assert!(!(a + 0x8000_0000).gt(a));
    }

    #[test]
    fn add_assign_wraps() {
        let mut s = TOP;
        s += 10;
        assert_eq!(s, SeqNum(0));
        s += u32::MAX;
        assert_eq!(s, SeqNum(u32::MAX));
    }

    #[test]
    fn window_membership_across_wrap() {
        let start = TOP;
        assert!(start.in_window(start, 1));
        assert!(!start.in_window(start, 0));
        assert!(SeqNum(0).in_window(start, 20));
        assert!(SeqNum(9).in_window(start, 20));
        assert!(!SeqNum(10).in_window(start, 20)); // == start + len
        assert!(!(start - 1).in_window(start, 20));
        // Whole space.
        assert!(SeqNum(12345).in_window(start, u32::MAX));
    }

    #[test]
    fn dist_is_wrapping() {
        assert_eq!(SeqNum(5).dist(SeqNum(5)), 0);
        assert_eq!(SeqNum(3).dist(SeqNum(u32::MAX)), 4);
        assert_eq!(SeqNum(0).dist(SeqNum(1)), u32::MAX);
    }
}
