//! UDP through the provider, end to end in the namespace lab against the Linux kernel's UDP stack
//! in the peer namespace (issue 2). Needs root; run by `cargo xtask test`.
use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use provider_tests::{ProviderProcess, in_peer, in_provider};
use rand::{Rng, SeedableRng, rngs::StdRng};
use xtask::lab::{Lab, LabConfig, PEER_V4, PEER_V6, PROVIDER_V4, PROVIDER_V6};

const ECHO_PORT: u16 = 7;

fn lab(queues: u32) -> Lab {
    Lab::up(&LabConfig {
        queues,
        ..LabConfig::default()
    })
    .expect("lab up")
}

/// Send `count` datagrams of random sizes in `1..=max` with up to `window` in flight and check
/// every echo byte for byte. Returns the number echoed.
fn echo_random(target: SocketAddr, local: IpAddr, count: usize, max: usize, seed: u64) -> usize {
    let sock = UdpSocket::bind(SocketAddr::new(local, 0)).expect("bind peer socket");
    sock.connect(target).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let window = 32;
    let mut in_flight: VecDeque<Vec<u8>> = VecDeque::new();
    let mut sent = 0;
    let mut echoed = 0;
    let mut buf = vec![0u8; 65536];
    while echoed < count {
        while sent < count && in_flight.len() < window {
            let len = rng.random_range(1..=max);
            let mut msg: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // The first bytes carry the sequence number so reordering would be visible.
            let seq = (sent as u32).to_be_bytes();
            for (i, b) in seq.iter().enumerate().take(len) {
                msg[i] = *b;
            }
            sock.send(&msg).expect("send");
            in_flight.push_back(msg);
            sent += 1;
        }
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("echo {echoed} of {count} missing ({e}); {sent} sent"));
        let expected = in_flight.pop_front().unwrap();
        assert_eq!(
            &buf[..n],
            &expected[..],
            "echo {echoed} differs (len {} vs {n})",
            expected.len()
        );
        echoed += 1;
    }
    echoed
}

fn stat(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("stat {path:?} missing in {v}"))
}

#[test]
#[ignore = "needs root and network namespaces"]
fn udp_echo_10000_random_datagrams_v4_and_v6() {
    let lab = lab(1);
    let provider = ProviderProcess::start(&lab, &["echo", "--udp", "7"]).unwrap();
    let v4 = in_peer(&lab, || {
        echo_random(
            SocketAddr::new(PROVIDER_V4.into(), ECHO_PORT),
            PEER_V4.into(),
            10_000,
            1472,
            1,
        )
    });
    assert_eq!(v4, 10_000);
    let v6 = in_peer(&lab, || {
        echo_random(
            SocketAddr::new(PROVIDER_V6.into(), ECHO_PORT),
            PEER_V6.into(),
            10_000,
            1452,
            2,
        )
    });
    assert_eq!(v6, 10_000);
    let stats = provider.stats().unwrap();
    println!("{stats:#}");
    assert!(
        stat(&stats, &["xdp", "steered"]) >= 20_000,
        "XDP steered every datagram"
    );
    assert!(stat(&stats, &["engine", "rx_udp"]) >= 20_000);
    assert!(stat(&stats, &["engine", "tx_frames"]) >= 20_000);
    assert_eq!(stat(&stats, &["engine", "rx_bad_checksum"]), 0);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn udp_echo_over_two_queues() {
    let lab = lab(2);
    let provider = ProviderProcess::start(&lab, &["echo", "--udp", "7"]).unwrap();
    // Several peer sockets: different source ports hash to both veth queues.
    for seed in 0..8 {
        let n = in_peer(&lab, move || {
            echo_random(
                SocketAddr::new(PROVIDER_V4.into(), ECHO_PORT),
                PEER_V4.into(),
                500,
                1472,
                seed,
            )
        });
        assert_eq!(n, 500);
    }
    let stats = provider.stats().unwrap();
    let queues = stats["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2, "one AF_XDP socket per RX queue");
    for q in queues {
        assert!(
            q["rx_frames"].as_u64().unwrap() > 0,
            "queue {} received nothing: {stats:#}",
            q["queue"]
        );
    }
    assert_eq!(stat(&stats, &["engine", "rx_udp"]), 4000);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn udp_echo_in_forced_skb_mode() {
    let lab = lab(1);
    let provider =
        ProviderProcess::start(&lab, &["echo", "--udp", "7", "--attach", "skb"]).unwrap();
    let n = in_peer(&lab, || {
        echo_random(
            SocketAddr::new(PROVIDER_V4.into(), ECHO_PORT),
            PEER_V4.into(),
            1000,
            1472,
            5,
        )
    });
    assert_eq!(n, 1000);
    let stats = provider.stats().unwrap();
    assert!(stat(&stats, &["xdp", "steered"]) >= 1000);
    let mode = lab
        .exec_ok(
            &lab.provider_ns,
            &["ip", "-d", "link", "show", &lab.provider_if],
        )
        .unwrap();
    assert!(
        mode.contains("xdpgeneric"),
        "attached in SKB (generic) mode: {mode}"
    );
}

#[test]
#[ignore = "needs root and network namespaces"]
fn steering_is_selective_other_ports_reach_the_kernel() {
    let lab = lab(1);
    let _provider = ProviderProcess::start(&lab, &["echo", "--udp", "7"]).unwrap();
    // A kernel socket in the provider namespace on a port the provider does not own.
    let kernel = in_provider(&lab, || UdpSocket::bind((PROVIDER_V4, 9000)).unwrap());
    kernel
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    in_peer(&lab, || {
        let s = UdpSocket::bind((PEER_V4, 0)).unwrap();
        s.send_to(b"for the kernel", (PROVIDER_V4, 9000)).unwrap();
    });
    let mut buf = [0u8; 64];
    let (n, from) = kernel
        .recv_from(&mut buf)
        .expect("kernel socket receives unsteered traffic");
    assert_eq!(&buf[..n], b"for the kernel");
    assert_eq!(from.ip(), IpAddr::from(PEER_V4));
    // And the provider's own port still echoes.
    let n = in_peer(&lab, || {
        echo_random(
            SocketAddr::new(PROVIDER_V4.into(), ECHO_PORT),
            PEER_V4.into(),
            100,
            512,
            9,
        )
    });
    assert_eq!(n, 100);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn after_sigkill_traffic_falls_back_to_the_kernel() {
    let lab = lab(1);
    // A kernel socket on the same port the provider will own: while the provider runs it gets
    // nothing (steered away); once the provider is killed it gets everything.
    let kernel = in_provider(&lab, || UdpSocket::bind((PROVIDER_V4, ECHO_PORT)).unwrap());
    kernel
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut provider = ProviderProcess::start(&lab, &["echo", "--udp", "7"]).unwrap();
    let n = in_peer(&lab, || {
        echo_random(
            SocketAddr::new(PROVIDER_V4.into(), ECHO_PORT),
            PEER_V4.into(),
            50,
            100,
            3,
        )
    });
    assert_eq!(n, 50);
    let mut buf = [0u8; 256];
    assert!(
        kernel.recv_from(&mut buf).is_err(),
        "steered datagrams must not reach the kernel"
    );

    provider.kill();
    kernel
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    in_peer(&lab, || {
        let s = UdpSocket::bind((PEER_V4, 0)).unwrap();
        for _ in 0..3 {
            s.send_to(b"after the crash", (PROVIDER_V4, ECHO_PORT))
                .unwrap();
        }
    });
    let (n, _) = kernel
        .recv_from(&mut buf)
        .expect("no black hole after SIGKILL");
    assert_eq!(&buf[..n], b"after the crash");
}
