//! Whole frames: [`parse`] a received Ethernet/IP/TCP-or-UDP frame with every checksum verified, and
//! [`build_udp`] a complete UDP frame in place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, Ethernet};
use super::{Ipv4, Ipv6};
use super::{PROTO_TCP, PROTO_UDP, ParseError, Tcp, Udp, checksum, ethernet, ipv4, ipv6, udp};

/// Default TTL / hop limit of frames we build.
pub const DEFAULT_TTL: u8 = 64;

/// The network-layer addresses of a parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// IPv4.
    V4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
    },
    /// IPv6.
    V6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
    },
}

impl L3 {
    /// Source address.
    pub fn src(&self) -> IpAddr {
        match *self {
            L3::V4 { src, .. } => src.into(),
            L3::V6 { src, .. } => src.into(),
        }
    }

    /// Destination address.
    pub fn dst(&self) -> IpAddr {
        match *self {
            L3::V4 { dst, .. } => dst.into(),
            L3::V6 { dst, .. } => dst.into(),
        }
    }
}

/// A received TCP or UDP frame whose headers and checksums are all valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// VLAN id of the 802.1Q tag, if any.
    pub vlan: Option<u16>,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// IP addresses.
    pub l3: L3,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The transport header (UDP: 8 bytes; TCP: with options).
    pub l4: &'a [u8],
    /// The transport payload (UDP: up to the UDP length; TCP: the segment data).
    pub payload: &'a [u8],
    /// The TCP/UDP checksum field held only the pseudo-header sum (a partial checksum a
    /// local sender left for offload) and [`Checksums::AcceptPartial`] accepted it.
    pub partial_checksum: bool,
}

impl<'a> Parsed<'a> {
    /// Source socket address.
    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(self.l3.src(), self.src_port)
    }

    /// Destination socket address.
    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.l3.dst(), self.dst_port)
    }

    /// A TCP view of the header (seq, ack, flags, window, options), if this is TCP.
    pub fn tcp(&self) -> Option<Tcp<&'a [u8]>> {
        if self.proto == PROTO_TCP {
            Tcp::new_checked(self.l4).ok()
        } else {
            None
        }
    }
}

/// How strictly [`parse_with`] treats the TCP/UDP checksum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checksums {
    /// Every checksum must be complete and correct (frames from a wire).
    #[default]
    Verify,
    /// Also accept a transport checksum field that holds exactly the pseudo-header sum: what a
    /// Linux sender with checksum offload leaves for the NIC to finish (`CHECKSUM_PARTIAL`). A
    /// veth hands such frames to XDP as they are, because nothing between the two ends ever
    /// computes the checksum; on a veth the bytes never crossed a wire either.
    AcceptPartial,
}

/// Parses a received frame: Ethernet (one optional 802.1Q tag), IPv4 (any IHL, not a fragment) or
/// IPv6 (no extension headers), then TCP or UDP. Verifies the IPv4 header checksum and the TCP/UDP
/// checksum (a zero UDP checksum means "none" over IPv4 and is invalid over IPv6). Trailing bytes
/// beyond the IP length (Ethernet padding) are ignored. Never panics.
pub fn parse(frame: &[u8]) -> Result<Parsed<'_>, ParseError> {
    parse_with(frame, Checksums::Verify)
}

/// The pseudo-header sum as a sender with checksum offload stores it in the checksum field
/// (`~csum_tcpudp_magic(.., 0)` in Linux): the folded sum, not complemented. 0 and 0xffff are the
/// same one's-complement value.
fn is_partial(field: u16, pseudo: u32) -> bool {
    let p = checksum::fold(u64::from(pseudo));
    field == p || (field, p) == (0, 0xffff) || (field, p) == (0xffff, 0)
}

/// [`parse`] with a choice of checksum strictness.
pub fn parse_with(frame: &[u8], checksums: Checksums) -> Result<Parsed<'_>, ParseError> {
    let partial_ok = checksums == Checksums::AcceptPartial;
    let mut partial = false;
    let eth = Ethernet::new_checked(frame)?;
    let ip_buf = &frame[eth.header_len()..];
    let (l3, proto, seg): (L3, u8, &[u8]) = match eth.ethertype() {
        ETHERTYPE_IPV4 => {
            let ip = Ipv4::new_checked(ip_buf)?;
            if !ip.verify_checksum() {
                return Err(ParseError::BadChecksum);
            }
            if ip.is_fragment() {
                return Err(ParseError::Fragment);
            }
            let l3 = L3::V4 {
                src: ip.src(),
                dst: ip.dst(),
            };
            let seg = &ip_buf[ip.header_len()..usize::from(ip.total_len())];
            (l3, ip.protocol(), seg)
        }
        ETHERTYPE_IPV6 => {
            let ip = Ipv6::new_checked(ip_buf)?;
            let l3 = L3::V6 {
                src: ip.src(),
                dst: ip.dst(),
            };
            let seg = &ip_buf[ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(ip.payload_len())];
            (l3, ip.next_header(), seg)
        }
        other => return Err(ParseError::UnsupportedEtherType(other)),
    };
    let (src_port, dst_port, l4, payload) = match proto {
        PROTO_UDP => {
            let u = Udp::new_checked(seg)?;
            let len = u.len();
            let pseudo = match l3 {
                L3::V4 { src, dst } => checksum::pseudo_v4(src, dst, PROTO_UDP, len),
                L3::V6 { src, dst } => checksum::pseudo_v6(src, dst, PROTO_UDP, u32::from(len)),
            };
            let ok = match l3 {
                L3::V4 { .. } => u.checksum() == 0 || u.verify_checksum(pseudo),
                L3::V6 { .. } => u.checksum() != 0 && u.verify_checksum(pseudo),
            };
            if !ok {
                if !(partial_ok && is_partial(u.checksum(), pseudo)) {
                    return Err(ParseError::BadChecksum);
                }
                partial = true;
            }
            (
                u.src_port(),
                u.dst_port(),
                &seg[..udp::HEADER_LEN],
                &seg[udp::HEADER_LEN..usize::from(len)],
            )
        }
        PROTO_TCP => {
            let t = Tcp::new_checked(seg)?;
            let pseudo = match l3 {
                // An IPv4 payload is below 64 KiB by construction.
                L3::V4 { src, dst } => checksum::pseudo_v4(src, dst, PROTO_TCP, seg.len() as u16),
                L3::V6 { src, dst } => checksum::pseudo_v6(src, dst, PROTO_TCP, seg.len() as u32),
            };
            if !t.verify_checksum(pseudo) {
                if !(partial_ok && is_partial(t.checksum(), pseudo)) {
                    return Err(ParseError::BadChecksum);
                }
                partial = true;
            }
            let hl = t.header_len();
            (t.src_port(), t.dst_port(), &seg[..hl], &seg[hl..])
        }
        other => return Err(ParseError::UnsupportedProtocol(other)),
    };
    Ok(Parsed {
        vlan: eth.vlan_id(),
        src_mac: eth.src(),
        dst_mac: eth.dst(),
        l3,
        proto,
        src_port,
        dst_port,
        l4,
        payload,
        partial_checksum: partial,
    })
}

/// Why [`build_udp`] could not write a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The frame does not fit the buffer, or the payload exceeds what the length fields can carry.
    #[error("frame too long for the buffer or the length fields")]
    TooLong,
    /// Source and destination are of different address families.
    #[error("source and destination address families differ")]
    FamilyMismatch,
    /// A VLAN id above 4095.
    #[error("invalid VLAN id {0}")]
    InvalidVlan(u16),
}

/// Bytes a UDP frame carries in front of its payload: Ethernet (+ 802.1Q tag), IP and UDP headers.
pub const fn udp_header_overhead(v6: bool, vlan: bool) -> usize {
    ethernet::HEADER_LEN
        + if vlan { ethernet::VLAN_TAG_LEN } else { 0 }
        + if v6 {
            ipv6::HEADER_LEN
        } else {
            ipv4::MIN_HEADER_LEN
        }
        + udp::HEADER_LEN
}

/// Writes a complete UDP frame into the front of `buf` and returns its length. IPv4: no options,
/// DF set, identification 0 (an atomic datagram, RFC 6864 §4.1), TTL 64, header checksum.
/// IPv6: traffic class and flow label 0, hop limit 64. The UDP checksum is always computed.
pub fn build_udp(
    buf: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Result<usize, BuildError> {
    let udp_len = udp::HEADER_LEN + payload.len();
    let udp_len16 = u16::try_from(udp_len).map_err(|_| BuildError::TooLong)?;
    let (l4_at, total) = write_eth_ip(
        buf,
        src_mac,
        dst_mac,
        vlan,
        src.ip(),
        dst.ip(),
        PROTO_UDP,
        udp_len,
    )?;
    let mut u = Udp::new_unchecked(&mut buf[l4_at..total]);
    u.set_src_port(src.port());
    u.set_dst_port(dst.port());
    u.set_len(udp_len16);
    u.payload_mut().copy_from_slice(payload);
    let pseudo = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => checksum::pseudo_v4(s, d, PROTO_UDP, udp_len16),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            checksum::pseudo_v6(s, d, PROTO_UDP, u32::from(udp_len16))
        }
        _ => return Err(BuildError::FamilyMismatch),
    };
    u.fill_checksum(pseudo);
    Ok(total)
}

/// Writes Ethernet and IP headers around `l4`, a complete transport segment whose checksum the
/// caller already filled (the TCP engine does), and returns the frame length. Header fields as
/// in [`build_udp`].
#[allow(clippy::too_many_arguments)]
pub fn build_ip(
    buf: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4: &[u8],
) -> Result<usize, BuildError> {
    let (l4_at, total) = write_eth_ip(buf, src_mac, dst_mac, vlan, src, dst, proto, l4.len())?;
    buf[l4_at..total].copy_from_slice(l4);
    Ok(total)
}

/// Where [`wrap_l4_in_place`] callers put the L4 segment inside a TX buffer: room for the
/// largest Ethernet + IP header in front of it (untagged; IPv6).
pub const L4_IN_PLACE_AT: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN;

/// Ethernet and IP headers in front of an `l4_len`-byte segment already written at
/// `buf[l4_at..]`, so the segment is never moved; returns the frame's range in `buf` (it
/// starts `l4_at` minus the header length in).
#[allow(clippy::too_many_arguments)]
pub fn wrap_l4_in_place(
    buf: &mut [u8],
    l4_at: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4_len: usize,
) -> Result<std::ops::Range<usize>, BuildError> {
    let ip_hl = if dst.is_ipv6() {
        ipv6::HEADER_LEN
    } else {
        ipv4::MIN_HEADER_LEN
    };
    let start = l4_at
        .checked_sub(ethernet::HEADER_LEN + ip_hl)
        .ok_or(BuildError::TooLong)?;
    let (at, total) = write_eth_ip(
        buf.get_mut(start..).ok_or(BuildError::TooLong)?,
        src_mac,
        dst_mac,
        None,
        src,
        dst,
        proto,
        l4_len,
    )?;
    debug_assert_eq!(start + at, l4_at);
    Ok(start..start + total)
}

/// Ethernet (+ tag) and IPv4/IPv6 headers for an `l4_len`-byte payload at the front of `buf`;
/// returns (offset of the payload, frame length).
#[allow(clippy::too_many_arguments)]
fn write_eth_ip(
    buf: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4_len: usize,
) -> Result<(usize, usize), BuildError> {
    if let Some(v) = vlan
        && v > 0x0fff
    {
        return Err(BuildError::InvalidVlan(v));
    }
    let v6 = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(BuildError::FamilyMismatch),
    };
    let ip_hl = if v6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::MIN_HEADER_LEN
    };
    // IPv4 total length and IPv6 payload length (no jumbograms) are 16-bit.
    let ip_len_field = if v6 { l4_len } else { ip_hl + l4_len };
    let ip_len16 = u16::try_from(ip_len_field).map_err(|_| BuildError::TooLong)?;
    let eth_hl = ethernet::HEADER_LEN
        + if vlan.is_some() {
            ethernet::VLAN_TAG_LEN
        } else {
            0
        };
    let total = eth_hl + ip_hl + l4_len;
    let frame = buf.get_mut(..total).ok_or(BuildError::TooLong)?;

    let mut eth = Ethernet::new_unchecked(&mut frame[..]);
    eth.set_dst(dst_mac);
    eth.set_src(src_mac);
    eth.set_vlan_and_ethertype(vlan, if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 });

    let ip_buf = &mut frame[eth_hl..eth_hl + ip_hl];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4::new_unchecked(ip_buf);
            ip.set_version_and_header_len(ipv4::MIN_HEADER_LEN);
            ip.set_tos(0);
            ip.set_total_len(ip_len16);
            ip.set_ident(0);
            ip.set_frag(true, false, 0);
            ip.set_ttl(DEFAULT_TTL);
            ip.set_protocol(proto);
            ip.set_src(s);
            ip.set_dst(d);
            // The header is exactly `ip_buf`, so the checksum covers only it.
            ip.fill_checksum();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = Ipv6::new_unchecked(ip_buf);
            ip.set_version_tc_flow(0, 0);
            ip.set_payload_len(ip_len16);
            ip.set_next_header(proto);
            ip.set_hop_limit(DEFAULT_TTL);
            ip.set_src(s);
            ip.set_dst(d);
        }
        _ => return Err(BuildError::FamilyMismatch),
    }
    Ok((eth_hl + ip_hl, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const MA: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MB: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const A4: [u8; 4] = [198, 19, 251, 1];
    const B4: [u8; 4] = [198, 19, 251, 2];
    const A6: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x19, 2, 0x51, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x19, 2, 0x51, 0, 0, 0, 0, 0, 0, 0, 2];

    /// Frames built by etherparse: {v4, v6} × {udp, tcp} × {untagged, tagged}.
    fn frames() -> Vec<(bool, u8, Option<u16>, Vec<u8>)> {
        let payload = b"the quick brown fox";
        let mut out = Vec::new();
        for v6 in [false, true] {
            for proto in [PROTO_UDP, PROTO_TCP] {
                for vlan in [None, Some(42u16)] {
                    let b = PacketBuilder::ethernet2(MA, MB);
                    let mut f = Vec::new();
                    macro_rules! finish {
                        ($ip:expr) => {
                            if proto == PROTO_UDP {
                                $ip.udp(5000, 6000).write(&mut f, payload).unwrap()
                            } else {
                                $ip.tcp(5000, 6000, 1234, 65535)
                                    .ack(99)
                                    .psh()
                                    .write(&mut f, payload)
                                    .unwrap()
                            }
                        };
                    }
                    match (v6, vlan) {
                        (false, None) => finish!(b.ipv4(A4, B4, 64)),
                        (true, None) => finish!(b.ipv6(A6, B6, 64)),
                        (false, Some(v)) => {
                            finish!(b.single_vlan(v.try_into().unwrap()).ipv4(A4, B4, 64))
                        }
                        (true, Some(v)) => {
                            finish!(b.single_vlan(v.try_into().unwrap()).ipv6(A6, B6, 64))
                        }
                    }
                    out.push((v6, proto, vlan, f));
                }
            }
        }
        out
    }

    fn sa(v6: bool, port: u16, a: bool) -> SocketAddr {
        let ip: IpAddr = match (v6, a) {
            (false, true) => Ipv4Addr::from(A4).into(),
            (false, false) => Ipv4Addr::from(B4).into(),
            (true, true) => Ipv6Addr::from(A6).into(),
            (true, false) => Ipv6Addr::from(B6).into(),
        };
        SocketAddr::new(ip, port)
    }

    #[test]
    fn parses_etherparse_frames() {
        for (v6, proto, vlan, f) in frames() {
            let p = parse(&f).unwrap_or_else(|e| panic!("{v6} {proto} {vlan:?}: {e}"));
            assert_eq!(p.vlan, vlan);
            assert_eq!(p.src_mac, MA);
            assert_eq!(p.dst_mac, MB);
            assert_eq!(p.proto, proto);
            assert_eq!(p.src(), sa(v6, 5000, true));
            assert_eq!(p.dst(), sa(v6, 6000, false));
            assert_eq!(p.payload, b"the quick brown fox");
            if proto == PROTO_TCP {
                let t = p.tcp().unwrap();
                assert_eq!((t.seq(), t.ack(), t.window()), (1234, 99, 65535));
                assert_eq!(p.l4.len(), 20);
            } else {
                assert!(p.tcp().is_none());
                assert_eq!(p.l4.len(), 8);
            }
        }
    }

    #[test]
    fn in_place_headers_equal_build_ip() {
        // The in-place TX path writes the segment first and the headers in front of it; the
        // frame must be byte for byte what build_ip makes from the same segment.
        for (v6, proto, vlan, f) in frames() {
            if vlan.is_some() {
                continue;
            }
            let p = parse(&f).unwrap();
            let l4_at = f.len() - p.l4.len() - p.payload.len();
            let l4 = &f[l4_at..];
            let (src, dst) = (sa(v6, 5000, true).ip(), sa(v6, 6000, false).ip());
            let mut want = vec![0u8; 2048];
            let n = build_ip(&mut want, MA, MB, None, src, dst, proto, l4).unwrap();
            let mut buf = vec![0xa5u8; 2048];
            buf[L4_IN_PLACE_AT..L4_IN_PLACE_AT + l4.len()].copy_from_slice(l4);
            let range =
                wrap_l4_in_place(&mut buf, L4_IN_PLACE_AT, MA, MB, src, dst, proto, l4.len())
                    .unwrap();
            assert_eq!(range.end, L4_IN_PLACE_AT + l4.len());
            assert_eq!(&buf[range], &want[..n], "v6 {v6} proto {proto}");
        }
        // No room in front of the segment is an error, not a panic.
        let mut buf = [0u8; 64];
        let (s4, d4) = (sa(false, 1, true).ip(), sa(false, 2, false).ip());
        assert!(wrap_l4_in_place(&mut buf, 10, MA, MB, s4, d4, PROTO_TCP, 20).is_err());
        assert!(wrap_l4_in_place(&mut buf, 54, MA, MB, s4, d4, PROTO_TCP, 200).is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (_, _, _, f) in frames() {
            for cut in 0..f.len() {
                assert!(parse(&f[..cut]).is_err(), "cut {cut} of {}", f.len());
            }
        }
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        for (_, _, _, mut f) in frames() {
            f.extend_from_slice(&[0xee; 16]);
            assert_eq!(parse(&f).unwrap().payload, b"the quick brown fox");
        }
    }

    #[test]
    fn any_flipped_bit_is_detected_or_harmless() {
        // Flipping one bit anywhere in the IP header or the transport segment must be rejected
        // (checksums cover everything there) unless it only changes something unchecked: the
        // IPv6 traffic class / flow label / hop limit, or the IPv4 TTL... which the IPv4 header
        // checksum covers too.
        for (v6, _, vlan, f) in frames() {
            let l3_start = if vlan.is_some() { 18 } else { 14 };
            for byte in l3_start..f.len() {
                for bit in 0..8 {
                    let mut g = f.clone();
                    g[byte] ^= 1 << bit;
                    let r = parse(&g);
                    let rel = byte - l3_start;
                    let unchecked = v6 && (rel < 4 && !(rel == 0 && bit >= 4) || rel == 7);
                    if unchecked {
                        assert!(r.is_ok(), "v6 byte {rel} bit {bit}: {r:?}");
                    } else {
                        assert!(r.is_err(), "v6={v6} byte {rel} bit {bit}");
                    }
                }
            }
        }
    }

    #[test]
    fn partial_checksums_are_accepted_only_when_asked() {
        for (v6, proto, vlan, f) in frames() {
            let l3 = if vlan.is_some() { 18 } else { 14 };
            let l4 = l3 + if v6 { 40 } else { 20 };
            let ck = l4 + if proto == PROTO_UDP { 6 } else { 16 };
            let seg_len = f.len() - l4;
            let pseudo = if v6 {
                checksum::pseudo_v6(A6.into(), B6.into(), proto, seg_len as u32)
            } else {
                checksum::pseudo_v4(A4.into(), B4.into(), proto, seg_len as u16)
            };
            // What a Linux sender with checksum offload leaves in the field: the folded
            // pseudo-header sum, not complemented.
            let mut g = f.clone();
            g[ck..ck + 2].copy_from_slice(&checksum::fold(u64::from(pseudo)).to_be_bytes());
            assert_eq!(parse(&g), Err(ParseError::BadChecksum));
            let p = parse_with(&g, Checksums::AcceptPartial).expect("partial accepted");
            assert!(p.partial_checksum);
            assert_eq!(p.payload, b"the quick brown fox");
            // A complete checksum is not "partial"; anything else is still refused.
            assert!(
                !parse_with(&f, Checksums::AcceptPartial)
                    .unwrap()
                    .partial_checksum
            );
            g[ck + 1] ^= 1;
            assert_eq!(
                parse_with(&g, Checksums::AcceptPartial),
                Err(ParseError::BadChecksum)
            );
        }
    }

    #[test]
    fn bad_checksums() {
        for (v6, proto, vlan, f) in frames() {
            let l3 = if vlan.is_some() { 18 } else { 14 };
            // Payload bit.
            let mut g = f.clone();
            *g.last_mut().unwrap() ^= 0x80;
            assert_eq!(parse(&g), Err(ParseError::BadChecksum));
            // Checksum field itself.
            let l4 = l3 + if v6 { 40 } else { 20 };
            let ck = l4 + if proto == PROTO_UDP { 6 } else { 16 };
            let mut g = f.clone();
            g[ck] ^= 1;
            assert_eq!(parse(&g), Err(ParseError::BadChecksum));
            if !v6 {
                let mut g = f.clone();
                g[l3 + 10] ^= 1; // IPv4 header checksum
                assert_eq!(parse(&g), Err(ParseError::BadChecksum));
            }
            if proto == PROTO_UDP {
                let mut g = f.clone();
                g[ck] = 0;
                g[ck + 1] = 0;
                if v6 {
                    assert_eq!(parse(&g), Err(ParseError::BadChecksum));
                } else {
                    assert!(parse(&g).is_ok(), "zero UDP checksum over IPv4 means none");
                }
            }
        }
    }

    #[test]
    fn malformations_have_their_own_errors() {
        let (_, _, _, f) = frames().swap_remove(0); // v4 udp untagged
        let mut g = f.clone();
        g[12] = 0x08;
        g[13] = 0x06; // ARP
        assert_eq!(parse(&g), Err(ParseError::UnsupportedEtherType(0x0806)));

        let refill = |g: &mut Vec<u8>| {
            let mut ip = Ipv4::new_unchecked(&mut g[14..34]);
            ip.fill_checksum();
        };
        let mut g = f.clone();
        g[14 + 9] = 1; // ICMP
        refill(&mut g);
        assert_eq!(parse(&g), Err(ParseError::UnsupportedProtocol(1)));

        let mut g = f.clone();
        g[14 + 6] = 0x20; // MF
        refill(&mut g);
        assert_eq!(parse(&g), Err(ParseError::Fragment));

        let mut g = f.clone();
        g[14 + 2] = 0xff; // total length beyond the buffer
        refill(&mut g);
        assert!(matches!(parse(&g), Err(ParseError::BadTotalLength(_))));

        let mut g = f.clone();
        g[14 + 20 + 5] = 4; // UDP length 4
        assert_eq!(parse(&g), Err(ParseError::BadUdpLength(4)));

        // IPv6 with a hop-by-hop extension header is left to the kernel.
        let (_, _, _, f6) = frames().swap_remove(4); // v6 udp untagged
        let mut g = f6.clone();
        g[14 + 6] = 0;
        assert_eq!(parse(&g), Err(ParseError::UnsupportedProtocol(0)));

        // TCP data offset beyond the segment.
        let (_, _, _, ft) = frames().swap_remove(2); // v4 tcp untagged
        let mut g = ft.clone();
        g[14 + 20 + 12] = 0xf0;
        assert_eq!(parse(&g), Err(ParseError::BadDataOffset(15)));
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let fs = frames();
        for _ in 0..50_000 {
            let r = next();
            let mut g = fs[(r % fs.len() as u64) as usize].3.clone();
            for _ in 0..(r >> 8) % 4 + 1 {
                let r = next();
                let i = (r as usize) % g.len();
                g[i] = (r >> 32) as u8;
            }
            let cut = (next() as usize) % (g.len() + 1);
            let _ = parse(&g[..cut]);
            let _ = parse(&g);
        }
    }

    #[test]
    fn build_matches_etherparse_and_parses_back() {
        let payload = b"the quick brown fox";
        for (v6, proto, vlan, want) in frames() {
            if proto != PROTO_UDP {
                continue;
            }
            let mut buf = [0u8; 256];
            let n = build_udp(
                &mut buf,
                MA,
                MB,
                vlan,
                sa(v6, 5000, true),
                sa(v6, 6000, false),
                payload,
            )
            .unwrap();
            assert_eq!(&buf[..n], &want[..], "v6={v6} vlan={vlan:?}");
            assert_eq!(n, udp_header_overhead(v6, vlan.is_some()) + payload.len());
            let p = parse(&buf[..n]).unwrap();
            assert_eq!(p.payload, payload);
        }
    }

    #[test]
    fn build_errors() {
        let mut buf = [0u8; 64];
        let s4 = sa(false, 1, true);
        let d4 = sa(false, 2, false);
        let d6 = sa(true, 2, false);
        assert_eq!(
            build_udp(&mut buf, MA, MB, None, s4, d6, b""),
            Err(BuildError::FamilyMismatch)
        );
        assert_eq!(
            build_udp(&mut buf, MA, MB, Some(4096), s4, d4, b""),
            Err(BuildError::InvalidVlan(4096))
        );
        // Exactly fits: 14 + 20 + 8 + 22 = 64.
        assert_eq!(build_udp(&mut buf, MA, MB, None, s4, d4, &[7; 22]), Ok(64));
        assert_eq!(
            build_udp(&mut buf, MA, MB, None, s4, d4, &[7; 23]),
            Err(BuildError::TooLong)
        );
        let mut big = vec![0u8; 70_000];
        let p = vec![0u8; 65_535 - 28 + 1];
        assert_eq!(
            build_udp(&mut big, MA, MB, None, s4, d4, &p),
            Err(BuildError::TooLong)
        );
        // Largest IPv4 datagram and an empty payload both work and parse back.
        let p = vec![0xa5u8; 65_535 - 28];
        let n = build_udp(&mut big, MA, MB, None, s4, d4, &p).unwrap();
        assert_eq!(parse(&big[..n]).unwrap().payload.len(), p.len());
        let n = build_udp(&mut big, MA, MB, Some(7), d6, d6, b"").unwrap();
        let parsed = parse(&big[..n]).unwrap();
        assert_eq!(parsed.vlan, Some(7));
        assert!(parsed.payload.is_empty());
    }
}
