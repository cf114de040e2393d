//! Receiver out-of-order buffer (RFC 9293 §3.10.7.4 "segments with higher beginning sequence
//! numbers may be held for later processing"), bounded as DESIGN §5 requires, and the source of
//! the SACK blocks we advertise (RFC 2018 §4).
//!
//! Data is kept as disjoint runs of contiguous bytes ("blocks"): overlapping and adjacent
//! segments coalesce on insertion, so a retransmission that overlaps what we hold costs only its
//! new bytes, and the number of blocks equals the number of SACK blocks we could report. When
//! overlapping data differs, the bytes that arrived first win (RFC 9293 leaves the choice open;
//! keeping them means a block never changes once SACKed).
use crate::tcp::seq::SeqNum;

/// Largest receive window (RFC 7323 §2.3): nothing is ever stored further than this above
/// `RCV.NXT`, which keeps all offsets well inside the unambiguous half of the sequence space.
pub const MAX_WINDOW: u32 = 1 << 30;

#[derive(Clone, Debug)]
struct Block {
    start: SeqNum,
    data: Vec<u8>,
    /// Value of [`Reassembler::clock`] when a segment last landed in this block (SACK order).
    touched: u64,
}

impl Block {
    fn len(&self) -> u32 {
        // Blocks never exceed MAX_WINDOW bytes (see `insert`).
        u32::try_from(self.data.len()).unwrap_or(u32::MAX)
    }

    fn end(&self) -> SeqNum {
        self.start + self.len()
    }
}

/// Out-of-order segments above `RCV.NXT`, bounded in blocks and bytes.
#[derive(Clone, Debug)]
pub struct Reassembler {
    /// Disjoint, non-adjacent blocks in ascending sequence order, all at or above `RCV.NXT`.
    blocks: Vec<Block>,
    max_segments: usize,
    max_bytes: usize,
    bytes: usize,
    clock: u64,
}

/// Signed offset of `s` from `base` (RFC 1982 distance), widened so sums cannot overflow.
fn offset(s: SeqNum, base: SeqNum) -> i64 {
    i64::from(s - base)
}

impl Reassembler {
    /// `max_segments` bounds the number of disjoint blocks held (each costs an allocation and a
    /// SACK-able hole); `max_bytes` bounds the payload held (normally the receive buffer minus
    /// what the application has not read yet).
    pub fn new(max_segments: usize, max_bytes: usize) -> Self {
        Reassembler {
            blocks: Vec::new(),
            max_segments,
            max_bytes,
            bytes: 0,
            clock: 0,
        }
    }

    /// Stores the part of `data` (which starts at `seq`) that lies inside the receive window
    /// `[rcv_nxt, window_end)`; bytes below `rcv_nxt` or at/after `window_end` are discarded as
    /// RFC 9293 §3.10.7.4 prescribes (the window is capped at [`MAX_WINDOW`]). Bytes already held
    /// are not stored twice.
    ///
    /// Returns `false` only if in-window bytes had to be dropped because a limit was reached
    /// (the caller may count it, and must not SACK them — they are not in
    /// [`sack_blocks`](Self::sack_blocks)). Data outside the window is not a "drop" here.
    pub fn insert(
        &mut self,
        rcv_nxt: SeqNum,
        seq: SeqNum,
        data: &[u8],
        window_end: SeqNum,
    ) -> bool {
        self.prune(rcv_nxt);
        self.clock = self.clock.wrapping_add(1);

        let wlen = if window_end.gt(rcv_nxt) {
            window_end.dist(rcv_nxt).min(MAX_WINDOW)
        } else {
            0
        };
        let seg_off = offset(seq, rcv_nxt);
        let seg_end = seg_off.saturating_add(i64::try_from(data.len()).unwrap_or(i64::MAX));
        let lo = seg_off.max(0);
        let hi = seg_end.min(i64::from(wlen));
        if lo >= hi {
            return true;
        }

        // Holes of [lo, hi) not covered by existing blocks, in ascending order.
        let mut gaps: Vec<(i64, i64)> = Vec::new();
        let mut cur = lo;
        for b in &self.blocks {
            let (bs, be) = (offset(b.start, rcv_nxt), offset(b.end(), rcv_nxt));
            if be <= cur {
                continue;
            }
            if bs >= hi {
                break;
            }
            if bs > cur {
                gaps.push((cur, bs));
            }
            cur = cur.max(be);
            if cur >= hi {
                break;
            }
        }
        if cur < hi {
            gaps.push((cur, hi));
        }

        let mut complete = true;
        for (gs, ge) in gaps {
            let budget = self.max_bytes.saturating_sub(self.bytes);
            let budget = i64::try_from(budget).unwrap_or(i64::MAX);
            if budget == 0 {
                complete = false;
                break;
            }
            let ge_fit = ge.min(gs.saturating_add(budget));
            if ge_fit < ge {
                complete = false;
            }
            // Indices are within `data`: seg_off <= lo <= gs < ge_fit <= hi <= seg_end.
            let (a, b) = ((gs - seg_off) as usize, (ge_fit - seg_off) as usize);
            let Some(bytes) = data.get(a..b) else {
                complete = false;
                break;
            };
            if !self.insert_run(rcv_nxt, gs, bytes) {
                complete = false;
            }
        }

        // RFC 2018 §4: the block holding the segment that triggered this ACK is reported first.
        let clock = self.clock;
        for b in &mut self.blocks {
            let (bs, be) = (offset(b.start, rcv_nxt), offset(b.end(), rcv_nxt));
            if bs < hi && be > lo {
                b.touched = clock;
            }
        }
        complete
    }

    /// Inserts bytes at offset `off` that overlap no block. Returns false if it would need a
    /// new block and the block limit is reached.
    fn insert_run(&mut self, rcv_nxt: SeqNum, off: i64, bytes: &[u8]) -> bool {
        let end = off.saturating_add(i64::try_from(bytes.len()).unwrap_or(i64::MAX));
        let idx = self
            .blocks
            .partition_point(|b| offset(b.start, rcv_nxt) < off);
        let joins_prev = idx > 0 && offset(self.blocks[idx - 1].end(), rcv_nxt) == off;
        let joins_next = idx < self.blocks.len() && offset(self.blocks[idx].start, rcv_nxt) == end;
        match (joins_prev, joins_next) {
            (true, true) => {
                let next = self.blocks.remove(idx);
                let prev = &mut self.blocks[idx - 1];
                prev.data.extend_from_slice(bytes);
                prev.data.extend_from_slice(&next.data);
            }
            (true, false) => self.blocks[idx - 1].data.extend_from_slice(bytes),
            (false, true) => {
                let next = &mut self.blocks[idx];
                let mut data = Vec::with_capacity(bytes.len() + next.data.len());
                data.extend_from_slice(bytes);
                data.extend_from_slice(&next.data);
                next.data = data;
                next.start = next.start - u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            }
            (false, false) => {
                if self.blocks.len() >= self.max_segments {
                    return false;
                }
                let start = rcv_nxt + u32::try_from(off).unwrap_or(u32::MAX);
                self.blocks.insert(
                    idx,
                    Block {
                        start,
                        data: bytes.to_vec(),
                        touched: self.clock,
                    },
                );
            }
        }
        self.bytes += bytes.len();
        true
    }

    /// Forgets data at or below `rcv_nxt` (it arrived in order by another path, or was popped).
    fn prune(&mut self, rcv_nxt: SeqNum) {
        let mut freed = 0usize;
        self.blocks.retain_mut(|b| {
            if b.end().le(rcv_nxt) {
                freed += b.data.len();
                return false;
            }
            if b.start.lt(rcv_nxt) {
                let cut = rcv_nxt.dist(b.start) as usize;
                b.data.drain(..cut.min(b.data.len()));
                b.start = rcv_nxt;
                freed += cut;
            }
            true
        });
        self.bytes = self.bytes.saturating_sub(freed);
        // Only a caller moving RCV.NXT backwards could disturb the order; keep it an invariant.
        if !self.blocks.is_sorted_by_key(|b| b.start.dist(rcv_nxt)) {
            self.blocks.sort_by_key(|b| b.start.dist(rcv_nxt));
        }
    }

    /// Hands `out` the data now contiguous with `rcv_nxt`, in order, and forgets it. Returns the
    /// number of bytes handed over, by which the caller advances `RCV.NXT`.
    pub fn pop_contiguous(&mut self, rcv_nxt: SeqNum, out: &mut dyn FnMut(&[u8])) -> u32 {
        self.prune(rcv_nxt);
        let mut next = rcv_nxt;
        let mut advanced = 0u32;
        while self.blocks.first().is_some_and(|b| b.start == next) {
            let b = self.blocks.remove(0);
            out(&b.data);
            self.bytes = self.bytes.saturating_sub(b.data.len());
            advanced = advanced.saturating_add(b.len());
            next = b.end();
        }
        crate::tcp::buffer::release_if_empty(&mut self.blocks);
        advanced
    }

    /// Up to `max` SACK blocks `(left, right)` (RFC 2018 §3 edges: right is one past the last
    /// byte). RFC 2018 §4: the block containing the most recently received segment comes first,
    /// then the others, most recently changed first, so that successive ACKs repeat recent
    /// information and a lost ACK costs little.
    pub fn sack_blocks(&self, max: usize) -> Vec<(SeqNum, SeqNum)> {
        let mut order: Vec<&Block> = self.blocks.iter().collect();
        order.sort_by_key(|b| std::cmp::Reverse(b.touched));
        order
            .into_iter()
            .take(max)
            .map(|b| (b.start, b.end()))
            .collect()
    }

    /// The first part of `[seq, end)` already held, if any: a duplicate, which the receiver
    /// reports in a D-SACK block (RFC 2883).
    pub fn overlap(&self, seq: SeqNum, end: SeqNum) -> Option<(SeqNum, SeqNum)> {
        self.blocks.iter().find_map(|b| {
            let lo = b.start.max(seq);
            let hi = b.end().min(end);
            lo.lt(hi).then_some((lo, hi))
        })
    }

    /// Payload bytes held.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }

    /// Allocation held: the block list and every block's data.
    pub fn held_bytes(&self) -> usize {
        use crate::tcp::buffer::Releasable;
        self.blocks.capacity_bytes() + self.blocks.iter().map(|b| b.data.capacity()).sum::<usize>()
    }

    /// Number of disjoint blocks held.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Drops everything (connection reset, or reneging under memory pressure — RFC 2018 §8
    /// allows it; the sender then retransmits after its RTO).
    pub fn clear(&mut self) {
        self.blocks.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(from: u32, len: usize) -> Vec<u8> {
        (0..len).map(|i| (from as usize + i) as u8).collect()
    }

    /// Inserts the pattern bytes for `[from, from+len)` relative to `base`.
    fn put(r: &mut Reassembler, base: SeqNum, rcv_nxt: u32, from: u32, len: usize) -> bool {
        r.insert(
            base + rcv_nxt,
            base + from,
            &pattern(from, len),
            base + rcv_nxt + 65535,
        )
    }

    fn pop(r: &mut Reassembler, at: SeqNum) -> (u32, Vec<u8>) {
        let mut got = Vec::new();
        let n = r.pop_contiguous(at, &mut |d| got.extend_from_slice(d));
        (n, got)
    }

    fn blocks(r: &Reassembler, base: SeqNum) -> Vec<(u32, u32)> {
        let mut v: Vec<_> = r
            .sack_blocks(usize::MAX)
            .into_iter()
            .map(|(a, b)| (a.dist(base), b.dist(base)))
            .collect();
        v.sort();
        v
    }

    fn reassemble_at(base: SeqNum) {
        let mut r = Reassembler::new(8, 1 << 20);
        assert!(put(&mut r, base, 0, 10, 10));
        assert!(put(&mut r, base, 0, 30, 10));
        assert_eq!(pop(&mut r, base).0, 0);
        assert_eq!(blocks(&r, base), [(10, 20), (30, 40)]);
        // Fill the first hole: 0..20 becomes deliverable.
        assert!(put(&mut r, base, 0, 0, 10));
        let (n, got) = pop(&mut r, base);
        assert_eq!(n, 20);
        assert_eq!(got, pattern(0, 20));
        // Fill the second.
        assert!(put(&mut r, base, 20, 20, 10));
        let (n, got) = pop(&mut r, base + 20);
        assert_eq!(n, 20);
        assert_eq!(got, pattern(20, 20));
        assert!(r.is_empty());
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn reassembles_in_order() {
        reassemble_at(SeqNum(1000));
    }

    #[test]
    fn reassembles_across_wrap() {
        reassemble_at(SeqNum(u32::MAX - 15));
        reassemble_at(SeqNum(u32::MAX));
    }

    #[test]
    fn overlaps_coalesce_first_copy_wins() {
        let base = SeqNum(0);
        let mut r = Reassembler::new(8, 1 << 20);
        put(&mut r, base, 0, 10, 10); // 10..20
        // Overlapping on both sides, with different content in the overlap.
        let mut data = vec![0xee; 20]; // 5..25
        data[..5].copy_from_slice(&pattern(5, 5));
        data[15..].copy_from_slice(&pattern(20, 5));
        assert!(r.insert(base, base + 5, &data, base + 1000));
        assert_eq!(blocks(&r, base), [(5, 25)]);
        assert_eq!(r.buffered_bytes(), 20);
        assert!(put(&mut r, base, 0, 0, 5));
        let (n, got) = pop(&mut r, base);
        assert_eq!(n, 25);
        assert_eq!(got, pattern(0, 25)); // the original 10..20 survived
        // A segment bridging two blocks merges them into one.
        let mut r = Reassembler::new(8, 1 << 20);
        put(&mut r, base, 0, 10, 10);
        put(&mut r, base, 0, 30, 10);
        put(&mut r, base, 0, 15, 20);
        assert_eq!(blocks(&r, base), [(10, 40)]);
        assert_eq!(r.block_count(), 1);
        assert_eq!(r.buffered_bytes(), 30);
    }

    #[test]
    fn duplicates_store_nothing() {
        let base = SeqNum(7);
        let mut r = Reassembler::new(8, 1 << 20);
        put(&mut r, base, 0, 10, 10);
        assert!(put(&mut r, base, 0, 10, 10));
        assert!(put(&mut r, base, 0, 12, 3));
        assert_eq!(r.buffered_bytes(), 10);
        assert_eq!(blocks(&r, base), [(10, 20)]);
    }

    #[test]
    fn window_trimming() {
        let base = SeqNum(100);
        let mut r = Reassembler::new(8, 1 << 20);
        // Starts below RCV.NXT (old data + new data) and runs past the window end.
        assert!(r.insert(base + 10, base, &pattern(0, 100), base + 50));
        assert_eq!(blocks(&r, base), [(10, 50)]);
        // Entirely old or entirely beyond the window: ignored, not a "drop".
        assert!(r.insert(base + 10, base, &pattern(0, 5), base + 50));
        assert!(r.insert(base + 10, base + 60, &pattern(60, 5), base + 50));
        // Closed window.
        assert!(r.insert(base + 10, base + 10, &pattern(10, 5), base + 10));
        assert_eq!(r.buffered_bytes(), 40);
        let (n, got) = pop(&mut r, base + 10);
        assert_eq!((n, got), (40, pattern(10, 40)));
        // Huge window: capped at MAX_WINDOW, no panic.
        let big = vec![1u8; 1 << 16];
        assert!(r.insert(base, base + 10, &big, base + 0x7fff_ffff));
        assert_eq!(r.buffered_bytes(), 1 << 16);
        // A window end "behind" RCV.NXT is a closed window.
        assert!(r.insert(base, base + 10, &big, base + u32::MAX));
        assert_eq!(r.buffered_bytes(), 1 << 16);
    }

    #[test]
    fn rcv_nxt_advanced_elsewhere_prunes() {
        let base = SeqNum(0);
        let mut r = Reassembler::new(8, 1 << 20);
        put(&mut r, base, 0, 10, 10);
        put(&mut r, base, 0, 30, 10);
        // The connection delivered 0..35 in order without us: 30..35 is stale.
        let (n, got) = pop(&mut r, base + 35);
        assert_eq!((n, got), (5, pattern(35, 5)));
        assert!(r.is_empty());
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn byte_limit() {
        let base = SeqNum(0);
        let mut r = Reassembler::new(8, 25);
        assert!(put(&mut r, base, 0, 10, 10));
        assert!(!put(&mut r, base, 0, 30, 20)); // only 15 fit
        assert_eq!(r.buffered_bytes(), 25);
        assert_eq!(blocks(&r, base), [(10, 20), (30, 45)]);
        assert!(!put(&mut r, base, 0, 0, 5)); // full
        // Delivering frees room.
        assert!(r.insert(base + 10, base + 10, &[], base + 100));
        let _ = pop(&mut r, base + 10);
        assert_eq!(r.buffered_bytes(), 15);
        assert!(put(&mut r, base, 20, 20, 10));
        assert_eq!(r.buffered_bytes(), 25);
        let mut zero = Reassembler::new(8, 0);
        assert!(!put(&mut zero, base, 0, 10, 1));
        assert!(zero.is_empty());
    }

    #[test]
    fn block_limit() {
        let base = SeqNum(0);
        let mut r = Reassembler::new(2, 1 << 20);
        assert!(put(&mut r, base, 0, 10, 5));
        assert!(put(&mut r, base, 0, 30, 5));
        assert!(!put(&mut r, base, 0, 50, 5)); // a third block: dropped
        assert_eq!(blocks(&r, base), [(10, 15), (30, 35)]);
        // Extending an existing block is always fine.
        assert!(put(&mut r, base, 0, 15, 5));
        assert!(put(&mut r, base, 0, 25, 5));
        assert_eq!(blocks(&r, base), [(10, 20), (25, 35)]);
        assert!(!put(&mut r, base, 0, 40, 5)); // still no room for a third
        // A segment covering the hole and beyond: fills 20..25 (merging) and extends to 48.
        assert!(put(&mut r, base, 0, 18, 30));
        assert_eq!(blocks(&r, base), [(10, 48)]);
        assert!(put(&mut r, base, 0, 50, 5)); // merging freed a block
        // A segment overlapping a block never needs a new one: its holes touch the block.
        let mut r = Reassembler::new(1, 1 << 20);
        assert!(put(&mut r, base, 0, 10, 5));
        assert!(put(&mut r, base, 0, 5, 20));
        assert_eq!(blocks(&r, base), [(5, 25)]);
        let mut none = Reassembler::new(0, 1 << 20);
        assert!(!put(&mut none, base, 0, 10, 5));
    }

    /// Random overlapping, duplicate and out-of-window segments across the 2^32 wrap: the
    /// delivered stream is exactly the sent one and the accounting stays consistent.
    #[test]
    fn random_segments_reassemble_exactly() {
        const N: u32 = 20_000;
        let base = SeqNum(u32::MAX - 7_000);
        let stream = |from: u32, len: u32| -> Vec<u8> {
            (from..from + len)
                .map(|i| (i.wrapping_mul(31) >> 3) as u8)
                .collect()
        };
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |m: u32| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % u64::from(m)) as u32
        };
        let mut r = Reassembler::new(16, 4_000);
        let mut got: Vec<u8> = Vec::new();
        let mut nxt = 0u32; // RCV.NXT relative to base
        while nxt < N {
            let from = (nxt + next(3_000)).saturating_sub(200).min(N - 1);
            let len = (1 + next(400)).min(N - from);
            let window_end = base + nxt + 3_000;
            r.insert(base + nxt, base + from, &stream(from, len), window_end);
            let total: usize = r
                .sack_blocks(usize::MAX)
                .iter()
                .map(|(a, b)| b.dist(*a) as usize)
                .sum();
            assert_eq!(total, r.buffered_bytes());
            assert!(r.buffered_bytes() <= 4_000 && r.block_count() <= 16);
            for (a, b) in r.sack_blocks(usize::MAX) {
                assert!(a.gt(base + nxt) || a == base + nxt);
                assert!(b.le(window_end));
            }
            let n = r.pop_contiguous(base + nxt, &mut |d| got.extend_from_slice(d));
            nxt += n;
        }
        assert_eq!(got.len(), N as usize);
        assert_eq!(got, stream(0, N));
    }

    #[test]
    fn sack_order_most_recent_first() {
        let base = SeqNum(u32::MAX - 100); // across the wrap too
        let mut r = Reassembler::new(8, 1 << 20);
        put(&mut r, base, 0, 100, 10); // A
        put(&mut r, base, 0, 200, 10); // B
        put(&mut r, base, 0, 300, 10); // C
        let rel = |v: Vec<(SeqNum, SeqNum)>| -> Vec<(u32, u32)> {
            v.into_iter()
                .map(|(a, b)| (a.dist(base), b.dist(base)))
                .collect()
        };
        assert_eq!(rel(r.sack_blocks(4)), [(300, 310), (200, 210), (100, 110)]);
        // A segment extending A puts A first; a duplicate of B then puts B first.
        put(&mut r, base, 0, 110, 10);
        assert_eq!(rel(r.sack_blocks(4)), [(100, 120), (300, 310), (200, 210)]);
        put(&mut r, base, 0, 200, 5);
        assert_eq!(rel(r.sack_blocks(2)), [(200, 210), (100, 120)]);
        assert!(r.sack_blocks(0).is_empty());
        r.clear();
        assert!(r.is_empty());
        assert_eq!(r.buffered_bytes(), 0);
    }
}
