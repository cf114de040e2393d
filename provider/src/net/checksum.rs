//! The internet checksum (RFC 1071) and the UDP/TCP pseudo-header sums.
//!
//! A *sum* here is the 16-bit one's-complement sum of big-endian words, not yet inverted, kept in a
//! `u32` so several sums can be added with plain `+` and folded once ([`fold`]). The wire value of a
//! checksum field is `!fold(..)` ([`finish`]).
//!
//! [`sum`] adds 32-bit native-order words into eight independent `u64` lanes (no carry chain, so
//! the compiler vectorises it), then the tail 8 bytes at a time with end-around carry: the
//! one's-complement sum is independent of byte order up to a final byte swap (RFC 1071 §2(B)), so
//! the loop needs no per-word swapping.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Folds a wide one's-complement accumulator down to 16 bits.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Finishes a segment left for checksum offload: the 16-bit field at `field_at` holds the
/// pseudo-header sum, so the sum of the whole segment is what the field must hold, inverted.
pub fn finish_partial(segment: &mut [u8], field_at: usize) {
    let c = finish(sum(segment));
    segment[field_at..field_at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The checksum field value for a (possibly combined) sum: the complement of its fold.
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(u64::from(sum))
}

/// The one's-complement sum of `data` as big-endian 16-bit words (a trailing odd byte is padded with
/// a zero), folded to 16 bits and returned in a `u32` for cheap combination.
pub fn sum(data: &[u8]) -> u32 {
    // Bulk: 32-bit native words added into eight independent u64 lanes. 2^16 ≡ 1 modulo
    // 2^16 − 1, so a sum of 32-bit words folds to the same one's-complement sum as the 16-bit
    // words; a lane cannot overflow below 2^32 words (16 GiB), so the loop has no carry chain
    // and LLVM vectorises it (several times faster than the carry-propagating loop below).
    let mut lanes = [0u64; 8];
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
            *lane += u64::from(w);
        }
    }
    // Each lane folded to < 2^33 first, so the eight together stay < 2^36.
    let mut acc: u64 = lanes.iter().map(|&l| (l & 0xffff_ffff) + (l >> 32)).sum();
    let mut chunks = blocks.remainder().chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = acc.overflowing_add(w);
        acc = s + u64::from(carry);
    }
    // Fold to < 2^33 so the tail adds below cannot overflow.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        acc += u64::from(u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let Some(&b) = rest.first() {
        acc += u64::from(u16::from_ne_bytes([b, 0]));
    }
    let folded = fold(acc);
    // The sum was taken over native-endian words; convert to the big-endian word sum.
    u32::from(u16::from_be_bytes(folded.to_ne_bytes()))
}

/// Adds two sums (one's complement) and folds the result.
#[inline]
pub fn combine(a: u32, b: u32) -> u32 {
    u32::from(fold(u64::from(a) + u64::from(b)))
}

/// The internet checksum of `data`: the value to store in a checksum field covering exactly `data`.
/// Verifying: the checksum over data that already contains a correct checksum field is 0.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// RFC 1624 incremental update: the new checksum field value after one 16-bit word of the covered
/// data changed from `old` to `new`.
#[inline]
pub fn update(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    !fold(u64::from(!check) + u64::from(!old) + u64::from(new))
}

/// The IPv4 pseudo-header sum (RFC 768 / RFC 9293 §3.1) for `proto` and upper-layer length `len`.
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    let acc = u64::from(u16::from_be_bytes([s[0], s[1]]))
        + u64::from(u16::from_be_bytes([s[2], s[3]]))
        + u64::from(u16::from_be_bytes([d[0], d[1]]))
        + u64::from(u16::from_be_bytes([d[2], d[3]]))
        + u64::from(proto)
        + u64::from(len);
    u32::from(fold(acc))
}

/// The IPv6 pseudo-header sum (RFC 8200 §8.1) for next header `proto` and upper-layer length `len`.
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u32 {
    let acc = u64::from(sum(&src.octets()))
        + u64::from(sum(&dst.octets()))
        + u64::from(len >> 16)
        + u64::from(len & 0xffff)
        + u64::from(proto);
    u32::from(fold(acc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straightforward reference: big-endian 16-bit words, u32 accumulator.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for c in data.chunks(2) {
            let hi = u64::from(c[0]) << 8;
            let lo = c.get(1).copied().map_or(0, u64::from);
            acc += hi | lo;
        }
        fold(acc)
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn matches_reference_all_lengths_and_offsets() {
        let data = pseudo_random(300, 7);
        for start in 0..9 {
            for end in start..data.len() {
                let d = &data[start..end];
                assert_eq!(sum(d), u32::from(reference(d)), "start {start} end {end}");
            }
        }
        // All-ones data exercises the carries.
        let ones = vec![0xffu8; 1501];
        assert_eq!(sum(&ones), u32::from(reference(&ones)));
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn matches_reference_for_jumbo_and_maximum_segments() {
        let data = pseudo_random(65535, 11);
        for len in [32, 33, 63, 64, 1448, 8948, 9000, 65535] {
            assert_eq!(
                sum(&data[..len]),
                u32::from(reference(&data[..len])),
                "len {len}"
            );
            assert_eq!(
                sum(&data[1..len]),
                u32::from(reference(&data[1..len])),
                "len {len}−1"
            );
        }
        let ones = vec![0xffu8; 65535];
        assert_eq!(sum(&ones), u32::from(reference(&ones)));
    }

    #[test]
    fn combine_equals_whole() {
        let data = pseudo_random(1000, 99);
        for split in (0..data.len()).step_by(2) {
            let (a, b) = data.split_at(split);
            assert_eq!(combine(sum(a), sum(b)), sum(&data));
        }
    }

    #[test]
    fn incremental_update() {
        let mut data = pseudo_random(64, 3);
        let check = checksum(&data);
        let old = u16::from_be_bytes([data[10], data[11]]);
        data[10] = 0x12;
        data[11] = 0x34;
        let updated = update(check, old, 0x1234);
        assert_eq!(fold(u64::from(updated)), fold(u64::from(checksum(&data))));
    }

    #[test]
    fn pseudo_headers_match_etherparse() {
        use etherparse::{Ipv4Header, Ipv6Header, UdpHeader};
        let payload = pseudo_random(77, 5);
        let ip4 = Ipv4Header::new(
            (8 + payload.len()) as u16,
            64,
            etherparse::IpNumber::UDP,
            [10, 1, 2, 3],
            [192, 168, 255, 254],
        )
        .unwrap();
        let udp = UdpHeader::with_ipv4_checksum(1234, 5678, &ip4, &payload).unwrap();
        let mut seg = udp.to_bytes().to_vec();
        seg[6] = 0;
        seg[7] = 0;
        seg.extend_from_slice(&payload);
        let ps = pseudo_v4(
            Ipv4Addr::from(ip4.source),
            Ipv4Addr::from(ip4.destination),
            17,
            seg.len() as u16,
        );
        let mut ours = finish(combine(ps, sum(&seg)));
        if ours == 0 {
            ours = 0xffff;
        }
        assert_eq!(ours, udp.checksum);

        let ip6 = Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: (8 + payload.len()) as u16,
            next_header: etherparse::IpNumber::UDP,
            hop_limit: 64,
            source: [0xfd, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
            destination: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 0, 0, 0, 0, 1],
        };
        let udp6 = UdpHeader::with_ipv6_checksum(1234, 5678, &ip6, &payload).unwrap();
        let ps6 = pseudo_v6(
            Ipv6Addr::from(ip6.source),
            Ipv6Addr::from(ip6.destination),
            17,
            seg.len() as u32,
        );
        let mut ours6 = finish(combine(ps6, sum(&seg)));
        if ours6 == 0 {
            ours6 = 0xffff;
        }
        assert_eq!(ours6, udp6.checksum);
    }
}
