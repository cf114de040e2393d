//! Memory mappings and the single-producer/single-consumer rings shared with the kernel.
//!
//! This is the only place that dereferences ring memory. A ring is four things inside one
//! mapping: a producer index, a consumer index, a flags word and an array of `size` descriptors
//! (`size` a power of two). Indices are free-running `u32`s; a slot is `index & (size - 1)`.
//!
//! Ordering (the protocol every AF_XDP implementation follows): the side that *produces* writes
//! descriptors, then publishes them with a **Release** store of the producer index; the side that
//! *consumes* reads the producer index with an **Acquire** load before reading descriptors, and
//! hands slots back with a Release store of the consumer index, which the producer reads with
//! Acquire before reusing them. Each side caches the other side's index and only reloads it when
//! the cached value says the ring is full (producer) or empty (consumer), so a batch costs one
//! atomic load and one atomic store.
//!
//! The ring types never assume they are talking to the kernel: a [`Producer`] and a [`Consumer`]
//! over the same anonymous mapping form a complete user-space queue, which is how the unit tests
//! exercise the index arithmetic without a socket.
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering, fence};

/// An owned memory mapping, unmapped on drop.
///
/// It exposes only its base pointer and length; the rings and the UMEM decide who may touch
/// which bytes.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mmap` is an owned region like `Box<[u8]>`; it hands out only a raw pointer, so sharing
// or moving the owner between threads cannot by itself cause a data race. Every access to the
// bytes goes through the ring or UMEM types, which uphold their own aliasing rules.
unsafe impl Send for Mmap {}
// SAFETY: as above; `&Mmap` gives no safe access to the bytes.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// A shared anonymous, zero-filled mapping of `len` bytes (the UMEM area; also the heap
    /// stand-in the unit tests use for rings). Shared, not private: the kernel pins UMEM pages,
    /// and a private pinned mapping would be copied into every forked child (and frames a child
    /// wrote would go to its copy, not to the pages the NIC reads) — with a shared one, a
    /// process tree that shares the stack (the preload's multi-process servers) shares the
    /// frames too.
    pub(crate) fn anonymous(len: usize) -> io::Result<Mmap> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses aliases nothing; the
        // result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::from_result(p, len)
    }

    /// A shared mapping of `len` bytes of `fd` at byte offset `offset` (an AF_XDP ring).
    pub(crate) fn shared(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Mmap> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mmap offset too large"))?;
        // SAFETY: mapping a ring of a live socket fd at an address the kernel chooses aliases no
        // Rust object; the result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                off,
            )
        };
        Self::from_result(p, len)
    }

    fn from_result(p: *mut libc::c_void, len: usize) -> io::Result<Mmap> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        match NonNull::new(p.cast::<u8>()) {
            Some(ptr) => Ok(Mmap { ptr, len }),
            None => Err(io::Error::other("mmap returned a null pointer")),
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and still owns; the ring and
        // UMEM views derived from it are dropped before or together with it (they hold an `Arc`
        // or are owned by the same struct), so nothing uses the range afterwards.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Where a ring's parts live inside its mapping (byte offsets, as `XDP_MMAP_OFFSETS` reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RingLayout {
    pub producer: u64,
    pub consumer: u64,
    pub flags: u64,
    pub desc: u64,
}

impl RingLayout {
    /// Bytes a mapping needs to hold this layout with `size` descriptors of type `T`.
    pub(crate) fn map_len<T>(&self, size: u32) -> Option<usize> {
        let desc_bytes = (size as usize).checked_mul(std::mem::size_of::<T>())?;
        let end_desc = usize::try_from(self.desc).ok()?.checked_add(desc_bytes)?;
        let end_words = [self.producer, self.consumer, self.flags]
            .iter()
            .map(|&o| usize::try_from(o).ok()?.checked_add(4))
            .try_fold(0usize, |m, e| e.map(|e| m.max(e)))?;
        Some(end_desc.max(end_words))
    }
}

/// The raw view of one ring inside a mapping, validated once at construction.
struct RawRing<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    desc: NonNull<T>,
    mask: u32,
    /// Keeps the mapping alive for as long as the pointers above are used.
    _map: Arc<Mmap>,
}

impl<T: Copy> RawRing<T> {
    fn new(map: Arc<Mmap>, layout: RingLayout, size: u32) -> io::Result<RawRing<T>> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        if size == 0 || !size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring size must be a non-zero power of two",
            ));
        }
        let need = layout
            .map_len::<T>(size)
            .ok_or_else(|| invalid("ring layout overflows"))?;
        if need > map.len() {
            return Err(invalid("ring layout exceeds its mapping"));
        }
        let base = map.as_ptr();
        for off in [layout.producer, layout.consumer, layout.flags] {
            if !off.is_multiple_of(4) {
                return Err(invalid("misaligned ring index"));
            }
        }
        if !layout.desc.is_multiple_of(std::mem::align_of::<T>() as u64) {
            return Err(invalid("misaligned ring descriptors"));
        }
        // `map_len` proved every offset (plus its object) fits in the mapping, so the offsets fit
        // in usize and the pointers below stay inside it; `base` is page-aligned so the offset
        // alignment checks make the pointers aligned.
        let at = |off: u64| -> NonNull<u8> {
            // SAFETY: `off` (< map.len(), checked above) stays inside the mapping.
            let p = unsafe { base.add(off as usize) };
            NonNull::new(p).expect("pointer inside a mapping is non-null")
        };
        Ok(RawRing {
            producer: at(layout.producer).cast(),
            consumer: at(layout.consumer).cast(),
            flags: at(layout.flags).cast(),
            desc: at(layout.desc).cast(),
            mask: size - 1,
            _map: map,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: in-bounds, 4-aligned (checked in `new`), the mapping lives as long as `self`,
        // and the word is only ever accessed atomically (by us and by the other side).
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }
    }

    fn size(&self) -> u32 {
        self.mask + 1
    }
}

/// The producing side of a ring (fill and TX for us; RX and completion for the kernel).
pub(crate) struct Producer<T> {
    ring: RawRing<T>,
    /// Next index we will write; everything below it is reserved by us (published or not).
    cached_prod: u32,
    /// The consumer index last read, plus the ring size: `cached_cons - cached_prod` is the
    /// number of slots we may still write without reloading the consumer.
    cached_cons: u32,
    _not_sync: PhantomData<*mut T>,
}

// SAFETY: the producer is the only writer of its slots and of the producer index; moving it to
// another thread moves that role with it. It is not `Sync`, so two threads never produce at once.
unsafe impl<T: Send> Send for Producer<T> {}

impl<T: Copy> Producer<T> {
    pub(crate) fn new(map: Arc<Mmap>, layout: RingLayout, size: u32) -> io::Result<Producer<T>> {
        let ring = RawRing::new(map, layout, size)?;
        let cached_prod = ring.producer().load(Ordering::Relaxed);
        let cached_cons = ring
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(ring.size());
        Ok(Producer {
            ring,
            cached_prod,
            cached_cons,
            _not_sync: PhantomData,
        })
    }

    /// Free slots, reloading the consumer index (Acquire) only if the cache shows fewer than
    /// `want`.
    pub(crate) fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        self.cached_cons = self
            .ring
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.ring.size());
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Writes `value` into the next slot and reserves it. Returns false (and writes nothing) when
    /// the ring is full. Not visible to the consumer until [`Producer::submit`].
    pub(crate) fn push(&mut self, value: T) -> bool {
        if self.free(1) == 0 {
            return false;
        }
        let slot = (self.cached_prod & self.ring.mask) as usize;
        // SAFETY: `slot <= mask < size`, inside the descriptor array (validated in `RawRing::new`)
        // and aligned for T. `free(1) > 0` means the consumer has released this slot (we observed
        // its consumer index with Acquire) and we have not published it yet, so nobody else
        // reads or writes it now.
        unsafe { self.ring.desc.as_ptr().add(slot).write(value) };
        self.cached_prod = self.cached_prod.wrapping_add(1);
        true
    }

    /// Publishes every reserved slot with one Release store of the producer index.
    pub(crate) fn submit(&mut self) {
        self.ring
            .producer()
            .store(self.cached_prod, Ordering::Release);
    }

    /// Slots published (or reserved) that the consumer has not consumed yet.
    pub(crate) fn unconsumed(&self) -> u32 {
        self.cached_prod
            .wrapping_sub(self.ring.consumer().load(Ordering::Acquire))
    }

    /// Whether the consumer asked to be woken (`XDP_RING_NEED_WAKEUP`). The full fence orders
    /// our earlier producer store before this load, so a consumer that goes to sleep after our
    /// publish is seen as sleeping.
    pub(crate) fn needs_wakeup(&self) -> bool {
        fence(Ordering::SeqCst);
        self.ring.flags().load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// The consuming side of a ring (RX and completion for us).
pub(crate) struct Consumer<T> {
    ring: RawRing<T>,
    /// Next index we will read.
    cached_cons: u32,
    /// Producer index last read (Acquire).
    cached_prod: u32,
    _not_sync: PhantomData<*mut T>,
}

// SAFETY: the consumer is the only reader of published slots and the only writer of the consumer
// index; moving it moves that role. It is not `Sync`.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T: Copy> Consumer<T> {
    pub(crate) fn new(map: Arc<Mmap>, layout: RingLayout, size: u32) -> io::Result<Consumer<T>> {
        let ring = RawRing::new(map, layout, size)?;
        let cached_cons = ring.consumer().load(Ordering::Relaxed);
        let cached_prod = ring.producer().load(Ordering::Acquire);
        Ok(Consumer {
            ring,
            cached_cons,
            cached_prod,
            _not_sync: PhantomData,
        })
    }

    pub(crate) fn size(&self) -> u32 {
        self.ring.size()
    }

    /// Entries ready to read, reloading the producer index (Acquire) only when the cache shows
    /// fewer than `want`. Never more than the ring size, whatever the other side wrote.
    pub(crate) fn available(&mut self, want: u32) -> u32 {
        let avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail >= want {
            return avail.min(self.ring.size());
        }
        self.cached_prod = self.ring.producer().load(Ordering::Acquire);
        self.cached_prod
            .wrapping_sub(self.cached_cons)
            .min(self.ring.size())
    }

    /// Reads the next published entry, or None when the ring is empty. The slot stays owned by
    /// us until [`Consumer::release`].
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.available(1) == 0 {
            return None;
        }
        let slot = (self.cached_cons & self.ring.mask) as usize;
        // SAFETY: `slot < size`, inside the aligned descriptor array. `available` saw (with
        // Acquire) a producer index past `cached_cons`, so the producer finished writing this slot
        // before publishing it and will not touch it again until we release it.
        let value = unsafe { self.ring.desc.as_ptr().add(slot).read() };
        self.cached_cons = self.cached_cons.wrapping_add(1);
        Some(value)
    }

    /// Hands every slot read so far back to the producer (one Release store).
    pub(crate) fn release(&mut self) {
        self.ring
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: RingLayout = RingLayout {
        producer: 0,
        consumer: 64,
        flags: 128,
        desc: 192,
    };

    /// A producer/consumer pair over one anonymous mapping, the way the kernel and we share a ring.
    fn pair<T: Copy>(size: u32, start: u32) -> (Producer<T>, Consumer<T>) {
        let len = LAYOUT.map_len::<T>(size).unwrap();
        let map = Arc::new(Mmap::anonymous(len).unwrap());
        // Pre-set both indices so tests can start near the u32 wrap point.
        let raw = RawRing::<T>::new(map.clone(), LAYOUT, size).unwrap();
        raw.producer().store(start, Ordering::Relaxed);
        raw.consumer().store(start, Ordering::Relaxed);
        drop(raw);
        (
            Producer::new(map.clone(), LAYOUT, size).unwrap(),
            Consumer::new(map, LAYOUT, size).unwrap(),
        )
    }

    #[test]
    fn rejects_bad_sizes_and_layouts() {
        let map = Arc::new(Mmap::anonymous(4096).unwrap());
        for size in [0, 3, 6, 1000] {
            let e = Producer::<u64>::new(map.clone(), LAYOUT, size)
                .err()
                .unwrap();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "size {size}");
        }
        // 1024 u64 descriptors do not fit in one page after offset 192.
        let e = Consumer::<u64>::new(map.clone(), LAYOUT, 1024)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let bad = RingLayout {
            desc: 196,
            ..LAYOUT
        };
        let e = Consumer::<u64>::new(map.clone(), bad, 8).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let bad = RingLayout {
            flags: 130,
            ..LAYOUT
        };
        assert!(Producer::<u64>::new(map, bad, 8).is_err());
    }

    #[test]
    fn fill_drain_and_not_visible_before_submit() {
        let (mut p, mut c) = pair::<u64>(8, 0);
        assert_eq!(c.size(), 8);
        assert_eq!(p.free(1), 8);
        for i in 0..8 {
            assert!(p.push(i));
        }
        assert!(!p.push(99), "ring of 8 holds 8");
        assert_eq!(c.available(1), 0, "nothing visible before submit");
        assert_eq!(c.pop(), None);
        p.submit();
        assert_eq!(p.unconsumed(), 8);
        assert_eq!(c.available(8), 8);
        for i in 0..5 {
            assert_eq!(c.pop(), Some(i));
        }
        // Not released yet: the producer still sees a full ring.
        assert_eq!(p.free(1), 0);
        c.release();
        assert_eq!(p.free(1), 5);
        assert_eq!(p.unconsumed(), 3);
        for i in 8..13 {
            assert!(p.push(i));
        }
        assert!(!p.push(99));
        p.submit();
        let got: Vec<u64> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(got, (5..13).collect::<Vec<_>>());
        c.release();
        assert_eq!(p.unconsumed(), 0);
        assert_eq!(p.free(8), 8);
    }

    #[test]
    fn indices_wrap_around_u32() {
        let (mut p, mut c) = pair::<libc::xdp_desc>(4, u32::MAX - 5);
        let mut next_out = 0u64;
        for round in 0..10u64 {
            let n = (round % 4) + 1;
            for k in 0..n {
                let d = libc::xdp_desc {
                    addr: round * 100 + k,
                    len: k as u32,
                    options: 0,
                };
                assert!(p.push(d));
            }
            p.submit();
            assert_eq!(c.available(1), n as u32);
            for k in 0..n {
                let d = c.pop().unwrap();
                assert_eq!((d.addr, d.len), (round * 100 + k, k as u32));
                next_out += 1;
            }
            assert!(c.pop().is_none());
            c.release();
            assert_eq!(p.free(4), 4);
        }
        assert_eq!(next_out, 1 + 2 + 3 + 4 + 1 + 2 + 3 + 4 + 1 + 2);
    }

    #[test]
    fn consumer_clamps_a_corrupt_producer_index() {
        let (p, mut c) = pair::<u64>(8, 0);
        // A producer that claims more entries than the ring holds must not make us read past one
        // lap of the ring.
        p.ring.producer().store(1000, Ordering::Release);
        assert_eq!(c.available(1), 8);
    }

    #[test]
    fn need_wakeup_flag() {
        let (p, _c) = pair::<u64>(8, 0);
        assert!(!p.needs_wakeup());
        p.ring
            .flags()
            .store(libc::XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
        assert!(p.needs_wakeup());
    }

    #[test]
    fn threads_hand_over_in_order() {
        let (mut p, mut c) = pair::<u64>(64, u32::MAX - 1000);
        const N: u64 = 200_000;
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                let mut pushed = false;
                while i < N && p.push(i) {
                    i += 1;
                    pushed = true;
                }
                if pushed {
                    p.submit();
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let mut expect = 0;
        while expect < N {
            let mut any = false;
            while let Some(v) = c.pop() {
                assert_eq!(v, expect);
                expect += 1;
                any = true;
            }
            if any {
                c.release();
            } else {
                std::thread::yield_now();
            }
        }
        t.join().unwrap();
    }
}
