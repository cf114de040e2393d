//! TCP header (RFC 9293 §3.1). TCP has no length field: a view covers exactly one segment, i.e. the
//! IP payload.

use std::fmt;

use super::{ParseError, be16, be32, checksum, put16, put32};

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Longest header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// The TCP control bits (the low 9 bits of bytes 12–13; NS is obsolete but kept when present).
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    /// FIN.
    pub const FIN: Self = Self(0x001);
    /// SYN.
    pub const SYN: Self = Self(0x002);
    /// RST.
    pub const RST: Self = Self(0x004);
    /// PSH.
    pub const PSH: Self = Self(0x008);
    /// ACK.
    pub const ACK: Self = Self(0x010);
    /// URG.
    pub const URG: Self = Self(0x020);
    /// ECE.
    pub const ECE: Self = Self(0x040);
    /// CWR.
    pub const CWR: Self = Self(0x080);
    /// NS (RFC 3540, historic).
    pub const NS: Self = Self(0x100);
    const MASK: u16 = 0x1ff;

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(TcpFlags, &str); 9] = [
            (TcpFlags::SYN, "SYN"),
            (TcpFlags::ACK, "ACK"),
            (TcpFlags::FIN, "FIN"),
            (TcpFlags::RST, "RST"),
            (TcpFlags::PSH, "PSH"),
            (TcpFlags::URG, "URG"),
            (TcpFlags::ECE, "ECE"),
            (TcpFlags::CWR, "CWR"),
            (TcpFlags::NS, "NS"),
        ];
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// A zero-copy view of a TCP segment. After [`Tcp::new_checked`], 20 ≤ data offset ≤ buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Tcp<T> {
    /// Wraps `buf` without checks; accessors panic if it is shorter than the header. Use for
    /// building into a buffer whose length the caller has checked.
    pub const fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// Wraps `buf` (one whole segment) after checking the fixed header is present and
    /// 5 ≤ data offset and the header with its options fits the buffer.
    pub fn new_checked(buf: T) -> Result<Self, ParseError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(ParseError::Truncated("tcp"));
        }
        let off = b[12] >> 4;
        if off < 5 || usize::from(off) * 4 > b.len() {
            return Err(ParseError::BadDataOffset(off));
        }
        Ok(Self { buf })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), 0)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buf.as_ref(), 4)
    }

    /// Acknowledgment number.
    pub fn ack(&self) -> u32 {
        be32(self.buf.as_ref(), 8)
    }

    /// Data offset in 32-bit words.
    pub fn data_offset(&self) -> u8 {
        self.buf.as_ref()[12] >> 4
    }

    /// Header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset()) * 4
    }

    /// Control bits.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(be16(self.buf.as_ref(), 12) & TcpFlags::MASK)
    }

    /// FIN set.
    pub fn fin(&self) -> bool {
        self.flags().contains(TcpFlags::FIN)
    }

    /// SYN set.
    pub fn syn(&self) -> bool {
        self.flags().contains(TcpFlags::SYN)
    }

    /// RST set.
    pub fn rst(&self) -> bool {
        self.flags().contains(TcpFlags::RST)
    }

    /// ACK set.
    pub fn ack_flag(&self) -> bool {
        self.flags().contains(TcpFlags::ACK)
    }

    /// Window (unscaled).
    pub fn window(&self) -> u16 {
        be16(self.buf.as_ref(), 14)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 16)
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        be16(self.buf.as_ref(), 18)
    }

    /// The header including options.
    pub fn header(&self) -> &[u8] {
        &self.buf.as_ref()[..self.header_len()]
    }

    /// The raw options (between the fixed header and the data).
    pub fn options(&self) -> &[u8] {
        &self.buf.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The segment data.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..]
    }

    /// Sequence space the segment occupies: data length plus one for SYN and one for FIN.
    pub fn segment_len(&self) -> usize {
        self.payload().len() + usize::from(self.syn()) + usize::from(self.fin())
    }

    /// Whether the checksum over the whole segment verifies against the pseudo-header sum `pseudo`
    /// ([`checksum::pseudo_v4`] / [`checksum::pseudo_v6`] with the segment length).
    pub fn verify_checksum(&self, pseudo: u32) -> bool {
        checksum::finish(checksum::combine(pseudo, checksum::sum(self.buf.as_ref()))) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tcp<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), 0, p);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), 2, p);
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, v: u32) {
        put32(self.buf.as_mut(), 4, v);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack(&mut self, v: u32) {
        put32(self.buf.as_mut(), 8, v);
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60), keeping the flags.
    pub fn set_header_len(&mut self, len: usize) {
        let b = self.buf.as_mut();
        b[12] = (((len / 4) as u8) << 4) | (b[12] & 0x01);
    }

    /// Sets the control bits, keeping the data offset.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        let b = self.buf.as_mut();
        let v = (u16::from(b[12] & 0xf0) << 8) | (flags.0 & TcpFlags::MASK);
        put16(b, 12, v);
    }

    /// Sets the window.
    pub fn set_window(&mut self, w: u16) {
        put16(self.buf.as_mut(), 14, w);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buf.as_mut(), 16, v);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent(&mut self, v: u16) {
        put16(self.buf.as_mut(), 18, v);
    }

    /// The options area (its size set by [`Tcp::set_header_len`]), mutable.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buf.as_mut()[MIN_HEADER_LEN..end]
    }

    /// The data, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buf.as_mut()[start..]
    }

    /// Computes and stores the checksum over the whole segment with the pseudo-header sum `pseudo`.
    pub fn fill_checksum(&mut self, pseudo: u32) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::combine(pseudo, checksum::sum(self.buf.as_ref())));
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::checksum::{pseudo_v4, pseudo_v6};
    use etherparse::{TcpHeader, TcpOptionElement};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const S: Ipv4Addr = Ipv4Addr::new(198, 19, 251, 1);
    const D: Ipv4Addr = Ipv4Addr::new(198, 19, 251, 2);

    fn header() -> TcpHeader {
        let mut h = TcpHeader::new(40000, 80, 0x0102_0304, 4096);
        h.syn = true;
        h.ack = true;
        h.acknowledgment_number = 0xa0b0_c0d0;
        h.set_options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(7),
        ])
        .unwrap();
        h
    }

    fn segment_v4(payload: &[u8]) -> Vec<u8> {
        let mut h = header();
        h.checksum = h
            .calc_checksum_ipv4_raw(S.octets(), D.octets(), payload)
            .unwrap();
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parse_etherparse_segment() {
        let s = segment_v4(b"GET /");
        let t = Tcp::new_checked(&s[..]).unwrap();
        assert_eq!(t.src_port(), 40000);
        assert_eq!(t.dst_port(), 80);
        assert_eq!(t.seq(), 0x0102_0304);
        assert_eq!(t.ack(), 0xa0b0_c0d0);
        assert_eq!(t.flags(), TcpFlags::SYN | TcpFlags::ACK);
        assert!(t.syn() && t.ack_flag() && !t.fin() && !t.rst());
        assert_eq!(t.window(), 4096);
        assert_eq!(t.data_offset(), 7);
        assert_eq!(t.options(), &[2, 4, 0x05, 0xb4, 1, 3, 3, 7]);
        assert_eq!(t.payload(), b"GET /");
        assert_eq!(t.segment_len(), 6);
        assert!(t.verify_checksum(pseudo_v4(S, D, 6, s.len() as u16)));
        assert_eq!(format!("{:?}", t.flags()), "SYN|ACK");
    }

    #[test]
    fn v6_checksum_matches_etherparse() {
        let s6 = Ipv6Addr::new(0xfd00, 0x198, 0x19, 0x251, 0, 0, 0, 1);
        let d6 = Ipv6Addr::new(0xfd00, 0x198, 0x19, 0x251, 0, 0, 0, 2);
        let mut h = header();
        h.checksum = h
            .calc_checksum_ipv6_raw(s6.octets(), d6.octets(), b"abc")
            .unwrap();
        let mut s = h.to_bytes().to_vec();
        s.extend_from_slice(b"abc");
        let t = Tcp::new_checked(&s[..]).unwrap();
        assert!(t.verify_checksum(pseudo_v6(s6, d6, 6, s.len() as u32)));
        s[25] ^= 1;
        let t = Tcp::new_checked(&s[..]).unwrap();
        assert!(!t.verify_checksum(pseudo_v6(s6, d6, 6, s.len() as u32)));
    }

    #[test]
    fn truncation_and_bad_offset() {
        let s = segment_v4(b"");
        for cut in 0..s.len() {
            assert!(Tcp::new_checked(&s[..cut]).is_err(), "cut {cut}");
        }
        let mut q = s.clone();
        q[12] = 0x40;
        assert_eq!(Tcp::new_checked(&q[..]), Err(ParseError::BadDataOffset(4)));
        let mut q = s.clone();
        q[12] = 0xf0;
        assert_eq!(Tcp::new_checked(&q[..]), Err(ParseError::BadDataOffset(15)));
    }

    #[test]
    fn build_matches_etherparse() {
        let want = segment_v4(b"GET /");
        let mut buf = vec![0u8; want.len()];
        let mut t = Tcp::new_unchecked(&mut buf[..]);
        t.set_src_port(40000);
        t.set_dst_port(80);
        t.set_seq(0x0102_0304);
        t.set_ack(0xa0b0_c0d0);
        t.set_header_len(28);
        t.set_flags(TcpFlags::SYN | TcpFlags::ACK);
        t.set_window(4096);
        t.set_urgent(0);
        t.options_mut()
            .copy_from_slice(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7]);
        t.payload_mut().copy_from_slice(b"GET /");
        t.fill_checksum(pseudo_v4(S, D, 6, want.len() as u16));
        assert_eq!(buf, want);
    }
}
