//! Sender-side SACK scoreboard (RFC 2018, loss recovery per RFC 6675).
//!
//! The connection's sender (`conn/send.rs`) no longer uses this type: RACK (RFC 8985) needs a
//! send time per transmitted segment, so the sender keeps SACKed/lost/in-flight state on its
//! transmit queue instead. This byte-range scoreboard stays as a standalone building block (and
//! documents RFC 6675's IsLost/SetPipe/NextSeg in their original byte form).
//!
//! The scoreboard remembers which byte ranges above `SND.UNA` the peer has selectively
//! acknowledged and answers RFC 6675's questions: `IsLost` (§4), `SetPipe` (§4) and rule 1 of
//! `NextSeg` (§4). It stores byte ranges, not segments, so it does not depend on how data was
//! packetised, and its memory is bounded ([`MAX_RANGES`]).
//!
//! Sequence numbers are compared modulo 2^32; every stored range lies within 2^30 bytes (the
//! largest TCP window, RFC 7323 §2.3) above `SND.UNA`, so the comparisons are unambiguous.
use crate::tcp::seq::SeqNum;

/// Most ranges kept. A receiver reports at most 4 blocks per ACK (3 with timestamps, RFC 2018
/// §3), so 64 holes means a badly shredded window; beyond that the highest ranges are forgotten.
/// Forgetting SACK information is always safe (at worst a spurious retransmission), while
/// inventing it by merging across a hole would not be.
pub const MAX_RANGES: usize = 64;

/// Largest span a SACK block may have above `SND.UNA` when the caller gives no `SND.NXT`: the
/// largest possible window (RFC 7323 §2.3).
pub const MAX_WINDOW: u32 = 1 << 30;

/// SACKed ranges above `SND.UNA`.
#[derive(Clone, Debug, Default)]
pub struct Scoreboard {
    /// Disjoint, non-adjacent, half-open `[start, end)` ranges in ascending order, all above
    /// `base`.
    ranges: Vec<(SeqNum, SeqNum)>,
    /// `SND.UNA` at the last update.
    base: SeqNum,
}

impl Scoreboard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Processes an ACK: forgets everything at or below `snd_una` (cumulatively acknowledged now)
    /// and merges the SACK blocks (`[left, right)` edges as on the wire, RFC 2018 §3). Blocks that
    /// are empty, reversed, below `snd_una` (D-SACK, RFC 2883: they report duplicates, not new
    /// data) or more than [`MAX_WINDOW`] above it are ignored; a block straddling `snd_una` is
    /// trimmed to the part above it.
    pub fn on_ack(&mut self, snd_una: SeqNum, blocks: &[(SeqNum, SeqNum)]) {
        self.on_ack_bounded(snd_una, snd_una + MAX_WINDOW, blocks);
    }

    /// [`on_ack`](Self::on_ack) with the tighter validity check RFC 6675 implies: a block must
    /// also end at or below `snd_nxt` (no one can SACK data we never sent).
    pub fn on_ack_bounded(
        &mut self,
        snd_una: SeqNum,
        snd_nxt: SeqNum,
        blocks: &[(SeqNum, SeqNum)],
    ) {
        self.advance(snd_una);
        let limit = if snd_nxt.ge(snd_una) {
            snd_nxt.dist(snd_una).min(MAX_WINDOW)
        } else {
            0
        };
        for &(left, right) in blocks {
            if !left.lt(right) || !right.gt(snd_una) {
                continue;
            }
            let left = left.max(snd_una);
            if right.dist(snd_una) > limit {
                continue;
            }
            self.insert(left, right);
        }
    }

    /// Drops what `snd_una` now acknowledges.
    fn advance(&mut self, snd_una: SeqNum) {
        self.base = snd_una;
        self.ranges.retain_mut(|r| {
            if r.1.le(snd_una) {
                return false;
            }
            if r.0.lt(snd_una) {
                r.0 = snd_una;
            }
            true
        });
        // Only a caller moving SND.UNA backwards can disturb the order; cheap to restore.
        let base = self.base;
        if !self.ranges.is_sorted_by_key(|r| r.0.dist(base)) {
            self.ranges.sort_unstable_by_key(|r| r.0.dist(base));
        }
    }

    /// Merges `[left, right)` (already validated, above `base`) into the sorted range list.
    fn insert(&mut self, left: SeqNum, right: SeqNum) {
        let base = self.base;
        let off = |s: SeqNum| s.dist(base);
        let (lo, hi) = (off(left), off(right));
        // First range that ends at or after `lo` (touching counts: adjacent ranges merge).
        let first = self.ranges.partition_point(|r| off(r.1) < lo);
        // Ranges [first, last) overlap or touch the new one.
        let mut last = first;
        let (mut new_lo, mut new_hi) = (lo, hi);
        while last < self.ranges.len() && off(self.ranges[last].0) <= hi {
            new_lo = new_lo.min(off(self.ranges[last].0));
            new_hi = new_hi.max(off(self.ranges[last].1));
            last += 1;
        }
        let merged = (base + new_lo, base + new_hi);
        self.ranges.splice(first..last, std::iter::once(merged));
        self.ranges.truncate(MAX_RANGES);
    }

    /// Whether the byte at `seq` has been SACKed.
    pub fn is_sacked(&self, seq: SeqNum) -> bool {
        self.ranges
            .iter()
            .any(|&(s, e)| seq.in_window(s, e.dist(s)))
    }

    /// Total SACKed bytes above `SND.UNA`.
    pub fn sacked_bytes(&self) -> u32 {
        self.ranges
            .iter()
            .fold(0u32, |acc, &(s, e)| acc.saturating_add(e.dist(s)))
    }

    /// RFC 6675 §4 `IsLost(seq)`: true when DupThresh discontiguous SACKed ranges lie entirely
    /// above `seq`, or more than (DupThresh − 1)·MSS bytes above `seq` are SACKed. (We count
    /// ranges rather than segments for the first test because we keep bytes; the byte test
    /// covers full-sized segments exactly.) A `dupthresh` of 0 is treated as 1.
    pub fn is_lost(&self, seq: SeqNum, mss: u32, dupthresh: u32) -> bool {
        self.lost_boundary(mss, dupthresh)
            .is_some_and(|l| seq.lt(l))
    }

    /// The point below which every sequence number satisfies `IsLost`: `IsLost(s)` is
    /// monotone (fewer SACKed bytes and ranges lie above a higher `s`), so it holds exactly for
    /// `s < boundary`. `None` when nothing is lost. This turns SetPipe and NextSeg into range
    /// arithmetic instead of a per-byte loop.
    pub fn lost_boundary(&self, mss: u32, dupthresh: u32) -> Option<SeqNum> {
        let dupthresh = dupthresh.max(1);
        let n = self.ranges.len();
        // (a) ranges starting above s ≥ DupThresh  ⇔  s < start of the DupThresh-th highest range.
        let by_ranges = usize::try_from(dupthresh)
            .ok()
            .filter(|&d| d <= n)
            .map(|d| self.ranges[n - d].0);
        // (b) SACKed bytes above s > B  ⇔  s < q, q = the (B+1)-th highest SACKed byte.
        let mut skip = u64::from(dupthresh - 1) * u64::from(mss);
        let mut by_bytes = None;
        for &(s, e) in self.ranges.iter().rev() {
            let len = u64::from(e.dist(s));
            if len > skip {
                // `skip < len <= u32::MAX`, so the cast is exact.
                by_bytes = Some(e - 1 - skip as u32);
                break;
            }
            skip -= len;
        }
        match (by_ranges, by_bytes) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// SACKed bytes inside `[from, to)`.
    fn sacked_in(&self, from: SeqNum, to: SeqNum) -> u32 {
        if !from.lt(to) {
            return 0;
        }
        self.ranges.iter().fold(0u32, |acc, &(s, e)| {
            let lo = s.max(from);
            let hi = e.min(to);
            if lo.lt(hi) {
                acc.saturating_add(hi.dist(lo))
            } else {
                acc
            }
        })
    }

    /// Bytes in `[from, to)` not SACKed.
    fn unsacked_in(&self, from: SeqNum, to: SeqNum) -> u32 {
        if !from.lt(to) {
            return 0;
        }
        to.dist(from).saturating_sub(self.sacked_in(from, to))
    }

    /// RFC 6675 §4 `SetPipe`: bytes believed to be in the network. Over `[snd_una, snd_nxt)`,
    /// every byte not SACKed counts once if it is not lost, and once more if it was
    /// retransmitted.
    ///
    /// `high_rxt` is *exclusive*: bytes in `[snd_una, high_rxt)` have been retransmitted in this
    /// recovery episode; pass `snd_una` when nothing has been (RFC 6675 initialises HighRxt to
    /// HighACK on entering recovery).
    pub fn pipe(
        &self,
        snd_una: SeqNum,
        snd_nxt: SeqNum,
        high_rxt: SeqNum,
        mss: u32,
        dupthresh: u32,
    ) -> u32 {
        if !snd_una.lt(snd_nxt) {
            return 0;
        }
        let clamp = |s: SeqNum| s.max(snd_una).min(snd_nxt);
        let lost_to = self.lost_boundary(mss, dupthresh).map_or(snd_una, clamp);
        let not_lost = self.unsacked_in(lost_to, snd_nxt);
        let retransmitted = self.unsacked_in(snd_una, clamp(high_rxt));
        not_lost.saturating_add(retransmitted)
    }

    /// RFC 6675 §4 `NextSeg` rule 1: the first byte range that is not SACKed, is lost
    /// (`IsLost`), lies at or above `high_rxt` (exclusive, see [`pipe`](Self::pipe)) and below
    /// `snd_nxt`. Returns `(start, len)` with `len ≤ mss`, stopping at the next SACKed range.
    /// Rules 2–4 (new data, rescue retransmission) need the send buffer and are the caller's.
    pub fn next_seg(
        &self,
        snd_una: SeqNum,
        snd_nxt: SeqNum,
        high_rxt: SeqNum,
        mss: u32,
        dupthresh: u32,
    ) -> Option<(SeqNum, u32)> {
        if mss == 0 || !snd_una.lt(snd_nxt) {
            return None;
        }
        let limit = self.lost_boundary(mss, dupthresh)?.min(snd_nxt);
        let mut s = high_rxt.max(snd_una);
        for &(rs, re) in &self.ranges {
            if !s.lt(limit) {
                return None;
            }
            if re.le(s) {
                continue;
            }
            if rs.le(s) {
                s = re; // inside a SACKed range: skip past it
                continue;
            }
            // Hole [s, rs).
            let len = mss.min(rs.dist(s)).min(snd_nxt.dist(s));
            return Some((s, len));
        }
        if s.lt(limit) {
            Some((s, mss.min(snd_nxt.dist(s))))
        } else {
            None
        }
    }

    /// Right edge (exclusive) of the highest SACKed range: one past the highest SACKed byte.
    pub fn highest_sacked(&self) -> Option<SeqNum> {
        self.ranges.last().map(|r| r.1)
    }

    /// Forgets everything. RFC 6675 §5.1 / RFC 2018 §8: after a retransmission timeout the
    /// receiver may have reneged, so the sender should not trust old SACK information.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// No SACKed data above `SND.UNA`.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The SACKed `[start, end)` ranges in ascending order.
    pub fn ranges(&self) -> impl Iterator<Item = (SeqNum, SeqNum)> + '_ {
        self.ranges.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 100;
    const DT: u32 = 3;

    fn s(n: u32) -> SeqNum {
        SeqNum(n)
    }

    fn blocks(sb: &Scoreboard) -> Vec<(u32, u32)> {
        sb.ranges().map(|(a, b)| (a.0, b.0)).collect()
    }

    #[test]
    fn merges_overlapping_and_adjacent() {
        let mut sb = Scoreboard::new();
        sb.on_ack(s(0), &[(s(300), s(400)), (s(100), s(200))]);
        assert_eq!(blocks(&sb), [(100, 200), (300, 400)]);
        sb.on_ack(s(0), &[(s(200), s(300))]); // adjacent on both sides
        assert_eq!(blocks(&sb), [(100, 400)]);
        sb.on_ack(s(0), &[(s(350), s(600)), (s(700), s(800)), (s(50), s(120))]);
        assert_eq!(blocks(&sb), [(50, 600), (700, 800)]);
        sb.on_ack(s(0), &[(s(0), s(1000))]); // covers everything
        assert_eq!(blocks(&sb), [(0, 1000)]);
        assert_eq!(sb.sacked_bytes(), 1000);
        assert_eq!(sb.highest_sacked(), Some(s(1000)));
    }

    #[test]
    fn ignores_invalid_and_dsack_blocks() {
        let mut sb = Scoreboard::new();
        sb.on_ack(
            s(1000),
            &[
                (s(500), s(600)),                    // D-SACK below SND.UNA
                (s(1200), s(1100)),                  // reversed
                (s(1300), s(1300)),                  // empty
                (s(1000), s(1000) + MAX_WINDOW + 1), // absurdly far
                (s(900), s(1100)),                   // straddles: trimmed
            ],
        );
        assert_eq!(blocks(&sb), [(1000, 1100)]);
        // Bounded by SND.NXT.
        sb.on_ack_bounded(s(1000), s(2000), &[(s(1500), s(2100)), (s(1500), s(2000))]);
        assert_eq!(blocks(&sb), [(1000, 1100), (1500, 2000)]);
    }

    #[test]
    fn cumulative_ack_drops_and_trims() {
        let mut sb = Scoreboard::new();
        sb.on_ack(
            s(0),
            &[(s(100), s(200)), (s(300), s(400)), (s(500), s(600))],
        );
        sb.on_ack(s(350), &[]);
        assert_eq!(blocks(&sb), [(350, 400), (500, 600)]);
        assert!(!sb.is_sacked(s(100)));
        assert!(sb.is_sacked(s(350)));
        sb.on_ack(s(600), &[]);
        assert!(sb.is_empty());
        assert_eq!(sb.highest_sacked(), None);
    }

    #[test]
    fn wraparound() {
        let una = SeqNum(u32::MAX - 150);
        let mut sb = Scoreboard::new();
        // Blocks on both sides of 2^32.
        sb.on_ack(
            una,
            &[
                (una + 250, una + 350),
                (una + 50, una + 100),
                (una + 100, una + 200),
            ],
        );
        assert_eq!(
            sb.ranges().collect::<Vec<_>>(),
            [(una + 50, una + 200), (una + 250, una + 350)]
        );
        assert!(sb.is_sacked(SeqNum(10))); // una + 161
        assert!(!sb.is_sacked(una + 220));
        assert_eq!(sb.sacked_bytes(), 250);
        sb.on_ack(una + 300, &[]);
        assert_eq!(sb.ranges().collect::<Vec<_>>(), [(una + 300, una + 350)]);
        // IsLost / NextSeg across the wrap.
        let una = SeqNum(u32::MAX - 50);
        let mut sb = Scoreboard::new();
        sb.on_ack(una, &[(una + 100, una + 400)]);
        assert!(sb.is_lost(una, MSS, DT));
        assert_eq!(sb.next_seg(una, una + 400, una, MSS, DT), Some((una, 100)));
        assert_eq!(sb.pipe(una, una + 400, una, MSS, DT), 0);
    }

    #[test]
    fn bounded_number_of_ranges() {
        let mut sb = Scoreboard::new();
        for i in 0..200u32 {
            sb.on_ack(s(0), &[(s(10 * i + 1), s(10 * i + 5))]);
        }
        assert_eq!(sb.ranges().count(), MAX_RANGES);
        // The lowest ones are kept (they matter for retransmission order).
        assert_eq!(sb.ranges().next(), Some((s(1), s(5))));
        // Filling holes merges and makes room again.
        sb.on_ack(s(0), &[(s(0), s(2000))]);
        assert_eq!(blocks(&sb), [(0, 2000)]);
    }

    #[test]
    fn is_lost_by_ranges_and_by_bytes() {
        let mut sb = Scoreboard::new();
        // Three small discontiguous SACKed ranges above 0: by count.
        sb.on_ack(
            s(0),
            &[(s(100), s(110)), (s(200), s(210)), (s(300), s(310))],
        );
        assert!(sb.is_lost(s(0), MSS, DT));
        assert!(sb.is_lost(s(99), MSS, DT));
        assert!(!sb.is_lost(s(100), MSS, DT)); // only 2 ranges start above 100
        assert_eq!(sb.lost_boundary(MSS, DT), Some(s(100)));

        // By bytes: more than (3-1)*100 = 200 bytes SACKed above.
        let mut sb = Scoreboard::new();
        sb.on_ack(s(0), &[(s(100), s(301))]); // 201 bytes
        assert!(sb.is_lost(s(99), MSS, DT)); // bytes 100..=300 above: 201
        assert!(!sb.is_lost(s(100), MSS, DT)); // bytes 101..=300: 200, not more
        assert_eq!(sb.lost_boundary(MSS, DT), Some(s(100)));
        // Exactly (DupThresh − 1)·MSS bytes: nothing is lost.
        let mut sb = Scoreboard::new();
        sb.on_ack(s(0), &[(s(100), s(300))]);
        assert!(!sb.is_lost(s(0), MSS, DT));
        assert_eq!(sb.lost_boundary(MSS, DT), None);
        assert!(!Scoreboard::new().is_lost(s(0), MSS, DT));
    }

    /// RFC 6675-style scenario: 10 segments of 100 bytes, segment 0 lost, segments 1..=3 SACKed.
    #[test]
    fn pipe_and_next_seg() {
        let una = s(1000);
        let nxt = una + 1000;
        let mut sb = Scoreboard::new();
        sb.on_ack(una, &[(una + 100, una + 400)]);
        // Segment 0 is lost (300 bytes SACKed above it). Not lost, not SACKed: 400..1000.
        assert_eq!(sb.pipe(una, nxt, una, MSS, DT), 600);
        assert_eq!(sb.next_seg(una, nxt, una, MSS, DT), Some((una, 100)));
        // After retransmitting segment 0, it counts in pipe again and is not offered.
        assert_eq!(sb.pipe(una, nxt, una + 100, MSS, DT), 700);
        assert_eq!(sb.next_seg(una, nxt, una + 100, MSS, DT), None);

        // Two holes, both lost: NextSeg gives the first, then (after retransmission) the second,
        // never crossing a SACKed range.
        let mut sb = Scoreboard::new();
        sb.on_ack(
            una,
            &[
                (una + 150, una + 200),
                (una + 300, una + 400),
                (una + 500, una + 900),
            ],
        );
        assert_eq!(sb.next_seg(una, nxt, una, MSS, DT), Some((una, 100)));
        assert_eq!(
            sb.next_seg(una, nxt, una + 100, MSS, DT),
            Some((una + 100, 50))
        );
        assert_eq!(
            sb.next_seg(una, nxt, una + 150, MSS, DT),
            Some((una + 200, 100))
        );
        assert_eq!(
            sb.next_seg(una, nxt, una + 300, MSS, DT),
            Some((una + 400, 100))
        );
        assert_eq!(sb.next_seg(una, nxt, una + 500, MSS, DT), None); // 900.. not lost
        // Pipe with nothing retransmitted: only 900..1000 unSACKed and not lost.
        assert_eq!(sb.pipe(una, nxt, una, MSS, DT), 100);
        // Degenerate inputs.
        assert_eq!(sb.pipe(nxt, una, una, MSS, DT), 0);
        assert_eq!(sb.next_seg(una, nxt, una, 0, DT), None);
        assert_eq!(sb.next_seg(una, nxt, nxt + 5, MSS, DT), None);
        let _ = sb.pipe(una, nxt, una - 5000, 0, 0);
        let _ = sb.next_seg(una, nxt, una, u32::MAX, u32::MAX);
        let _ = sb.is_lost(una, u32::MAX, u32::MAX);
    }

    /// Random blocks and cumulative ACKs across the wrap against a per-byte model.
    #[test]
    fn random_blocks_match_model() {
        const SPAN: u32 = 4_000;
        let base = SeqNum(u32::MAX - 2_000);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |m: u32| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % u64::from(m)) as u32
        };
        let mut sb = Scoreboard::new();
        let mut model = vec![false; SPAN as usize];
        let mut una = 0u32;
        for _ in 0..3_000 {
            if next(10) == 0 {
                una = (una + next(300)).min(SPAN - 1);
            }
            let mut blks = Vec::new();
            for _ in 0..next(5) {
                let l = next(SPAN);
                let r = (l + 1 + next(200)).min(SPAN);
                blks.push((base + l, base + r));
                if r > una {
                    for b in l.max(una)..r {
                        model[b as usize] = true;
                    }
                }
            }
            sb.on_ack(base + una, &blks);
            for b in model.iter_mut().take(una as usize) {
                *b = false;
            }
            // Check against the model (these sizes never reach MAX_RANGES, so nothing is
            // forgotten).
            let ranges: Vec<_> = sb.ranges().collect();
            assert!(ranges.len() < MAX_RANGES);
            for w in ranges.windows(2) {
                assert!(w[0].1.lt(w[1].0), "disjoint, non-adjacent, sorted");
            }
            let sacked = model.iter().filter(|b| **b).count() as u32;
            assert_eq!(sb.sacked_bytes(), sacked);
            for i in (0..SPAN).step_by(7) {
                assert_eq!(sb.is_sacked(base + i), model[i as usize], "byte {i}");
            }
            let _ = sb.pipe(base + una, base + SPAN, base + una + next(100), MSS, DT);
            if let Some((s, len)) = sb.next_seg(base + una, base + SPAN, base + una, MSS, DT) {
                assert!(!sb.is_sacked(s) && (1..=MSS).contains(&len));
                assert!(sb.is_lost(s, MSS, DT));
            }
        }
    }

    #[test]
    fn clear_forgets() {
        let mut sb = Scoreboard::new();
        sb.on_ack(s(0), &[(s(10), s(20))]);
        sb.clear();
        assert!(sb.is_empty());
        assert_eq!(sb.sacked_bytes(), 0);
    }
}
