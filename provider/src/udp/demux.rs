//! Local (address, port) → socket, for UDP.
//!
//! The engine looks up every inbound datagram, on every RX queue at once, so the lookup never
//! waits for a writer and shares no lock between ports: readers see an immutable snapshot of
//! their port's bucket (one bucket read lock, below), and writers (bind, close — rare next to
//! datagrams) publish a new one (read-copy-update).
//!
//! Why this shape: a snapshot is one `ArcSwap` per *bucket of ports* (`port mod 256`), each
//! holding an immutable map endpoint → the socket datagrams go to. A lookup is one `ArcSwap`
//! load (we never `load_full`, which would bump the snapshot's shared reference count) and at
//! most two
//! hash lookups in that bucket (exact address, then the family's wildcard — the same order the
//! XDP program uses for `STEER`; both keys have the same port, so the same bucket). A writer
//! copies only the one bucket it changes (≈ endpoints / 256 entries, so bind stays cheap with
//! tens of thousands of sockets) under the writers' mutex, patches it and swaps it in. Every
//! snapshot is derived from the previous one under that mutex, so an endpoint that stays bound
//! is in every snapshot a reader can see: a lookup never misses it, whatever binds and closes
//! run meanwhile. A reader may still get a socket closed a moment ago (its old snapshot): the
//! caller checks the socket's own `closed` flag under the socket lock, as before. Per-queue
//! copies of the whole table were the alternative: as cheap to read, but every bind would
//! have to update each queue's copy.
//!
//! The writers' bookkeeping (every binding of an endpoint with its SO_REUSEADDR flag, port use
//! counts for ephemeral ports, the round-robin cursors) stays under the mutex, which the
//! receive path never takes.
//!
//! Address-in-use rules (Winsock defaults, no SO_EXCLUSIVEADDRUSE): two sockets may share the
//! exact same local endpoint only if both set SO_REUSEADDR; a specific address and the wildcard
//! on the same port coexist (the specific one wins on lookup). IPv4 and IPv6 are separate
//! (v6 sockets are v6-only, as Windows' default). When several sockets share one endpoint,
//! datagrams go to the one bound first (Winsock leaves this undefined).
use arc_swap::ArcSwapAny;

/// The swap's strategy: arc-swap's `RwLock<()>`, a read lock per bucket, not its default
/// thread-local debt lists. Those live in a process-wide static list, and the preload shares
/// the engine's memory between forked processes (`provider-preload`'s `shm`), where each
/// process would see only its own threads' debts and could free a snapshot another process's
/// reader holds. A bucket's lock is one atomic add for a reader; writers are rare.
type Swap<T> = ArcSwapAny<Arc<T>, std::sync::RwLock<()>>;
use rustc_hash::FxHashMap as HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use crate::socket::entry::{Family, lock};
use crate::socket::error::{WsaError, WspResult};

/// Snapshot buckets (a power of two): ports spread over them by their low bits, which
/// ephemeral (consecutive) ports fill evenly.
const BUCKETS: usize = 256;

fn bucket(port: u16) -> usize {
    usize::from(port) & (BUCKETS - 1)
}

#[derive(Debug)]
struct Binding<T> {
    id: u64,
    reuse: bool,
    value: T,
}

/// The writers' view: everything bind and close need to decide, under the mutex.
#[derive(Debug)]
struct Maps<T> {
    /// Keys are our own local endpoints (not attacker-chosen), so a fast non-keyed hash is safe.
    by_addr: HashMap<(IpAddr, u16), Vec<Binding<T>>>,
    /// Bindings per (family, port), whatever the address: a port is free for ephemeral use only
    /// at zero.
    ports: HashMap<(Family, u16), u32>,
    next_v4: u16,
    next_v6: u16,
}

/// One bucket of the readers' view: endpoint → the socket its datagrams go to.
type Snapshot<T> = HashMap<(IpAddr, u16), T>;

/// The UDP demultiplexer.
#[derive(Debug)]
pub struct UdpDemux<T> {
    maps: Mutex<Maps<T>>,
    /// The readers' view, `BUCKETS` immutable maps; replaced only by a writer holding `maps`.
    published: Box<[Swap<Snapshot<T>>]>,
}

impl<T: Clone> Default for UdpDemux<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> UdpDemux<T> {
    pub fn new() -> Self {
        UdpDemux {
            maps: Mutex::new(Maps {
                by_addr: HashMap::default(),
                ports: HashMap::default(),
                next_v4: 0,
                next_v6: 0,
            }),
            published: (0..BUCKETS)
                .map(|_| Swap::new(Arc::new(Snapshot::default())))
                .collect(),
        }
    }

    /// The socket for a datagram addressed to `local`: exact address first, then wildcard.
    /// Lock-free (see the module comment).
    pub fn lookup(&self, local: SocketAddr) -> Option<T> {
        let snap = self.published[bucket(local.port())].load();
        snap.get(&(local.ip(), local.port()))
            .or_else(|| snap.get(&(Family::of(&local).unspecified(), local.port())))
            .cloned()
    }

    /// Publish what `maps` now says about the endpoint `key`: a copy of its bucket with the
    /// entry replaced (the first binding's value) or removed. Called with `maps` locked, so
    /// copies never race each other.
    fn publish(&self, maps: &Maps<T>, key: (IpAddr, u16)) {
        let slot = &self.published[bucket(key.1)];
        let mut next = Snapshot::clone(&slot.load());
        match maps.by_addr.get(&key).and_then(|list| list.first()) {
            Some(b) => {
                next.insert(key, b.value.clone());
            }
            None => {
                next.remove(&key);
            }
        }
        slot.store(Arc::new(next));
    }

    /// Register `id` on `local` (port nonzero). Returns true if it is the first socket on that
    /// exact endpoint (the caller then adds the STEER entry). WSAEADDRINUSE on a collision.
    pub fn register(&self, local: SocketAddr, id: u64, reuse: bool, value: T) -> WspResult<bool> {
        let mut maps = lock(&self.maps);
        let first = Self::register_locked(&mut maps, local, id, reuse, value)?;
        if first {
            // A second socket on the endpoint changes nothing readers see (the first wins).
            self.publish(&maps, (local.ip(), local.port()));
        }
        Ok(first)
    }

    fn register_locked(
        maps: &mut Maps<T>,
        local: SocketAddr,
        id: u64,
        reuse: bool,
        value: T,
    ) -> WspResult<bool> {
        let list = maps.by_addr.entry((local.ip(), local.port())).or_default();
        if list.iter().any(|b| !(b.reuse && reuse)) {
            return Err(WsaError::WSAEADDRINUSE);
        }
        let first = list.is_empty();
        list.push(Binding { id, reuse, value });
        *maps
            .ports
            .entry((Family::of(&local), local.port()))
            .or_insert(0) += 1;
        Ok(first)
    }

    /// Bind `id` to `ip` on a free port from `range` (no other binding of that family uses the
    /// port, on any address). Returns the endpoint; WSAENOBUFS if the range is exhausted.
    /// Ports are handed out round-robin so a just-freed port is not reused at once.
    pub fn register_ephemeral(
        &self,
        ip: IpAddr,
        range: &RangeInclusive<u16>,
        id: u64,
        reuse: bool,
        value: T,
    ) -> WspResult<SocketAddr> {
        self.register_ephemeral_where(ip, range, id, reuse, value, |_| true)
    }

    /// `register_ephemeral`, taking only a free port `suits` accepts (an active open wants a
    /// port whose RSS hash brings the replies to its own RX queue).
    pub fn register_ephemeral_where(
        &self,
        ip: IpAddr,
        range: &RangeInclusive<u16>,
        id: u64,
        reuse: bool,
        value: T,
        suits: impl Fn(u16) -> bool,
    ) -> WspResult<SocketAddr> {
        let (lo, hi) = ((*range.start()).max(1), *range.end());
        if lo > hi {
            return Err(WsaError::WSAENOBUFS);
        }
        let family = Family::of_ip(&ip);
        let mut maps = lock(&self.maps);
        let cursor = match family {
            Family::V4 => maps.next_v4,
            Family::V6 => maps.next_v6,
        };
        let span = u32::from(hi - lo) + 1;
        let start = if (lo..=hi).contains(&cursor) {
            u32::from(cursor - lo)
        } else {
            0
        };
        let port = (0..span)
            .map(|i| lo + ((start + i) % span) as u16)
            .find(|p| maps.ports.get(&(family, *p)).copied().unwrap_or(0) == 0 && suits(*p))
            .ok_or(WsaError::WSAENOBUFS)?;
        let next = if port == hi { lo } else { port + 1 };
        match family {
            Family::V4 => maps.next_v4 = next,
            Family::V6 => maps.next_v6 = next,
        }
        let local = SocketAddr::new(ip, port);
        Self::register_locked(&mut maps, local, id, reuse, value)?;
        self.publish(&maps, (ip, port));
        Ok(local)
    }

    /// Remove `id` from `local`. Returns true if no socket is left on that exact endpoint (the
    /// caller then removes the STEER entry). False if `id` was not registered there.
    pub fn unregister(&self, local: SocketAddr, id: u64) -> bool {
        let mut maps = lock(&self.maps);
        let key = (local.ip(), local.port());
        let Some(list) = maps.by_addr.get_mut(&key) else {
            return false;
        };
        let Some(pos) = list.iter().position(|b| b.id == id) else {
            return false;
        };
        list.remove(pos);
        // Readers see a change only when the socket datagrams go to was removed.
        let republish = pos == 0;
        let empty = list.is_empty();
        if empty {
            maps.by_addr.remove(&key);
        }
        let pkey = (Family::of(&local), local.port());
        if let Some(n) = maps.ports.get_mut(&pkey) {
            *n -= 1;
            if *n == 0 {
                maps.ports.remove(&pkey);
            }
        }
        if republish {
            self.publish(&maps, key);
        }
        empty
    }

    /// Number of distinct bound endpoints.
    pub fn endpoints(&self) -> usize {
        lock(&self.maps).by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_then_wildcard() {
        let d = UdpDemux::new();
        assert!(d.register(a("0.0.0.0:53"), 1, false, 1).unwrap());
        assert!(d.register(a("198.18.0.1:53"), 2, false, 2).unwrap());
        assert_eq!(d.lookup(a("198.18.0.1:53")), Some(2));
        assert_eq!(d.lookup(a("198.18.0.9:53")), Some(1));
        assert_eq!(d.lookup(a("[2001:db8::1]:53")), None);
        assert_eq!(d.lookup(a("198.18.0.1:54")), None);
        assert!(d.unregister(a("198.18.0.1:53"), 2));
        assert_eq!(d.lookup(a("198.18.0.1:53")), Some(1));
        assert!(!d.unregister(a("198.18.0.1:53"), 2));
        assert!(d.unregister(a("0.0.0.0:53"), 1));
        assert_eq!(d.endpoints(), 0);
    }

    #[test]
    fn reuse_rules() {
        let d = UdpDemux::new();
        d.register(a("[::]:7"), 1, false, 1).unwrap();
        assert_eq!(
            d.register(a("[::]:7"), 2, true, 2),
            Err(WsaError::WSAEADDRINUSE)
        );
        d.register(a("0.0.0.0:7"), 3, false, 3).unwrap();
        d.register(a("198.18.0.1:8"), 4, true, 4).unwrap();
        assert!(!d.register(a("198.18.0.1:8"), 5, true, 5).unwrap());
        assert_eq!(
            d.register(a("198.18.0.1:8"), 6, false, 6),
            Err(WsaError::WSAEADDRINUSE)
        );
        assert_eq!(d.lookup(a("198.18.0.1:8")), Some(4));
        assert!(!d.unregister(a("198.18.0.1:8"), 4));
        assert_eq!(d.lookup(a("198.18.0.1:8")), Some(5));
        assert!(d.unregister(a("198.18.0.1:8"), 5));
    }

    #[test]
    fn ephemeral_round_robin_and_exhaustion() {
        let d = UdpDemux::new();
        let ip: IpAddr = "0.0.0.0".parse().unwrap();
        let r = 100..=102;
        d.register(a("198.18.0.1:101"), 9, false, 9).unwrap();
        let p1 = d.register_ephemeral(ip, &r, 1, false, 1).unwrap();
        let p2 = d.register_ephemeral(ip, &r, 2, false, 2).unwrap();
        assert_eq!((p1.port(), p2.port()), (100, 102));
        assert_eq!(
            d.register_ephemeral(ip, &r, 3, false, 3),
            Err(WsaError::WSAENOBUFS)
        );
        // v6 has its own ports.
        let v6 = d
            .register_ephemeral("::".parse().unwrap(), &r, 4, false, 4)
            .unwrap();
        assert_eq!(v6.port(), 100);
        d.unregister(p1, 1);
        assert_eq!(
            d.register_ephemeral(ip, &r, 5, false, 5).unwrap().port(),
            100
        );
        assert_eq!(
            d.register_ephemeral(ip, &RangeInclusive::new(5, 4), 6, false, 6),
            Err(WsaError::WSAENOBUFS)
        );
        assert_eq!(
            d.register_ephemeral(ip, &(0..=0), 6, false, 6),
            Err(WsaError::WSAENOBUFS)
        );
    }

    #[test]
    fn many_endpoints_across_buckets() {
        // More endpoints than buckets, several per bucket, and removal from a shared bucket
        // leaves the others.
        let d = UdpDemux::new();
        for port in 1000..2000u16 {
            assert!(
                d.register(
                    SocketAddr::new([198, 18, 0, 1].into(), port),
                    u64::from(port),
                    false,
                    port
                )
                .unwrap()
            );
        }
        for port in (1000..2000u16).step_by(2) {
            assert!(d.unregister(
                SocketAddr::new([198, 18, 0, 1].into(), port),
                u64::from(port)
            ));
        }
        for port in 1000..2000u16 {
            let hit = d.lookup(SocketAddr::new([198, 18, 0, 1].into(), port));
            assert_eq!(hit, (port % 2 == 1).then_some(port), "port {port}");
        }
        assert_eq!(d.endpoints(), 500);
    }

    /// Lookups on other threads while binds and closes run: an endpoint that stays bound is
    /// never missed, a specific address bound and unbound over a stable wildcard always finds
    /// one of the two, and a shared (SO_REUSEADDR) endpoint keeps its first socket.
    #[test]
    fn concurrent_lookups_never_miss_a_stable_endpoint() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        const STABLE: u16 = 300;
        let d = Arc::new(UdpDemux::new());
        // Stable: wildcard on 5000..5000+STABLE (v4) and specific v6 addresses on the same
        // ports; each value names its endpoint.
        for i in 0..STABLE {
            let port = 5000 + i;
            d.register(
                SocketAddr::new([0, 0, 0, 0].into(), port),
                u64::from(port),
                true,
                u32::from(port),
            )
            .unwrap();
            d.register(
                a(&format!("[2001:2::1]:{port}")),
                100_000 + u64::from(port),
                false,
                100_000 + u32::from(port),
            )
            .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let lookups = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (d, stop, lookups) = (d.clone(), stop.clone(), lookups.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    let mut i = r;
                    while !stop.load(Ordering::Relaxed) || n < 10_000 {
                        let port = 5000 + (i % STABLE);
                        i = i.wrapping_add(7);
                        // Any other v4 address: the wildcard, always.
                        assert_eq!(
                            d.lookup(SocketAddr::new([198, 18, 0, 9].into(), port)),
                            Some(u32::from(port))
                        );
                        // The churned specific address: itself or the wildcard, never nothing.
                        let hit = d.lookup(SocketAddr::new([198, 18, 0, 1].into(), port));
                        assert!(
                            hit == Some(u32::from(port)) || hit == Some(200_000 + u32::from(port)),
                            "port {port}: {hit:?}"
                        );
                        assert_eq!(
                            d.lookup(a(&format!("[2001:2::1]:{port}"))),
                            Some(100_000 + u32::from(port))
                        );
                        n += 1;
                    }
                    lookups.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        let writers: Vec<_> = (0..2u16)
            .map(|w| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for round in 0..20u16 {
                        for i in (w..STABLE).step_by(2) {
                            let port = 5000 + i;
                            let specific = SocketAddr::new([198, 18, 0, 1].into(), port);
                            let id = 200_000 + u64::from(port);
                            assert!(
                                d.register(specific, id, false, 200_000 + u32::from(port))
                                    .unwrap()
                            );
                            // A second socket sharing the stable wildcard, then gone again.
                            let wild = SocketAddr::new([0, 0, 0, 0].into(), port);
                            assert!(
                                !d.register(wild, 300_000 + u64::from(port), true, 0)
                                    .unwrap()
                            );
                            // Unrelated ports in the same buckets, ephemeral ones included.
                            let other =
                                SocketAddr::new([198, 18, 0, 1].into(), 20_000 + i + 256 * round);
                            d.register(other, 400_000, false, 0).unwrap();
                            assert!(!d.unregister(wild, 300_000 + u64::from(port)));
                            assert!(d.unregister(specific, id));
                            assert!(d.unregister(other, 400_000));
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(lookups.load(Ordering::Relaxed) >= 20_000);
        assert_eq!(d.endpoints(), 2 * usize::from(STABLE));
    }
}
