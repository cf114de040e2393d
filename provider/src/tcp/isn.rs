//! Initial sequence numbers (RFC 6528, required by RFC 9293 §3.4.1).
//!
//! `ISN = M + F(localip, localport, remoteip, remoteport, secretkey)`, where M is a 4 µs clock
//! and F a keyed pseudo-random function. The clock keeps successive incarnations of the same
//! connection moving forward through the sequence space (so old duplicates are not accepted,
//! RFC 9293 §3.4.1); the per-connection offset F keeps an off-path attacker from predicting one
//! connection's ISN from another's (RFC 6528 §1, §3). F is SipHash-2-4 (a keyed PRF designed for
//! short inputs, as Linux uses for the same purpose), truncated to 32 bits.
use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::Instant;

use siphasher::sip::SipHasher24;

use crate::tcp::seq::SeqNum;

/// Length of one M tick: RFC 6528 §3 (from RFC 793) "a timer that is incremented every 4
/// microseconds".
pub const TICK_NANOS: u128 = 4_000;

/// RFC 6528 ISN generator. The secret should come from the OS CSPRNG at start-up (§3: it must
/// not be guessable); keeping it for the process lifetime is fine since M moves on.
#[derive(Clone)]
pub struct IsnGenerator {
    key: [u8; 16],
    epoch: Instant,
}

impl std::fmt::Debug for IsnGenerator {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsnGenerator")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl IsnGenerator {
    /// `epoch` is when M was zero; any fixed instant (e.g. engine start) works.
    pub fn new(secret: [u8; 16], epoch: Instant) -> Self {
        IsnGenerator { key: secret, epoch }
    }

    /// The ISN for a connection from `local` to `remote` opened at `now`.
    pub fn isn(&self, now: Instant, local: SocketAddr, remote: SocketAddr) -> SeqNum {
        // M: 4 µs ticks since the epoch, modulo 2^32 (truncation is the intended wrap).
        let m = (now.saturating_duration_since(self.epoch).as_nanos() / TICK_NANOS) as u32;
        SeqNum(m.wrapping_add(self.offset(local, remote)))
    }

    /// F(localip, localport, remoteip, remoteport, secretkey), truncated to 32 bits.
    fn offset(&self, local: SocketAddr, remote: SocketAddr) -> u32 {
        let mut h = SipHasher24::new_with_key(&self.key);
        write_endpoint(&mut h, local);
        write_endpoint(&mut h, remote);
        h.finish() as u32
    }
}

/// Feeds an endpoint in a fixed, platform-independent encoding (family tag, address octets,
/// big-endian port). IPv4-mapped IPv6 addresses are canonicalised to IPv4 so a dual-stack
/// socket and an IPv4 socket agree on the same 4-tuple.
fn write_endpoint(h: &mut SipHasher24, a: SocketAddr) {
    match a.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => {
            h.write(&[4]);
            h.write(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            h.write(&[6]);
            h.write(&ip.octets());
        }
    }
    h.write(&a.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: [u8; 16] = *b"0123456789abcdef";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deterministic_for_secret_and_time() {
        let t0 = Instant::now();
        let a = IsnGenerator::new(SECRET, t0);
        let b = IsnGenerator::new(SECRET, t0);
        let now = t0 + Duration::from_millis(1234);
        let (l, r) = (addr("198.18.0.1:80"), addr("198.18.0.2:40000"));
        assert_eq!(a.isn(now, l, r), b.isn(now, l, r));
        assert_eq!(a.isn(now, l, r), a.isn(now, l, r));
        // Another secret gives another offset.
        let c = IsnGenerator::new([7; 16], t0);
        assert_ne!(a.isn(now, l, r), c.isn(now, l, r));
        // The secret is not in the Debug output.
        assert!(!format!("{a:?}").contains("key"));
    }

    #[test]
    fn tuples_differ() {
        let t0 = Instant::now();
        let g = IsnGenerator::new(SECRET, t0);
        let base = (addr("198.18.0.1:80"), addr("198.18.0.2:40000"));
        let variants = [
            (addr("198.18.0.1:81"), addr("198.18.0.2:40000")),
            (addr("198.18.0.3:80"), addr("198.18.0.2:40000")),
            (addr("198.18.0.1:80"), addr("198.18.0.2:40001")),
            (addr("198.18.0.1:80"), addr("198.18.0.4:40000")),
            (addr("198.18.0.2:40000"), addr("198.18.0.1:80")), // swapped
            (addr("[2001:db8::1]:80"), addr("[2001:db8::2]:40000")),
        ];
        let isn0 = g.isn(t0, base.0, base.1);
        for (l, r) in variants {
            assert_ne!(g.isn(t0, l, r), isn0, "{l} -> {r}");
        }
        // IPv4-mapped IPv6 is the same connection as plain IPv4.
        assert_eq!(
            g.isn(
                t0,
                addr("[::ffff:198.18.0.1]:80"),
                addr("[::ffff:198.18.0.2]:40000")
            ),
            isn0
        );
    }

    #[test]
    fn increases_with_time_by_4us_ticks() {
        let t0 = Instant::now();
        let g = IsnGenerator::new(SECRET, t0);
        let (l, r) = (addr("198.18.0.1:80"), addr("198.18.0.2:40000"));
        let i0 = g.isn(t0, l, r);
        assert_eq!(g.isn(t0 + Duration::from_micros(3), l, r), i0);
        assert_eq!(g.isn(t0 + Duration::from_micros(4), l, r), i0 + 1);
        let i1 = g.isn(t0 + Duration::from_secs(1), l, r);
        assert!(i1.gt(i0));
        assert_eq!(i1 - i0, 250_000);
        // M wraps after 2^32 · 4 µs ≈ 4.77 h without trouble; before the epoch M is 0.
        let wrap = Duration::from_nanos((1u64 << 32) * 4_000);
        assert_eq!(g.isn(t0 + wrap, l, r), i0);
        if let Some(before) = t0.checked_sub(Duration::from_secs(1)) {
            assert_eq!(g.isn(before, l, r), i0);
        }
    }
}
