//! Ethernet II header with at most one 802.1Q tag.
//!
//! ```text
//! 0      6      12          14 (untagged)
//! | dst  | src  | ethertype | payload
//! | dst  | src  | 0x8100 | TCI | ethertype | payload     (tagged: 18-byte header)
//! ```

use super::{ParseError, be16, put16};

/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Ethertype (TPID) of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// Length of an untagged header.
pub const HEADER_LEN: usize = 14;
/// Length of an 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;

/// A zero-copy view of an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ethernet<T> {
    /// Wraps `buf` without checks; accessors panic if it is shorter than the header. Use for
    /// building into a buffer whose length the caller has checked.
    pub const fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// Wraps `buf` after checking that the whole header (with its tag, if any) is present.
    pub fn new_checked(buf: T) -> Result<Self, ParseError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated("ethernet"));
        }
        if be16(b, 12) == ETHERTYPE_VLAN && b.len() < HEADER_LEN + VLAN_TAG_LEN {
            return Err(ParseError::Truncated("802.1Q"));
        }
        Ok(Self { buf })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }

    /// Destination MAC.
    pub fn dst(&self) -> [u8; 6] {
        mac(&self.buf.as_ref()[0..6])
    }

    /// Source MAC.
    pub fn src(&self) -> [u8; 6] {
        mac(&self.buf.as_ref()[6..12])
    }

    /// Whether an 802.1Q tag follows the addresses.
    pub fn is_tagged(&self) -> bool {
        be16(self.buf.as_ref(), 12) == ETHERTYPE_VLAN
    }

    /// The whole tag control information (PCP, DEI, VID), if tagged.
    pub fn vlan_tci(&self) -> Option<u16> {
        self.is_tagged().then(|| be16(self.buf.as_ref(), 14))
    }

    /// The 12-bit VLAN id, if tagged.
    pub fn vlan_id(&self) -> Option<u16> {
        self.vlan_tci().map(|tci| tci & 0x0fff)
    }

    /// Header length: 14, or 18 with a tag.
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            HEADER_LEN + VLAN_TAG_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The ethertype of the payload (after the tag, if any).
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), self.header_len() - 2)
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ethernet<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[0..6].copy_from_slice(&mac);
    }

    /// Sets the source MAC.
    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[6..12].copy_from_slice(&mac);
    }

    /// Lays out the tag (VID `vlan & 0x0fff`, PCP 0) or no tag, then the ethertype. This decides the
    /// header length, so it is one call; the buffer must hold 18 bytes when tagging.
    pub fn set_vlan_and_ethertype(&mut self, vlan: Option<u16>, ethertype: u16) {
        let b = self.buf.as_mut();
        match vlan {
            Some(vid) => {
                put16(b, 12, ETHERTYPE_VLAN);
                put16(b, 14, vid & 0x0fff);
                put16(b, 16, ethertype);
            }
            None => put16(b, 12, ethertype),
        }
    }

    /// Everything after the header, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buf.as_mut()[at..]
    }
}

fn mac(b: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(b);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    fn frame(vlan: Option<u16>) -> Vec<u8> {
        let payload = [1u8, 2, 3, 4];
        let mut out = Vec::new();
        match vlan {
            Some(v) => PacketBuilder::ethernet2(A, B)
                .single_vlan(v.try_into().unwrap())
                .ipv4([1, 2, 3, 4], [5, 6, 7, 8], 64)
                .udp(1, 2)
                .write(&mut out, &payload)
                .unwrap(),
            None => PacketBuilder::ethernet2(A, B)
                .ipv4([1, 2, 3, 4], [5, 6, 7, 8], 64)
                .udp(1, 2)
                .write(&mut out, &payload)
                .unwrap(),
        }
        out
    }

    #[test]
    fn untagged() {
        let f = frame(None);
        let e = Ethernet::new_checked(&f[..]).unwrap();
        assert_eq!(e.src(), A);
        assert_eq!(e.dst(), B);
        assert_eq!(e.vlan_id(), None);
        assert_eq!(e.header_len(), 14);
        assert_eq!(e.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(e.payload().len(), f.len() - 14);
    }

    #[test]
    fn tagged() {
        let f = frame(Some(100));
        let e = Ethernet::new_checked(&f[..]).unwrap();
        assert_eq!(e.vlan_id(), Some(100));
        assert_eq!(e.header_len(), 18);
        assert_eq!(e.ethertype(), ETHERTYPE_IPV4);
        // Truncations: every prefix shorter than the header is refused.
        for n in 0..18 {
            assert!(Ethernet::new_checked(&f[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn build_matches_etherparse() {
        for vlan in [None, Some(4095u16)] {
            let want = frame(vlan);
            let mut buf = vec![0u8; want.len()];
            let hl = if vlan.is_some() { 18 } else { 14 };
            buf[hl..].copy_from_slice(&want[hl..]);
            let mut e = Ethernet::new_unchecked(&mut buf[..]);
            e.set_src(A);
            e.set_dst(B);
            e.set_vlan_and_ethertype(vlan, ETHERTYPE_IPV4);
            assert_eq!(buf, want);
        }
    }
}
