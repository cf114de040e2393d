//! Local (address, port) → socket, for UDP.
//!
//! The engine looks up every inbound datagram: one read lock, at most two hash lookups (exact
//! address, then the family's wildcard — the same order the XDP program uses for `STEER`), one
//! clone of the value (an `Arc` in practice). Writers (bind, close) hold the write lock only for
//! a map update, or for the scan of a free ephemeral port.
//!
//! Address-in-use rules (Winsock defaults, no SO_EXCLUSIVEADDRUSE): two sockets may share the
//! exact same local endpoint only if both set SO_REUSEADDR; a specific address and the wildcard
//! on the same port coexist (the specific one wins on lookup). IPv4 and IPv6 are separate
//! (v6 sockets are v6-only, as Windows' default). When several sockets share one endpoint,
//! datagrams go to the one bound first (Winsock leaves this undefined).
use rustc_hash::FxHashMap as HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::RwLock;

use crate::socket::entry::{Family, read, write};
use crate::socket::error::{WsaError, WspResult};

#[derive(Debug)]
struct Binding<T> {
    id: u64,
    reuse: bool,
    value: T,
}

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

/// The UDP demultiplexer.
#[derive(Debug)]
pub struct UdpDemux<T> {
    maps: RwLock<Maps<T>>,
}

impl<T: Clone> Default for UdpDemux<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> UdpDemux<T> {
    pub fn new() -> Self {
        UdpDemux {
            maps: RwLock::new(Maps {
                by_addr: HashMap::default(),
                ports: HashMap::default(),
                next_v4: 0,
                next_v6: 0,
            }),
        }
    }

    /// The socket for a datagram addressed to `local`: exact address first, then wildcard.
    pub fn lookup(&self, local: SocketAddr) -> Option<T> {
        let maps = read(&self.maps);
        let exact = maps.by_addr.get(&(local.ip(), local.port()));
        let hit = match exact {
            Some(v) if !v.is_empty() => v,
            _ => {
                let wild = Family::of(&local).unspecified();
                maps.by_addr.get(&(wild, local.port()))?
            }
        };
        hit.first().map(|b| b.value.clone())
    }

    /// Register `id` on `local` (port nonzero). Returns true if it is the first socket on that
    /// exact endpoint (the caller then adds the STEER entry). WSAEADDRINUSE on a collision.
    pub fn register(&self, local: SocketAddr, id: u64, reuse: bool, value: T) -> WspResult<bool> {
        let mut maps = write(&self.maps);
        Self::register_locked(&mut maps, local, id, reuse, value)
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
        let mut maps = write(&self.maps);
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
        Ok(local)
    }

    /// Remove `id` from `local`. Returns true if no socket is left on that exact endpoint (the
    /// caller then removes the STEER entry). False if `id` was not registered there.
    pub fn unregister(&self, local: SocketAddr, id: u64) -> bool {
        let mut maps = write(&self.maps);
        let key = (local.ip(), local.port());
        let Some(list) = maps.by_addr.get_mut(&key) else {
            return false;
        };
        let Some(pos) = list.iter().position(|b| b.id == id) else {
            return false;
        };
        list.remove(pos);
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
        empty
    }

    /// Number of distinct bound endpoints.
    pub fn endpoints(&self) -> usize {
        read(&self.maps).by_addr.len()
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
}
