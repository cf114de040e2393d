//! The `steer` program's verdicts on crafted frames, run in the kernel with BPF_PROG_TEST_RUN
//! (DESIGN §2). Needs root (loading BPF programs); run by `cargo xtask test`.
use etherparse::{PacketBuilder, VlanId};
use provider::xdp::{Prog, Steering, VerdictCounters, XDP_PASS};
use provider_common::{PROTO_TCP, PROTO_UDP, SteerKey};

const OURS_V4: [u8; 4] = [198, 18, 0, 1];
const PEER_V4: [u8; 4] = [198, 18, 0, 2];
const OURS_V6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const PEER_V6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const PORT: u16 = 7777;
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn udp_v4(dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(PEER_V4, OURS_V4, 64)
        .udp(40000, dst_port);
    let mut out = Vec::new();
    b.write(&mut out, b"hello steer").unwrap();
    out
}

fn tcp_v4(dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(PEER_V4, OURS_V4, 64)
        .tcp(40000, dst_port, 1, 65535)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn udp_v6(dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(PEER_V6, OURS_V6, 64)
        .udp(40000, dst_port);
    let mut out = Vec::new();
    b.write(&mut out, b"hello steer v6").unwrap();
    out
}

fn tcp_v6(dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(PEER_V6, OURS_V6, 64)
        .tcp(40000, dst_port, 1, 65535)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn udp_v4_vlan(dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .single_vlan(VlanId::try_new(42).unwrap())
        .ipv4(PEER_V4, OURS_V4, 64)
        .udp(40000, dst_port);
    let mut out = Vec::new();
    b.write(&mut out, b"tagged").unwrap();
    out
}

fn loaded() -> Steering {
    let mut s = Steering::load().expect("load steer (are we root?)");
    for key in [
        SteerKey::v4(PROTO_UDP, OURS_V4, PORT),
        SteerKey::v4(PROTO_TCP, OURS_V4, PORT),
        SteerKey::v6(PROTO_UDP, OURS_V6, PORT),
        // TCP v6 steered through the wildcard entry.
        SteerKey::v6(PROTO_TCP, [0; 16], PORT),
    ] {
        s.steer_add(key).unwrap();
    }
    s
}

/// Run one frame; return the action and which counters moved.
fn verdict(s: &Steering, frame: &[u8]) -> (u32, VerdictCounters) {
    let before = s.stats().unwrap();
    let out = s.test_run(Prog::Steer, frame, 1).unwrap();
    let after = s.stats().unwrap();
    (out.action, after.since(&before))
}

fn ours() -> VerdictCounters {
    // No AF_XDP socket is registered in these tests, so a STEER hit falls back to the kernel and
    // is counted as `redirect_failed` (the no-black-hole path); lab tests cover the real redirect.
    VerdictCounters {
        redirect_failed: 1,
        ..Default::default()
    }
}

#[test]
#[ignore = "needs root (BPF)"]
fn steered_frames_hit_steer_entries() {
    let s = loaded();
    for (name, frame) in [
        ("udp v4", udp_v4(PORT)),
        ("tcp v4", tcp_v4(PORT)),
        ("udp v6", udp_v6(PORT)),
        ("tcp v6 wildcard", tcp_v6(PORT)),
        ("udp v4 802.1Q", udp_v4_vlan(PORT)),
    ] {
        let (action, moved) = verdict(&s, &frame);
        assert_eq!(
            action, XDP_PASS,
            "{name}: no XSK registered → fallback to the kernel"
        );
        assert_eq!(moved, ours(), "{name}");
    }
}

#[test]
#[ignore = "needs root (BPF)"]
fn not_ours_passes() {
    let s = loaded();
    let not_ours = VerdictCounters {
        passed_not_ours: 1,
        ..Default::default()
    };
    for (name, frame) in [
        ("udp v4 other port", udp_v4(PORT + 1)),
        ("tcp v4 other port", tcp_v4(PORT + 1)),
        ("udp v6 other port", udp_v6(PORT + 1)),
        ("arp", arp()),
    ] {
        let (action, moved) = verdict(&s, &frame);
        assert_eq!(action, XDP_PASS, "{name}");
        assert_eq!(moved, not_ours, "{name}");
    }
    // Same port, other local address, exact entry only: not ours.
    let mut other = udp_v4(PORT);
    other[14 + 16..14 + 20].copy_from_slice(&[198, 18, 0, 9]);
    assert_eq!(verdict(&s, &other), (XDP_PASS, not_ours));
    // Removing the entry stops steering.
    let mut s = s;
    s.steer_remove(&SteerKey::v4(PROTO_UDP, OURS_V4, PORT))
        .unwrap();
    assert_eq!(verdict(&s, &udp_v4(PORT)), (XDP_PASS, not_ours));
    // Removing twice is fine.
    s.steer_remove(&SteerKey::v4(PROTO_UDP, OURS_V4, PORT))
        .unwrap();
}

fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&PEER_V4);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&OURS_V4);
    f
}

#[test]
#[ignore = "needs root (BPF)"]
fn ipv4_fragments_pass() {
    let s = loaded();
    let frag = VerdictCounters {
        passed_fragment: 1,
        ..Default::default()
    };
    // More-fragments set.
    let mut first = udp_v4(PORT);
    first[14 + 6] = 0x20;
    assert_eq!(verdict(&s, &first), (XDP_PASS, frag));
    // Non-zero offset (a later fragment).
    let mut later = udp_v4(PORT);
    later[14 + 6] = 0x00;
    later[14 + 7] = 0x10;
    assert_eq!(verdict(&s, &later), (XDP_PASS, frag));
}

#[test]
#[ignore = "needs root (BPF)"]
fn ipv6_extension_header_passes() {
    let s = loaded();
    let plain = udp_v6(PORT);
    // Insert an 8-byte hop-by-hop header (next header = UDP, PadN) between IPv6 and UDP.
    let mut f = plain[..54].to_vec();
    f[14 + 6] = 0; // next header: hop-by-hop
    let payload_len = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&payload_len.to_be_bytes());
    f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&plain[54..]);
    let ext = VerdictCounters {
        passed_ext_header: 1,
        ..Default::default()
    };
    assert_eq!(verdict(&s, &f), (XDP_PASS, ext));
}

#[test]
#[ignore = "needs root (BPF)"]
fn every_truncation_is_malformed_never_steered() {
    let s = loaded();
    let malformed = VerdictCounters {
        passed_malformed: 1,
        ..Default::default()
    };
    for (name, frame) in [
        ("udp v4", udp_v4(PORT)),
        ("tcp v4", tcp_v4(PORT)),
        ("udp v6", udp_v6(PORT)),
        ("tcp v6", tcp_v6(PORT)),
        ("udp v4 802.1Q", udp_v4_vlan(PORT)),
    ] {
        for cut in 0..frame.len() {
            let short = &frame[..cut];
            if cut < 14 {
                // The kernel refuses XDP test input shorter than an Ethernet header before the
                // program can see it; on a real link such a frame never reaches XDP either.
                assert!(
                    s.test_run(Prog::Steer, short, 1).is_err(),
                    "{name} cut {cut}"
                );
                continue;
            }
            let (action, moved) = verdict(&s, short);
            assert_eq!(action, XDP_PASS, "{name} cut at {cut}");
            assert_eq!(moved, malformed, "{name} cut at {cut}");
        }
    }
}

#[test]
#[ignore = "needs root (BPF)"]
fn inconsistent_headers_are_malformed() {
    let s = loaded();
    let malformed = VerdictCounters {
        passed_malformed: 1,
        ..Default::default()
    };
    // IHL below 5.
    let mut f = udp_v4(PORT);
    f[14] = 0x44;
    assert_eq!(verdict(&s, &f), (XDP_PASS, malformed));
    // UDP length larger than the IP payload.
    let mut f = udp_v4(PORT);
    f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&1000u16.to_be_bytes());
    assert_eq!(verdict(&s, &f), (XDP_PASS, malformed));
    // TCP data offset below 5.
    let mut f = tcp_v4(PORT);
    f[14 + 20 + 12] = 0x40;
    assert_eq!(verdict(&s, &f), (XDP_PASS, malformed));
    // Wrong IP version under an IPv4 ethertype.
    let mut f = udp_v4(PORT);
    f[14] = 0x65;
    assert_eq!(verdict(&s, &f), (XDP_PASS, malformed));
}

#[test]
#[ignore = "needs root (BPF)"]
fn pass_program_passes() {
    let s = loaded();
    assert_eq!(
        s.test_run(Prog::Pass, &udp_v4(PORT), 10).unwrap().action,
        XDP_PASS
    );
}

/// With an AF_XDP socket registered for queue 0, a STEER hit is a real redirect.
#[test]
#[ignore = "needs root and network namespaces"]
fn steered_frames_redirect_to_a_registered_xsk() {
    use provider::xsk::{Xsk, XskConfig};
    let lab = xtask::lab::Lab::up(&xtask::lab::LabConfig::default()).unwrap();
    let ns = lab.provider_ns_path();
    let ifname = lab.provider_if.clone();
    std::thread::spawn(move || {
        let _in_ns = xtask::lab::NsGuard::enter(&ns).unwrap();
        let ifindex = provider::net::neighbour::ifindex(&ifname).unwrap();
        let xsk = Xsk::new(ifindex, 0, &XskConfig::default()).unwrap();
        let mut s = loaded();
        s.set_xsk(0, &xsk.fd()).unwrap();
        let steered = VerdictCounters {
            steered: 1,
            ..Default::default()
        };
        for (name, frame) in [
            ("udp v4", udp_v4(PORT)),
            ("tcp v4", tcp_v4(PORT)),
            ("udp v6", udp_v6(PORT)),
            ("tcp v6 wildcard", tcp_v6(PORT)),
            ("udp v4 802.1Q", udp_v4_vlan(PORT)),
        ] {
            assert_eq!(
                verdict(&s, &frame),
                (provider::xdp::XDP_REDIRECT, steered),
                "{name}"
            );
        }
        // Not ours still passes, with the socket registered.
        let not_ours = VerdictCounters {
            passed_not_ours: 1,
            ..Default::default()
        };
        assert_eq!(verdict(&s, &udp_v4(PORT + 1)), (XDP_PASS, not_ours));
        // Unregistered again: back to the fallback.
        s.clear_xsk(0).unwrap();
        assert_eq!(verdict(&s, &udp_v4(PORT)), (XDP_PASS, ours()));
    })
    .join()
    .unwrap();
}

/// The aya-log diagnostic path loads (the verifier accepts it) and does not change verdicts.
#[test]
#[ignore = "needs root (BPF)"]
fn malformed_logging_variant_loads_and_passes() {
    let s = Steering::load_with(true).expect("load with LOG_MALFORMED=1");
    let frame = udp_v4(PORT);
    let before = s.stats().unwrap();
    let out = s.test_run(Prog::Steer, &frame[..30], 1).unwrap();
    assert_eq!(out.action, XDP_PASS);
    let moved = s.stats().unwrap().since(&before);
    assert_eq!(
        moved,
        VerdictCounters {
            passed_malformed: 1,
            ..Default::default()
        }
    );
}

/// A port with both a specific and a wildcard endpoint: any local address is ours; removing the
/// wildcard leaves only the specific address steered; removing both leaves nothing.
#[test]
#[ignore = "needs root (BPF)"]
fn wildcard_and_specific_endpoints_on_one_port() {
    let mut s = Steering::load().unwrap();
    let specific = SteerKey::v4(PROTO_UDP, OURS_V4, PORT);
    let wildcard = SteerKey::v4(PROTO_UDP, [0; 4], PORT);
    s.steer_add(specific).unwrap();
    s.steer_add(wildcard).unwrap();
    s.steer_add(wildcard).unwrap(); // idempotent
    let mut other_addr = udp_v4(PORT);
    other_addr[14 + 16..14 + 20].copy_from_slice(&[198, 18, 0, 9]);
    assert_eq!(verdict(&s, &udp_v4(PORT)), (XDP_PASS, ours()));
    assert_eq!(verdict(&s, &other_addr), (XDP_PASS, ours()));
    s.steer_remove(&wildcard).unwrap();
    let not_ours = VerdictCounters {
        passed_not_ours: 1,
        ..Default::default()
    };
    assert_eq!(verdict(&s, &udp_v4(PORT)), (XDP_PASS, ours()));
    assert_eq!(verdict(&s, &other_addr), (XDP_PASS, not_ours));
    s.steer_remove(&specific).unwrap();
    assert_eq!(verdict(&s, &udp_v4(PORT)), (XDP_PASS, not_ours));
    assert!(s.steered_keys().is_empty());
}
