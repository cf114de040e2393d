//! The network layer (DESIGN §4): typed zero-copy header views, checksums, whole-frame parse and
//! build, and next-hop resolution through the kernel's neighbour table.
//!
//! Views (`Ethernet`, `Ipv4`, `Ipv6`, `Udp`, `Tcp`) wrap any `T: AsRef<[u8]>` in the style of
//! smoltcp's `wire` module: `new_checked` validates bounds and the header's own consistency once, after
//! which the getters cannot fail; setters need `T: AsMut<[u8]>`. [`frame::parse`] walks a whole
//! received frame and verifies every checksum; [`frame::build_udp`] writes a complete UDP frame in
//! place. ARP/ND and ICMP stay with the kernel: [`neighbour::Neighbours`] reads next-hop MACs from
//! the kernel's table and asks the kernel to resolve missing ones.

pub mod checksum;
pub mod ethernet;
pub mod ethtool;
pub mod frame;
pub mod ipv4;
pub mod ipv6;
pub mod neighbour;
pub mod rss;
pub mod tcp;
pub mod udp;

pub use ethernet::Ethernet;
pub use frame::{BuildError, L3, Parsed, build_udp, parse, udp_header_overhead};
pub use ipv4::Ipv4;
pub use ipv6::Ipv6;
pub use neighbour::{
    AttachedXdp, LinkFacts, Neighbours, ifindex, interface_addrs, interface_mac, interface_mtu,
    link_facts,
};
pub use tcp::{Tcp, TcpFlags};
pub use udp::Udp;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Why a received frame (or one header of it) was rejected. Each malformation has its own variant so
/// the engine can count them separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The buffer ends before the header (or the length it declares) does.
    #[error("truncated {0} header")]
    Truncated(&'static str),
    /// Neither IPv4 nor IPv6 (after at most one 802.1Q tag).
    #[error("unsupported ethertype {0:#06x}")]
    UnsupportedEtherType(u16),
    /// The IP version nibble does not match the ethertype.
    #[error("bad IP version {0}")]
    BadVersion(u8),
    /// IPv4 IHL below 5.
    #[error("bad IPv4 header length (IHL {0})")]
    BadHeaderLength(u8),
    /// IPv4 total length below the header length or beyond the buffer.
    #[error("bad IPv4 total length {0}")]
    BadTotalLength(u16),
    /// IPv6 payload length beyond the buffer.
    #[error("bad IPv6 payload length {0}")]
    BadPayloadLength(u16),
    /// An IPv4 fragment (MF set or non-zero offset); fragments go to the kernel.
    #[error("IPv4 fragment")]
    Fragment,
    /// Not TCP or UDP (IPv6 extension headers included).
    #[error("unsupported IP protocol {0}")]
    UnsupportedProtocol(u8),
    /// UDP length below 8 or beyond the IP payload.
    #[error("bad UDP length {0}")]
    BadUdpLength(u16),
    /// TCP data offset below 5 words or beyond the segment.
    #[error("bad TCP data offset {0}")]
    BadDataOffset(u8),
    /// An IPv4 header, UDP or TCP checksum does not verify (also: a zero UDP checksum over IPv6).
    #[error("bad checksum")]
    BadChecksum,
}

/// Reads a big-endian `u16` at `at`. Callers have checked the bounds.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian `u32` at `at`. Callers have checked the bounds.
#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
