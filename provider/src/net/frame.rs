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

/// Parses a received frame: Ethernet (one optional 802.1Q tag), IPv4 (any IHL, not a fragment) or
/// IPv6 (no extension headers), then TCP or UDP. Verifies the IPv4 header checksum and the TCP/UDP
/// checksum (a zero UDP checksum means "none" over IPv4 and is invalid over IPv6). Trailing bytes
/// beyond the IP length (Ethernet padding) are ignored. Never panics.
pub fn parse(frame: &[u8]) -> Result<Parsed<'_>, ParseError> {
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
            let ok = match l3 {
                L3::V4 { src, dst } => {
                    u.checksum() == 0
                        || u.verify_checksum(checksum::pseudo_v4(src, dst, PROTO_UDP, len))
                }
                L3::V6 { src, dst } => {
                    u.checksum() != 0
                        && u.verify_checksum(checksum::pseudo_v6(
                            src,
                            dst,
                            PROTO_UDP,
                            u32::from(len),
                        ))
                }
            };
            if !ok {
                return Err(ParseError::BadChecksum);
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
                return Err(ParseError::BadChecksum);
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
    if let Some(v) = vlan
        && v > 0x0fff
    {
        return Err(BuildError::InvalidVlan(v));
    }
    let v6 = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(BuildError::FamilyMismatch),
    };
    let udp_len = udp::HEADER_LEN + payload.len();
    let ip_hl = if v6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::MIN_HEADER_LEN
    };
    // IPv4 total length and IPv6 payload length (no jumbograms) are 16-bit.
    let ip_len_field = if v6 { udp_len } else { ip_hl + udp_len };
    let udp_len16 = u16::try_from(udp_len).map_err(|_| BuildError::TooLong)?;
    let ip_len16 = u16::try_from(ip_len_field).map_err(|_| BuildError::TooLong)?;
    let eth_hl = ethernet::HEADER_LEN
        + if vlan.is_some() {
            ethernet::VLAN_TAG_LEN
        } else {
            0
        };
    let total = eth_hl + ip_hl + udp_len;
    let frame = buf.get_mut(..total).ok_or(BuildError::TooLong)?;

    let mut eth = Ethernet::new_unchecked(&mut frame[..]);
    eth.set_dst(dst_mac);
    eth.set_src(src_mac);
    eth.set_vlan_and_ethertype(vlan, if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 });

    let (ip_buf, udp_buf) = frame[eth_hl..].split_at_mut(ip_hl);
    let mut u = Udp::new_unchecked(udp_buf);
    u.set_src_port(src.port());
    u.set_dst_port(dst.port());
    u.set_len(udp_len16);
    u.payload_mut().copy_from_slice(payload);

    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4::new_unchecked(ip_buf);
            ip.set_version_and_header_len(ipv4::MIN_HEADER_LEN);
            ip.set_tos(0);
            ip.set_total_len(ip_len16);
            ip.set_ident(0);
            ip.set_frag(true, false, 0);
            ip.set_ttl(DEFAULT_TTL);
            ip.set_protocol(PROTO_UDP);
            ip.set_src(s);
            ip.set_dst(d);
            // The header is exactly `ip_buf`, so the checksum covers only it.
            ip.fill_checksum();
            u.fill_checksum(checksum::pseudo_v4(s, d, PROTO_UDP, udp_len16));
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = Ipv6::new_unchecked(ip_buf);
            ip.set_version_tc_flow(0, 0);
            ip.set_payload_len(ip_len16);
            ip.set_next_header(PROTO_UDP);
            ip.set_hop_limit(DEFAULT_TTL);
            ip.set_src(s);
            ip.set_dst(d);
            u.fill_checksum(checksum::pseudo_v6(s, d, PROTO_UDP, u32::from(udp_len16)));
        }
        _ => return Err(BuildError::FamilyMismatch),
    }
    Ok(total)
}
