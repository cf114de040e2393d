//! IPv4 header (RFC 791), any IHL.

use std::net::Ipv4Addr;

use super::{ParseError, be16, checksum, put16};

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

const DF: u16 = 0x4000;
const MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A zero-copy view of an IPv4 packet. After [`Ipv4::new_checked`], `total_len` covers at least the
/// header and at most the buffer, so [`Ipv4::payload`] is exactly the datagram's payload (any trailing
/// Ethernet padding excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4<T> {
    /// Wraps `buf` without checks; accessors panic if it is shorter than the header or the lengths it
    /// declares. Use for building into a buffer whose length the caller has checked.
    pub const fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// Wraps `buf` after checking version 4, IHL ≥ 5, header within the buffer and
    /// header length ≤ total length ≤ buffer length. Fragments are accepted here; see
    /// [`Ipv4::is_fragment`]. The checksum is not verified here ([`Ipv4::verify_checksum`]).
    pub fn new_checked(buf: T) -> Result<Self, ParseError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(ParseError::Truncated("ipv4"));
        }
        let version = b[0] >> 4;
        if version != 4 {
            return Err(ParseError::BadVersion(version));
        }
        let ihl = b[0] & 0x0f;
        if ihl < 5 {
            return Err(ParseError::BadHeaderLength(ihl));
        }
        let hl = usize::from(ihl) * 4;
        if b.len() < hl {
            return Err(ParseError::Truncated("ipv4 options"));
        }
        let total = be16(b, 2);
        if usize::from(total) < hl || usize::from(total) > b.len() {
            return Err(ParseError::BadTotalLength(total));
        }
        Ok(Self { buf })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }

    /// Version nibble.
    pub fn version(&self) -> u8 {
        self.buf.as_ref()[0] >> 4
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[0] & 0x0f) * 4
    }

    /// DSCP and ECN byte.
    pub fn tos(&self) -> u8 {
        self.buf.as_ref()[1]
    }

    /// Total length (header + payload).
    pub fn total_len(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }

    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.buf.as_ref(), 6) & DF != 0
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        be16(self.buf.as_ref(), 6) & MF != 0
    }

    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buf.as_ref(), 6) & FRAG_OFFSET_MASK
    }

    /// Whether this is a fragment (MF set or offset non-zero).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[8]
    }

    /// Protocol number of the payload.
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[9]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 10)
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        let b = self.buf.as_ref();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.buf.as_ref();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }

    /// Options (between the fixed header and the payload).
    pub fn options(&self) -> &[u8] {
        &self.buf.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.buf.as_ref()[..self.header_len()]) == 0
    }

    /// The payload: from the end of the header to `total_len`.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buf.as_mut()[0] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    /// Sets the DSCP/ECN byte.
    pub fn set_tos(&mut self, tos: u8) {
        self.buf.as_mut()[1] = tos;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        put16(self.buf.as_mut(), 2, len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, id: u16) {
        put16(self.buf.as_mut(), 4, id);
    }

    /// Sets the flags and fragment offset (in 8-byte units).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = offset & FRAG_OFFSET_MASK;
        if dont_frag {
            v |= DF;
        }
        if more_frags {
            v |= MF;
        }
        put16(self.buf.as_mut(), 6, v);
    }

    /// Sets the TTL.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buf.as_mut()[8] = ttl;
    }

    /// Sets the protocol number.
    pub fn set_protocol(&mut self, proto: u8) {
        self.buf.as_mut()[9] = proto;
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buf.as_mut(), 10, v);
    }

    /// Sets the source address.
    pub fn set_src(&mut self, a: Ipv4Addr) {
        self.buf.as_mut()[12..16].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        self.buf.as_mut()[16..20].copy_from_slice(&a.octets());
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buf.as_ref()[..hl]);
        self.set_checksum(c);
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buf.as_mut()[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpNumber, Ipv4Header, Ipv4Options};

    fn packet(options: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut h = Ipv4Header::new(
            payload.len() as u16,
            33,
            IpNumber::TCP,
            [10, 0, 0, 1],
            [198, 19, 251, 2],
        )
        .unwrap();
        h.identification = 0xbeef;
        h.dont_fragment = true;
        h.options = Ipv4Options::try_from(options).unwrap();
        h.set_payload_len(payload.len()).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parse_etherparse_packet() {
        let p = packet(&[1, 1, 1, 1], b"hello");
        let v = Ipv4::new_checked(&p[..]).unwrap();
        assert_eq!(v.version(), 4);
        assert_eq!(v.header_len(), 24);
        assert_eq!(v.total_len() as usize, p.len());
        assert_eq!(v.ident(), 0xbeef);
        assert!(v.dont_frag() && !v.more_frags() && !v.is_fragment());
        assert_eq!(v.ttl(), 33);
        assert_eq!(v.protocol(), 6);
        assert_eq!(v.src(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(v.dst(), Ipv4Addr::new(198, 19, 251, 2));
        assert_eq!(v.options(), &[1, 1, 1, 1]);
        assert_eq!(v.payload(), b"hello");
        assert!(v.verify_checksum());
    }

    #[test]
    fn padding_excluded_and_truncation_refused() {
        let mut p = packet(&[], b"abc");
        let n = p.len();
        p.extend_from_slice(&[0; 10]);
        assert_eq!(Ipv4::new_checked(&p[..]).unwrap().payload(), b"abc");
        for cut in 0..n {
            assert!(Ipv4::new_checked(&p[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn malformed() {
        let p = packet(&[], b"abc");
        let mut q = p.clone();
        q[0] = 0x65;
        assert_eq!(Ipv4::new_checked(&q[..]), Err(ParseError::BadVersion(6)));
        let mut q = p.clone();
        q[0] = 0x44;
        assert_eq!(
            Ipv4::new_checked(&q[..]),
            Err(ParseError::BadHeaderLength(4))
        );
        let mut q = p.clone();
        q[3] = 10;
        assert_eq!(
            Ipv4::new_checked(&q[..]),
            Err(ParseError::BadTotalLength(10))
        );
        let mut q = p.clone();
        q[15] ^= 1;
        assert!(!Ipv4::new_checked(&q[..]).unwrap().verify_checksum());
        let mut q = p.clone();
        Ipv4::new_unchecked(&mut q[..]).set_frag(false, false, 5);
        assert!(Ipv4::new_checked(&q[..]).unwrap().is_fragment());
    }

    #[test]
    fn build_matches_etherparse() {
        let want = packet(&[], b"hello");
        let mut buf = vec![0u8; want.len()];
        let mut v = Ipv4::new_unchecked(&mut buf[..]);
        v.set_version_and_header_len(20);
        v.set_tos(0);
        v.set_total_len(want.len() as u16);
        v.set_ident(0xbeef);
        v.set_frag(true, false, 0);
        v.set_ttl(33);
        v.set_protocol(6);
        v.set_src(Ipv4Addr::new(10, 0, 0, 1));
        v.set_dst(Ipv4Addr::new(198, 19, 251, 2));
        v.payload_mut().copy_from_slice(b"hello");
        v.fill_checksum();
        assert_eq!(buf, want);
    }
}
