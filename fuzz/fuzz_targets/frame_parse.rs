//! `provider::net::frame::parse` on arbitrary bytes.
//!
//! The first input byte selects the mode: even = the frame as given; odd = with the IPv4 header
//! checksum and the TCP/UDP checksum filled in first (when the headers are well-formed enough
//! for that), so that the fuzzer gets past the checksums into the transport parsing. Checked: no
//! panic, and what `parse` returns lies inside the frame and is consistent with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provider::net::checksum::{pseudo_v4, pseudo_v6};
use provider::net::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use provider::net::{Ethernet, Ipv4, Ipv6, PROTO_TCP, PROTO_UDP, Tcp, Udp, frame};
use provider::tcp::options::TcpOptions;
use provider::tcp::segment::SegmentIn;

/// Fills in the checksums a well-formed frame would carry. Never panics: every view is checked.
fn fix_checksums(buf: &mut [u8]) {
    let Ok(eth) = Ethernet::new_checked(&buf[..]) else {
        return;
    };
    let (eh, et) = (eth.header_len(), eth.ethertype());
    let ip = &mut buf[eh..];
    match et {
        ETHERTYPE_IPV4 => {
            let Ok(mut v4) = Ipv4::new_checked(&mut ip[..]) else {
                return;
            };
            v4.fill_checksum();
            let (hl, tl, proto, src, dst) = (
                v4.header_len(),
                usize::from(v4.total_len()),
                v4.protocol(),
                v4.src(),
                v4.dst(),
            );
            let Some(seg) = ip.get_mut(hl..tl) else {
                return;
            };
            let len = seg.len() as u16;
            match proto {
                PROTO_TCP => {
                    if let Ok(mut t) = Tcp::new_checked(&mut seg[..]) {
                        t.fill_checksum(pseudo_v4(src, dst, PROTO_TCP, len));
                    }
                }
                PROTO_UDP => {
                    if let Ok(mut u) = Udp::new_checked(&mut seg[..]) {
                        let ulen = u.len();
                        u.fill_checksum(pseudo_v4(src, dst, PROTO_UDP, ulen));
                    }
                }
                _ => {}
            }
        }
        ETHERTYPE_IPV6 => {
            let Ok(v6) = Ipv6::new_checked(&ip[..]) else {
                return;
            };
            let (pl, nh, src, dst) = (
                usize::from(v6.payload_len()),
                v6.next_header(),
                v6.src(),
                v6.dst(),
            );
            let Some(seg) = ip.get_mut(40..40 + pl) else {
                return;
            };
            let len = seg.len() as u32;
            match nh {
                PROTO_TCP => {
                    if let Ok(mut t) = Tcp::new_checked(&mut seg[..]) {
                        t.fill_checksum(pseudo_v6(src, dst, PROTO_TCP, len));
                    }
                }
                PROTO_UDP => {
                    if let Ok(mut u) = Udp::new_checked(&mut seg[..]) {
                        let ulen = u32::from(u.len());
                        u.fill_checksum(pseudo_v6(src, dst, PROTO_UDP, ulen));
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame_bytes)) = data.split_first() else {
        return;
    };
    let mut buf = frame_bytes.to_vec();
    if mode & 1 == 1 {
        fix_checksums(&mut buf);
    }
    let Ok(p) = frame::parse(&buf) else {
        return;
    };
    // Everything returned lies inside the frame.
    let range = buf.as_ptr_range();
    for part in [p.l4, p.payload] {
        let r = part.as_ptr_range();
        assert!(part.is_empty() || (range.start <= r.start && r.end <= range.end));
    }
    assert!(p.proto == PROTO_TCP || p.proto == PROTO_UDP);
    let _ = (p.src(), p.dst(), p.vlan, p.src_mac, p.dst_mac);
    if let Some(t) = p.tcp() {
        assert_eq!(t.header_len(), p.l4.len());
        assert_eq!((t.src_port(), t.dst_port()), (p.src_port, p.dst_port));
        let opts = TcpOptions::parse(t.options());
        assert!(opts.sacks().len() <= 4);
        // The TCP engine's own parse of the same segment agrees.
        let start = p.l4.as_ptr() as usize - buf.as_ptr() as usize;
        let seg_bytes = &buf[start..start + p.l4.len() + p.payload.len()];
        let s = SegmentIn::parse(seg_bytes).expect("engine parse of a valid segment");
        assert_eq!(s.payload, p.payload);
        assert_eq!(s.opts, opts);
    }
});
