//! Receive-side scaling as the NIC computes it: the Toeplitz hash, its input layout, the
//! indirection table, and a local-port chooser built on them.
//!
//! Why this exists: the TCP engine is to run one instance per RX queue, each owning its queue's
//! AF_XDP socket and its connections outright, with no locks and no hand-over between queues. For
//! a passive open that is free (the SYN arrives on some queue; that queue's engine answers). For an
//! active open the connecting engine chooses the 4-tuple, and the NIC's RSS then decides on which
//! queue the peer's replies arrive. So the engine picks a local port whose RSS hash — computed the
//! way the NIC computes it, over the *reply's* tuple — lands on its own queue, as DPDK-based
//! stacks (F-Stack, mTCP, Seastar) do. [`choose_port`] does that; [`RssConfig`] holds what the NIC
//! uses (read with [`super::ethtool::rss`], or [`RssConfig::software`] for devices without a
//! usable hardware key, such as veth, which picks the RX queue from the sender's TX queue rather
//! than from a hash).
//!
//! Everything here is pure: no I/O, no clock.
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

/// The well-known 40-byte Toeplitz key from Microsoft's RSS documentation ("Verifying the RSS Hash
/// Calculation"), which many drivers also use as their default.
pub const MICROSOFT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Entries in [`RssConfig::software`]'s indirection table (the classic 128-entry RETA).
pub const SOFTWARE_TABLE_LEN: usize = 128;

/// Longest hash input: IPv6 source and destination plus both ports.
const MAX_INPUT: usize = 16 + 16 + 2 + 2;

/// The Microsoft Toeplitz hash of `input` under `key`: for every set bit of `input` (most
/// significant bit of `input[0]` first), XOR in the 32 bits of `key` starting at that bit's
/// position.
///
/// A faithful hash needs `key.len() >= input.len() + 4`. A shorter key does not panic: key bits
/// past its end are taken as zero, so the result is well defined but is *not* what a NIC with such
/// a key would compute (no NIC has one). [`RssConfig`] refuses to map flows through a key that is
/// too short rather than rely on this.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    toeplitz_at(key, 0, input)
}

/// The contribution of `input` when it sits at byte `offset` of a longer hash input. Toeplitz is
/// linear over XOR, so `toeplitz(a ‖ b) == toeplitz_at(0, a) ^ toeplitz_at(a.len(), b)`;
/// [`choose_port`] uses that to hash the fixed part of the tuple once and only the port per try.
fn toeplitz_at(key: &[u8], offset: usize, input: &[u8]) -> u32 {
    let key_byte = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    // A 64-bit window over the key whose top bit is key bit 8 * (offset + i) while input byte `i`
    // is processed; that byte's eight 32-bit slices need only its top 39 bits.
    let mut window = (0..8).fold(0u64, |w, j| (w << 8) | key_byte(offset + j));
    let mut hash = 0u32;
    for (i, &byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= (window >> (32 - bit)) as u32;
            }
        }
        window = (window << 8) | key_byte(offset + i + 8);
    }
    hash
}

/// Writes the RSS hash input for a packet from `src` to `dst` into `buf` and returns its length:
/// IPv4 `src addr (4) ‖ dst addr (4) [‖ src port (2) ‖ dst port (2)]`, IPv6 the same with 16-byte
/// addresses, all in network byte order (Microsoft's layout, which Linux drivers program).
fn hash_input(buf: &mut [u8; MAX_INPUT], src: SocketAddr, dst: SocketAddr, ports: bool) -> usize {
    let mut n = match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf[..4].copy_from_slice(&s.octets());
            buf[4..8].copy_from_slice(&d.octets());
            8
        }
        (s, d) => {
            buf[..16].copy_from_slice(&to_v6(s).octets());
            buf[16..32].copy_from_slice(&to_v6(d).octets());
            32
        }
    };
    if ports {
        buf[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
        buf[n + 2..n + 4].copy_from_slice(&dst.port().to_be_bytes());
        n += 4;
    }
    n
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Whether `a` and `b` are the same family once IPv4-mapped IPv6 addresses count as IPv4 (which is
/// what the wire carries for them).
fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical().is_ipv4() == b.to_canonical().is_ipv4()
}

/// The Toeplitz hash a NIC computes for a packet sent by `src` to `dst`, over addresses only or,
/// with `with_ports`, addresses and ports (what NICs use for TCP).
///
/// `src` is the *sender of the received packet*: for the replies of a connection we opened, the
/// remote end is `src` and our end is `dst`. IPv4-mapped IPv6 addresses are hashed as the IPv4
/// packets they are on the wire; a pair that is still of mixed family (no such packet exists) is
/// hashed as IPv6 with the IPv4 side mapped. A short key is handled as in [`toeplitz`].
pub fn flow_hash(key: &[u8], src: SocketAddr, dst: SocketAddr, with_ports: bool) -> u32 {
    let mut buf = [0u8; MAX_INPUT];
    let n = hash_input(&mut buf, src, dst, with_ports);
    toeplitz(key, &buf[..n])
}

/// The RSS hash function, as ethtool's `hfunc` bits name it (`ETH_RSS_HASH_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashFunction {
    /// `ETH_RSS_HASH_TOP` (bit 0): Toeplitz, the only one this module computes.
    Toeplitz,
    /// `ETH_RSS_HASH_XOR` (bit 1).
    Xor,
    /// `ETH_RSS_HASH_CRC32` (bit 2).
    Crc32,
    /// Anything else the driver reported, including 0 (driver did not say) and
    /// multi-bit values.
    Unknown(u32),
}

impl HashFunction {
    /// Decodes ethtool's `hfunc` field.
    pub fn from_ethtool(hfunc: u32) -> Self {
        match hfunc {
            1 => Self::Toeplitz,
            2 => Self::Xor,
            4 => Self::Crc32,
            other => Self::Unknown(other),
        }
    }

    /// The ethtool `hfunc` value.
    pub fn to_ethtool(self) -> u32 {
        match self {
            Self::Toeplitz => 1,
            Self::Xor => 2,
            Self::Crc32 => 4,
            Self::Unknown(v) => v,
        }
    }
}

/// A device's RSS configuration: hash function, key and indirection table (RETA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssConfig {
    /// The hash key (40 bytes on most NICs, 52 on some).
    pub key: Vec<u8>,
    /// The indirection table: entry `hash % len` is the RX queue of a flow with that hash.
    pub indirection: Vec<u32>,
    /// The hash function.
    pub hfunc: HashFunction,
    /// ethtool's `input_xfrm` (`RXH_XFRM_SYM_XOR` = bit 0, `RXH_XFRM_SYM_OR_XOR` = bit 1): a
    /// transform the NIC applies to the tuple before hashing, for symmetric RSS. Non-zero means
    /// the plain tuple hash here is not what the NIC computes, so no queue is predicted.
    pub input_xfrm: u8,
}

impl RssConfig {
    /// The provider's own RSS function for devices whose hardware RSS gives no usable key (veth
    /// chooses the RX queue from the sender's TX queue, not from a hash): Toeplitz
    /// under [`MICROSOFT_KEY`], and a [`SOFTWARE_TABLE_LEN`]-entry table with entry `i` =
    /// `i % queues` (the kernel's default spread, `ethtool_rxfh_indir_default`). `queues == 0` is
    /// taken as 1.
    pub fn software(queues: u32) -> RssConfig {
        let queues = queues.max(1);
        RssConfig {
            key: MICROSOFT_KEY.to_vec(),
            indirection: (0..SOFTWARE_TABLE_LEN as u32).map(|i| i % queues).collect(),
            hfunc: HashFunction::Toeplitz,
            input_xfrm: 0,
        }
    }

    /// Whether this configuration lets queues be predicted at all: Toeplitz, no input transform,
    /// a non-empty table. (The key length is checked per flow: IPv6 needs a longer one.)
    pub fn is_computable(&self) -> bool {
        self.hfunc == HashFunction::Toeplitz && self.input_xfrm == 0 && !self.indirection.is_empty()
    }

    /// Whether any table entry names `queue`. Cheap pre-check for [`choose_port`]: a queue the table
    /// never names can receive no RSS-spread flow, so searching ports for it is pointless.
    pub fn reaches(&self, queue: u32) -> bool {
        self.indirection.contains(&queue)
    }

    /// The queue of a hash: `indirection[hash % len]`. NICs index their table with the hash's low
    /// bits (`hash & (len - 1)`, tables are powers of two); `% len` is the same for those and the
    /// generic form ethtool documents for the rest. `None` for an empty table.
    pub fn queue_for_hash(&self, hash: u32) -> Option<u32> {
        let len = self.indirection.len();
        if len == 0 {
            return None;
        }
        Some(self.indirection[(hash as usize) % len])
    }

    /// The RX queue the NIC delivers a TCP packet from `src` to `dst` to (4-tuple hash). For the
    /// replies of our own connection `src` is the remote end. `None` when it cannot be predicted:
    /// not Toeplitz, an input transform, an empty table, a key shorter than the hash input plus 4
    /// bytes, or a mixed-family pair.
    pub fn queue_for(&self, src: SocketAddr, dst: SocketAddr) -> Option<u32> {
        self.queue_for_flow(src, dst, true)
    }

    /// [`queue_for`](Self::queue_for) with the hash input chosen by `with_ports`: NICs hash TCP over
    /// the 4-tuple but, depending on the driver's `rx-flow-hash` settings, often UDP and fragments
    /// over addresses only.
    pub fn queue_for_flow(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        with_ports: bool,
    ) -> Option<u32> {
        if !self.is_computable() || !same_family(src.ip(), dst.ip()) {
            return None;
        }
        let mut buf = [0u8; MAX_INPUT];
        let n = hash_input(&mut buf, src, dst, with_ports);
        if self.key.len() < n + 4 {
            return None;
        }
        self.queue_for_hash(toeplitz(&self.key, &buf[..n]))
    }
}

/// A local port for a TCP connection from `local_ip` to `remote` whose replies (remote → local)
/// the NIC's RSS delivers to `want_queue`.
///
/// Walks `range` from `start` upwards, wrapping to the range's start, trying each port at most
/// once and never port 0; a `start` outside the range is folded into it (`start % len`), so a
/// random `u16` is a fine start. Returns the first port `p` whose reply tuple hashes to
/// `want_queue` and for which `taken(p)` is false. `taken` is only asked about ports that land on
/// `want_queue`. `None` when no port qualifies, the range is empty, the queue is not predictable
/// for this flow (see [`RssConfig::queue_for`]), or the table never names `want_queue` (found
/// without walking).
///
/// Cost: with a table spreading evenly over `queues` queues a port lands on a given queue with
/// probability `1 / queues`, so a success inspects `queues` ports on average (each inspection
/// hashes two bytes; the rest of the tuple is hashed once).
pub fn choose_port(
    rss: &RssConfig,
    local_ip: IpAddr,
    remote: SocketAddr,
    want_queue: u32,
    range: RangeInclusive<u16>,
    start: u16,
    mut taken: impl FnMut(u16) -> bool,
) -> Option<u16> {
    if range.is_empty()
        || !rss.is_computable()
        || !same_family(local_ip, remote.ip())
        || !rss.reaches(want_queue)
    {
        return None;
    }
    let lo = (*range.start()).max(1);
    let hi = *range.end();
    if lo > hi {
        return None;
    }
    // The reply's input with our port as 0: the port bytes are then XORed in per candidate.
    let mut buf = [0u8; MAX_INPUT];
    let n = hash_input(&mut buf, remote, SocketAddr::new(local_ip, 0), true);
    if rss.key.len() < n + 4 {
        return None;
    }
    let base = toeplitz(&rss.key, &buf[..n]);
    let len = u32::from(hi - lo) + 1;
    let first = if (lo..=hi).contains(&start) {
        u32::from(start - lo)
    } else {
        u32::from(start) % len
    };
    for i in 0..len {
        // lo + (first + i) % len <= hi, so the narrowing cannot truncate.
        let port = (u32::from(lo) + (first + i) % len) as u16;
        let hash = base ^ toeplitz_at(&rss.key, n - 2, &port.to_be_bytes());
        if rss.queue_for_hash(hash) == Some(want_queue) && !taken(port) {
            return Some(port);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(s: &str, port: u16) -> SocketAddr {
        SocketAddr::new(s.parse::<Ipv4Addr>().unwrap().into(), port)
    }

    fn v6(s: &str, port: u16) -> SocketAddr {
        SocketAddr::new(s.parse::<Ipv6Addr>().unwrap().into(), port)
    }

    /// Microsoft, "Verifying the RSS Hash Calculation" (Windows network driver docs), with the
    /// default key: destination, source, IPv4-only hash, IPv4-with-TCP hash. The same table is in
    /// the Intel 82599 datasheet's "RSS Verification Suite" and DPDK's test_thash.c.
    const V4_VECTORS: [(&str, u16, &str, u16, u32, u32); 5] = [
        (
            "161.142.100.80",
            1766,
            "66.9.149.187",
            2794,
            0x323e_8fc2,
            0x51cc_c178,
        ),
        (
            "65.69.140.83",
            4739,
            "199.92.111.2",
            14230,
            0xd718_262a,
            0xc626_b0ea,
        ),
        (
            "12.22.207.184",
            38024,
            "24.19.198.95",
            12898,
            0xd2d0_a5de,
            0x5c2b_394a,
        ),
        (
            "209.142.163.6",
            2217,
            "38.27.205.30",
            48228,
            0x8298_9176,
            0xafc7_327f,
        ),
        (
            "202.188.127.2",
            1303,
            "153.39.163.191",
            44251,
            0x5d18_09c5,
            0x10e8_28a2,
        ),
    ];

    /// The IPv6 rows of the same table: destination, source, IPv6-only, IPv6-with-TCP.
    const V6_VECTORS: [(&str, u16, &str, u16, u32, u32); 3] = [
        (
            "3ffe:2501:200:3::1",
            1766,
            "3ffe:2501:200:1fff::7",
            2794,
            0x2cc1_8cd5,
            0x4020_7d3d,
        ),
        (
            "ff02::1",
            4739,
            "3ffe:501:8::260:97ff:fe40:efab",
            14230,
            0x0f0c_461c,
            0xdde5_1bbf,
        ),
        (
            "fe80::200:f8ff:fe21:67cf",
            38024,
            "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
            44251,
            0x4b61_e985,
            0x02d1_feef,
        ),
    ];

    #[test]
    fn microsoft_ipv4_vectors() {
        for (dst, dport, src, sport, ip_only, with_tcp) in V4_VECTORS {
            let (dst, src) = (v4(dst, dport), v4(src, sport));
            assert_eq!(
                flow_hash(&MICROSOFT_KEY, src, dst, false),
                ip_only,
                "{src} -> {dst}"
            );
            assert_eq!(
                flow_hash(&MICROSOFT_KEY, src, dst, true),
                with_tcp,
                "{src} -> {dst}"
            );
        }
    }

    #[test]
    fn microsoft_ipv6_vectors() {
        for (dst, dport, src, sport, ip_only, with_tcp) in V6_VECTORS {
            let (dst, src) = (v6(dst, dport), v6(src, sport));
            assert_eq!(
                flow_hash(&MICROSOFT_KEY, src, dst, false),
                ip_only,
                "{src} -> {dst}"
            );
            assert_eq!(
                flow_hash(&MICROSOFT_KEY, src, dst, true),
                with_tcp,
                "{src} -> {dst}"
            );
        }
    }

    #[test]
    fn raw_toeplitz_matches_the_first_row() {
        // 66.9.149.187:2794 -> 161.142.100.80:1766 laid out by hand.
        let input = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
        assert_eq!(toeplitz(&MICROSOFT_KEY, &input[..8]), 0x323e_8fc2);
        assert_eq!(toeplitz(&MICROSOFT_KEY, &input), 0x51cc_c178);
    }

    #[test]
    fn ipv4_mapped_addresses_hash_as_ipv4() {
        let (dst, dport, src, sport, _, with_tcp) = V4_VECTORS[0];
        let mapped =
            |s: &str, p| SocketAddr::new(s.parse::<Ipv4Addr>().unwrap().to_ipv6_mapped().into(), p);
        assert_eq!(
            flow_hash(&MICROSOFT_KEY, mapped(src, sport), mapped(dst, dport), true),
            with_tcp
        );
    }

    #[test]
    fn hash_is_linear_in_its_parts() {
        // What choose_port relies on: the parts of the input hash independently.
        let input: Vec<u8> = (0u8..36).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(
                toeplitz(&MICROSOFT_KEY, &input),
                toeplitz_at(&MICROSOFT_KEY, 0, a) ^ toeplitz_at(&MICROSOFT_KEY, split, b),
            );
        }
    }

    #[test]
    fn hash_function_bits() {
        assert_eq!(HashFunction::from_ethtool(1), HashFunction::Toeplitz);
        assert_eq!(HashFunction::from_ethtool(2), HashFunction::Xor);
        assert_eq!(HashFunction::from_ethtool(4), HashFunction::Crc32);
        assert_eq!(HashFunction::from_ethtool(0), HashFunction::Unknown(0));
        assert_eq!(HashFunction::from_ethtool(3), HashFunction::Unknown(3));
        for v in [0, 1, 2, 3, 4, 8] {
            assert_eq!(HashFunction::from_ethtool(v).to_ethtool(), v);
        }
    }

    fn config(indirection: Vec<u32>) -> RssConfig {
        RssConfig {
            key: MICROSOFT_KEY.to_vec(),
            indirection,
            hfunc: HashFunction::Toeplitz,
            input_xfrm: 0,
        }
    }

    #[test]
    fn queue_for_indexes_the_table_by_hash_modulo_len() {
        // First row: 4-tuple hash 0x51ccc178; % 4 = 0, % 3 = 1, % 128 = 120.
        let (dst, dport, src, sport, ip_only, with_tcp) = V4_VECTORS[0];
        let (dst, src) = (v4(dst, dport), v4(src, sport));
        assert_eq!(config(vec![7, 1, 2, 3]).queue_for(src, dst), Some(7));
        assert_eq!(config(vec![0, 9, 0]).queue_for(src, dst), Some(9));
        let reversed = config((0..128).rev().collect());
        assert_eq!(reversed.queue_for(src, dst), Some(127 - 120));
        assert_eq!(reversed.queue_for_hash(with_tcp), Some(7));
        // Addresses only: 0x323e8fc2 % 128 = 0x42 = 66.
        assert_eq!(reversed.queue_for_flow(src, dst, false), Some(127 - 66));
        assert_eq!(ip_only % 128, 66);
    }

    #[test]
    fn software_config_spreads_round_robin() {
        let rss = RssConfig::software(4);
        assert_eq!(rss.key, MICROSOFT_KEY);
        assert_eq!(rss.indirection.len(), 128);
        assert!(
            rss.indirection
                .iter()
                .enumerate()
                .all(|(i, &q)| q == i as u32 % 4)
        );
        assert!((0..4).all(|q| rss.reaches(q)));
        assert!(!rss.reaches(4));
        // Zero queues does not divide by zero.
        assert!(RssConfig::software(0).indirection.iter().all(|&q| q == 0));
    }

    #[test]
    fn unpredictable_configs_give_no_queue() {
        let (src, dst) = (v4("10.0.0.2", 80), v4("10.0.0.1", 40000));
        for hfunc in [
            HashFunction::Xor,
            HashFunction::Crc32,
            HashFunction::Unknown(0),
            HashFunction::Unknown(8),
        ] {
            let rss = RssConfig {
                hfunc,
                ..RssConfig::software(4)
            };
            assert_eq!(rss.queue_for(src, dst), None, "{hfunc:?}");
            assert_eq!(
                choose_port(&rss, dst.ip(), src, 0, 1..=65535, 1, |_| false),
                None
            );
        }
        let symmetric = RssConfig {
            input_xfrm: 1,
            ..RssConfig::software(4)
        };
        assert_eq!(symmetric.queue_for(src, dst), None);
        assert_eq!(config(vec![]).queue_for(src, dst), None);
        assert_eq!(config(vec![]).queue_for_hash(0), None);
        // Mixed families are no packet at all.
        let rss = RssConfig::software(4);
        assert_eq!(rss.queue_for(src, v6("2001:db8::1", 1)), None);
        assert_eq!(
            choose_port(
                &rss,
                "2001:db8::1".parse().unwrap(),
                src,
                0,
                1..=65535,
                1,
                |_| false
            ),
            None
        );
    }

    #[test]
    fn short_keys_do_not_panic() {
        let input = [0xffu8; MAX_INPUT];
        assert_eq!(toeplitz(&[], &input), 0);
        for len in 0..MAX_INPUT + 4 {
            let _ = toeplitz(&MICROSOFT_KEY[..len.min(40)], &input);
        }
        // Missing key bits count as zero: a 12-byte input under an 8-byte key equals the full key
        // hash with the key's tail zeroed.
        let mut zeroed = MICROSOFT_KEY;
        zeroed[8..].fill(0);
        assert_eq!(
            toeplitz(&MICROSOFT_KEY[..8], &input[..12]),
            toeplitz(&zeroed, &input[..12])
        );

        let (src, dst) = (v6("2001:db8::2", 443), v6("2001:db8::1", 50000));
        let _ = flow_hash(&MICROSOFT_KEY[..3], src, dst, true);
        // IPv6 with ports needs 36 + 4 = 40 bytes: 39 is refused, 40 is enough.
        let mut rss = config(vec![0, 1]);
        rss.key.truncate(39);
        assert_eq!(rss.queue_for(src, dst), None);
        assert_eq!(
            choose_port(&rss, dst.ip(), src, 0, 1..=65535, 1, |_| false),
            None
        );
        // ... while IPv4 (12 + 4 bytes) still works with it.
        assert!(
            rss.queue_for(v4("10.0.0.2", 1), v4("10.0.0.1", 2))
                .is_some()
        );
        rss.key = MICROSOFT_KEY.to_vec();
        assert!(rss.queue_for(src, dst).is_some());
    }

    /// An uneven, non-round-robin table over `queues` queues, so tests do not depend on `i % n`.
    fn shuffled(queues: u32) -> RssConfig {
        config((0..128u32).map(|i| (i * 37 + i / 5) % queues).collect())
    }

    #[test]
    fn chosen_ports_land_on_the_requested_queue() {
        let flows = [
            (IpAddr::from([10, 0, 0, 1]), v4("10.0.0.2", 443)),
            (IpAddr::from([192, 168, 7, 9]), v4("198.51.100.20", 8080)),
            ("2001:db8::1".parse().unwrap(), v6("2001:db8:1::20", 443)),
        ];
        for queues in [4u32, 8] {
            for rss in [RssConfig::software(queues), shuffled(queues)] {
                for (local, remote) in flows {
                    for q in 0..queues {
                        for start in [0u16, 1, 32768, 49152, 65535] {
                            let p =
                                choose_port(&rss, local, remote, q, 1024..=65535, start, |_| false)
                                    .unwrap_or_else(|| panic!("no port for queue {q} of {queues}"));
                            assert!(p >= 1024);
                            assert_eq!(
                                rss.queue_for(remote, SocketAddr::new(local, p)),
                                Some(q),
                                "port {p}, queue {q} of {queues}, {local} <- {remote}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn walk_starts_at_start_and_takes_the_first_fit() {
        let rss = RssConfig::software(8);
        let (local, remote) = (IpAddr::from([10, 0, 0, 1]), v4("10.0.0.2", 443));
        let lands = |p: u16| rss.queue_for(remote, SocketAddr::new(local, p)) == Some(3);
        let expect = (40000..=65535).find(|&p| lands(p)).unwrap();
        assert_eq!(
            choose_port(&rss, local, remote, 3, 1024..=65535, 40000, |_| false),
            Some(expect)
        );
        // Wrapping: starting at the last port finds the first fit from the bottom.
        let wrapped = if lands(65535) {
            65535
        } else {
            (1024..=65535).find(|&p| lands(p)).unwrap()
        };
        assert_eq!(
            choose_port(&rss, local, remote, 3, 1024..=65535, 65535, |_| false),
            Some(wrapped)
        );
    }

    #[test]
    fn taken_ports_are_skipped() {
        let rss = RssConfig::software(4);
        let (local, remote) = (IpAddr::from([10, 0, 0, 1]), v4("10.0.0.2", 443));
        let first = choose_port(&rss, local, remote, 2, 1024..=65535, 5000, |_| false).unwrap();
        let mut asked = Vec::new();
        let second = choose_port(&rss, local, remote, 2, 1024..=65535, 5000, |p| {
            asked.push(p);
            p == first
        })
        .unwrap();
        assert_ne!(second, first);
        assert_eq!(asked, vec![first, second]);
        assert_eq!(
            rss.queue_for(remote, SocketAddr::new(local, second)),
            Some(2)
        );
        // Everything taken: none, after asking about each landing port exactly once.
        let mut seen = HashSet::new();
        let none = choose_port(&rss, local, remote, 2, 1024..=65535, 5000, |p| {
            assert!(seen.insert(p), "port {p} asked twice");
            true
        });
        assert_eq!(none, None);
        let landing = (1024..=65535u16)
            .filter(|&p| rss.queue_for(remote, SocketAddr::new(local, p)) == Some(2))
            .count();
        assert_eq!(seen.len(), landing);
    }

    #[test]
    fn every_port_once_and_never_zero() {
        // A one-queue table: every port lands, so the walk is visible through `taken`.
        let rss = config(vec![0]);
        let (local, remote) = (IpAddr::from([10, 0, 0, 1]), v4("10.0.0.2", 443));
        for (range, start) in [
            (0..=9u16, 0u16),
            (0..=9, 7),
            (3..=9, 60000),
            (0..=65535, 12345),
        ] {
            let mut seen = Vec::new();
            let r = choose_port(&rss, local, remote, 0, range.clone(), start, |p| {
                seen.push(p);
                true
            });
            assert_eq!(r, None);
            assert!(!seen.contains(&0), "port 0 offered");
            let expect = range.clone().filter(|&p| p != 0).count();
            assert_eq!(seen.len(), expect, "{range:?}");
            assert_eq!(
                seen.iter().collect::<HashSet<_>>().len(),
                expect,
                "{range:?}"
            );
        }
        assert_eq!(
            choose_port(&rss, local, remote, 0, 0..=9, 0, |_| false),
            Some(1)
        );
        assert_eq!(
            choose_port(&rss, local, remote, 0, 0..=9, 8, |_| false),
            Some(8)
        );
        // Wraps from the top of the range to its bottom (not to port 0).
        assert_eq!(
            choose_port(&rss, local, remote, 0, 0..=9, 9, |p| p == 9),
            Some(1)
        );
    }

    #[test]
    fn empty_ranges_and_unreached_queues_give_none() {
        let rss = RssConfig::software(4);
        let (local, remote) = (IpAddr::from([10, 0, 0, 1]), v4("10.0.0.2", 443));
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 10..=9;
        assert_eq!(
            choose_port(&rss, local, remote, 0, backwards, 10, |_| false),
            None
        );
        assert_eq!(
            choose_port(&rss, local, remote, 0, 0..=0, 0, |_| false),
            None
        );
        // Queue 4 is in no entry: answered without walking (taken is never asked).
        let r = choose_port(&rss, local, remote, 4, 1..=65535, 1, |_| panic!("walked"));
        assert_eq!(r, None);
    }

    #[test]
    fn landing_ports_are_spread_over_queues() {
        // About 1 / queues of the ports land on each queue, which is what makes a search short.
        let rss = RssConfig::software(8);
        let (local, remote) = (IpAddr::from([10, 0, 0, 1]), v4("10.0.0.2", 443));
        let mut per_queue = [0u32; 8];
        for p in 1024..=65535u16 {
            per_queue[rss.queue_for(remote, SocketAddr::new(local, p)).unwrap() as usize] += 1;
        }
        let even = (65535 - 1024 + 1) / 8;
        for n in per_queue {
            assert!(n > even * 3 / 4 && n < even * 5 / 4, "{per_queue:?}");
        }
    }
}
