//! Tests of the public `Xsk` API. Ring and UMEM arithmetic is unit-tested next to the code
//! (`ring.rs`, `umem.rs`); here: configuration checks (no root) and a real TX run over a veth
//! pair between two throw-away network namespaces (root, ignored by default).
use std::io;
use std::net::Ipv4Addr;

use super::socket::validate_config;
use super::*;

#[test]
fn default_config_matches_the_contract() {
    let c = XskConfig::default();
    assert_eq!((c.frame_size, c.frame_count), (2048, 4096));
    assert_eq!(
        (c.rx_size, c.tx_size, c.fill_size, c.comp_size),
        (2048, 2048, 2048, 2048)
    );
    assert_eq!(c.mode, BindMode::Auto);
    assert!(c.need_wakeup);
    validate_config(&c).unwrap();
}

#[test]
fn bad_sizes_are_invalid_input_not_panics() {
    let base = XskConfig::default();
    let cases = [
        XskConfig {
            rx_size: 1000,
            ..base
        },
        XskConfig { tx_size: 0, ..base },
        XskConfig {
            fill_size: 3,
            ..base
        },
        XskConfig {
            comp_size: 2049,
            ..base
        },
        XskConfig {
            frame_size: 3000,
            ..base
        },
        XskConfig {
            frame_size: 1024,
            ..base
        },
        XskConfig {
            frame_count: 1,
            ..base
        },
    ];
    for cfg in cases {
        let e = validate_config(&cfg).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{cfg:?}");
        // `new` checks before touching the kernel, so this holds without root too.
        let e = Xsk::new(1, 0, &cfg).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{cfg:?}");
    }
}

#[test]
fn xsk_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Xsk>();
}

// ---- hand-built Ethernet + IPv4 + UDP frames ----

fn csum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ident: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4 header, checksum filled below.
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&ident.to_be_bytes());
    f.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    f.extend_from_slice(&[64, 17, 0, 0]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    let ip_sum = csum_fold(csum_add(0, &f[ip_start..ip_start + 20]));
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    // UDP header + payload; checksum over the pseudo-header.
    let udp_start = f.len();
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let mut sum = csum_add(0, &src.0.octets());
    sum = csum_add(sum, &dst.0.octets());
    sum += 17 + udp_len as u32;
    sum = csum_add(sum, &f[udp_start..]);
    let mut udp_sum = csum_fold(sum);
    if udp_sum == 0 {
        udp_sum = 0xffff;
    }
    f[udp_start + 6..udp_start + 8].copy_from_slice(&udp_sum.to_be_bytes());
    f
}

fn payload(i: usize) -> Vec<u8> {
    let len = 8 + (i * 37) % 1400;
    let mut p = (i as u64).to_be_bytes().to_vec();
    p.extend((0..len - 8).map(|k| ((i * 7 + k * 13) % 251) as u8));
    p
}

#[test]
fn hand_built_udp_frame_checksums_verify() {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let src = (Ipv4Addr::new(198, 19, 250, 1), 40001);
    let dst = (Ipv4Addr::new(198, 19, 250, 2), 40000);
    for i in [0usize, 1, 2, 37, 999] {
        let p = payload(i);
        let f = udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            src,
            dst,
            i as u16,
            &p,
        );
        let s = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!("not IPv4")
        };
        let iph = ip.header().to_header();
        assert_eq!(iph.header_checksum, iph.calc_header_checksum());
        let Some(TransportSlice::Udp(udp)) = &s.transport else {
            panic!("not UDP")
        };
        let uh = udp.to_header();
        assert_eq!(
            uh.checksum,
            uh.calc_checksum_ipv4(&iph, udp.payload()).unwrap()
        );
        assert_eq!(udp.payload(), &p[..]);
    }
}

// ---- the root test: TX over veth between two namespaces ----

mod lab {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::process::Command;

    pub fn run(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Two namespaces joined by a veth pair; deleted on drop (also when the test panics).
    pub struct Lab {
        pub ns_a: String,
        pub ns_b: String,
        pub if_a: String,
        pub if_b: String,
    }

    pub const ADDR_A: &str = "198.19.250.1";
    pub const ADDR_B: &str = "198.19.250.2";

    impl Lab {
        pub fn up() -> Lab {
            let pid = std::process::id();
            let lab = Lab {
                ns_a: format!("xsk-{pid}-a"),
                ns_b: format!("xsk-{pid}-b"),
                if_a: format!("xa{pid}"),
                if_b: format!("xb{pid}"),
            };
            let (a, b, ia, ib) = (&lab.ns_a, &lab.ns_b, &lab.if_a, &lab.if_b);
            run(&["ip", "netns", "add", a]);
            run(&["ip", "netns", "add", b]);
            // Created inside A with its peer directly in B: the host's interfaces are never touched.
            run(&[
                "ip", "-n", a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", b,
            ]);
            for (ns, ifc, addr) in [(a, ia, ADDR_A), (b, ib, ADDR_B)] {
                run(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    ifc,
                ]);
                run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
                run(&["ip", "-n", ns, "link", "set", ifc, "up"]);
                run(&[
                    "ip", "netns", "exec", ns, "ethtool", "-K", ifc, "tx", "off", "tso", "off",
                    "gso", "off", "gro", "off",
                ]);
            }
            // Make B's stack verify the checksums we computed instead of trusting veth.
            run(&["ip", "netns", "exec", b, "ethtool", "-K", ib, "rx", "off"]);
            lab
        }

        pub fn mac(&self, ns: &str, ifc: &str) -> [u8; 6] {
            let s = run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "cat",
                &format!("/sys/class/net/{ifc}/address"),
            ]);
            let v: Vec<u8> = s
                .split(':')
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect();
            v.try_into().unwrap()
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            for ns in [&self.ns_a, &self.ns_b] {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }

    /// Moves the calling thread (only) into the named network namespace.
    pub fn enter(ns: &str) {
        let f = File::open(format!("/var/run/netns/{ns}")).unwrap();
        // SAFETY: setns on a valid namespace fd; it affects only this thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
    }

    pub fn ifindex(name: &str) -> u32 {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: `c` is a valid NUL-terminated string.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(i, 0, "no interface {name}");
        i
    }
}

#[test]
#[ignore = "needs root and network namespaces"]
fn tx_to_kernel_udp_socket_over_veth() {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const N: usize = 1000;
    const DPORT: u16 = 40000;
    const SPORT: u16 = 40001;

    let lab = lab::Lab::up();
    let mac_a = lab.mac(&lab.ns_a, &lab.if_a);
    let mac_b = lab.mac(&lab.ns_b, &lab.if_b);
    let src = (lab::ADDR_A.parse().unwrap(), SPORT);
    let dst = (lab::ADDR_B.parse().unwrap(), DPORT);
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| udp_frame(mac_a, mac_b, src, dst, i as u16, &payload(i)))
        .collect();

    // Kernel receiver in B.
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns_b = lab.ns_b.clone();
    let receiver = std::thread::spawn(move || {
        lab::enter(&ns_b);
        let sock = UdpSocket::bind((lab::ADDR_B, DPORT)).unwrap();
        let big: libc::c_int = 16 << 20;
        // SAFETY: valid socket fd and a c_int option value of the given size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&big as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        while got.len() < N {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(
                        from,
                        (lab::ADDR_A.parse::<Ipv4Addr>().unwrap(), SPORT).into()
                    );
                    got.push(buf[..n].to_vec());
                }
                Err(_) => break, // timeout: report what arrived
            }
        }
        got
    });
    ready_rx.recv().unwrap();

    // AF_XDP sender in A.
    let ns_a = lab.ns_a.clone();
    let if_a = lab.if_a.clone();
    let sender = std::thread::spawn(move || {
        lab::enter(&ns_a);
        let ifindex = lab::ifindex(&if_a);

        // veth has no zero-copy: an explicit request fails, Auto falls back to copy.
        let e = Xsk::new(
            ifindex,
            0,
            &XskConfig {
                mode: BindMode::ZeroCopy,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");

        let cfg = XskConfig::default();
        let mut xsk = Xsk::new(ifindex, 0, &cfg).unwrap();
        assert_eq!(xsk.mode(), BindMode::Copy);
        assert_eq!((xsk.ifindex(), xsk.queue()), (ifindex, 0));
        assert_eq!(xsk.total_frames(), 4096);
        let initial_free = xsk.free_tx_frames();
        assert_eq!(initial_free, 2048);
        assert_eq!(xsk.pending_tx(), 0);

        // Pollable: TX has room, RX has nothing (no XDP program redirects to us).
        let rev = xsk.poll(libc::POLLIN | libc::POLLOUT, 0).unwrap();
        assert!(rev & libc::POLLOUT != 0, "revents {rev:#x}");
        assert_eq!(
            rev & (libc::POLLIN | libc::POLLERR | libc::POLLNVAL),
            0,
            "revents {rev:#x}"
        );
        assert_eq!(xsk.recv_batch(64, |_| panic!("unexpected RX")), 0);
        let before = xsk.statistics().unwrap();

        // Cancelled builds give the frame back.
        assert!(!xsk.send_with(100, |_| 0));
        assert!(!xsk.send(&[]));
        assert_eq!(xsk.free_tx_frames(), initial_free);

        let deadline = Instant::now() + Duration::from_secs(10);
        let mut i = 0;
        // Send in bursts of 64 so the batch path (several frames per flush) is exercised.
        while i < N {
            let burst_end = (i + 64).min(N);
            while i < burst_end && xsk.send(&frames[i]) {
                i += 1;
            }
            xsk.flush().unwrap();
            xsk.reap_completions();
            assert!(Instant::now() < deadline, "TX stuck at {i}");
            if i < N && xsk.free_tx_frames() == 0 {
                xsk.poll(libc::POLLOUT, 10).unwrap();
            }
        }
        while xsk.pending_tx() > 0 {
            xsk.flush().unwrap();
            xsk.reap_completions();
            assert!(
                Instant::now() < deadline,
                "{} frames never completed",
                xsk.pending_tx()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(xsk.pending_tx(), 0);
        assert_eq!(xsk.free_tx_frames(), initial_free);
        let after = xsk.statistics().unwrap();
        assert_eq!(after.tx_invalid_descs, before.tx_invalid_descs, "{after:?}");
        eprintln!("xsk statistics after TX: {after:?}");
        drop(xsk);

        // Rebinding the same queue right after close works (EBUSY is retried).
        let again = Xsk::new(
            ifindex,
            0,
            &XskConfig {
                mode: BindMode::Copy,
                ..cfg
            },
        )
        .unwrap();
        assert_eq!(again.mode(), BindMode::Copy);
    });
    let send_result = sender.join();
    let got = receiver.join().unwrap();
    send_result.unwrap();

    assert_eq!(
        got.len(),
        N,
        "kernel socket received {} of {N} datagrams",
        got.len()
    );
    let mut seen = vec![false; N];
    for d in &got {
        let i = u64::from_be_bytes(d[..8].try_into().unwrap()) as usize;
        assert!(i < N && !seen[i], "bad or duplicate datagram {i}");
        seen[i] = true;
        assert_eq!(d, &payload(i), "datagram {i} differs");
    }
    drop(lab);
}

/// A minimal XDP program loaded with raw `bpf(2)` calls, test-only: every frame on the interface
/// goes to `XSKMAP[rx_queue_index]` (XDP_PASS if no socket there). The real steering program
/// lives in `provider-ebpf`; this only gives the RX path of `Xsk` something to receive.
mod redirect_all {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<OwnedFd> {
        // SAFETY: `attr` is a zero-padded 128-byte bpf_attr; every pointer stored in it points to
        // memory that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of_val(attr),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: these commands return a new fd owned by the caller.
        Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
    }

    fn pair(lo: u32, hi: u32) -> u64 {
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        u64::from(code)
            | (u64::from(dst | (src << 4)) << 8)
            | (u64::from(off as u16) << 16)
            | (u64::from(imm as u32) << 32)
    }

    /// Keeps the map and the program attached while alive; closing the link detaches.
    pub struct Attached {
        map: OwnedFd,
        _prog: OwnedFd,
        _link: OwnedFd,
    }

    impl Attached {
        pub fn new(ifindex: u32) -> io::Result<Attached> {
            // BPF_MAP_CREATE: XSKMAP (17), key 4, value 4, 1 entry.
            let mut a = [0u64; 16];
            a[0] = pair(17, 4);
            a[1] = pair(4, 1);
            let map = bpf(0, &mut a)?;
            let fd = map.as_raw_fd();
            let prog = [
                insn(0x61, 2, 1, 16, 0), // r2 = ctx->rx_queue_index
                insn(0x18, 1, 1, 0, fd), // r1 = map (pseudo map fd)
                0,
                insn(0xb7, 3, 0, 0, 2),  // r3 = XDP_PASS
                insn(0x85, 0, 0, 0, 51), // call bpf_redirect_map
                insn(0x95, 0, 0, 0, 0),  // exit
            ];
            let license = c"GPL";
            // BPF_PROG_LOAD: type XDP (6).
            let mut a = [0u64; 16];
            a[0] = pair(6, prog.len() as u32);
            a[1] = prog.as_ptr() as u64;
            a[2] = license.as_ptr() as u64;
            let prog = bpf(5, &mut a)?;
            // BPF_LINK_CREATE: prog, target ifindex, attach type BPF_XDP (37), flags 0.
            let mut a = [0u64; 16];
            a[0] = pair(prog.as_raw_fd() as u32, ifindex);
            a[1] = pair(37, 0);
            let link = bpf(28, &mut a)?;
            Ok(Attached {
                map,
                _prog: prog,
                _link: link,
            })
        }

        /// `XSKMAP[queue] = xsk_fd` (BPF_MAP_UPDATE_ELEM).
        pub fn insert(&self, queue: u32, xsk_fd: RawFd) -> io::Result<()> {
            let key = queue;
            let value = xsk_fd as u32;
            let mut a = [0u64; 16];
            a[0] = u64::from(self.map.as_raw_fd() as u32);
            a[1] = &key as *const u32 as u64;
            a[2] = &value as *const u32 as u64;
            // SAFETY: as in `bpf`; MAP_UPDATE_ELEM returns 0, not an fd.
            let rc = unsafe { libc::syscall(libc::SYS_bpf, 2, a.as_mut_ptr(), 128usize) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

#[test]
#[ignore = "needs root and network namespaces"]
fn rx_from_kernel_udp_socket_over_veth() {
    use std::net::UdpSocket;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const N: usize = 1000;
    const DPORT: u16 = 40100;

    let lab = lab::Lab::up();
    let mac_a = lab.mac(&lab.ns_a, &lab.if_a);
    // Everything reaching A goes to the XSK, ARP included, so B gets a static neighbour.
    let mac_s = mac_a
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    lab::run(&[
        "ip",
        "-n",
        &lab.ns_b,
        "neigh",
        "replace",
        lab::ADDR_A,
        "lladdr",
        &mac_s,
        "dev",
        &lab.if_b,
        "nud",
        "permanent",
    ]);

    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let ns_a = lab.ns_a.clone();
    let if_a = lab.if_a.clone();
    let receiver = std::thread::spawn(move || {
        lab::enter(&ns_a);
        let ifindex = lab::ifindex(&if_a);
        // Small rings so the fill ring recycles many times over 1000 frames.
        let cfg = XskConfig {
            frame_count: 128,
            rx_size: 64,
            fill_size: 64,
            tx_size: 64,
            comp_size: 64,
            ..XskConfig::default()
        };
        let mut xsk = Xsk::new(ifindex, 0, &cfg).unwrap();
        let prog = redirect_all::Attached::new(ifindex).unwrap();
        prog.insert(0, xsk.fd()).unwrap();
        ready_tx.send(()).unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < N && Instant::now() < deadline {
            let rev = xsk.poll(libc::POLLIN, 100).unwrap();
            if rev & libc::POLLIN == 0 {
                continue;
            }
            xsk.recv_batch(32, |f| {
                // Keep only our UDP datagrams: IPv4, proto 17, dst port DPORT.
                if f.len() >= 42
                    && f[12..14] == [0x08, 0x00]
                    && f[23] == 17
                    && f[36..38] == DPORT.to_be_bytes()
                {
                    got.push(f[42..].to_vec());
                }
            });
        }
        let stats = xsk.statistics().unwrap();
        done_tx.send(()).unwrap();
        (got, stats)
    });
    ready_rx.recv().unwrap();

    // Kernel sender in B, paced so the 64-entry RX ring is not overrun.
    let ns_b = lab.ns_b.clone();
    let sender = std::thread::spawn(move || {
        lab::enter(&ns_b);
        let sock = UdpSocket::bind((lab::ADDR_B, 0)).unwrap();
        for i in 0..N {
            sock.send_to(&payload(i), (lab::ADDR_A, DPORT)).unwrap();
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = done_rx.recv_timeout(Duration::from_secs(15));
    });
    let (got, stats) = receiver.join().unwrap();
    sender.join().unwrap();
    eprintln!("xsk statistics after RX: {stats:?}");
    assert_eq!(stats.rx_invalid_descs, 0);
    let lost = stats.rx_dropped + stats.rx_ring_full;
    // Every datagram either arrived or was counted as dropped (other frames may be counted too).
    assert!(
        got.len() as u64 + lost >= N as u64,
        "received {} + dropped {lost}",
        got.len()
    );
    assert!(
        got.len() >= N * 9 / 10,
        "received only {} of {N}",
        got.len()
    );
    let mut seen = vec![false; N];
    for d in &got {
        let i = u64::from_be_bytes(d[..8].try_into().unwrap()) as usize;
        assert!(i < N && !seen[i], "bad or duplicate datagram {i}");
        seen[i] = true;
        assert_eq!(d, &payload(i), "datagram {i} differs");
    }
    drop(lab);
}
