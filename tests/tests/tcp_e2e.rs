//! TCP through the provider, end to end in the namespace lab against the Linux kernel's TCP in
//! the peer namespace (issue 3). The provider runs in-process here (its engine threads live in
//! the provider namespace); the kernel side uses std sockets on threads in the peer namespace.
//! Needs root; run by `cargo xtask test`.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use provider::api::Provider;
use provider::engine::Engine;
use provider_tests::in_peer;
use provider_tests::transfer::{provider_send_all, tcp_socket};
use xtask::lab::{Lab, LabConfig, PROVIDER_V4};

struct Setup {
    // Field order: the engine stops before the lab goes.
    engine: Engine,
    lab: Lab,
}

fn start(queues: u32) -> Setup {
    let lab = Lab::up(&LabConfig {
        queues,
        ..LabConfig::default()
    })
    .expect("lab up");
    let engine = provider_tests::start_engine(&lab, |_| {});
    Setup { engine, lab }
}

fn provider(s: &Setup) -> Arc<Provider> {
    s.engine.provider().clone()
}

const MIB: u64 = 1 << 20;

/// Kernel client → provider server, `total` each way; at MTU 1500 the provider's SYN-ACK
/// advertised the family's MSS (MTU − 40 / − 60) and the kernel sends that minus the 12-byte
/// timestamp option.
fn kernel_client_to_provider_server(s: &Setup, v6: bool, port: u16, total: u64) {
    let mss = provider_tests::transfer::kernel_client_to_provider_server(
        &s.lab,
        &provider(s),
        v6,
        port,
        total,
    );
    assert_eq!(
        mss,
        if v6 { 1440 - 12 } else { 1460 - 12 },
        "MSS the kernel uses toward the provider"
    );
}

fn provider_client_to_kernel_server(s: &Setup, v6: bool, port: u16, total: u64) {
    provider_tests::transfer::provider_client_to_kernel_server(
        &s.lab,
        &provider(s),
        v6,
        port,
        total,
    );
}

#[test]
#[ignore = "needs root and network namespaces"]
fn kernel_client_provider_server_v4_v6() {
    let s = start(1);
    let t = Instant::now();
    kernel_client_to_provider_server(&s, false, 7001, 1024 * MIB);
    println!("v4 1 GiB each way in {:?}", t.elapsed());
    let t = Instant::now();
    kernel_client_to_provider_server(&s, true, 7002, 1024 * MIB);
    println!("v6 1 GiB each way in {:?}", t.elapsed());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn provider_client_kernel_server_v4_v6() {
    let s = start(1);
    let t = Instant::now();
    provider_client_to_kernel_server(&s, false, 7003, 1024 * MIB);
    println!("v4 1 GiB each way in {:?}", t.elapsed());
    let t = Instant::now();
    provider_client_to_kernel_server(&s, true, 7004, 1024 * MIB);
    println!("v6 1 GiB each way in {:?}", t.elapsed());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn thousand_concurrent_connections_echo_64k_each() {
    const EACH: usize = 64 * 1024;
    let conns: usize = std::env::var("PROVIDER_TEST_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let s = start(1);
    let p = provider(&s);
    let l = tcp_socket(&p, false);
    p.wsp_bind(l, SocketAddr::new(PROVIDER_V4.into(), 7010))
        .unwrap();
    p.wsp_listen(l, conns as i32).unwrap();
    let server = {
        let p = p.clone();
        thread::spawn(move || {
            let mut workers = Vec::with_capacity(conns);
            for _ in 0..conns {
                let (c, _) = p.wsp_accept(l).expect("accept");
                let p = p.clone();
                workers.push(
                    thread::Builder::new()
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = p.wsp_recv(c, &mut buf).expect("server recv");
                                if n == 0 {
                                    break;
                                }
                                provider_send_all(&p, c, &buf[..n]);
                            }
                            p.wsp_close_socket(c).unwrap();
                        })
                        .unwrap(),
                );
            }
            for w in workers {
                w.join().unwrap();
            }
        })
    };
    // All connections open first, then every one echoes its own 64 KiB.
    let ok = in_peer(&s.lab, move || {
        let streams: Vec<TcpStream> = (0..conns)
            .map(|_| TcpStream::connect((PROVIDER_V4, 7010)).expect("kernel connect"))
            .collect();
        let workers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut k)| {
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let data: Vec<u8> = (0..EACH).map(|j| (j * 7 + i) as u8).collect();
                        let mut w = k.try_clone().unwrap();
                        let d2 = data.clone();
                        let writer = thread::Builder::new()
                            .stack_size(64 * 1024)
                            .spawn(move || {
                                w.write_all(&d2).unwrap();
                                w.shutdown(std::net::Shutdown::Write).unwrap();
                            })
                            .unwrap();
                        let mut back = Vec::with_capacity(EACH);
                        k.read_to_end(&mut back).unwrap();
                        writer.join().unwrap();
                        back == data
                    })
                    .unwrap()
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .filter(|ok| *ok)
            .count()
    });
    server.join().unwrap();
    assert_eq!(
        ok, conns,
        "every connection echoed its 64 KiB byte for byte"
    );
    p.wsp_close_socket(l).unwrap();
}

/// 5 % random loss each way and 1 % duplication on the peer's veth (nftables): every byte
/// arrives exactly once, in both directions, over IPv4 and IPv6.
#[test]
#[ignore = "needs root and network namespaces"]
fn transfers_survive_five_percent_loss_one_percent_duplication() {
    let s = start(1);
    s.lab.set_peer_impairment(5, 1).unwrap();
    let mib: u64 = std::env::var("PROVIDER_TEST_LOSSY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let t = Instant::now();
    kernel_client_to_provider_server(&s, false, 7005, mib * MIB);
    println!("v4 {mib} MiB each way under loss in {:?}", t.elapsed());
    let t = Instant::now();
    provider_client_to_kernel_server(&s, true, 7006, mib * MIB);
    println!("v6 {mib} MiB each way under loss in {:?}", t.elapsed());
}

/// The provider's TCP segments as the peer's veth captured them: (payload length, checksum
/// complete?).
fn provider_segments(frames: &[provider_tests::Frame]) -> Vec<(usize, bool)> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    frames
        .iter()
        .filter_map(|f| {
            let pkt = SlicedPacket::from_ethernet(&f.data).ok()?;
            let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) =
                (&pkt.net, &pkt.transport)
            else {
                return None;
            };
            let h = ip.header();
            if h.source() != PROVIDER_V4.octets() {
                return None;
            }
            let want = t.calc_checksum_ipv4(h.source(), h.destination()).ok()?;
            Some((t.payload().len(), want == t.checksum()))
        })
        .collect()
}

/// TX checksum offload (AF_XDP TX metadata) on a veth made the plain way (tx-checksumming
/// on): the provider's segments cross the veth with the checksum left to the device — the
/// capture sees the pseudo-header sum, the kernel peer accepts them (as it accepts its own
/// partial checksums) and every byte arrives; with `tx_checksum_offload` off every segment
/// carries its complete checksum.
#[test]
#[ignore = "needs root and network namespaces"]
fn tx_checksum_offload_leaves_checksums_to_the_device_software_mode_completes_them() {
    for offload in [true, false] {
        let lab = Lab::up(&LabConfig {
            plain: true,
            ..LabConfig::default()
        })
        .expect("lab up");
        let engine = provider_tests::start_engine(&lab, move |c| {
            c.xsk.tx_checksum_offload = offload;
        });
        let st = engine.stats();
        assert_eq!(
            st.queues
                .iter()
                .map(|q| q.tx_checksum_offload)
                .collect::<Vec<_>>(),
            vec![offload],
            "offload in effect iff asked (copy-mode bind, kernel ≥ 6.8)"
        );
        let cap = provider_tests::Capture::start(&lab, "tcp port 7010").expect("capture");
        provider_tests::transfer::kernel_client_to_provider_server(
            &lab,
            engine.provider(),
            false,
            7010,
            4 * MIB,
        );
        let segs = provider_segments(&cap.stop().expect("capture stop"));
        let data: Vec<_> = segs.iter().filter(|(len, _)| *len > 0).collect();
        assert!(
            data.len() > 100,
            "provider data segments captured: {}",
            data.len()
        );
        let complete = segs.iter().filter(|(_, ok)| *ok).count();
        println!(
            "offload {offload}: {} provider segments, {} with payload, {complete} with a complete checksum",
            segs.len(),
            data.len()
        );
        if offload {
            assert!(
                data.iter().all(|(_, ok)| !ok),
                "with offload the data segments leave the checksum to the device"
            );
        } else {
            assert_eq!(
                complete,
                segs.len(),
                "software mode: every checksum complete"
            );
        }
        drop(engine);
        drop(lab);
    }
}
