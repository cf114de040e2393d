//! UDP header (RFC 768).

use super::{ParseError, be16, checksum, put16};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// A zero-copy view of a UDP datagram. After [`Udp::new_checked`], 8 ≤ length ≤ buffer, so
/// [`Udp::payload`] is exactly the datagram's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Udp<T> {
    /// Wraps `buf` without checks; accessors panic if it is shorter than the header or the length
    /// it declares. Use for building into a buffer whose length the caller has checked.
    pub const fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// Wraps `buf` after checking the header is present and 8 ≤ length field ≤ buffer length.
    pub fn new_checked(buf: T) -> Result<Self, ParseError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated("udp"));
        }
        let len = be16(b, 4);
        if usize::from(len) < HEADER_LEN || usize::from(len) > b.len() {
            return Err(ParseError::BadUdpLength(len));
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

    /// Length field (header + payload).
    pub fn len(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// Checksum field (0 over IPv4 means "not computed").
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }

    /// The 8-byte header.
    pub fn header(&self) -> &[u8] {
        &self.buf.as_ref()[..HEADER_LEN]
    }

    /// The payload (up to the length field).
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// Whether the checksum over the datagram (up to the length field) verifies against the
    /// pseudo-header sum `pseudo` ([`checksum::pseudo_v4`] / [`checksum::pseudo_v6`] with the UDP
    /// length). It does not special-case a zero field: that policy depends on the IP version.
    pub fn verify_checksum(&self, pseudo: u32) -> bool {
        let d = &self.buf.as_ref()[..usize::from(self.len())];
        checksum::finish(checksum::combine(pseudo, checksum::sum(d))) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Udp<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), 0, p);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        put16(self.buf.as_mut(), 2, p);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, len: u16) {
        put16(self.buf.as_mut(), 4, len);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buf.as_mut(), 6, v);
    }

    /// Computes and stores the checksum over the datagram (up to the length field) with the
    /// pseudo-header sum `pseudo`; a computed 0 is sent as 0xffff (RFC 768).
    pub fn fill_checksum(&mut self, pseudo: u32) {
        self.set_checksum(0);
        let d = &self.buf.as_ref()[..usize::from(self.len())];
        let c = checksum::finish(checksum::combine(pseudo, checksum::sum(d)));
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buf.as_mut()[HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::checksum::pseudo_v4;
    use etherparse::{IpNumber, Ipv4Header, UdpHeader};
    use std::net::Ipv4Addr;

    const S: Ipv4Addr = Ipv4Addr::new(198, 19, 251, 1);
    const D: Ipv4Addr = Ipv4Addr::new(198, 19, 251, 2);

    fn datagram(payload: &[u8]) -> Vec<u8> {
        let ip = Ipv4Header::new(
            (8 + payload.len()) as u16,
            64,
            IpNumber::UDP,
            S.octets(),
            D.octets(),
        )
        .unwrap();
        let h = UdpHeader::with_ipv4_checksum(4000, 53, &ip, payload).unwrap();
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parse_and_verify() {
        let d = datagram(b"query");
        let u = Udp::new_checked(&d[..]).unwrap();
        assert_eq!(u.src_port(), 4000);
        assert_eq!(u.dst_port(), 53);
        assert_eq!(u.len(), 13);
        assert_eq!(u.payload(), b"query");
        assert!(u.verify_checksum(pseudo_v4(S, D, 17, u.len())));
        let mut bad = d.clone();
        bad[9] ^= 0x40;
        let u = Udp::new_checked(&bad[..]).unwrap();
        assert!(!u.verify_checksum(pseudo_v4(S, D, 17, u.len())));
    }

    #[test]
    fn truncation_and_bad_length() {
        let d = datagram(b"query");
        for cut in 0..d.len() {
            assert!(Udp::new_checked(&d[..cut]).is_err(), "cut {cut}");
        }
        let mut q = d.clone();
        q[5] = 7;
        assert_eq!(Udp::new_checked(&q[..]), Err(ParseError::BadUdpLength(7)));
    }

    #[test]
    fn build_matches_etherparse() {
        for payload in [&b""[..], b"x", b"hello world"] {
            let want = datagram(payload);
            let mut buf = vec![0u8; want.len()];
            let mut u = Udp::new_unchecked(&mut buf[..]);
            u.set_src_port(4000);
            u.set_dst_port(53);
            u.set_len(want.len() as u16);
            u.payload_mut().copy_from_slice(payload);
            u.fill_checksum(pseudo_v4(S, D, 17, want.len() as u16));
            assert_eq!(buf, want);
        }
    }
}
