//! Stream sockets through the WSP calls, over the loopback datapath (the real TCP engine, no
//! network): the call semantics and error codes of the TCP issue.
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::loopback::{LoopbackDatapath, SteerOp};
use super::stream::tcp_steer_key;
use super::*;
use crate::socket::options::{FIONBIO, FIONREAD, Linger, SO_ERROR, SO_LINGER, SOL_SOCKET};
use WsaError::*;

fn setup() -> (Arc<Provider>, Arc<LoopbackDatapath>) {
    let mut cfg = ProviderConfig::default();
    cfg.tcp.time_wait = Duration::from_millis(200);
    cfg.tcp.delayed_ack = Duration::from_millis(5);
    LoopbackDatapath::provider(cfg)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp(p: &Provider, v6: bool) -> Socket {
    p.wsp_socket(
        if v6 { AF_INET6 } else { AF_INET },
        SOCK_STREAM,
        IPPROTO_TCP,
    )
    .unwrap()
}

fn listener(p: &Provider, at: &str) -> Socket {
    let v6 = at.starts_with('[');
    let l = tcp(p, v6);
    p.wsp_bind(l, addr(at)).unwrap();
    p.wsp_listen(l, 16).unwrap();
    l
}

/// A connected (client, server) pair.
fn pair(p: &Arc<Provider>, at: &str) -> (Socket, Socket, Socket) {
    let l = listener(p, at);
    let c = tcp(p, at.starts_with('['));
    let p2 = p.clone();
    let target = addr(at);
    let t = thread::spawn(move || p2.wsp_connect(c, target));
    let (s, from) = p.wsp_accept(l).unwrap();
    t.join().unwrap().unwrap();
    assert_eq!(from, p.wsp_get_sock_name(c).unwrap());
    assert_eq!(p.wsp_get_peer_name(c).unwrap(), target);
    (l, c, s)
}

fn send_all(p: &Provider, s: Socket, data: &[u8]) {
    assert_eq!(p.wsp_send(s, data), Ok(data.len()));
}

fn recv_exact(p: &Provider, s: Socket, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = p.wsp_recv(s, &mut out[got..]).unwrap();
        assert!(k > 0, "EOF after {got} of {n}");
        got += k;
    }
    out
}

#[test]
fn connect_accept_transfer_and_graceful_close_v4_v6() {
    for at in ["198.18.0.1:5000", "[2001:db8::1]:5001"] {
        let (p, _dp) = setup();
        let (l, c, s) = pair(&p, at);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
        let p2 = p.clone();
        let d2 = data.clone();
        let w = thread::spawn(move || {
            send_all(&p2, c, &d2);
            p2.wsp_shutdown(c, SD_SEND).unwrap();
        });
        assert_eq!(recv_exact(&p, s, data.len()), data);
        let mut b = [0u8; 16];
        assert_eq!(p.wsp_recv(s, &mut b), Ok(0), "graceful EOF");
        w.join().unwrap();
        // The other direction still works after SD_SEND.
        send_all(&p, s, b"reply");
        assert_eq!(recv_exact(&p, c, 5), b"reply");
        assert_eq!(p.wsp_send(c, b"x"), Err(WSAESHUTDOWN));
        for h in [c, s, l] {
            p.wsp_close_socket(h).unwrap();
        }
    }
}

#[test]
fn misuse_returns_documented_codes() {
    let (p, _dp) = setup();
    let s = tcp(&p, false);
    let mut b = [0u8; 8];
    assert_eq!(p.wsp_send(s, b"x"), Err(WSAENOTCONN), "send before connect");
    assert_eq!(
        p.wsp_recv(s, &mut b),
        Err(WSAENOTCONN),
        "recv before connect"
    );
    assert_eq!(p.wsp_listen(s, 5), Err(WSAEINVAL), "listen unbound");
    assert_eq!(
        p.wsp_accept(s).map(|_| ()),
        Err(WSAEINVAL),
        "accept on a non-listener"
    );
    assert_eq!(p.wsp_get_peer_name(s), Err(WSAENOTCONN));
    assert_eq!(p.wsp_shutdown(s, SD_SEND), Err(WSAENOTCONN));
    assert_eq!(
        p.wsp_connect(s, addr("[2001:db8::1]:1")),
        Err(WSAEFAULT),
        "family"
    );
    assert_eq!(p.wsp_connect(s, addr("0.0.0.0:80")), Err(WSAEADDRNOTAVAIL));
    assert_eq!(
        p.wsp_connect(s, addr("198.18.0.1:0")),
        Err(WSAEADDRNOTAVAIL)
    );
    assert_eq!(p.wsp_bind(s, addr("198.18.0.9:1")), Err(WSAEADDRNOTAVAIL));
    p.wsp_bind(s, addr("198.18.0.1:6000")).unwrap();
    assert_eq!(
        p.wsp_bind(s, addr("198.18.0.1:6001")),
        Err(WSAEINVAL),
        "bound twice"
    );
    let other = tcp(&p, false);
    assert_eq!(
        p.wsp_bind(other, addr("198.18.0.1:6000")),
        Err(WSAEADDRINUSE)
    );
    assert_eq!(p.wsp_shutdown(s, 7), Err(WSAEINVAL));
    p.wsp_listen(s, 5).unwrap();
    assert_eq!(p.wsp_listen(s, 5), Ok(()), "listen again");
    assert_eq!(
        p.wsp_connect(s, addr("198.18.0.1:6000")),
        Err(WSAEINVAL),
        "connect a listener"
    );
    // UDP-only calls on a stream socket map to the stream calls (Winsock).
    let (_l, c, _srv) = pair(&p, "198.18.0.1:6002");
    assert_eq!(
        p.wsp_connect(c, addr("198.18.0.1:6002")),
        Err(WSAEISCONN),
        "connect twice"
    );
    assert_eq!(p.wsp_send_to(c, b"abc", addr("1.2.3.4:5")), Ok(3));
    // Stale handles.
    p.wsp_close_socket(other).unwrap();
    assert_eq!(
        p.wsp_connect(other, addr("198.18.0.1:6000")),
        Err(WSAENOTSOCK)
    );
    assert_eq!(p.wsp_listen(other, 1), Err(WSAENOTSOCK));
    assert_eq!(p.wsp_accept(other).map(|_| ()), Err(WSAENOTSOCK));
    assert_eq!(p.wsp_send(other, b"x"), Err(WSAENOTSOCK));
    assert_eq!(p.wsp_recv(other, &mut b), Err(WSAENOTSOCK));
    assert_eq!(p.wsp_shutdown(other, SD_BOTH), Err(WSAENOTSOCK));
    assert_eq!(p.wsp_get_peer_name(other), Err(WSAENOTSOCK));
    assert_eq!(p.wsp_close_socket(other), Err(WSAENOTSOCK));
    // Datagram sockets do not listen.
    let u = p.wsp_socket(AF_INET, SOCK_DGRAM, 0).unwrap();
    assert_eq!(p.wsp_listen(u, 1), Err(WSAEOPNOTSUPP));
}

#[test]
fn nonblocking_connect_accept_send_recv() {
    let (p, _dp) = setup();
    let l = listener(&p, "198.18.0.1:5100");
    let mut on = 1;
    p.wsp_ioctl(l, FIONBIO, &mut on).unwrap();
    assert_eq!(p.wsp_accept(l).map(|_| ()), Err(WSAEWOULDBLOCK));
    let c = tcp(&p, false);
    p.wsp_ioctl(c, FIONBIO, &mut on).unwrap();
    assert_eq!(
        p.wsp_connect(c, addr("198.18.0.1:5100")),
        Err(WSAEWOULDBLOCK)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_already = false;
    loop {
        match p.wsp_connect(c, addr("198.18.0.1:5100")) {
            Err(WSAEALREADY) => saw_already = true,
            Err(WSAEISCONN) => break,
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(1));
    }
    let _ = saw_already; // the handshake may finish before the first retry
    let s = loop {
        match p.wsp_accept(l) {
            Ok((s, _)) => break s,
            Err(WSAEWOULDBLOCK) => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e:?}"),
        }
    };
    let mut b = [0u8; 64];
    // The accepted socket inherits the listener's nonblocking mode.
    assert_eq!(p.wsp_recv(s, &mut b), Err(WSAEWOULDBLOCK));
    assert_eq!(p.wsp_send(c, b"hello"), Ok(5));
    let n = loop {
        match p.wsp_recv(s, &mut b) {
            Ok(n) => break n,
            Err(WSAEWOULDBLOCK) => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(&b[..n], b"hello");
    let mut avail = 0;
    p.wsp_ioctl(s, FIONREAD, &mut avail).unwrap();
    assert_eq!(avail, 0);
    // A full send buffer: partial send, then WSAEWOULDBLOCK (the peer never reads).
    let big = vec![7u8; 8 << 20];
    let mut total = 0;
    let err = loop {
        match p.wsp_send(c, &big) {
            Ok(n) => total += n,
            Err(e) => break e,
        }
        assert!(total < 64 << 20, "send buffer never filled");
    };
    assert_eq!(err, WSAEWOULDBLOCK);
    assert!(total > 0);
}

/// Found by the `wsp_calls` fuzz target: a nonblocking connect that nobody polled again, whose
/// connection was established, received data and was then reset, must still hand out that data
/// (then WSAECONNRESET), not WSAENOTCONN as if the connect had failed.
#[test]
fn unpolled_nonblocking_connect_still_reads_data_after_a_reset() {
    let (p, _dp) = setup();
    let l = listener(&p, "198.18.0.1:5150");
    let c = tcp(&p, false);
    let mut on = 1;
    p.wsp_ioctl(c, FIONBIO, &mut on).unwrap();
    assert_eq!(
        p.wsp_connect(c, addr("198.18.0.1:5150")),
        Err(WSAEWOULDBLOCK)
    );
    let (s, _) = p.wsp_accept(l).unwrap();
    send_all(&p, s, b"before the reset");
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &linger.to_bytes())
        .unwrap();
    // Wait until the data is readable (FIONREAD) and the RST has arrived (SO_ERROR would
    // consume it: watch the engine through the connection count instead).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut avail = 0;
        p.wsp_ioctl(c, FIONREAD, &mut avail).unwrap();
        if avail == 16 {
            break;
        }
        assert!(Instant::now() < deadline, "data never arrived");
        thread::sleep(Duration::from_millis(1));
    }
    p.wsp_close_socket(s).unwrap();
    thread::sleep(Duration::from_millis(50));
    let mut avail = 0;
    p.wsp_ioctl(c, FIONREAD, &mut avail).unwrap();
    assert_eq!(avail, 16);
    let mut b = [0u8; 64];
    assert_eq!(p.wsp_recv(c, &mut b), Ok(16));
    assert_eq!(&b[..16], b"before the reset");
    assert_eq!(p.wsp_recv(c, &mut b), Err(WSAECONNRESET));
    // The connect itself succeeded.
    assert_eq!(p.wsp_connect(c, addr("198.18.0.1:5150")), Err(WSAEISCONN));
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    let (p, _dp) = setup();
    let c = tcp(&p, false);
    assert_eq!(
        p.wsp_connect(c, addr("198.18.0.1:5999")),
        Err(WSAECONNREFUSED)
    );
    let mut v = [0u8; 4];
    // The failure stays visible through SO_ERROR until read.
    p.wsp_get_sock_opt(c, SOL_SOCKET, SO_ERROR, &mut v).unwrap();
    assert_eq!(i32::from_ne_bytes(v), WSAECONNREFUSED.code());
}

#[test]
fn linger_zero_close_resets_the_peer() {
    let (p, _dp) = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:5200");
    send_all(&p, c, b"queued");
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    p.wsp_set_sock_opt(c, SOL_SOCKET, SO_LINGER, &linger.to_bytes())
        .unwrap();
    p.wsp_close_socket(c).unwrap();
    // Data that arrived before the reset is still readable, then WSAECONNRESET.
    let mut b = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match p.wsp_recv(s, &mut b) {
            Ok(n) if n > 0 => continue,
            Err(WSAECONNRESET) => break,
            other => panic!("expected reset, got {other:?}"),
        }
    }
    assert!(Instant::now() < deadline);
}

#[test]
fn blocking_recv_is_interrupted_by_close_from_another_thread() {
    let (p, _dp) = setup();
    let (_l, _c, s) = pair(&p, "198.18.0.1:5300");
    let p2 = p.clone();
    let t = thread::spawn(move || {
        let mut b = [0u8; 8];
        p2.wsp_recv(s, &mut b)
    });
    thread::sleep(Duration::from_millis(50));
    p.wsp_close_socket(s).unwrap();
    assert_eq!(t.join().unwrap(), Err(WSAEINTR));
}

#[test]
fn steer_entries_follow_sockets_and_time_wait() {
    let (p, dp) = setup();
    let (l, c, s) = pair(&p, "198.18.0.1:5400");
    p.wsp_close_socket(l).unwrap();
    // Closing the listener leaves its endpoint steered for the accepted connection.
    let key = tcp_steer_key(addr("198.18.0.1:5400"));
    assert!(!dp.steer_ops().contains(&SteerOp::Remove(key)));
    // Closing the accepted socket while its connection still lives (the client has not
    // closed) keeps the endpoint steered too: the connection holds the reference.
    p.wsp_close_socket(s).unwrap();
    thread::sleep(Duration::from_millis(20));
    assert!(!dp.steer_ops().contains(&SteerOp::Remove(key)));
    p.wsp_close_socket(c).unwrap();
    // After TIME_WAIT (200 ms here) every endpoint is released.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ops = dp.steer_ops();
        let adds = ops.iter().filter(|o| matches!(o, SteerOp::Add(_))).count();
        let removes = ops
            .iter()
            .filter(|o| matches!(o, SteerOp::Remove(_)))
            .count();
        if adds == removes && p.tcp_counts().0 == 0 {
            assert!(ops.contains(&SteerOp::Remove(key)));
            break;
        }
        assert!(Instant::now() < deadline, "STEER entries left: {ops:?}");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(p.stats().sockets_open, 0);
}

#[test]
fn many_concurrent_connections_echo() {
    let (p, _dp) = setup();
    // Backlog ≥ the number of simultaneous clients: overflow resets (documented).
    let l = tcp(&p, false);
    p.wsp_bind(l, addr("198.18.0.1:5500")).unwrap();
    p.wsp_listen(l, 64).unwrap();
    let p2 = p.clone();
    let server = thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..50 {
            let (s, _) = p2.wsp_accept(l).unwrap();
            let p3 = p2.clone();
            workers.push(thread::spawn(move || {
                let mut b = vec![0u8; 4096];
                loop {
                    let n = p3.wsp_recv(s, &mut b).unwrap();
                    if n == 0 {
                        break;
                    }
                    send_all(&p3, s, &b[..n]);
                }
                p3.wsp_close_socket(s).unwrap();
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    });
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let p = p.clone();
            thread::spawn(move || {
                let c = tcp(&p, false);
                p.wsp_connect(c, addr("198.18.0.1:5500")).unwrap();
                let data: Vec<u8> = (0..16384u32).map(|j| (j as u8) ^ (i as u8)).collect();
                let p2 = p.clone();
                let d2 = data.clone();
                let w = thread::spawn(move || send_all(&p2, c, &d2));
                assert_eq!(recv_exact(&p, c, data.len()), data);
                w.join().unwrap();
                p.wsp_shutdown(c, SD_SEND).unwrap();
                let mut b = [0u8; 1];
                assert_eq!(p.wsp_recv(c, &mut b), Ok(0));
                p.wsp_close_socket(c).unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.join().unwrap();
}

fn set_linger(p: &Provider, s: Socket, onoff: u16, secs: u16) {
    let l = Linger {
        l_onoff: onoff,
        l_linger: secs,
    };
    p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &l.to_bytes())
        .unwrap();
}

/// Fill the peer's receive window and our send buffer: the receiver never reads.
fn stuff(p: &Provider, c: Socket) -> usize {
    let mut on = 1;
    p.wsp_ioctl(c, FIONBIO, &mut on).unwrap();
    let chunk = vec![1u8; 1 << 20];
    let mut total = 0;
    // Full means: WOULDBLOCK and still WOULDBLOCK after the peer's window had time to fill.
    let mut blocked = 0;
    while blocked < 5 {
        match p.wsp_send(c, &chunk) {
            Ok(n) => {
                total += n;
                blocked = 0;
            }
            Err(WSAEWOULDBLOCK) => {
                blocked += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let mut off = 0;
    p.wsp_ioctl(c, FIONBIO, &mut off).unwrap();
    total
}

fn small_buffers() -> (Arc<Provider>, Arc<LoopbackDatapath>) {
    let mut cfg = ProviderConfig::default();
    cfg.tcp.time_wait = Duration::from_millis(200);
    cfg.tcp.send_buffer = 64 * 1024;
    cfg.tcp.recv_buffer = 64 * 1024;
    cfg.default_sndbuf = 64 * 1024;
    cfg.default_rcvbuf = 64 * 1024;
    LoopbackDatapath::provider(cfg)
}

#[test]
fn nonblocking_linger_with_unacked_data_would_block_and_initiates_nothing() {
    let (p, _dp) = small_buffers();
    let (_l, c, s) = pair(&p, "198.18.0.1:5600");
    assert!(stuff(&p, c) > 0);
    set_linger(&p, c, 1, 5);
    let mut on = 1;
    p.wsp_ioctl(c, FIONBIO, &mut on).unwrap();
    assert_eq!(p.wsp_close_socket(c), Err(WSAEWOULDBLOCK));
    assert_eq!(
        p.wsp_close_socket(c),
        Err(WSAEWOULDBLOCK),
        "retry fails while unacked"
    );
    // The handle is still valid and no FIN was sent: the peer sees no EOF, data still flows.
    assert!(p.wsp_get_peer_name(c).is_ok());
    let mut b = vec![0u8; 4096];
    assert!(p.wsp_recv(s, &mut b).unwrap() > 0);
    assert_eq!(p.stats().close_graceful + p.stats().close_hard, 0);
    // Setting linger 0 makes the next close succeed, as a hard close.
    set_linger(&p, c, 1, 0);
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    assert_eq!(p.stats().close_hard, 1);
}

#[test]
fn nonblocking_linger_succeeds_after_shutdown_or_when_all_acknowledged() {
    let (p, _dp) = small_buffers();
    let (_l, c, _s) = pair(&p, "198.18.0.1:5610");
    stuff(&p, c);
    set_linger(&p, c, 1, 5);
    let mut on = 1;
    p.wsp_ioctl(c, FIONBIO, &mut on).unwrap();
    assert_eq!(p.wsp_close_socket(c), Err(WSAEWOULDBLOCK));
    p.wsp_shutdown(c, SD_SEND).unwrap();
    assert_eq!(
        p.wsp_close_socket(c),
        Ok(()),
        "after WSPShutdown the close succeeds"
    );

    let (_l2, c2, _s2) = pair(&p, "198.18.0.1:5611");
    send_all(&p, c2, b"small");
    thread::sleep(Duration::from_millis(50)); // acknowledged by now
    set_linger(&p, c2, 1, 5);
    p.wsp_ioctl(c2, FIONBIO, &mut on).unwrap();
    assert_eq!(
        p.wsp_close_socket(c2),
        Ok(()),
        "nothing unacknowledged: graceful at once"
    );
}

#[test]
fn blocking_linger_times_out_with_a_reset_and_meanwhile_the_socket_is_in_progress() {
    let (p, _dp) = small_buffers();
    let (_l, c, s) = pair(&p, "198.18.0.1:5620");
    stuff(&p, c);
    set_linger(&p, c, 1, 1);
    let p2 = p.clone();
    let started = Instant::now();
    let closer = thread::spawn(move || p2.wsp_close_socket(c));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(p.wsp_send(c, b"x"), Err(WSAEINPROGRESS));
    assert_eq!(p.wsp_close_socket(c), Err(WSAEINPROGRESS));
    assert_eq!(closer.join().unwrap(), Ok(()));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "returned after {took:?}");
    assert!(
        took < Duration::from_millis(1100),
        "returned after {took:?}"
    );
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    assert_eq!(p.stats().close_linger_timeout_reset, 1);
    // The peer reads what arrived, then the reset.
    let mut b = vec![0u8; 1 << 16];
    let err = loop {
        match p.wsp_recv(s, &mut b) {
            Ok(n) if n > 0 => continue,
            other => break other,
        }
    };
    assert_eq!(err, Err(WSAECONNRESET));
}

#[test]
fn blocking_linger_returns_early_when_the_peer_reads_everything() {
    let (p, _dp) = small_buffers();
    let (_l, c, s) = pair(&p, "198.18.0.1:5630");
    let sent = stuff(&p, c);
    set_linger(&p, c, 1, 10);
    let p2 = p.clone();
    let reader = thread::spawn(move || {
        let mut b = vec![0u8; 1 << 16];
        let mut got = 0;
        loop {
            let n = p2.wsp_recv(s, &mut b).unwrap();
            if n == 0 {
                return got;
            }
            got += n;
        }
    });
    let started = Instant::now();
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(reader.join().unwrap(), sent, "every byte, then EOF");
    assert_eq!(p.stats().close_graceful, 1);
}

#[test]
fn close_with_unread_data_resets_and_is_counted() {
    let (p, _dp) = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:5640");
    send_all(&p, c, b"never read");
    thread::sleep(Duration::from_millis(50));
    p.wsp_close_socket(s).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(p.wsp_recv(c, &mut b), Err(WSAECONNRESET));
    assert_eq!(p.stats().close_unread_data_reset, 1);
}

#[test]
fn close_with_the_datapath_down_releases_the_handle_and_says_netdown() {
    let (p, dp) = setup();
    let (_l, c, _s) = pair(&p, "198.18.0.1:5650");
    dp.set_up(false);
    assert_eq!(p.wsp_close_socket(c), Err(WSAENETDOWN));
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    dp.set_up(true);
}

#[test]
fn only_the_last_duplicate_disconnects() {
    let (p, _dp) = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:5660");
    let d = p.duplicate(c).unwrap();
    p.wsp_close_socket(c).unwrap();
    send_all(&p, d, b"still here");
    assert_eq!(recv_exact(&p, s, 10), b"still here");
    p.wsp_close_socket(d).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(
        p.wsp_recv(s, &mut b),
        Ok(0),
        "EOF only after the last handle"
    );
}
