//! IPv6 fixed header (RFC 8200). Extension headers are not walked: the next-header value is
//! reported as is, and anything other than TCP/UDP is left to the kernel.

use std::net::Ipv6Addr;

use super::{ParseError, be16, be32, put16, put32};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// A zero-copy view of an IPv6 packet. After [`Ipv6::new_checked`], the payload length fits the
/// buffer, so [`Ipv6::payload`] is exactly the payload (trailing padding excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv6<T> {
    /// Wraps `buf` without checks; accessors panic if it is shorter than the header or the payload
    /// length it declares. Use for building into a buffer whose length the caller has checked.
    pub const fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// Wraps `buf` after checking the fixed header is present, version 6, and
    /// 40 + payload length ≤ buffer length.
    pub fn new_checked(buf: T) -> Result<Self, ParseError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated("ipv6"));
        }
        let version = b[0] >> 4;
        if version != 6 {
            return Err(ParseError::BadVersion(version));
        }
        let plen = be16(b, 4);
        if HEADER_LEN + usize::from(plen) > b.len() {
            return Err(ParseError::BadPayloadLength(plen));
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

    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        ((be16(self.buf.as_ref(), 0) >> 4) & 0xff) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        be32(self.buf.as_ref(), 0) & 0x000f_ffff
    }

    /// Payload length.
    pub fn payload_len(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }

    /// Next header (the upper-layer protocol when there are no extension headers).
    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[6]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[7]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        addr(&self.buf.as_ref()[8..24])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        addr(&self.buf.as_ref()[24..40])
    }

    /// The payload: `payload_len` bytes after the fixed header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6<T> {
    /// Sets version 6, the traffic class and the flow label in one word.
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let v = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        put32(self.buf.as_mut(), 0, v);
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        put16(self.buf.as_mut(), 4, len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, nh: u8) {
        self.buf.as_mut()[6] = nh;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hl: u8) {
        self.buf.as_mut()[7] = hl;
    }

    /// Sets the source address.
    pub fn set_src(&mut self, a: Ipv6Addr) {
        self.buf.as_mut()[8..24].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, a: Ipv6Addr) {
        self.buf.as_mut()[24..40].copy_from_slice(&a.octets());
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buf.as_mut()[HEADER_LEN..end]
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    Ipv6Addr::from(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpNumber, Ipv6FlowLabel, Ipv6Header};

    const SRC: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x19, 2, 0x51, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x19, 2, 0x51, 0, 0, 0, 0, 0, 0, 0, 2];

    fn packet(payload: &[u8]) -> Vec<u8> {
        let h = Ipv6Header {
            traffic_class: 0xb8,
            flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
            payload_length: payload.len() as u16,
            next_header: IpNumber::UDP,
            hop_limit: 7,
            source: SRC,
            destination: DST,
        };
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parse_etherparse_packet() {
        let mut p = packet(b"xyz");
        p.extend_from_slice(&[0; 5]); // padding
        let v = Ipv6::new_checked(&p[..]).unwrap();
        assert_eq!(v.version(), 6);
        assert_eq!(v.traffic_class(), 0xb8);
        assert_eq!(v.flow_label(), 0x12345);
        assert_eq!(v.payload_len(), 3);
        assert_eq!(v.next_header(), 17);
        assert_eq!(v.hop_limit(), 7);
        assert_eq!(v.src(), Ipv6Addr::from(SRC));
        assert_eq!(v.dst(), Ipv6Addr::from(DST));
        assert_eq!(v.payload(), b"xyz");
    }

    #[test]
    fn truncation_and_malformed() {
        let p = packet(b"xyz");
        for cut in 0..p.len() {
            assert!(Ipv6::new_checked(&p[..cut]).is_err(), "cut {cut}");
        }
        let mut q = p.clone();
        q[0] = 0x45;
        assert_eq!(Ipv6::new_checked(&q[..]), Err(ParseError::BadVersion(4)));
        let mut q = p.clone();
        q[5] = 4;
        assert_eq!(
            Ipv6::new_checked(&q[..]),
            Err(ParseError::BadPayloadLength(4))
        );
    }

    #[test]
    fn build_matches_etherparse() {
        let want = packet(b"xyz");
        let mut buf = vec![0u8; want.len()];
        let mut v = Ipv6::new_unchecked(&mut buf[..]);
        v.set_version_tc_flow(0xb8, 0x12345);
        v.set_payload_len(3);
        v.set_next_header(17);
        v.set_hop_limit(7);
        v.set_src(Ipv6Addr::from(SRC));
        v.set_dst(Ipv6Addr::from(DST));
        v.payload_mut().copy_from_slice(b"xyz");
        assert_eq!(buf, want);
    }
}
