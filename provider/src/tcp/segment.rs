//! Segments: the parsed form of an inbound segment, and the writer of outbound ones.

use std::net::{IpAddr, SocketAddr};

use super::options::TcpOptions;
use super::seq::SeqNum;
use crate::net::PROTO_TCP;
use crate::net::checksum::{self, pseudo_v4, pseudo_v6};
use crate::net::tcp::{MIN_HEADER_LEN, Tcp, TcpFlags};

/// An inbound segment, parsed once.
#[derive(Clone, Copy, Debug)]
pub struct SegmentIn<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: TcpFlags,
    /// Raw (unscaled) window.
    pub window: u16,
    pub opts: TcpOptions,
    pub payload: &'a [u8],
}

impl<'a> SegmentIn<'a> {
    /// Parses a TCP header + payload; `None` if the header is truncated or its data offset is bad.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let t = Tcp::new_checked(bytes).ok()?;
        let payload = &bytes[t.header_len()..];
        Some(Self {
            src_port: t.src_port(),
            dst_port: t.dst_port(),
            seq: SeqNum(t.seq()),
            ack: SeqNum(t.ack()),
            flags: t.flags(),
            window: t.window(),
            opts: TcpOptions::parse(t.options()),
            payload,
        })
    }

    pub fn syn(&self) -> bool {
        self.flags.contains(TcpFlags::SYN)
    }
    pub fn fin(&self) -> bool {
        self.flags.contains(TcpFlags::FIN)
    }
    pub fn rst(&self) -> bool {
        self.flags.contains(TcpFlags::RST)
    }
    pub fn has_ack(&self) -> bool {
        self.flags.contains(TcpFlags::ACK)
    }

    /// No payload and neither SYN nor FIN.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SEG.LEN: payload plus one for SYN and one for FIN.
    pub fn len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.syn()) + u32::from(self.fin())
    }
}

/// The header fields of an outbound segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentOut {
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: TcpFlags,
    pub window: u16,
    pub opts: TcpOptions,
}

impl SegmentOut {
    /// Header length with options.
    pub fn header_len(&self) -> usize {
        MIN_HEADER_LEN + self.opts.encoded_len()
    }
}

/// Writes one complete segment (header, options, `payload` given as up to two slices, checksum)
/// into `buf`. Returns the segment length, or `None` if `buf` is too small or the address
/// families of `local` and `remote` differ.
pub fn write_segment(
    buf: &mut [u8],
    local: SocketAddr,
    remote: SocketAddr,
    seg: &SegmentOut,
    payload: (&[u8], &[u8]),
    checksum: SegmentChecksum,
) -> Option<usize> {
    let hlen = seg.header_len();
    let total = hlen + payload.0.len() + payload.1.len();
    let pseudo = match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => pseudo_v4(l, r, PROTO_TCP, u16::try_from(total).ok()?),
        (IpAddr::V6(l), IpAddr::V6(r)) => pseudo_v6(l, r, PROTO_TCP, u32::try_from(total).ok()?),
        _ => return None,
    };
    let out = buf.get_mut(..total)?;
    let mut t = Tcp::new_unchecked(&mut out[..]);
    t.set_src_port(local.port());
    t.set_dst_port(remote.port());
    t.set_seq(seg.seq.0);
    t.set_ack(seg.ack.0);
    t.set_header_len(hlen);
    t.set_flags(seg.flags);
    t.set_window(seg.window);
    t.set_urgent(0);
    let n = seg.opts.write(t.options_mut());
    debug_assert_eq!(n + MIN_HEADER_LEN, hlen);
    let p = t.payload_mut();
    p[..payload.0.len()].copy_from_slice(payload.0);
    p[payload.0.len()..].copy_from_slice(payload.1);
    match checksum {
        SegmentChecksum::Complete => t.fill_checksum(pseudo),
        SegmentChecksum::PseudoHeader => t.set_checksum(checksum::fold(u64::from(pseudo))),
    }
    Some(total)
}

/// How [`write_segment`] fills the checksum field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SegmentChecksum {
    /// The complete checksum.
    #[default]
    Complete,
    /// Only the pseudo-header sum, for the device to finish (TX checksum offload; Linux
    /// `CHECKSUM_PARTIAL`): the sum of the whole segment then gives the checksum.
    PseudoHeader,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_header_checksum_finished_by_the_sender_equals_the_complete_one() {
        // What a device does with a CHECKSUM_PARTIAL segment (sum everything, store the
        // complement) must give exactly the checksum written in software, v4 and v6, odd
        // and even lengths.
        for (l, r) in [
            ("10.0.0.1:1000", "10.0.0.2:80"),
            ("[fd00::1]:1000", "[fd00::2]:443"),
        ] {
            let (l, r): (SocketAddr, SocketAddr) = (l.parse().unwrap(), r.parse().unwrap());
            for payload in [&b""[..], b"x", b"hello, world", &[0xffu8; 1447]] {
                let seg = SegmentOut {
                    seq: SeqNum(0xfffffff0),
                    ack: SeqNum(9),
                    flags: TcpFlags::ACK | TcpFlags::PSH,
                    window: 65535,
                    opts: TcpOptions::default(),
                };
                let mut full = vec![0u8; 1600];
                let mut part = vec![0u8; 1600];
                let n = write_segment(
                    &mut full,
                    l,
                    r,
                    &seg,
                    (payload, b""),
                    SegmentChecksum::Complete,
                )
                .unwrap();
                let m = write_segment(
                    &mut part,
                    l,
                    r,
                    &seg,
                    (payload, b""),
                    SegmentChecksum::PseudoHeader,
                )
                .unwrap();
                assert_eq!(n, m);
                assert_ne!(
                    full[16..18],
                    part[16..18],
                    "the field differs before finishing"
                );
                checksum::finish_partial(&mut part[..m], 16);
                assert_eq!(full[..n], part[..m], "{l} {} bytes", payload.len());
            }
        }
    }

    #[test]
    fn write_then_parse() {
        let l: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let r: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let seg = SegmentOut {
            seq: SeqNum(7),
            ack: SeqNum(9),
            flags: TcpFlags::ACK | TcpFlags::PSH,
            window: 512,
            opts: TcpOptions {
                timestamps: Some((1, 2)),
                ..Default::default()
            },
        };
        let mut buf = [0u8; 100];
        let n = write_segment(
            &mut buf,
            l,
            r,
            &seg,
            (b"ab", b"cd"),
            SegmentChecksum::Complete,
        )
        .unwrap();
        assert_eq!(n, 20 + 12 + 4);
        let t = Tcp::new_checked(&buf[..n]).unwrap();
        let IpAddr::V4(li) = l.ip() else {
            unreachable!()
        };
        let IpAddr::V4(ri) = r.ip() else {
            unreachable!()
        };
        assert!(t.verify_checksum(pseudo_v4(li, ri, 6, n as u16)));
        let p = SegmentIn::parse(&buf[..n]).unwrap();
        assert_eq!(p.payload, b"abcd");
        assert_eq!(p.seq, SeqNum(7));
        assert_eq!(p.opts.timestamps, Some((1, 2)));
        assert!(
            write_segment(
                &mut buf[..30],
                l,
                r,
                &seg,
                (b"ab", b"cd"),
                SegmentChecksum::Complete
            )
            .is_none()
        );
    }
}
