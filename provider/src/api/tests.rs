//! Socket-table and UDP semantics through the WSP calls, over the loopback datapath.
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::loopback::{LoopbackDatapath, SteerOp};
use super::*;
use crate::socket::INVALID_SOCKET;
use crate::socket::options::{
    FIONBIO, FIONREAD, IPPROTO_TCP, SO_DONTLINGER, SO_ERROR, SO_KEEPALIVE, SO_LINGER, SO_RCVBUF,
    SO_REUSEADDR, SO_SNDBUF, SO_TYPE, SOL_SOCKET, TCP_NODELAY,
};
use crate::udp::DATAGRAM_OVERHEAD;
use WsaError::*;

const AF_INET: i32 = 2;
const AF_INET6: i32 = 23;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn setup() -> (Arc<Provider>, Arc<LoopbackDatapath>) {
    LoopbackDatapath::provider(ProviderConfig::default())
}

fn udp(p: &Provider, af: i32) -> Socket {
    p.wsp_socket(af, SOCK_DGRAM, IPPROTO_UDP).unwrap()
}

fn int(v: i32) -> [u8; 4] {
    v.to_ne_bytes()
}

/// Wait until some thread sleeps in a blocking call on `s` (no fixed sleeps).
fn wait_for_waiter(p: &Provider, s: Socket) {
    let e = p.table.get(s).unwrap();
    for _ in 0..5000 {
        if lock(&e.state).waiters > 0 {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("nobody blocked");
}

/// Every call that takes a handle, applied to `s`, returning the error if any.
fn all_calls(p: &Provider, s: Socket) -> Vec<(&'static str, Option<WsaError>)> {
    let mut buf = [0u8; 16];
    let mut arg = 0u32;
    vec![
        ("bind", p.wsp_bind(s, a("0.0.0.0:0")).err()),
        ("send_to", p.wsp_send_to(s, b"x", a("198.18.0.1:9")).err()),
        ("recv_from", p.wsp_recv_from(s, &mut buf).err()),
        ("recv_msg", p.wsp_recv_msg(s, &mut buf).err()),
        ("ioctl FIONBIO", p.wsp_ioctl(s, FIONBIO, &mut arg).err()),
        ("ioctl FIONREAD", p.wsp_ioctl(s, FIONREAD, &mut arg).err()),
        ("ioctl bad", p.wsp_ioctl(s, 0x1234, &mut arg).err()),
        (
            "set_sock_opt",
            p.wsp_set_sock_opt(s, SOL_SOCKET, SO_RCVBUF, &int(1)).err(),
        ),
        (
            "get_sock_opt",
            p.wsp_get_sock_opt(s, SOL_SOCKET, SO_RCVBUF, &mut buf).err(),
        ),
        ("get_sock_name", p.wsp_get_sock_name(s).err()),
        ("duplicate", p.duplicate(s).err()),
        ("close", p.wsp_close_socket(s).err()),
    ]
}

#[test]
fn every_call_with_a_bad_handle_is_enotsock() {
    let (p, _dp) = setup();
    let closed = udp(&p, AF_INET);
    p.wsp_close_socket(closed).unwrap();
    // The slot of `stale` gets reused by `fresh` (new generation).
    let stale = udp(&p, AF_INET);
    p.wsp_close_socket(stale).unwrap();
    let fresh = udp(&p, AF_INET);
    assert_eq!(fresh.slot(), stale.slot());
    assert_ne!(fresh, stale);
    let live = udp(&p, AF_INET6);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut bad = vec![
        Socket::from_raw(0),
        Socket::from_raw(u64::MAX),
        INVALID_SOCKET,
        closed,
        stale,
        Socket::from_raw(fresh.raw() + (1 << 32)),
        Socket::from_raw(live.raw() ^ (1 << 40)),
        Socket::from_raw(u64::from(fresh.slot()) + 1000),
    ];
    for _ in 0..32 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        bad.push(Socket::from_raw(rng));
    }
    for s in bad {
        if s == fresh || s == live {
            continue;
        }
        for (call, err) in all_calls(&p, s) {
            assert_eq!(err, Some(WSAENOTSOCK), "{call} on {s:?}");
        }
    }
    // The live sockets were untouched by all that.
    assert!(
        p.wsp_get_sock_opt(fresh, SOL_SOCKET, SO_TYPE, &mut [0; 4])
            .is_ok()
    );
    assert!(
        p.wsp_get_sock_opt(live, SOL_SOCKET, SO_TYPE, &mut [0; 4])
            .is_ok()
    );
    // And once closed, every call on them fails too, close included.
    for s in [fresh, live] {
        p.wsp_close_socket(s).unwrap();
        for (call, err) in all_calls(&p, s) {
            assert_eq!(err, Some(WSAENOTSOCK), "{call} after close");
        }
    }
    assert_eq!(p.stats().sockets_open, 0);
}

#[test]
fn wsp_socket_arguments() {
    let (p, _dp) = setup();
    let cases: &[(i32, i32, i32, Result<(), WsaError>)] = &[
        (AF_INET, SOCK_DGRAM, 0, Ok(())),
        (AF_INET, SOCK_DGRAM, 17, Ok(())),
        (AF_INET6, SOCK_DGRAM, 17, Ok(())),
        (10, SOCK_DGRAM, 0, Ok(())),
        (0, SOCK_DGRAM, 0, Err(WSAEAFNOSUPPORT)),
        (1, SOCK_DGRAM, 0, Err(WSAEAFNOSUPPORT)),
        (-1, SOCK_DGRAM, 0, Err(WSAEAFNOSUPPORT)),
        (AF_INET, SOCK_STREAM, 0, Ok(())),
        (AF_INET, SOCK_STREAM, 6, Ok(())),
        (AF_INET6, SOCK_STREAM, 6, Ok(())),
        (AF_INET, SOCK_STREAM, 17, Err(WSAEPROTONOSUPPORT)),
        (AF_INET, 3, 0, Err(WSAESOCKTNOSUPPORT)),
        (AF_INET, 0, 0, Err(WSAESOCKTNOSUPPORT)),
        (AF_INET, SOCK_DGRAM, 6, Err(WSAEPROTONOSUPPORT)),
        (AF_INET6, SOCK_DGRAM, 255, Err(WSAEPROTONOSUPPORT)),
        (AF_INET, SOCK_DGRAM, -1, Err(WSAEPROTONOSUPPORT)),
    ];
    for &(af, ty, proto, want) in cases {
        let got = p.wsp_socket(af, ty, proto);
        assert_eq!(got.map(|_| ()), want, "socket({af}, {ty}, {proto})");
        if let Ok(s) = got {
            assert_eq!(
                p.wsp_get_sock_opt(s, SOL_SOCKET, SO_TYPE, &mut [0; 4]),
                Ok(4)
            );
            p.wsp_close_socket(s).unwrap();
        }
    }
    assert_eq!(p.stats().sockets_open, 0);
}

#[test]
fn table_full_is_emfile() {
    let (p, _dp) = LoopbackDatapath::provider(ProviderConfig {
        max_sockets: 3,
        ..Default::default()
    });
    let s: Vec<_> = (0..3).map(|_| udp(&p, AF_INET)).collect();
    assert_eq!(p.wsp_socket(AF_INET, SOCK_DGRAM, 0), Err(WSAEMFILE));
    assert_eq!(p.duplicate(s[0]), Err(WSAEMFILE));
    p.wsp_close_socket(s[1]).unwrap();
    let d = p.duplicate(s[0]).unwrap();
    assert_eq!(p.wsp_socket(AF_INET, SOCK_DGRAM, 0), Err(WSAEMFILE));
    for h in [s[0], s[2], d] {
        p.wsp_close_socket(h).unwrap();
    }
    assert_eq!(p.stats().handles_open, 0);
}

#[test]
fn bind_errors() {
    let (p, _dp) = setup();
    let s4 = udp(&p, AF_INET);
    let s6 = udp(&p, AF_INET6);
    let other = udp(&p, AF_INET);
    let cases: &[(Socket, &str, Result<(), WsaError>)] = &[
        (s4, "[2001:db8::1]:5000", Err(WSAEFAULT)),
        (s6, "198.18.0.1:5000", Err(WSAEFAULT)),
        (s4, "198.18.0.2:5000", Err(WSAEADDRNOTAVAIL)),
        (s4, "127.0.0.1:5000", Err(WSAEADDRNOTAVAIL)),
        (s6, "[2001:db8::2]:5000", Err(WSAEADDRNOTAVAIL)),
        (s4, "198.18.0.1:5000", Ok(())),
        (s4, "198.18.0.1:5001", Err(WSAEINVAL)),
        (other, "198.18.0.1:5000", Err(WSAEADDRINUSE)),
        // The wildcard and a specific address coexist on one port (Winsock default).
        (other, "0.0.0.0:5000", Ok(())),
        (s6, "[2001:db8::1]:5000", Ok(())),
        (s6, "[::]:5001", Err(WSAEINVAL)),
    ];
    for (i, &(s, addr, want)) in cases.iter().enumerate() {
        assert_eq!(p.wsp_bind(s, a(addr)), want, "case {i}: bind {addr}");
    }
    assert_eq!(p.wsp_get_sock_name(s4), Ok(a("198.18.0.1:5000")));
    assert_eq!(p.wsp_get_sock_name(other), Ok(a("0.0.0.0:5000")));
    let unbound = udp(&p, AF_INET);
    assert_eq!(p.wsp_get_sock_name(unbound), Err(WSAEINVAL));
    // A failed bind leaves the socket unbound and bindable.
    assert_eq!(
        p.wsp_bind(unbound, a("198.18.0.1:5000")),
        Err(WSAEADDRINUSE)
    );
    assert_eq!(p.wsp_get_sock_name(unbound), Err(WSAEINVAL));
    p.wsp_bind(unbound, a("198.18.0.1:0")).unwrap();
    let port = p.wsp_get_sock_name(unbound).unwrap().port();
    assert!((61000..=65535).contains(&port));
}

#[test]
fn reuseaddr_needs_both_sockets() {
    let (p, dp) = setup();
    let [x, y, z] = [0; 3].map(|_| udp(&p, AF_INET));
    p.wsp_set_sock_opt(x, SOL_SOCKET, SO_REUSEADDR, &int(1))
        .unwrap();
    p.wsp_bind(x, a("0.0.0.0:7000")).unwrap();
    assert_eq!(p.wsp_bind(y, a("0.0.0.0:7000")), Err(WSAEADDRINUSE));
    p.wsp_set_sock_opt(y, SOL_SOCKET, SO_REUSEADDR, &int(1))
        .unwrap();
    p.wsp_bind(y, a("0.0.0.0:7000")).unwrap();
    assert_eq!(p.wsp_bind(z, a("0.0.0.0:7000")), Err(WSAEADDRINUSE));
    // One STEER entry for the shared endpoint, removed with the last socket on it.
    let key = udp_steer_key(a("0.0.0.0:7000"));
    p.wsp_close_socket(x).unwrap();
    assert_eq!(dp.steer_ops(), vec![SteerOp::Add(key)]);
    p.wsp_close_socket(y).unwrap();
    assert_eq!(
        dp.steer_ops(),
        vec![SteerOp::Add(key), SteerOp::Remove(key)]
    );
    p.wsp_bind(z, a("0.0.0.0:7000")).unwrap();
}

#[test]
fn steer_add_and_remove_once_per_bind_and_last_close() {
    let (p, dp) = setup();
    let s = udp(&p, AF_INET);
    p.wsp_bind(s, a("0.0.0.0:4000")).unwrap();
    let key = udp_steer_key(a("0.0.0.0:4000"));
    assert_eq!(key.addr, [0; 16]);
    assert_eq!((key.port, key.proto, key.family), (4000, 17, 4));
    let d = p.duplicate(s).unwrap();
    p.wsp_close_socket(s).unwrap();
    assert_eq!(
        dp.steer_ops(),
        vec![SteerOp::Add(key)],
        "not the last handle"
    );
    p.wsp_close_socket(d).unwrap();
    assert_eq!(
        dp.steer_ops(),
        vec![SteerOp::Add(key), SteerOp::Remove(key)]
    );

    let s6 = udp(&p, AF_INET6);
    p.wsp_bind(s6, a("[2001:db8::1]:4001")).unwrap();
    p.wsp_send_to(s6, b"x", a("[2001:db8::1]:4001")).unwrap();
    p.wsp_close_socket(s6).unwrap();
    let k6 = udp_steer_key(a("[2001:db8::1]:4001"));
    assert_eq!(k6.family, 6);
    assert_eq!(dp.steer_ops()[2..], [SteerOp::Add(k6), SteerOp::Remove(k6)]);

    // An unbound socket closes without touching STEER.
    let n = dp.steer_ops().len();
    p.wsp_close_socket(udp(&p, AF_INET)).unwrap();
    assert_eq!(dp.steer_ops().len(), n);

    // A failing steer_add fails the bind and leaves nothing behind.
    dp.fail_steer(Some(WSAENOBUFS));
    let f = udp(&p, AF_INET);
    assert_eq!(p.wsp_bind(f, a("0.0.0.0:4002")), Err(WSAENOBUFS));
    assert_eq!(p.wsp_get_sock_name(f), Err(WSAEINVAL));
    assert_eq!(p.stats().udp_endpoints, 0);
    dp.fail_steer(None);
    p.wsp_bind(f, a("0.0.0.0:4002")).unwrap();
}

#[test]
fn round_trip_v4_and_v6() {
    let (p, dp) = setup();
    for (af, server_addr, client_src) in [
        (AF_INET, "198.18.0.1:9000", "198.18.0.1"),
        (AF_INET6, "[::]:9000", "2001:db8::1"),
    ] {
        let server = udp(&p, af);
        let client = udp(&p, af);
        p.wsp_bind(server, a(server_addr)).unwrap();
        let to = if af == AF_INET {
            a("198.18.0.1:9000")
        } else {
            a("[2001:db8::1]:9000")
        };
        assert_eq!(p.wsp_send_to(client, b"hello", to), Ok(5));
        // The client got an ephemeral port by sending.
        let cport = p.wsp_get_sock_name(client).unwrap().port();
        assert!((61000..=65535).contains(&cport));
        let mut buf = [0u8; 64];
        let (n, from) = p.wsp_recv_from(server, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, SocketAddr::new(client_src.parse().unwrap(), cport));
        // And back.
        assert_eq!(p.wsp_send_to(server, b"world!", from), Ok(6));
        let (n, back) = p.wsp_recv_from(client, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"world!");
        assert_eq!(back, to);
        // Zero-length datagrams are datagrams.
        p.wsp_send_to(client, b"", to).unwrap();
        assert_eq!(p.wsp_recv_from(server, &mut buf), Ok((0, from)));
        p.wsp_close_socket(server).unwrap();
        p.wsp_close_socket(client).unwrap();
    }
    assert_eq!(dp.sent().len(), 6);
    let st = p.stats();
    assert_eq!(
        (
            st.udp_sent,
            st.udp_delivered,
            st.sockets_open,
            st.udp_endpoints
        ),
        (6, 6, 0, 0)
    );
}

#[test]
fn send_to_errors() {
    let (p, dp) = setup();
    let s = udp(&p, AF_INET);
    let s6 = udp(&p, AF_INET6);
    let big = vec![0u8; 1473];
    let cases: &[(Socket, &[u8], &str, WsaError)] = &[
        (s, b"x", "[2001:db8::1]:9", WSAEFAULT),
        (s6, b"x", "198.18.0.1:9", WSAEFAULT),
        (s, b"x", "0.0.0.0:9", WSAEADDRNOTAVAIL),
        (s, b"x", "198.18.0.1:0", WSAEADDRNOTAVAIL),
        (s6, b"x", "[::]:9", WSAEADDRNOTAVAIL),
        (s, &big, "198.18.0.2:9", WSAEMSGSIZE),
        (s6, &[0u8; 1453], "[2001:db8::2]:9", WSAEMSGSIZE),
    ];
    for (i, &(sock, buf, to, want)) in cases.iter().enumerate() {
        assert_eq!(p.wsp_send_to(sock, buf, a(to)), Err(want), "case {i}");
    }
    // None of those bound the socket.
    assert_eq!(p.wsp_get_sock_name(s), Err(WSAEINVAL));
    assert_eq!(p.wsp_send_to(s, &big[..1472], a("198.18.0.2:9")), Ok(1472));
    dp.set_up(false);
    assert_eq!(p.wsp_send_to(s, b"x", a("198.18.0.2:9")), Err(WSAENETDOWN));
    assert_eq!(
        p.wsp_send_to(s6, b"x", a("[2001:db8::2]:9")),
        Err(WSAENETDOWN)
    );
    assert_eq!(
        p.wsp_get_sock_name(s6),
        Err(WSAEINVAL),
        "no bind while down"
    );
    dp.set_up(true);
    // Close works while the datapath is down too (nothing to flush for UDP).
    dp.set_up(false);
    p.wsp_close_socket(s).unwrap();
}

#[test]
fn recv_errors_and_truncation() {
    let (p, _dp) = setup();
    let s = udp(&p, AF_INET);
    let mut buf = [0u8; 4];
    assert_eq!(p.wsp_recv_from(s, &mut buf), Err(WSAEINVAL), "unbound");
    p.wsp_bind(s, a("198.18.0.1:9100")).unwrap();
    p.wsp_ioctl(s, FIONBIO, &mut 1).unwrap();
    assert_eq!(p.wsp_recv_from(s, &mut buf), Err(WSAEWOULDBLOCK));
    let c = udp(&p, AF_INET);
    p.wsp_send_to(c, b"0123456789", a("198.18.0.1:9100"))
        .unwrap();
    p.wsp_send_to(c, b"ab", a("198.18.0.1:9100")).unwrap();
    assert_eq!(p.wsp_recv_from(s, &mut buf), Err(WSAEMSGSIZE));
    assert_eq!(&buf, b"0123", "buffer filled with the head of the datagram");
    // The truncated datagram was consumed.
    assert_eq!(p.wsp_recv_from(s, &mut buf).map(|r| r.0), Ok(2));
    assert_eq!(p.wsp_recv_from(s, &mut buf), Err(WSAEWOULDBLOCK));
    // wsp_recv_msg reports truncation with the sender.
    p.wsp_send_to(c, b"0123456789", a("198.18.0.1:9100"))
        .unwrap();
    let m = p.wsp_recv_msg(s, &mut buf).unwrap();
    assert!(m.truncated());
    assert_eq!(
        (m.len, m.datagram_len, m.from),
        (
            4,
            10,
            p.wsp_get_sock_name(c)
                .map(|l| { SocketAddr::new("198.18.0.1".parse().unwrap(), l.port()) })
                .unwrap()
        )
    );
}

#[test]
fn fionbio_fionread_and_bad_ioctl() {
    let (p, _dp) = setup();
    let s = udp(&p, AF_INET);
    let mut arg = 0xdead;
    assert_eq!(p.wsp_ioctl(s, FIONREAD, &mut arg), Ok(()));
    assert_eq!(arg, 0, "unbound: nothing readable");
    p.wsp_bind(s, a("0.0.0.0:9200")).unwrap();
    for code in [0, 1, 0x8004_667D, 0x4004_667E, u32::MAX] {
        assert_eq!(
            p.wsp_ioctl(s, code, &mut arg),
            Err(WSAEINVAL),
            "code {code:#x}"
        );
    }
    let c = udp(&p, AF_INET);
    p.wsp_send_to(c, &[7; 100], a("198.18.0.1:9200")).unwrap();
    p.wsp_send_to(c, &[8; 30], a("198.18.0.1:9200")).unwrap();
    p.wsp_ioctl(s, FIONREAD, &mut arg).unwrap();
    assert_eq!(arg, 100, "size of the first datagram");
    let mut buf = [0u8; 200];
    p.wsp_recv_from(s, &mut buf).unwrap();
    p.wsp_ioctl(s, FIONREAD, &mut arg).unwrap();
    assert_eq!(arg, 30);
    p.wsp_recv_from(s, &mut buf).unwrap();
    // FIONBIO on, then off again: blocking recv then waits for data.
    p.wsp_ioctl(s, FIONBIO, &mut 7).unwrap();
    assert_eq!(p.wsp_recv_from(s, &mut buf), Err(WSAEWOULDBLOCK));
    p.wsp_ioctl(s, FIONBIO, &mut 0).unwrap();
    let p2 = p.clone();
    let t = thread::spawn(move || p2.wsp_recv_from(s, &mut [0u8; 8]).map(|r| r.0));
    wait_for_waiter(&p, s);
    p.wsp_send_to(c, b"late", a("198.18.0.1:9200")).unwrap();
    assert_eq!(t.join().unwrap(), Ok(4));
}

#[test]
fn blocking_recv_woken_by_delivery_from_other_threads() {
    let (p, _dp) = setup();
    let s = udp(&p, AF_INET6);
    p.wsp_bind(s, a("[::]:9300")).unwrap();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let p = p.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 8];
                p.wsp_recv_from(s, &mut buf).map(|(n, _)| buf[..n].to_vec())
            })
        })
        .collect();
    wait_for_waiter(&p, s);
    for i in 0..3u8 {
        let p = p.clone();
        thread::spawn(move || {
            assert!(p.deliver_udp(0, a("[2001:db8::1]:9300"), a("[2001:db8::9]:1"), &[i]));
        })
        .join()
        .unwrap();
    }
    let mut got: Vec<u8> = readers
        .into_iter()
        .map(|t| t.join().unwrap().unwrap()[0])
        .collect();
    got.sort();
    assert_eq!(got, vec![0, 1, 2]);
}

#[test]
fn close_from_another_thread_interrupts_blocking_recv() {
    let (p, dp) = setup();
    let s = udp(&p, AF_INET);
    p.wsp_bind(s, a("198.18.0.1:9400")).unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let p = p.clone();
            thread::spawn(move || p.wsp_recv_from(s, &mut [0u8; 8]))
        })
        .collect();
    wait_for_waiter(&p, s);
    let e = p.table.get(s).unwrap();
    while lock(&e.state).waiters < 2 {
        thread::sleep(Duration::from_millis(1));
    }
    drop(e);
    p.wsp_close_socket(s).unwrap();
    for t in readers {
        assert_eq!(t.join().unwrap(), Err(WSAEINTR));
    }
    assert_eq!(p.wsp_recv_from(s, &mut [0u8; 8]), Err(WSAENOTSOCK));
    assert_eq!(p.wsp_close_socket(s), Err(WSAENOTSOCK));
    let key = udp_steer_key(a("198.18.0.1:9400"));
    assert_eq!(
        dp.steer_ops(),
        vec![SteerOp::Add(key), SteerOp::Remove(key)]
    );
    // Datagrams for the closed endpoint find no socket.
    assert!(!p.deliver_udp(0, a("198.18.0.1:9400"), a("198.18.0.2:1"), b"x"));
    assert_eq!(p.stats().udp_no_socket, 1);
}

#[test]
fn rcvbuf_overflow_drops_and_counts() {
    let (p, _dp) = setup();
    let s = udp(&p, AF_INET);
    p.wsp_bind(s, a("0.0.0.0:9500")).unwrap();
    let room = 3 * (100 + DATAGRAM_OVERHEAD) as i32;
    p.wsp_set_sock_opt(s, SOL_SOCKET, SO_RCVBUF, &int(room))
        .unwrap();
    let mut out = [0u8; 4];
    p.wsp_get_sock_opt(s, SOL_SOCKET, SO_RCVBUF, &mut out)
        .unwrap();
    assert_eq!(out, int(room));
    for _ in 0..5 {
        assert!(p.deliver_udp(0, a("198.18.0.1:9500"), a("198.18.0.2:1"), &[1; 100]));
    }
    let st = p.stats();
    assert_eq!((st.udp_delivered, st.udp_dropped_queue_full), (3, 2));
    let mut buf = [0u8; 128];
    p.wsp_recv_from(s, &mut buf).unwrap();
    assert!(p.deliver_udp(0, a("198.18.0.1:9500"), a("198.18.0.2:1"), &[1; 100]));
    assert_eq!(p.stats().udp_delivered, 4);
    // The default is 1 MiB.
    let d = udp(&p, AF_INET);
    p.wsp_get_sock_opt(d, SOL_SOCKET, SO_RCVBUF, &mut out)
        .unwrap();
    assert_eq!(out, int(1 << 20));
    // No socket at all: false, counted.
    assert!(!p.deliver_udp(0, a("198.18.0.1:1"), a("198.18.0.2:1"), b"x"));
    assert_eq!(p.stats().udp_no_socket, 1);
}

#[test]
fn udp_receive_counters_are_kept_per_rx_queue() {
    let (p, _dp) = LoopbackDatapath::provider(ProviderConfig {
        rx_queues: 3,
        ..ProviderConfig::default()
    });
    let s = udp(&p, AF_INET);
    p.wsp_bind(s, a("0.0.0.0:9510")).unwrap();
    let to = a("198.18.0.1:9510");
    for _ in 0..4 {
        assert!(p.deliver_udp(0, to, a("198.18.0.2:1"), b"q0"));
    }
    assert!(p.deliver_udp(2, to, a("198.18.0.2:1"), b"q2"));
    // A queue index beyond the configured count is counted in the last set, never a panic.
    assert!(p.deliver_udp(17, to, a("198.18.0.2:1"), b"q17"));
    assert!(!p.deliver_udp(1, a("198.18.0.1:1"), a("198.18.0.2:1"), b"none"));
    let st = p.stats();
    let per: Vec<_> = st
        .udp_queues
        .iter()
        .map(|q| (q.queue, q.delivered, q.no_socket))
        .collect();
    assert_eq!(per, vec![(0, 4, 0), (1, 0, 1), (2, 2, 0)]);
    assert_eq!((st.udp_delivered, st.udp_no_socket), (6, 1));
}

#[test]
fn socket_options_through_the_api() {
    let (p, _dp) = setup();
    let s = udp(&p, AF_INET);
    let mut out = [0u8; 8];
    type Case<'a> = (i32, i32, &'a [u8], Result<(), WsaError>);
    let set_cases: &[Case] = &[
        (SOL_SOCKET, SO_REUSEADDR, &int(1), Ok(())),
        (SOL_SOCKET, SO_SNDBUF, &int(4096), Ok(())),
        (SOL_SOCKET, SO_LINGER, &[1, 0, 5, 0], Err(WSAENOPROTOOPT)),
        (SOL_SOCKET, SO_DONTLINGER, &int(1), Err(WSAENOPROTOOPT)),
        (SOL_SOCKET, SO_KEEPALIVE, &int(1), Err(WSAENOPROTOOPT)),
        (IPPROTO_TCP, TCP_NODELAY, &int(1), Err(WSAENOPROTOOPT)),
        (SOL_SOCKET, 0x4242, &int(1), Err(WSAENOPROTOOPT)),
        (SOL_SOCKET, SO_TYPE, &int(1), Err(WSAENOPROTOOPT)),
        (SOL_SOCKET, SO_RCVBUF, &[0, 0], Err(WSAEFAULT)),
        (SOL_SOCKET, SO_RCVBUF, &int(-5), Err(WSAEINVAL)),
        (0x1234, SO_RCVBUF, &int(1), Err(WSAEINVAL)),
    ];
    for (i, &(level, name, val, want)) in set_cases.iter().enumerate() {
        assert_eq!(
            p.wsp_set_sock_opt(s, level, name, val),
            want,
            "set case {i}"
        );
    }
    assert_eq!(
        p.wsp_get_sock_opt(s, SOL_SOCKET, SO_REUSEADDR, &mut out),
        Ok(4)
    );
    assert_eq!(out[..4], int(1));
    assert_eq!(
        p.wsp_get_sock_opt(s, SOL_SOCKET, SO_SNDBUF, &mut out),
        Ok(4)
    );
    assert_eq!(out[..4], int(4096));
    assert_eq!(p.wsp_get_sock_opt(s, SOL_SOCKET, SO_TYPE, &mut out), Ok(4));
    assert_eq!(out[..4], int(SOCK_DGRAM));
    assert_eq!(p.wsp_get_sock_opt(s, SOL_SOCKET, SO_ERROR, &mut out), Ok(4));
    assert_eq!(out[..4], int(0));
    assert_eq!(
        p.wsp_get_sock_opt(s, SOL_SOCKET, SO_ERROR, &mut [0; 3]),
        Err(WSAEFAULT)
    );
    assert_eq!(
        p.wsp_get_sock_opt(s, SOL_SOCKET, SO_LINGER, &mut out),
        Err(WSAENOPROTOOPT)
    );
    assert_eq!(
        p.wsp_get_sock_opt(s, SOL_SOCKET, SO_DONTLINGER, &mut out),
        Err(WSAENOPROTOOPT)
    );
    assert_eq!(
        p.wsp_get_sock_opt(s, IPPROTO_TCP, TCP_NODELAY, &mut out),
        Err(WSAENOPROTOOPT)
    );
    assert_eq!(p.wsp_get_sock_opt(s, 77, SO_TYPE, &mut out), Err(WSAEINVAL));
}

#[test]
fn duplicate_shares_the_socket_until_the_last_close() {
    let (p, dp) = setup();
    let s = udp(&p, AF_INET);
    let d = p.duplicate(s).unwrap();
    assert_ne!(s, d);
    assert_eq!(p.stats().sockets_open, 1);
    assert_eq!(p.stats().handles_open, 2);
    // State is shared: bind through one, name through the other; options too.
    p.wsp_bind(s, a("198.18.0.1:9600")).unwrap();
    assert_eq!(p.wsp_get_sock_name(d), Ok(a("198.18.0.1:9600")));
    p.wsp_ioctl(d, FIONBIO, &mut 1).unwrap();
    assert_eq!(p.wsp_recv_from(s, &mut [0; 4]), Err(WSAEWOULDBLOCK));
    let d2 = p.duplicate(d).unwrap();
    p.wsp_close_socket(s).unwrap();
    assert_eq!(p.wsp_get_sock_name(s), Err(WSAENOTSOCK));
    // Still receiving through the remaining handles.
    assert!(p.deliver_udp(0, a("198.18.0.1:9600"), a("198.18.0.2:5"), b"hi"));
    assert_eq!(p.wsp_recv_from(d2, &mut [0; 4]), Ok((2, a("198.18.0.2:5"))));
    p.wsp_close_socket(d).unwrap();
    assert_eq!(p.stats().sockets_open, 1);
    assert_eq!(dp.steer_ops().len(), 1);
    p.wsp_close_socket(d2).unwrap();
    assert_eq!(p.stats().sockets_open, 0);
    assert_eq!(p.stats().handles_open, 0);
    assert_eq!(dp.steer_ops().len(), 2);
    assert!(!p.deliver_udp(0, a("198.18.0.1:9600"), a("198.18.0.2:5"), b"hi"));
    // The port is free again.
    let n = udp(&p, AF_INET);
    p.wsp_bind(n, a("198.18.0.1:9600")).unwrap();
}

#[test]
fn ephemeral_allocation_and_exhaustion() {
    let cfg = ProviderConfig {
        ephemeral_ports: 62000..=62002,
        ..Default::default()
    };
    let (p, _dp) = LoopbackDatapath::provider(cfg);
    // An explicit bind inside the range takes that port out of the pool.
    let fixed = udp(&p, AF_INET);
    p.wsp_bind(fixed, a("198.18.0.1:62001")).unwrap();
    let s1 = udp(&p, AF_INET);
    p.wsp_send_to(s1, b"x", a("198.18.0.2:9")).unwrap();
    let s2 = udp(&p, AF_INET);
    p.wsp_bind(s2, a("0.0.0.0:0")).unwrap();
    let ports = [s1, s2].map(|s| p.wsp_get_sock_name(s).unwrap().port());
    assert_eq!(ports, [62000, 62002]);
    let s3 = udp(&p, AF_INET);
    assert_eq!(p.wsp_send_to(s3, b"x", a("198.18.0.2:9")), Err(WSAENOBUFS));
    assert_eq!(p.wsp_bind(s3, a("0.0.0.0:0")), Err(WSAENOBUFS));
    assert_eq!(p.wsp_get_sock_name(s3), Err(WSAEINVAL));
    // IPv6 has its own pool.
    let v6 = udp(&p, AF_INET6);
    p.wsp_send_to(v6, b"x", a("[2001:db8::2]:9")).unwrap();
    assert_eq!(p.wsp_get_sock_name(v6).unwrap().port(), 62000);
    // Closing returns the port.
    p.wsp_close_socket(s1).unwrap();
    p.wsp_send_to(s3, b"x", a("198.18.0.2:9")).unwrap();
    assert_eq!(p.wsp_get_sock_name(s3).unwrap().port(), 62000);
    // Sent from the first local address, with the ephemeral port.
    assert_eq!(_dp.sent().last().unwrap().src, a("198.18.0.1:62000"));
}

#[test]
fn concurrent_open_bind_send_close_leaks_nothing() {
    let (p, dp) = setup();
    dp.record_sent(false);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let p = p.clone();
            thread::spawn(move || {
                for i in 0..300 {
                    let af = if (t + i) % 2 == 0 { AF_INET } else { AF_INET6 };
                    let s = p.wsp_socket(af, SOCK_DGRAM, 0).unwrap();
                    let to = if af == AF_INET {
                        a("198.18.0.1:7")
                    } else {
                        a("[2001:db8::1]:7")
                    };
                    match i % 4 {
                        0 => {}
                        1 => {
                            p.wsp_send_to(s, b"x", to).unwrap();
                        }
                        2 => {
                            let d = p.duplicate(s).unwrap();
                            p.wsp_bind(d, SocketAddr::new(to.ip(), 0)).unwrap();
                            p.wsp_close_socket(d).unwrap();
                        }
                        _ => {
                            p.wsp_bind(s, SocketAddr::new(to.ip(), 0)).unwrap();
                            let me = p.wsp_get_sock_name(s).unwrap();
                            p.wsp_send_to(s, b"me", me).unwrap();
                            // The "engine" below may have queued 1-byte datagrams first.
                            while p.wsp_recv_from(s, &mut [0; 4]).unwrap().0 != 2 {}
                        }
                    }
                    p.wsp_close_socket(s).unwrap();
                    assert_eq!(p.wsp_close_socket(s), Err(WSAENOTSOCK));
                }
            })
        })
        .collect();
    // Meanwhile the "engine" delivers to whatever is bound.
    let engine = {
        let p = p.clone();
        thread::spawn(move || {
            for port in (61000..=61999).cycle().take(20_000) {
                p.deliver_udp(
                    0,
                    SocketAddr::new("198.18.0.1".parse().unwrap(), port),
                    a("198.18.0.2:1"),
                    b"z",
                );
            }
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    engine.join().unwrap();
    let st = p.stats();
    assert_eq!(
        (st.sockets_open, st.handles_open, st.udp_endpoints),
        (0, 0, 0),
        "{st:?}"
    );
    let ops = dp.steer_ops();
    let adds = ops.iter().filter(|o| matches!(o, SteerOp::Add(_))).count();
    assert_eq!(adds * 2, ops.len(), "every add has its remove");
    assert_eq!(adds, 6 * 300 * 3 / 4);
}

#[test]
fn stats_serialize() {
    let (p, _dp) = setup();
    let _s = udp(&p, AF_INET);
    let j = serde_json::to_value(p.stats()).unwrap();
    assert_eq!(j["sockets_open"], 1);
    assert_eq!(j["udp_dropped_queue_full"], 0);
    let cfg = serde_json::to_string(&ProviderConfig::default()).unwrap();
    let back: ProviderConfig = serde_json::from_str(&cfg).unwrap();
    assert_eq!(back, ProviderConfig::default());
}

/// Readiness for poll/select: a UDP socket is writable at once and readable once a datagram is
/// queued; a waker registered against the generation read with the readiness is woken by the
/// delivery, and one registered against a stale generation is refused.
#[test]
fn readiness_and_watch_follow_udp_delivery() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (p, _dp) = setup();
    let s = udp(&p, AF_INET);
    p.wsp_bind(s, a("0.0.0.0:9520")).unwrap();
    let (seen, r) = p.readiness(s).unwrap();
    assert!(r.writable && !r.readable && !r.error);
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(count.clone());
    assert_eq!(p.watch(s, seen, &waker), Ok(true));
    assert!(p.deliver_udp(0, a("198.18.0.1:9520"), a("198.18.0.2:1"), b"x"));
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    let (seen2, r) = p.readiness(s).unwrap();
    assert!(r.readable);
    assert_ne!(seen, seen2);
    assert_eq!(p.watch(s, seen, &waker), Ok(false));
    p.wsp_close_socket(s).unwrap();
    assert_eq!(p.readiness(s), Err(WSAENOTSOCK));
}
