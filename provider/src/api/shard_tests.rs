//! One TCP engine per RX queue (DESIGN §3) through the WSP calls, over the loopback datapath:
//! every flow is processed by the shard that owns it, whether segments reach their owner
//! directly (a device whose RSS agrees) or arrive on one queue and are handed over (veth).
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::loopback::LoopbackDatapath;
use super::*;

fn sharded(shards: usize) -> (Arc<Provider>, Arc<LoopbackDatapath>) {
    let mut cfg = ProviderConfig::default();
    cfg.tcp.time_wait = Duration::from_millis(100);
    cfg.tcp.delayed_ack = Duration::from_millis(5);
    cfg.tcp_shards = shards;
    LoopbackDatapath::provider(cfg)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp(p: &Provider, v6: bool) -> Socket {
    let af = if v6 { AF_INET6 } else { AF_INET };
    p.wsp_socket(af, SOCK_STREAM, IPPROTO_TCP).unwrap()
}

fn send_all(p: &Provider, s: Socket, data: &[u8]) {
    assert_eq!(p.wsp_send(s, data), Ok(data.len()));
}

fn recv_all(p: &Provider, s: Socket) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = vec![0u8; 8192];
    loop {
        let n = p.wsp_recv(s, &mut b).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[..n]);
    }
}

/// `clients` connections to a listener at `at`, each moving `bytes` both ways (echo).
fn echo_many(p: &Arc<Provider>, at: &str, clients: usize, bytes: usize) {
    let v6 = at.starts_with('[');
    let l = tcp(p, v6);
    p.wsp_bind(l, addr(at)).unwrap();
    p.wsp_listen(l, 256).unwrap();
    let p2 = p.clone();
    let server = thread::spawn(move || {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let (s, _) = p2.wsp_accept(l).unwrap();
                let p3 = p2.clone();
                thread::spawn(move || {
                    let data = recv_all(&p3, s);
                    send_all(&p3, s, &data);
                    p3.wsp_close_socket(s).unwrap();
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        p2.wsp_close_socket(l).unwrap();
    });
    let target = addr(at);
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let p = p.clone();
            thread::spawn(move || {
                let c = tcp(&p, v6);
                p.wsp_connect(c, target).unwrap();
                let data: Vec<u8> = (0..bytes)
                    .map(|j| (j as u8).wrapping_mul(31) ^ i as u8)
                    .collect();
                send_all(&p, c, &data);
                p.wsp_shutdown(c, SD_SEND).unwrap();
                assert_eq!(recv_all(&p, c), data, "client {i}");
                p.wsp_close_socket(c).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    server.join().unwrap();
}

#[test]
fn every_shard_serves_connections_and_none_are_handed_over_when_segments_reach_their_owner() {
    let (p, _dp) = sharded(4);
    assert_eq!(p.tcp_shards(), 4);
    echo_many(&p, "198.18.0.1:5600", 32, 20_000);
    echo_many(&p, "[2001:db8::1]:5601", 16, 20_000);
    let shards = p.tcp_shard_stats();
    assert_eq!(shards.len(), 4);
    for s in &shards {
        // Active opens are spread round-robin (ports chosen for their RSS hash), passive
        // ones follow the flow's hash: every shard gets work.
        assert!(
            s.segments > 100,
            "shard {} processed {} segments",
            s.shard,
            s.segments
        );
        assert_eq!(s.segments_forwarded_in, 0, "shard {}", s.shard);
    }
}

#[test]
fn segments_arriving_on_one_queue_are_handed_to_the_owning_shard() {
    let (p, dp) = sharded(2);
    // Every segment arrives on queue 0, as veth does with a single-queue sender.
    dp.set_rx_queue(Some(0));
    echo_many(&p, "198.18.0.1:5602", 16, 50_000);
    let shards = p.tcp_shard_stats();
    assert!(shards[0].segments > 0);
    assert_eq!(
        shards[0].segments_forwarded_in, 0,
        "queue 0 is shard 0's own"
    );
    assert!(
        shards[1].segments_forwarded_in > 0
            && shards[1].segments == shards[1].segments_forwarded_in,
        "shard 1 gets only handed-over segments: {:?}",
        shards[1]
    );
}

#[test]
fn a_queue_beyond_the_shards_only_hands_over() {
    let (p, dp) = sharded(2);
    // A queue the device added after start (channel growth) has no shard of its own.
    dp.set_rx_queue(Some(3));
    echo_many(&p, "198.18.0.1:5603", 8, 10_000);
    let shards = p.tcp_shard_stats();
    for s in &shards {
        assert!(
            s.segments > 0 && s.segments == s.segments_forwarded_in,
            "{s:?}"
        );
    }
}

#[test]
fn an_explicitly_bound_connect_lands_on_the_shard_its_tuple_names() {
    let (p, _dp) = sharded(4);
    let l = tcp(&p, false);
    p.wsp_bind(l, addr("198.18.0.1:5604")).unwrap();
    p.wsp_listen(l, 16).unwrap();
    for port in [40000u16, 40001, 40002, 40003, 40004, 40005] {
        let c = tcp(&p, false);
        p.wsp_bind(c, SocketAddr::new(addr("198.18.0.1:0").ip(), port))
            .unwrap();
        p.wsp_connect(c, addr("198.18.0.1:5604")).unwrap();
        let (s, from) = p.wsp_accept(l).unwrap();
        assert_eq!(from.port(), port);
        send_all(&p, c, b"ping");
        let mut b = [0u8; 4];
        assert_eq!(p.wsp_recv(s, &mut b), Ok(4));
        assert_eq!(&b, b"ping");
        p.wsp_close_socket(c).unwrap();
        p.wsp_close_socket(s).unwrap();
    }
    assert!(
        p.tcp_shard_stats()
            .iter()
            .all(|s| s.segments_forwarded_in == 0)
    );
}

#[test]
fn closing_a_listener_closes_it_in_every_shard() {
    let (p, _dp) = sharded(3);
    let l = tcp(&p, false);
    p.wsp_bind(l, addr("198.18.0.1:5605")).unwrap();
    p.wsp_listen(l, 16).unwrap();
    p.wsp_close_socket(l).unwrap();
    // The port is free again in every shard: a new listener gets it, and connections to it
    // (whichever shard their flow hashes to) are accepted.
    echo_many(&p, "198.18.0.1:5605", 12, 1000);
}
