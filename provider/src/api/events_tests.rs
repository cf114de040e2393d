//! Event select, overlapped I/O and their interaction with close (DESIGN §7, §8), over the
//! loopback datapath (the real TCP engine, no network).
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::socket::options::{FIONBIO, Linger, SO_LINGER, SOL_SOCKET};
use WsaError::*;

const T: Duration = Duration::from_secs(5);
/// How long "nothing is recorded" is watched for.
const QUIET: Duration = Duration::from_millis(150);

fn setup() -> Arc<Provider> {
    let mut cfg = ProviderConfig::default();
    cfg.tcp.time_wait = Duration::from_millis(200);
    cfg.tcp.delayed_ack = Duration::from_millis(5);
    LoopbackDatapath::provider(cfg).0
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp(p: &Provider) -> Socket {
    p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP).unwrap()
}

fn listener(p: &Provider, at: &str) -> Socket {
    let l = tcp(p);
    p.wsp_bind(l, addr(at)).unwrap();
    p.wsp_listen(l, 16).unwrap();
    l
}

/// A connected (listener, client, server) triple over blocking calls.
fn pair(p: &Arc<Provider>, at: &str) -> (Socket, Socket, Socket) {
    let l = listener(p, at);
    let c = tcp(p);
    let p2 = p.clone();
    let target = addr(at);
    let t = thread::spawn(move || p2.wsp_connect(c, target));
    let (s, _) = p.wsp_accept(l).unwrap();
    t.join().unwrap().unwrap();
    (l, c, s)
}

/// Wait on `ev` and enumerate until every event in `want` was seen; returns the union (errors
/// of the last enumeration that carried each event).
fn wait_events(p: &Provider, s: Socket, ev: &WsaEvent, want: u32) -> NetworkEvents {
    let deadline = Instant::now() + T;
    let mut acc = NetworkEvents::default();
    while acc.events & want != want {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            ev.wait(Some(left)),
            "timed out waiting for {want:#x}, saw {:#x}",
            acc.events
        );
        let n = p.wsp_enum_network_events(s, Some(ev)).unwrap();
        for bit in 0..FD_MAX_EVENTS {
            if n.events & (1 << bit) != 0 {
                acc.errors[bit] = n.errors[bit];
            }
        }
        acc.events |= n.events;
    }
    acc
}

/// Nothing gets recorded for `QUIET`.
fn assert_quiet(p: &Provider, s: Socket, ev: &WsaEvent, what: &str) {
    assert!(!ev.wait(Some(QUIET)), "{what}: event set");
    assert_eq!(
        p.wsp_enum_network_events(s, None).unwrap().events,
        0,
        "{what}"
    );
}

fn linger0(p: &Provider, s: Socket) {
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &l.to_bytes())
        .unwrap();
}

fn recv_n(p: &Provider, s: Socket, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    let deadline = Instant::now() + T;
    while got < n {
        match p.wsp_recv(s, &mut out[got..]) {
            Ok(0) => panic!("EOF after {got}"),
            Ok(k) => got += k,
            Err(WSAEWOULDBLOCK) => {
                assert!(Instant::now() < deadline, "timeout");
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    out
}

// ------------------------------------------------------------------ WSPEventSelect

#[test]
fn event_sequence_connect_accept_read_write_graceful_close() {
    let p = setup();
    let l = listener(&p, "198.18.0.1:7000");
    let lev = WsaEvent::new();
    p.wsp_event_select(l, lev.clone(), FD_ACCEPT | FD_READ | FD_WRITE | FD_CLOSE)
        .unwrap();
    let c = tcp(&p);
    let cev = WsaEvent::new();
    p.wsp_event_select(c, cev.clone(), FD_ALL).unwrap();
    assert_eq!(
        p.wsp_connect(c, addr("198.18.0.1:7000")),
        Err(WSAEWOULDBLOCK),
        "event select forces nonblocking"
    );
    let n = wait_events(&p, c, &cev, FD_CONNECT | FD_WRITE);
    assert_eq!(n.errors[FD_CONNECT_BIT], 0);
    assert_eq!(n.errors[FD_WRITE_BIT], 0);
    assert!(!n.has(FD_READ) && !n.has(FD_CLOSE));

    let n = wait_events(&p, l, &lev, FD_ACCEPT);
    assert_eq!(n.error(FD_ACCEPT), 0);
    let (s, _) = p.wsp_accept(l).unwrap();
    // The accepted socket inherits the selection (and the event object): FD_WRITE at accept.
    let n = wait_events(&p, s, &lev, FD_WRITE);
    assert!(!n.has(FD_READ));
    let mut b = [0u8; 16];
    assert_eq!(
        p.wsp_recv(s, &mut b),
        Err(WSAEWOULDBLOCK),
        "inherited nonblocking"
    );

    assert_eq!(p.wsp_send(c, b"hello"), Ok(5));
    wait_events(&p, s, &lev, FD_READ);
    assert_eq!(recv_n(&p, s, 5), b"hello");

    // Graceful close by the client: FD_CLOSE with 0 on the server.
    p.wsp_close_socket(c).unwrap();
    let n = wait_events(&p, s, &lev, FD_CLOSE);
    assert_eq!(n.errors[FD_CLOSE_BIT], 0);
    assert_eq!(p.wsp_recv(s, &mut b), Ok(0));
    for h in [s, l] {
        p.wsp_close_socket(h).unwrap();
    }
}

#[test]
fn fd_close_reports_reset_and_fd_connect_reports_refused() {
    let p = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:7010");
    let ev = WsaEvent::new();
    p.wsp_event_select(s, ev.clone(), FD_READ | FD_CLOSE)
        .unwrap();
    linger0(&p, c);
    p.wsp_close_socket(c).unwrap();
    let n = wait_events(&p, s, &ev, FD_CLOSE);
    assert_eq!(n.error(FD_CLOSE), WSAECONNRESET.code());

    // Nobody listens on 7011: the SYN gets a RST.
    let c2 = tcp(&p);
    let ev2 = WsaEvent::new();
    p.wsp_event_select(c2, ev2.clone(), FD_CONNECT | FD_WRITE)
        .unwrap();
    assert_eq!(
        p.wsp_connect(c2, addr("198.18.0.1:7011")),
        Err(WSAEWOULDBLOCK)
    );
    let n = wait_events(&p, c2, &ev2, FD_CONNECT);
    assert_eq!(n.error(FD_CONNECT), WSAECONNREFUSED.code());
    assert!(!n.has(FD_WRITE));
}

#[test]
fn fd_read_is_reenabled_only_by_recv() {
    let p = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:7020");
    let ev = WsaEvent::new();
    p.wsp_event_select(s, ev.clone(), FD_READ).unwrap();
    p.wsp_send(c, b"one").unwrap();
    wait_events(&p, s, &ev, FD_READ);
    // More data without a recv in between: not recorded again.
    p.wsp_send(c, b"two").unwrap();
    assert_quiet(&p, s, &ev, "no recv since FD_READ");
    // A partial recv leaves data: FD_READ recorded at once.
    let mut b = [0u8; 2];
    assert_eq!(p.wsp_recv(s, &mut b), Ok(2));
    assert!(
        p.wsp_enum_network_events(s, Some(&ev))
            .unwrap()
            .has(FD_READ)
    );
    // Drain; a recv that empties the queue re-enables, and the next arrival is recorded.
    let mut rest = [0u8; 16];
    assert_eq!(p.wsp_recv(s, &mut rest), Ok(4));
    assert_quiet(&p, s, &ev, "drained");
    p.wsp_send(c, b"three").unwrap();
    wait_events(&p, s, &ev, FD_READ);
}

#[test]
fn fd_write_only_after_wouldblock() {
    let p = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:7030");
    let ev = WsaEvent::new();
    p.wsp_event_select(c, ev.clone(), FD_WRITE).unwrap();
    // Connected already: FD_WRITE recorded when selected.
    wait_events(&p, c, &ev, FD_WRITE);
    // A send that succeeds does not re-enable FD_WRITE.
    assert_eq!(p.wsp_send(c, b"x"), Ok(1));
    assert_quiet(&p, c, &ev, "successful send");
    // Fill the send buffer and the peer's window until WSAEWOULDBLOCK.
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 1usize;
    let deadline = Instant::now() + T;
    loop {
        match p.wsp_send(c, &chunk) {
            Ok(n) => sent += n,
            Err(WSAEWOULDBLOCK) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(Instant::now() < deadline, "never blocked");
    }
    // The peer reads everything: space frees up and FD_WRITE is recorded.
    let reader = {
        let p = p.clone();
        thread::spawn(move || recv_n(&p, s, sent).len())
    };
    wait_events(&p, c, &ev, FD_WRITE);
    assert_eq!(reader.join().unwrap(), sent);
}

#[test]
fn fionbio_to_blocking_fails_while_events_are_selected() {
    let p = setup();
    let (_l, c, _s) = pair(&p, "198.18.0.1:7040");
    let ev = WsaEvent::new();
    p.wsp_event_select(c, ev.clone(), FD_READ).unwrap();
    let mut arg = 0u32;
    assert_eq!(p.wsp_ioctl(c, FIONBIO, &mut arg), Err(WSAEINVAL));
    let mut b = [0u8; 4];
    assert_eq!(p.wsp_recv(c, &mut b), Err(WSAEWOULDBLOCK));
    arg = 1;
    assert_eq!(p.wsp_ioctl(c, FIONBIO, &mut arg), Ok(()));
    // Cancelling the selection (mask 0) allows blocking again.
    p.wsp_event_select(c, ev, 0).unwrap();
    arg = 0;
    assert_eq!(p.wsp_ioctl(c, FIONBIO, &mut arg), Ok(()));
}

#[test]
fn conditions_holding_at_select_are_recorded_at_once() {
    let p = setup();
    let (l, c, s) = pair(&p, "198.18.0.1:7050");
    p.wsp_send(c, b"early").unwrap();
    // A second client waits in the accept queue.
    let c2 = tcp(&p);
    let mut one = 1u32;
    p.wsp_ioctl(c2, FIONBIO, &mut one).unwrap();
    assert_eq!(
        p.wsp_connect(c2, addr("198.18.0.1:7050")),
        Err(WSAEWOULDBLOCK)
    );
    let deadline = Instant::now() + T;
    let mut b = [0u8; 1];
    while p.wsp_connect(c2, addr("198.18.0.1:7050")) != Err(WSAEISCONN) {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(1));
    }
    // Data sits on `s` before selection.
    let deadline = Instant::now() + T;
    let mut avail = 0u32;
    while avail < 5 {
        assert!(Instant::now() < deadline);
        p.wsp_ioctl(s, crate::socket::options::FIONREAD, &mut avail)
            .unwrap();
    }
    let ev = WsaEvent::new();
    p.wsp_event_select(s, ev.clone(), FD_READ | FD_WRITE)
        .unwrap();
    assert!(ev.is_set());
    let n = p.wsp_enum_network_events(s, Some(&ev)).unwrap();
    assert_eq!(n.events, FD_READ | FD_WRITE);
    assert!(!ev.is_set(), "enum resets the event object");
    let lev = WsaEvent::new();
    p.wsp_event_select(l, lev.clone(), FD_ACCEPT).unwrap();
    assert!(lev.is_set());
    assert_eq!(
        p.wsp_enum_network_events(l, None).unwrap().events,
        FD_ACCEPT
    );
    // The peer's FIN before selection: FD_CLOSE recorded at once.
    p.wsp_shutdown(c, SD_SEND).unwrap();
    assert_eq!(recv_n(&p, s, 5), b"early");
    let deadline = Instant::now() + T;
    while p.wsp_recv(s, &mut b) != Ok(0) {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(1));
    }
    let ev2 = WsaEvent::new();
    p.wsp_event_select(s, ev2.clone(), FD_CLOSE).unwrap();
    let n = p.wsp_enum_network_events(s, None).unwrap();
    assert_eq!((n.events, n.error(FD_CLOSE)), (FD_CLOSE, 0));
}

#[test]
fn fd_accept_is_reenabled_by_accept() {
    let p = setup();
    let l = listener(&p, "198.18.0.1:7060");
    let ev = WsaEvent::new();
    p.wsp_event_select(l, ev.clone(), FD_ACCEPT).unwrap();
    let clients: Vec<Socket> = (0..2)
        .map(|_| {
            let c = tcp(&p);
            let mut one = 1u32;
            p.wsp_ioctl(c, FIONBIO, &mut one).unwrap();
            let _ = p.wsp_connect(c, addr("198.18.0.1:7060"));
            c
        })
        .collect();
    wait_events(&p, l, &ev, FD_ACCEPT);
    // Let the second handshake finish too; FD_ACCEPT is not recorded again without accept.
    let deadline = Instant::now() + T;
    for &c in &clients {
        while p.wsp_connect(c, addr("198.18.0.1:7060")) != Err(WSAEISCONN) {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
    }
    thread::sleep(Duration::from_millis(20));
    assert_quiet(&p, l, &ev, "no accept yet");
    p.wsp_accept(l).unwrap();
    // Another connection waits: recorded at once by the accept.
    assert!(ev.is_set());
    assert!(
        p.wsp_enum_network_events(l, Some(&ev))
            .unwrap()
            .has(FD_ACCEPT)
    );
    p.wsp_accept(l).unwrap();
    assert_quiet(&p, l, &ev, "queue empty");
    assert_eq!(p.wsp_accept(l).map(|_| ()), Err(WSAEWOULDBLOCK));
}

#[test]
fn no_event_is_recorded_after_close() {
    let p = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:7070");
    let ev = WsaEvent::new();
    p.wsp_event_select(s, ev.clone(), FD_ALL).unwrap();
    wait_events(&p, s, &ev, FD_WRITE);
    p.wsp_close_socket(s).unwrap();
    // The peer sends and closes: neither FD_READ nor FD_CLOSE for the closed socket.
    let _ = p.wsp_send(c, b"late");
    p.wsp_close_socket(c).unwrap();
    assert!(!ev.wait(Some(QUIET)), "event set after close");
    assert_eq!(p.wsp_enum_network_events(s, None), Err(WSAENOTSOCK));
    assert_eq!(p.wsp_event_select(s, ev, FD_ALL), Err(WSAENOTSOCK));
}

#[test]
fn udp_fd_write_at_bind_and_fd_read_on_arrival() {
    let p = setup();
    let a = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    let ev = WsaEvent::new();
    p.wsp_event_select(a, ev.clone(), FD_READ | FD_WRITE)
        .unwrap();
    assert!(!ev.is_set(), "unbound: nothing yet");
    p.wsp_bind(a, addr("198.18.0.1:7080")).unwrap();
    assert_eq!(
        p.wsp_enum_network_events(a, Some(&ev)).unwrap().events,
        FD_WRITE
    );
    let b = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    p.wsp_send_to(b, b"d1", addr("198.18.0.1:7080")).unwrap();
    p.wsp_send_to(b, b"d2", addr("198.18.0.1:7080")).unwrap();
    assert_eq!(
        p.wsp_enum_network_events(a, Some(&ev)).unwrap().events,
        FD_READ
    );
    let mut buf = [0u8; 8];
    // recv leaves one queued: FD_READ recorded again at once; after the last, not.
    assert_eq!(p.wsp_recv_from(a, &mut buf).unwrap().0, 2);
    assert!(p.wsp_enum_network_events(a, None).unwrap().has(FD_READ));
    assert_eq!(p.wsp_recv_from(a, &mut buf).unwrap().0, 2);
    assert_eq!(p.wsp_enum_network_events(a, None).unwrap().events, 0);
    // Selecting a bound socket records FD_WRITE at once.
    p.wsp_event_select(a, ev.clone(), FD_WRITE).unwrap();
    assert!(ev.is_set());
}

// ------------------------------------------------------------------ overlapped

#[test]
fn overlapped_recv_event_pending_then_complete_with_scatter() {
    let p = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:7100");
    let ev = WsaEvent::new();
    let ov = Overlapped::with_event(ev.clone());
    assert_eq!(
        p.wsp_get_overlapped_result(s, &ov, false),
        Err(WSAEINVAL),
        "never issued"
    );
    let r = p.wsp_recv_overlapped(s, vec![vec![0; 3], vec![0; 10]], &ov);
    assert_eq!(r, Err(WSA_IO_PENDING));
    assert_eq!(
        p.wsp_get_overlapped_result(s, &ov, false),
        Err(WSA_IO_INCOMPLETE)
    );
    assert_eq!(
        p.wsp_recv_overlapped(s, vec![vec![0; 3]], &ov),
        Err(WSAEINVAL),
        "descriptor busy"
    );
    p.wsp_send(c, b"scatter").unwrap();
    assert!(ev.wait(Some(T)));
    assert_eq!(p.wsp_get_overlapped_result(s, &ov, true), Ok((7, 0)));
    let bufs = ov.take_buffers();
    assert_eq!(&bufs[0][..], b"sca");
    assert_eq!(&bufs[1][..4], b"tter");

    // Data already there: completes at once, and the event is still set.
    p.wsp_send(c, b"now").unwrap();
    let deadline = Instant::now() + T;
    let mut avail = 0u32;
    while avail < 3 {
        assert!(Instant::now() < deadline);
        p.wsp_ioctl(s, crate::socket::options::FIONREAD, &mut avail)
            .unwrap();
    }
    assert_eq!(p.wsp_recv_overlapped(s, vec![vec![0; 16]], &ov), Ok(3));
    assert!(ev.is_set());
    assert_eq!(&ov.take_buffers()[0][..3], b"now");

    // EOF completes a pending receive with 0 bytes.
    assert_eq!(
        p.wsp_recv_overlapped(s, vec![vec![0; 16]], &ov),
        Err(WSA_IO_PENDING)
    );
    p.wsp_shutdown(c, SD_SEND).unwrap();
    assert_eq!(p.wsp_get_overlapped_result(s, &ov, true), Ok((0, 0)));
}

#[test]
fn overlapped_send_gathers_and_completes_when_buffered() {
    let p = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:7110");
    let ov = Overlapped::new();
    assert_eq!(
        p.wsp_send_overlapped(c, vec![b"ab".to_vec(), b"cd".to_vec()], &ov),
        Ok(4)
    );
    assert_eq!(recv_n(&p, s, 4), b"abcd");
    // Larger than the send buffer plus the peer's window: pending until the peer reads.
    let total = 4 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
    let bufs: Vec<Vec<u8>> = data.chunks(100_000).map(<[u8]>::to_vec).collect();
    assert_eq!(p.wsp_send_overlapped(c, bufs, &ov), Err(WSA_IO_PENDING));
    let got = recv_n(&p, s, total);
    assert_eq!(got, data);
    assert_eq!(p.wsp_get_overlapped_result(c, &ov, true), Ok((total, 0)));
}

#[test]
fn completion_queue_serves_many_sockets() {
    let p = setup();
    let q = CompletionQueue::new();
    let (_l1, c1, s1) = pair(&p, "198.18.0.1:7120");
    let (_l2, c2, s2) = pair(&p, "198.18.0.1:7121");
    let ov1 = Overlapped::with_queue(q.clone(), 1);
    let ov2 = Overlapped::with_queue(q.clone(), 2);
    assert_eq!(
        p.wsp_recv_overlapped(s1, vec![vec![0; 8]], &ov1),
        Err(WSA_IO_PENDING)
    );
    assert_eq!(
        p.wsp_recv_overlapped(s2, vec![vec![0; 8]], &ov2),
        Err(WSA_IO_PENDING)
    );
    assert!(
        q.get_queued_completion(Some(Duration::from_millis(20)))
            .is_none()
    );
    p.wsp_send(c2, b"two").unwrap();
    p.wsp_send(c1, b"one").unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let k = q.get_queued_completion(Some(T)).expect("completion");
        assert_eq!(k.error, None);
        let data = k.buffers[0][..k.bytes].to_vec();
        seen.push((k.key, data));
    }
    seen.sort();
    assert_eq!(seen, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    // Immediate success is queued too (one completion per operation).
    let ov3 = Overlapped::with_queue(q.clone(), 3);
    assert_eq!(p.wsp_send_overlapped(c1, vec![b"z".to_vec()], &ov3), Ok(1));
    let k = q.get_queued_completion(Some(T)).unwrap();
    assert_eq!((k.key, k.bytes, k.error), (3, 1, None));
    assert!(k.overlapped.ptr_eq(&ov3));
}

#[test]
fn completion_routine_runs_on_the_provider_completion_thread() {
    let p = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:7130");
    let (tx, rx) = mpsc::channel();
    let ov = Overlapped::with_routine(move |k: Completion| {
        let name = thread::current().name().map(str::to_owned);
        tx.send((name, k.bytes, k.error, k.buffers)).unwrap();
    });
    assert_eq!(
        p.wsp_recv_overlapped(s, vec![vec![0; 8]], &ov),
        Err(WSA_IO_PENDING)
    );
    p.wsp_send(c, b"apc").unwrap();
    let (name, bytes, err, bufs) = rx.recv_timeout(T).unwrap();
    assert_eq!(name.as_deref(), Some("provider-completion"));
    assert_eq!((bytes, err), (3, None));
    assert_eq!(&bufs[0][..3], b"apc");
    // The routine is spent: the descriptor cannot be reused.
    assert_eq!(
        p.wsp_recv_overlapped(s, vec![vec![0; 8]], &ov),
        Err(WSAEINVAL)
    );
}

#[test]
fn udp_overlapped_recv_from_and_send_to() {
    let p = setup();
    let a = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    p.wsp_bind(a, addr("198.18.0.1:7140")).unwrap();
    let b = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    p.wsp_bind(b, addr("198.18.0.1:7141")).unwrap();
    let ev = WsaEvent::new();
    let ov = Overlapped::with_event(ev.clone());
    assert_eq!(
        p.wsp_recv_from_overlapped(a, vec![vec![0; 4], vec![0; 4]], &ov),
        Err(WSA_IO_PENDING)
    );
    let sov = Overlapped::new();
    assert_eq!(
        p.wsp_send_to_overlapped(
            b,
            vec![b"gat".to_vec(), b"her".to_vec()],
            addr("198.18.0.1:7140"),
            &sov
        ),
        Ok(6)
    );
    assert_eq!(p.wsp_get_overlapped_result(b, &sov, false), Ok((6, 0)));
    assert!(ev.wait(Some(T)));
    assert_eq!(p.wsp_get_overlapped_result(a, &ov, false), Ok((6, 0)));
    assert_eq!(ov.from(), Some(addr("198.18.0.1:7141")));
    assert_eq!(ov.take_buffers().concat()[..6], *b"gather");
    // A datagram larger than the buffers: filled, WSAEMSGSIZE.
    p.wsp_send_to(b, b"toolong", addr("198.18.0.1:7140"))
        .unwrap();
    assert_eq!(
        p.wsp_recv_from_overlapped(a, vec![vec![0; 3]], &ov),
        Err(WSAEMSGSIZE)
    );
}

// ------------------------------------------------------------------ close interaction

#[test]
fn close_aborts_pending_operations_of_every_mechanism_from_several_threads() {
    let p = setup();
    let (_l, _c, s) = pair(&p, "198.18.0.1:7200");
    let q = CompletionQueue::new();
    let ev = WsaEvent::new();
    let (tx, rx) = mpsc::channel();
    let start = Arc::new(Barrier::new(4));
    let mut threads = Vec::new();
    // Three threads each leave one pending receive, each with a different mechanism.
    for mech in 0..3 {
        let (p, q, ev, tx, start) = (p.clone(), q.clone(), ev.clone(), tx.clone(), start.clone());
        threads.push(thread::spawn(move || {
            let ov = match mech {
                0 => Overlapped::with_event(ev),
                1 => Overlapped::with_routine(move |k: Completion| tx.send(k.error).unwrap()),
                _ => Overlapped::with_queue(q, 42),
            };
            assert_eq!(
                p.wsp_recv_overlapped(s, vec![vec![0; 64]], &ov),
                Err(WSA_IO_PENDING)
            );
            start.wait();
            ov
        }));
    }
    start.wait();
    let ovs: Vec<Overlapped> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(ovs.iter().all(Overlapped::is_pending));
    p.wsp_close_socket(s).unwrap();
    assert!(ev.wait(Some(T)), "event mechanism");
    assert_eq!(
        p.wsp_get_overlapped_result(s, &ovs[0], true),
        Err(WSA_OPERATION_ABORTED)
    );
    assert_eq!(
        rx.recv_timeout(T).unwrap(),
        Some(WSA_OPERATION_ABORTED),
        "routine mechanism"
    );
    let k = q.get_queued_completion(Some(T)).expect("queue mechanism");
    assert_eq!((k.key, k.error), (42, Some(WSA_OPERATION_ABORTED)));
    for ov in &ovs {
        assert_eq!(ov.result(false), Err(WSA_OPERATION_ABORTED));
    }
}

#[test]
fn close_aborts_pending_send_and_udp_receive() {
    let p = setup();
    let (_l, c, _s) = pair(&p, "198.18.0.1:7210");
    let ov = Overlapped::new();
    let big = vec![vec![1u8; 8 << 20]];
    assert_eq!(p.wsp_send_overlapped(c, big, &ov), Err(WSA_IO_PENDING));
    let closer = {
        let p = p.clone();
        thread::spawn(move || p.wsp_close_socket(c))
    };
    assert_eq!(ov.result(true), Err(WSA_OPERATION_ABORTED));
    closer.join().unwrap().unwrap();

    let u = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    p.wsp_bind(u, addr("198.18.0.1:7211")).unwrap();
    let q = CompletionQueue::new();
    let uov = Overlapped::with_queue(q.clone(), 9);
    assert_eq!(
        p.wsp_recv_from_overlapped(u, vec![vec![0; 8]], &uov),
        Err(WSA_IO_PENDING)
    );
    p.wsp_close_socket(u).unwrap();
    let k = q.get_queued_completion(Some(T)).unwrap();
    assert_eq!((k.key, k.error), (9, Some(WSA_OPERATION_ABORTED)));
    assert_eq!(k.buffers.len(), 1, "buffers handed back");
}

#[test]
fn closing_a_duplicate_handle_does_not_abort() {
    let p = setup();
    let (_l, c, s) = pair(&p, "198.18.0.1:7220");
    let dup = p.duplicate(s).unwrap();
    let ov = Overlapped::new();
    assert_eq!(
        p.wsp_recv_overlapped(s, vec![vec![0; 8]], &ov),
        Err(WSA_IO_PENDING)
    );
    p.wsp_close_socket(s).unwrap();
    assert!(ov.is_pending());
    p.wsp_send(c, b"ok").unwrap();
    assert_eq!(ov.result(true), Ok((2, 0)));
    p.wsp_close_socket(dup).unwrap();
}

#[test]
fn cancel_blocking_calls_interrupts_with_wsaeintr() {
    let p = setup();
    let (l, _c, s) = pair(&p, "198.18.0.1:7230");
    assert_eq!(p.wsp_cancel_blocking_call(), Err(WSAEINVAL));
    let recv = {
        let p = p.clone();
        thread::spawn(move || p.wsp_recv(s, &mut [0u8; 8]))
    };
    let accept = {
        let p = p.clone();
        thread::spawn(move || p.wsp_accept(l).map(|_| ()))
    };
    let deadline = Instant::now() + T;
    while !(recv.is_finished() && accept.is_finished()) {
        assert!(Instant::now() < deadline, "not interrupted");
        thread::sleep(Duration::from_millis(10));
        p.cancel_blocking_calls(s).unwrap();
        p.cancel_blocking_calls(l).unwrap();
    }
    assert_eq!(recv.join().unwrap(), Err(WSAEINTR));
    assert_eq!(accept.join().unwrap(), Err(WSAEINTR));
    // The socket still works afterwards.
    let mut arg = 1u32;
    p.wsp_ioctl(s, FIONBIO, &mut arg).unwrap();
    assert_eq!(p.wsp_recv(s, &mut [0u8; 8]), Err(WSAEWOULDBLOCK));

    let u = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    p.wsp_bind(u, addr("198.18.0.1:7231")).unwrap();
    let t = {
        let p = p.clone();
        thread::spawn(move || p.wsp_recv_from(u, &mut [0u8; 8]).map(|_| ()))
    };
    while !t.is_finished() {
        assert!(Instant::now() < deadline + T, "udp not interrupted");
        thread::sleep(Duration::from_millis(10));
        p.cancel_blocking_calls(u).unwrap();
    }
    assert_eq!(t.join().unwrap(), Err(WSAEINTR));
}
