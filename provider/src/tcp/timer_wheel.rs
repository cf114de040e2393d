//! Hierarchical hashed timing wheel (Varghese & Lauck, "Hashed and Hierarchical Timing Wheels",
//! 1987; the same shape as the Linux and tokio timer wheels). DESIGN §5: "timers in a wheel,
//! not a scan".
//!
//! Time is counted in ticks since `origin`. A deadline is rounded **up** to a tick, and a timer
//! fires when `expire(now)` is called with `floor((now − origin)/tick) ≥ its tick`, so a timer is
//! never reported early (and at most one tick plus the caller's polling delay late).
//!
//! Layout: `L` levels of `S = 2^b` slots. Level `l` slots are `S^l` ticks wide. A timer at tick
//! `t` lives at the level of the highest bit in which `t` differs from the wheel's current tick
//! `elapsed` (so near timers sit in level 0, one slot per tick, and far ones in coarse levels),
//! in the slot given by `t`'s digit at that level. Invariant: every stored timer has
//! `t > elapsed`, shares all digits above its level with `elapsed`, and has a larger digit at its
//! level. Hence all timers in level `l` are earlier than all timers in level `l+1`, the earliest
//! timer is in the lowest non-empty level's lowest occupied slot, and no slot index ever wraps.
//! When `expire` reaches a coarse slot, its timers move ("cascade") to finer levels, so each
//! timer is touched at most `L` times before it fires.
//!
//! Costs: `schedule`/`cancel` O(1) (a hash lookup and a `swap_remove`); `expire` proportional to
//! the timers fired plus cascaded, plus a bitmap scan of `S/64` words per visited slot (empty
//! slots are skipped via the bitmap, so a long idle jump costs nothing extra);
//! `next_deadline` O(L·S/64) without touching timers.
use rustc_hash::FxHashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// `Loc::level` of a timer whose tick is already at or before `elapsed` (fires on next expire).
const DUE: u8 = u8::MAX;
/// Slot-count bounds: at least 16 so there are few levels, at most 2^16 to bound memory.
const MIN_SLOTS: usize = 16;
const MAX_SLOTS: usize = 1 << 16;

#[derive(Clone, Copy, Debug)]
struct Loc {
    tick: u64,
    level: u8,
    slot: u32,
    /// Index in the slot's (or the due list's) vector, kept right across `swap_remove`.
    idx: u32,
}

#[derive(Debug)]
struct Level<K> {
    /// Allocated on first use: the coarse levels are rarely populated.
    slots: Vec<Vec<K>>,
    /// One bit per slot: set iff the slot is non-empty.
    occupied: Vec<u64>,
    count: usize,
}

/// A set of timers keyed by `K`, one timer per key.
#[derive(Debug)]
pub struct TimerWheel<K: Copy + Eq + Hash> {
    origin: Instant,
    tick_ns: u64,
    /// log2 of the slots per level.
    bits: u32,
    levels: Vec<Level<K>>,
    /// Timers whose tick is ≤ `elapsed` (scheduled in the past).
    due: Vec<K>,
    /// Keys are the engine's own ids (not peer-chosen), so the fast unkeyed FxHash is safe.
    map: FxHashMap<K, Loc>,
    /// Current tick: everything stored in the levels is strictly later.
    elapsed: u64,
}

impl<K: Copy + Eq + Hash> TimerWheel<K> {
    /// `tick` is the resolution (1 ms suits TCP: RFC 6298 clocks are coarser), `slots` the
    /// slots per level, rounded to a power of two in `[16, 65536]`; 4096 × 1 ms puts timers up
    /// to 4 s away (RTO, delayed ACK, probes) in the finest level, and keepalive or TIME_WAIT
    /// timers one level up. A zero `tick` is treated as 1 ns.
    pub fn new(now: Instant, tick: Duration, slots: usize) -> Self {
        let tick_ns = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX).max(1);
        let slots = slots.clamp(MIN_SLOTS, MAX_SLOTS).next_power_of_two();
        let bits = slots.trailing_zeros();
        let nlevels = 64usize.div_ceil(bits as usize);
        let levels = (0..nlevels)
            .map(|_| Level {
                slots: Vec::new(),
                occupied: vec![0; slots.div_ceil(64)],
                count: 0,
            })
            .collect();
        TimerWheel {
            origin: now,
            tick_ns,
            bits,
            levels,
            due: Vec::new(),
            map: FxHashMap::default(),
            elapsed: 0,
        }
    }

    fn slots_per_level(&self) -> usize {
        1usize << self.bits
    }

    /// Deadline → tick, rounded up (so firing at that tick is never early).
    fn tick_of(&self, deadline: Instant) -> u64 {
        let ns = deadline.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(ns.div_ceil(u128::from(self.tick_ns))).unwrap_or(u64::MAX)
    }

    /// `now` → the last tick that has fully started (rounded down).
    fn now_tick(&self, now: Instant) -> u64 {
        let ns = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(ns / u128::from(self.tick_ns)).unwrap_or(u64::MAX)
    }

    /// Tick → instant (saturating at the far end of `Instant`'s range, which only a deadline
    /// within one tick of that end could reach).
    fn instant_of(&self, tick: u64) -> Instant {
        let ns = u128::from(tick) * u128::from(self.tick_ns);
        let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
        let d = Duration::new(secs, (ns % 1_000_000_000) as u32);
        self.origin
            .checked_add(d)
            .or_else(|| {
                self.origin
                    .checked_add(d.saturating_sub(Duration::from_nanos(self.tick_ns)))
            })
            .unwrap_or(self.origin)
    }

    /// Schedules (or reschedules: one timer per key) `key` to fire at `deadline`. A deadline in
    /// the past fires on the next `expire`.
    pub fn schedule(&mut self, key: K, deadline: Instant) {
        let tick = self.tick_of(deadline);
        // Re-arming to the same tick (an RTO pushed back by ACKs within one tick) keeps the
        // timer where it is: every stored position stays valid as time advances.
        if self.map.get(&key).is_some_and(|loc| loc.tick == tick) {
            return;
        }
        self.remove(key);
        self.place(key, tick);
    }

    /// Cancels `key`'s timer, if any.
    pub fn cancel(&mut self, key: K) {
        self.remove(key);
    }

    /// Whether `key` has a pending timer.
    pub fn contains(&self, key: K) -> bool {
        self.map.contains_key(&key)
    }

    fn place(&mut self, key: K, tick: u64) {
        if tick <= self.elapsed {
            let idx = u32::try_from(self.due.len()).unwrap_or(u32::MAX);
            self.due.push(key);
            self.map.insert(
                key,
                Loc {
                    tick,
                    level: DUE,
                    slot: 0,
                    idx,
                },
            );
            return;
        }
        let high_bit = 63 - (tick ^ self.elapsed).leading_zeros();
        let level = (high_bit / self.bits) as usize;
        let mask = (1u64 << self.bits) - 1;
        let slot = ((tick >> (level as u32 * self.bits)) & mask) as usize;
        let per_level = self.slots_per_level();
        let lv = &mut self.levels[level];
        if lv.slots.is_empty() {
            lv.slots.resize_with(per_level, Vec::new);
        }
        let v = &mut lv.slots[slot];
        let idx = u32::try_from(v.len()).unwrap_or(u32::MAX);
        v.push(key);
        lv.occupied[slot / 64] |= 1u64 << (slot % 64);
        lv.count += 1;
        self.map.insert(
            key,
            Loc {
                tick,
                level: level as u8,
                slot: slot as u32,
                idx,
            },
        );
    }

    fn remove(&mut self, key: K) -> Option<Loc> {
        let loc = self.map.remove(&key)?;
        let idx = loc.idx as usize;
        let v = if loc.level == DUE {
            &mut self.due
        } else {
            let lv = &mut self.levels[usize::from(loc.level)];
            lv.count = lv.count.saturating_sub(1);
            &mut lv.slots[loc.slot as usize]
        };
        if idx < v.len() {
            v.swap_remove(idx);
            if let Some(&moved) = v.get(idx)
                && let Some(m) = self.map.get_mut(&moved)
            {
                m.idx = loc.idx;
            }
        }
        if loc.level != DUE && v.is_empty() {
            let slot = loc.slot as usize;
            self.levels[usize::from(loc.level)].occupied[slot / 64] &= !(1u64 << (slot % 64));
        }
        Some(loc)
    }

    /// The earliest non-empty slot: `(level, slot, first tick it covers)`.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for (l, lv) in self.levels.iter().enumerate() {
            if lv.count == 0 {
                continue;
            }
            let slot = lv
                .occupied
                .iter()
                .enumerate()
                .find(|(_, w)| **w != 0)
                .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)?;
            let shift = l as u32 * self.bits;
            let above = shift + self.bits;
            let prefix = self
                .elapsed
                .checked_shr(above)
                .and_then(|p| p.checked_shl(above))
                .unwrap_or(0);
            return Some((l, slot, prefix | ((slot as u64) << shift)));
        }
        None
    }

    /// Appends to `out` every key whose deadline is ≤ `now` (after rounding up to the tick) and
    /// removes those timers. Within one call, keys come out in deadline order up to tick
    /// resolution (timers scheduled in the past first). A `now` earlier than the last one is
    /// harmless: nothing fires early.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<K>) {
        if now < self.origin {
            return;
        }
        let now_tick = self.now_tick(now);

        if !self.due.is_empty() {
            let keys = std::mem::take(&mut self.due);
            for k in keys {
                let Some(loc) = self.map.remove(&k) else {
                    continue;
                };
                if loc.tick <= now_tick {
                    out.push(k);
                } else {
                    // Only after `now` went backwards; tick <= elapsed, so back into `due`.
                    self.place(k, loc.tick);
                }
            }
        }

        while let Some((l, s, start)) = self.next_slot() {
            if start > now_tick {
                break;
            }
            let mut keys = std::mem::take(&mut self.levels[l].slots[s]);
            let lv = &mut self.levels[l];
            lv.occupied[s / 64] &= !(1u64 << (s % 64));
            lv.count = lv.count.saturating_sub(keys.len());
            // Advancing to the slot start keeps the invariant for every other timer (they are
            // all at or after it); this slot's timers either are due or cascade lower.
            self.elapsed = start;
            for &k in &keys {
                let Some(loc) = self.map.remove(&k) else {
                    continue;
                };
                if loc.tick <= start {
                    out.push(k);
                } else {
                    self.place(k, loc.tick);
                }
            }
            // Cascaded timers never return to the slot they came from; keep its allocation.
            keys.clear();
            self.levels[l].slots[s] = keys;
        }
        // Every stored timer is after `now_tick` and the invariant holds relative to it.
        self.elapsed = self.elapsed.max(now_tick);
    }

    /// When to call [`expire`](Self::expire) next: a lower bound on the instant at which the
    /// earliest timer becomes due (its deadline rounded up to the tick), `None` if none.
    ///
    /// Exact when the earliest timer is in the finest level (within `slots` ticks of the last
    /// `expire`) or was scheduled in the past; otherwise it is the start of the coarse slot
    /// holding it, and calling `expire` then cascades that slot so the next answer is finer.
    /// Either way it is never later than the instant `expire` would fire the timer, so sleeping
    /// until it never makes a timer late. Note it can be up to one tick *after* the raw
    /// deadline given to `schedule` (rounding up), never before the instant it fires.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.due.is_empty() {
            let t = self
                .due
                .iter()
                .filter_map(|k| self.map.get(k).map(|l| l.tick))
                .min()
                .unwrap_or(self.elapsed);
            return Some(self.instant_of(t));
        }
        self.next_slot().map(|(_, _, start)| self.instant_of(start))
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MS: Duration = Duration::from_millis(1);

    fn wheel() -> (TimerWheel<u32>, Instant) {
        let t0 = Instant::now();
        (TimerWheel::new(t0, MS, 4096), t0)
    }

    fn fire(w: &mut TimerWheel<u32>, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        w.expire(now, &mut out);
        out.sort();
        out
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let (mut w, t0) = wheel();
        w.schedule(1, t0 + 5 * MS);
        w.schedule(2, t0 + 7 * MS);
        assert_eq!(w.len(), 2);
        assert_eq!(w.next_deadline(), Some(t0 + 5 * MS));
        assert!(fire(&mut w, t0 + 4 * MS).is_empty());
        assert_eq!(fire(&mut w, t0 + 5 * MS), [1]);
        assert_eq!(w.next_deadline(), Some(t0 + 7 * MS));
        assert_eq!(fire(&mut w, t0 + 100 * MS), [2]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn deadlines_round_up() {
        let (mut w, t0) = wheel();
        let d = t0 + Duration::from_micros(5_300);
        w.schedule(1, d);
        assert!(fire(&mut w, d).is_empty()); // tick 5 < 6: late, never early
        assert!(fire(&mut w, t0 + Duration::from_micros(5_999)).is_empty());
        assert_eq!(w.next_deadline(), Some(t0 + 6 * MS));
        assert_eq!(fire(&mut w, t0 + 6 * MS), [1]);
    }

    #[test]
    fn past_deadlines_fire_next_time() {
        let (mut w, t0) = wheel();
        assert!(fire(&mut w, t0 + 50 * MS).is_empty());
        w.schedule(1, t0 + 10 * MS); // already past
        w.schedule(2, t0); // before everything
        assert_eq!(w.next_deadline(), Some(t0));
        assert_eq!(fire(&mut w, t0 + 50 * MS), [1, 2]);
        // A `now` going backwards fires nothing early.
        w.schedule(3, t0 + 60 * MS);
        assert!(fire(&mut w, t0 + 20 * MS).is_empty());
        assert_eq!(fire(&mut w, t0 + 60 * MS), [3]);
        // A `now` before the wheel's origin fires nothing, even a timer at the origin.
        let (mut w, t0) = wheel();
        w.schedule(4, t0);
        if let Some(before) = t0.checked_sub(MS) {
            assert!(fire(&mut w, before).is_empty());
        }
        assert_eq!(fire(&mut w, t0), [4]);
    }

    #[test]
    fn reschedule_replaces_and_cancel_removes() {
        let (mut w, t0) = wheel();
        w.schedule(1, t0 + 10 * MS);
        w.schedule(1, t0 + 20 * MS);
        assert_eq!(w.len(), 1);
        assert!(fire(&mut w, t0 + 15 * MS).is_empty());
        assert_eq!(fire(&mut w, t0 + 20 * MS), [1]);
        // Earlier reschedule, and far → near.
        w.schedule(2, t0 + 3_600_000 * MS);
        w.schedule(2, t0 + 30 * MS);
        assert_eq!(fire(&mut w, t0 + 30 * MS), [2]);
        // Cancel in every kind of place: same slot, far level, due list.
        w.schedule(3, t0 + 40 * MS);
        w.schedule(4, t0 + 40 * MS);
        w.schedule(5, t0 + 40 * MS);
        w.schedule(6, t0 + 100_000 * MS);
        w.schedule(7, t0);
        w.cancel(3);
        w.cancel(6);
        w.cancel(7);
        w.cancel(99); // unknown: no-op
        assert!(!w.contains(3) && w.contains(4));
        assert_eq!(w.len(), 2);
        assert_eq!(fire(&mut w, t0 + 1_000_000 * MS), [4, 5]);
        assert!(w.is_empty());
    }

    #[test]
    fn far_future_timers_cascade() {
        let (mut w, t0) = wheel();
        let far = [
            (1, 4_096 * MS), // exactly one revolution
            (2, 4_097 * MS),
            (3, Duration::from_secs(75)),               // keepalive-ish
            (4, Duration::from_secs(2 * 3600)),         // 2 h keepalive
            (5, Duration::from_secs(30 * 86_400)),      // a month
            (6, Duration::from_secs(5 * 365 * 86_400)), // years: a third level
        ];
        for &(k, d) in &far {
            w.schedule(k, t0 + d);
        }
        for &(k, d) in &far {
            let at = t0 + d;
            // Lower bound: never after the deadline.
            let nd = w.next_deadline().unwrap();
            assert!(nd <= at, "key {k}: next_deadline {nd:?} > {at:?}");
            assert!(fire(&mut w, at - MS).is_empty(), "key {k} early");
            assert_eq!(fire(&mut w, at), [k]);
        }
        assert!(w.is_empty());
    }

    #[test]
    fn next_deadline_converges_by_expiring() {
        let (mut w, t0) = wheel();
        let d = t0 + Duration::from_secs(3600) + 123 * MS;
        w.schedule(1, d);
        // Follow next_deadline like an event loop: a bounded number of wake-ups, none late.
        let mut wakeups = 0;
        loop {
            let nd = w.next_deadline().unwrap();
            assert!(nd <= d);
            wakeups += 1;
            if !fire(&mut w, nd).is_empty() {
                assert_eq!(nd, d);
                break;
            }
            assert!(wakeups < 10);
        }
    }

    #[test]
    fn extreme_parameters() {
        let t0 = Instant::now();
        let mut w: TimerWheel<u8> = TimerWheel::new(t0, Duration::ZERO, 0);
        w.schedule(1, t0 + Duration::from_nanos(3));
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_nanos(3), &mut out);
        assert_eq!(out, [1]);
        let mut w: TimerWheel<u8> = TimerWheel::new(t0, Duration::MAX, usize::MAX);
        w.schedule(1, t0 + Duration::from_secs(1));
        out.clear();
        w.expire(t0 + Duration::from_secs(1_000_000), &mut out);
        assert!(out.is_empty()); // first tick ends ~584 years after t0
        assert!(w.next_deadline().is_some());
    }

    /// Many timers with pseudo-random deadlines, rescheduled and cancelled, against a model.
    #[test]
    fn many_timers_match_model() {
        let (mut w, t0) = wheel();
        let mut model: HashMap<u32, u64> = HashMap::new(); // key → deadline tick (µs-rounded)
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut now_us = 0u64;
        for round in 0..2_000 {
            for _ in 0..20 {
                let key = (next() % 3_000) as u32;
                match next() % 10 {
                    0 => {
                        w.cancel(key);
                        model.remove(&key);
                    }
                    r => {
                        // Mostly near (RTO-like), some far (beyond a revolution).
                        let span = if r < 7 { 5_000_000 } else { 600_000_000 };
                        let at = now_us + next() % span;
                        w.schedule(key, t0 + Duration::from_micros(at));
                        model.insert(key, at.div_ceil(1000)); // rounded up to 1 ms
                    }
                }
            }
            now_us += next()
                % if round % 100 == 0 {
                    50_000_000
                } else {
                    3_000_000
                };
            let now_tick = now_us / 1000;
            let mut expect: Vec<u32> = model
                .iter()
                .filter(|(_, t)| **t <= now_tick)
                .map(|(k, _)| *k)
                .collect();
            expect.sort();
            model.retain(|_, t| *t > now_tick);
            assert_eq!(fire(&mut w, t0 + Duration::from_micros(now_us)), expect);
            assert_eq!(w.len(), model.len());
            if let Some(nd) = w.next_deadline() {
                let min = model.values().min().copied().unwrap();
                assert!(
                    nd <= t0 + Duration::from_millis(min),
                    "next_deadline after earliest timer"
                );
                assert!(nd >= t0 + Duration::from_micros(now_us) - MS);
            }
        }
    }
}
